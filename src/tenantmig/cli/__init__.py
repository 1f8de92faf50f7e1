"""The ``tenantmig`` command: argument parsing, rendering and exit codes. No SQL here.

``main`` is the only place an error becomes an exit code; the commands call the public API
(``tenantmig.api``) and render its result objects.

Start-up: this module and the parser import only the standard library and ``tenantmig.errors``.
The commands (and with them SQLAlchemy, Alembic and psycopg2, about 0.3 s of imports) are
imported once the arguments are parsed, so ``--version``, ``--help`` and usage errors, which
end inside ``parse_args``, never load them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from tenantmig.cli.parser import build_parser, parse_arguments
from tenantmig.errors import ExitCode, TenantmigError

__all__ = ["build_parser", "exit_code_for", "main"]


def _is_database_error(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLAlchemy's DBAPIError, without importing SQLAlchemy: an error of
    a module that was never imported cannot have been raised."""
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    return sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.DBAPIError)


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code an error ends the command with (see the table in ``--help``)."""
    if isinstance(exc, TenantmigError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    # A database error that reaches here was raised before any schema changed: a run that had
    # started migrating turns its database errors into RunAborted (exit 5) itself.
    return ExitCode.USAGE


def _database_error_line(exc: BaseException, url: str | None) -> str:
    from tenantmig.server.errorcodes import first_line
    from tenantmig.server.urls import mask_url

    where = f" ({mask_url(url)})" if url else ""
    return f"tenantmig: database error{where}: {first_line(exc)}"


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parse_arguments(arguments)
    args.argv = arguments  # for the finishing command a failed run prints
    from tenantmig.cli.commands import COMMANDS

    try:
        return int(COMMANDS[args.command](args))
    except TenantmigError as exc:
        if args.debug:
            raise
        print(f"tenantmig: error: {exc}", file=sys.stderr)
        return int(exit_code_for(exc))
    except KeyboardInterrupt as exc:
        print("tenantmig: interrupted", file=sys.stderr)
        return int(exit_code_for(exc))
    except BrokenPipeError:
        # The reader went away (`tenantmig ... | head`): stop quietly. stdout is pointed at
        # /dev/null so that Python's own flush at exit does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitCode.OK)
    except Exception as exc:
        if args.debug or not _is_database_error(exc):
            raise
        print(_database_error_line(exc, args.database_url), file=sys.stderr)
        return int(exit_code_for(exc))


if __name__ == "__main__":
    sys.exit(main())
