"""The ``tenantmig`` command: argument parsing, rendering and exit codes. No SQL here.

``main`` is the only place an error becomes an exit code; the commands call the public API
(``tenantmig.api``) and render its result objects.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError

from tenantmig.cli.commands import COMMANDS
from tenantmig.cli.parser import build_parser
from tenantmig.errors import ExitCode, TenantmigError
from tenantmig.server.database import mask_url
from tenantmig.server.errorcodes import first_line

__all__ = ["build_parser", "exit_code_for", "main"]


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code an error ends the command with (see the table in ``--help``)."""
    if isinstance(exc, TenantmigError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    # A database error that reaches here was raised before any schema changed: a run that had
    # started migrating turns its database errors into RunAborted (exit 5) itself.
    return ExitCode.USAGE


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(arguments)
    args.argv = arguments  # for the finishing command a failed run prints
    try:
        return int(COMMANDS[args.command](args))
    except TenantmigError as exc:
        if args.debug:
            raise
        print(f"tenantmig: error: {exc}", file=sys.stderr)
        return int(exit_code_for(exc))
    except DBAPIError as exc:
        if args.debug:
            raise
        url = args.database_url
        where = f" ({mask_url(url)})" if url else ""
        print(f"tenantmig: database error{where}: {first_line(exc)}", file=sys.stderr)
        return int(exit_code_for(exc))
    except KeyboardInterrupt as exc:
        print("tenantmig: interrupted", file=sys.stderr)
        return int(exit_code_for(exc))
    except BrokenPipeError:
        # The reader went away (`tenantmig ... | head`): stop quietly. stdout is pointed at
        # /dev/null so that Python's own flush at exit does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
