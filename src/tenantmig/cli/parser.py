"""The ``tenantmig`` argument parser: every command, its options and its help text."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from tenantmig import __version__
from tenantmig.errors import ExitCode


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1, as every other bad input does, not argparse's 2: exit code 2 means
    "drift found", and a mistyped option must not look like drift to a CI gate.

    A usage error is reported by the (sub)command it belongs to, with that command's usage and
    the nearest command or option it knows ("did you mean --all-tenants?").
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The destination that takes every argument untouched (``db psql``), or None.
        self.passthrough: str | None = None

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self.passthrough is not None:
            # Everything after the command belongs to the program it runs: its -c is not
            # tenantmig's --config, and an option tenantmig does not know is not a usage error.
            namespace = namespace if namespace is not None else argparse.Namespace()
            setattr(namespace, self.passthrough, list(args or ()))
            return namespace, []
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            # Here, not in the top-level parser (argparse's default), so that the usage shown
            # is the command's own.
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._suggest(extras)}")
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        invalid = re.search(r"invalid choice: '([^']*)'", message)
        if invalid is not None:
            message += self._suggest([invalid.group(1)])
        self.print_usage(sys.stderr)
        self.exit(int(ExitCode.USAGE), f"{self.prog}: error: {message}\n")

    def _suggest(self, words: Sequence[str]) -> str:
        """``; did you mean X?`` for the first word close to an option or a choice (a command
        name) of this parser, else nothing."""
        options = list(self._option_string_actions)
        choices = [
            str(choice)
            for action in self._actions
            if action.choices is not None
            for choice in action.choices
        ]
        for word in words:
            known = options if word.startswith("-") else choices
            close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.6)
            if close:
                return f"; did you mean {close[0]}?"
        return ""


EPILOG = """\
exit codes:
  0    success
  1    usage or configuration error (nothing was changed)
  2    drift found (drift), not every schema at head (status --check), lint errors
  3    some tenants failed (the others finished; failed ones were rolled back)
  4    another all-tenants run holds the run lock, or this run lost it (it started no
       tenant after that; its last line is the command that finishes it), or a rollout
       is paused or stopped (`runs resume` or `runs cancel` it first)
  5    a database error stopped a run after it had started migrating (schemas it reached
       may have committed; each is at its old or new revision): see `tenantmig status`
  130  interrupted (SIGINT/SIGTERM); in-flight tenants committed or rolled back

database: --database-url, else $TENANTMIG_DATABASE_URL, else sqlalchemy.url in alembic.ini,
else an embedded PostgreSQL under ./.tenantmig/ (pip install 'tenantmig[embedded]').
"""


# The exit-code table is in the top-level help only; each command points there.
SEE_EXIT_CODES = "exit codes: see `tenantmig --help`"


def _common(parser: argparse.ArgumentParser, default: Any) -> None:
    """Options accepted before or after the command (``tenantmig --debug status`` or
    ``tenantmig status --debug``)."""
    group = parser.add_argument_group("connection and configuration")
    group.add_argument(
        "-c",
        "--config",
        default=default,
        metavar="FILE",
        help="alembic.ini to use (default: $TENANTMIG_CONFIG or ./alembic.ini)",
    )
    group.add_argument(
        "--database-url",
        default=default,
        metavar="URL",
        help="PostgreSQL URL (default: $TENANTMIG_DATABASE_URL, alembic.ini, "
        "else the embedded server)",
    )
    group.add_argument(
        "--shared-schema",
        default=default,
        metavar="SCHEMA",
        help="schema of the shared tables and ledger (default: public)",
    )
    group.add_argument(
        "--tenants-from",
        default=default,
        metavar="SOURCE",
        help="where the tenant list comes from: registry (default), 'query: SELECT name, "
        "schema_name FROM ...' or 'schemas: GLOB' (default: $TENANTMIG_TENANTS_FROM, "
        "tenants_from in alembic.ini)",
    )
    group.add_argument(
        "--scratch-schema",
        default=default,
        metavar="SCHEMA",
        help="a schema the role owns for compiling steps and building drift references, for "
        "roles that may not create schemas (default: $TENANTMIG_SCRATCH_SCHEMA, scratch_schema "
        "in alembic.ini, else short-lived schemas of tenantmig's own)",
    )
    group.add_argument(
        "--debug", action="store_true", default=default, help="show tracebacks for errors"
    )


def _metrics_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("monitoring")
    group.add_argument(
        "--events",
        metavar="FILE",
        help="write the run's events there as they happen, one JSON object per line "
        "(appended; - for standard output, then the summary goes to standard error; "
        "default: events in alembic.ini)",
    )
    group.add_argument(
        "--otel",
        action="store_true",
        help="send the run as an OpenTelemetry trace with its metrics over OTLP (on by "
        "itself when OTEL_EXPORTER_OTLP_ENDPOINT is set; pip install 'tenantmig[otel]')",
    )
    group.add_argument(
        "--metrics-file",
        type=Path,
        metavar="PATH",
        help="write the run's metrics there when it ends, in the node_exporter textfile "
        "format (written atomically), e.g. /var/lib/node_exporter/textfile/tenantmig.prom "
        "(pip install 'tenantmig[prometheus]')",
    )
    group.add_argument(
        "--pushgateway",
        metavar="URL",
        help="push the run's metrics to this Prometheus Pushgateway when it ends (job "
        "tenantmig; 5 s timeout, 3 attempts; a failure is a warning, never the run's)",
    )


def _rollout_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "rollout in waves (with --all-tenants; defaults: the [rollout] section of alembic.ini)"
    )
    group.add_argument(
        "--waves",
        metavar="SPEC",
        help="migrate in waves, each finished before the next: a comma-separated list of "
        "label:L (tenants with label L), N%% (a share of the selected tenants), N (a count) "
        "and rest, e.g. label:canary,5%%,25%%,rest; tenants left over make a last wave",
    )
    group.add_argument(
        "--no-waves",
        action="store_true",
        help="one run over all tenants, whatever alembic.ini says",
    )
    group.add_argument(
        "--wave-seed",
        metavar="SEED",
        help="re-seed the stable order that shares and counts draw tenants in (default: the "
        "same order every rollout)",
    )
    group.add_argument(
        "--wave-max-failures",
        type=int,
        metavar="N",
        help="a wave with more failures than N stops the rollout (default 0); later waves are "
        "not started; `tenantmig runs resume RUN_ID` goes on",
    )
    group.add_argument(
        "--pause-after-wave",
        action="store_true",
        help="end after each wave with the run paused (exit 0); `tenantmig runs resume RUN_ID` "
        "starts the next",
    )
    group.add_argument(
        "--soak",
        type=float,
        metavar="SECONDS",
        help="wait this long after each wave, then check its tenants with drift before the "
        "next (drift found: the wave failed); Ctrl-C meanwhile leaves the run paused",
    )


def _notify_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("notifications")
    group.add_argument(
        "--notify",
        action="append",
        metavar="URL",
        help="POST the run's summary there when it ends (repeatable; default: notify in "
        "alembic.ini); 5 s timeout, 3 attempts; a failure is a warning, never the run's",
    )
    group.add_argument(
        "--notify-format",
        choices=("json", "slack"),
        help="json: the --json document and the exit code (default); slack: a Slack "
        "incoming-webhook message (default: notify_format in alembic.ini)",
    )


def _engine_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run options")
    group.add_argument(
        "-j",
        "--jobs",
        type=int,
        metavar="N",
        help="tenants migrated at once, each on a connection of its own, in a worker process of "
        "its own unless --connections-per-worker says more (default: number of CPUs, capped by "
        "the server's free connections)",
    )
    group.add_argument(
        "--jobs-per-database",
        type=int,
        metavar="N",
        help="at most N tenants of one database at once, within --jobs (default: what that "
        "database's server has free connections for)",
    )
    group.add_argument(
        "--connections-per-worker",
        type=int,
        default=1,
        metavar="N",
        help="tenants one worker process migrates at once, each on its own connection: "
        "--jobs 200 --connections-per-worker 20 is 200 tenants in flight in 10 processes. "
        "Replayed tenants run side by side; in one process, tenants that run through Alembic "
        "take turns (default: 1, a process per tenant in flight)",
    )
    group.add_argument(
        "--lock-timeout",
        type=float,
        metavar="SECONDS",
        help="longest a statement waits for a lock before giving up and retrying (default: 5)",
    )
    group.add_argument(
        "--statement-timeout",
        type=float,
        metavar="SECONDS",
        help="longest any single statement may run (default: no limit)",
    )
    group.add_argument(
        "--retries",
        type=int,
        metavar="N",
        help="retries of a tenant after a lock timeout or deadlock (default: 3)",
    )
    group.add_argument(
        "--reconnect-timeout",
        type=float,
        metavar="SECONDS",
        help="how long a tenant keeps reconnecting after the server went away (restart, "
        "failover) before it is recorded as failed (default: 60)",
    )
    group.add_argument(
        "--fail-fast", action="store_true", help="stop starting tenants after the first failure"
    )
    group.add_argument(
        "--max-failures", type=int, metavar="N", help="stop starting tenants after N failures"
    )
    group.add_argument(
        "--only-failed",
        action="store_true",
        help="finish the last run of this kind: only the tenants it did not finish (after a "
        "killed run, all it had not done), each to the revision that run resolved for it; "
        "a failed run prints this command",
    )
    group.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for another all-tenants run to finish (default: exit 4 at once)",
    )
    group.add_argument(
        "--log-file",
        type=Path,
        metavar="FILE",
        help="per-tenant event log (default: .tenantmig/logs/tenantmig.log)",
    )
    group.add_argument(
        "--no-replay",
        action="store_true",
        help="run Alembic for every tenant instead of replaying each step's compiled SQL",
    )
    group.add_argument(
        "--order",
        choices=("size", "name"),
        default="size",
        help="which tenants start first: size (the largest schemas, from the catalog, so that "
        "none finishes last alone; the default) or name",
    )
    group.add_argument(
        "--backup",
        type=Path,
        metavar="DIR",
        help="pg_dump -Fc each tenant's schema into DIR just before migrating it (the run "
        "refuses to start if pg_dump is missing or DIR is not writable); restore one with "
        "`tenantmig restore`",
    )
    group.add_argument("--json", action="store_true", help="print one JSON result object")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    review = parser.add_argument_group("SQL for review (nothing is changed)")
    review.add_argument(
        "--sql",
        action="store_true",
        help="print the SQL each selected schema would run, from its own revision to the "
        "target (or over FROM:TO), with tenantmig's timeouts and lock, for `psql -1 -f` (a "
        "range with an autocommit block: a transaction per revision, for `psql -f`)",
    )
    review.add_argument(
        "--sql-dir", type=Path, metavar="DIR", help="like --sql, one SCHEMA.sql file per schema"
    )
    review.add_argument(
        "--plan",
        action="store_true",
        help="show what the run would do instead of running it: `tenantmig plan` (each "
        "step's statements, locks and effects, and the largest tenants)",
    )


def _json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _action(
    sub: Any, name: str, help_text: str, description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand of a command (``tenants create``, ``db url``)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=description or help_text[:1].upper() + help_text[1:] + ".",
        epilog=SEE_EXIT_CODES,
        allow_abbrev=False,
    )
    _common(parser, argparse.SUPPRESS)
    return parser


def _yes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-y",
        "--yes",
        action="store_true",
        help="confirm that data will be lost (without it: a question on a terminal, else exit 1)",
    )


def _selector(parser: argparse.ArgumentParser, *, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--shared", action="store_true", help="only the shared schema")
    group.add_argument(
        "--tenant", action="append", metavar="NAME", help="only this tenant (repeatable)"
    )
    group.add_argument("--all-tenants", action="store_true", help="every registered tenant")
    _database_filter(parser)


def _database_filter(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        action="append",
        metavar="DB",
        help="only tenants living in database DB: control (the --database-url one) or a name of "
        "the [databases] directory (repeatable)",
    )
    _label_filter(parser)


def _label_filter(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--label",
        action="append",
        metavar="LABEL",
        help="only tenants with label LABEL (repeatable: a tenant with any of them); see "
        "`tenantmig tenants label`",
    )


def _read_timeout(parser: argparse.ArgumentParser, default: Any = None) -> None:
    """For commands that only read: their reads ignore the role's statement_timeout (a
    production setting meant for the application) unless this bounds them."""
    parser.add_argument(
        "--statement-timeout",
        type=float,
        default=default,
        metavar="SECONDS",
        help="longest any one of tenantmig's reads may run (default: no limit, whatever the "
        "role's or database's statement_timeout)",
    )


def _chain(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--shared", action="store_true", help="the shared chain (migrations/shared)")
    group.add_argument(
        "--tenant-chain", action="store_true", help="the tenant chain (migrations/tenant)"
    )


class _Unparsable(Exception):
    """A partial parser (see ``parse_arguments``) met what it cannot decide alone."""


class _PartialParser(_Parser):
    """A parser that knows one command only: any error means "ask the full parser"."""

    def error(self, message: str) -> NoReturn:
        raise _Unparsable(message)


class _Skipped:
    """Stands in for the parser of a command this invocation does not run: every call to it
    (add_argument, groups, nested subcommands) is accepted and does nothing."""

    def __getattr__(self, _name: str) -> Any:
        return self._ignore

    def _ignore(self, *_args: Any, **_kwargs: Any) -> Any:
        return self


_FULL_PARSER_WORDS = frozenset({"-h", "--help", "--version"})


def parse_arguments(arguments: Sequence[str]) -> argparse.Namespace:
    """``arguments`` parsed as the full parser parses them.

    Start-up: building every command's options costs more than the no-op run of one command
    spends on its work, so a command line whose first word is a command is parsed by a
    parser that has only that command, built the same way. Whatever that parser cannot take
    as it is (an error, help, a first word that is an option's value) is parsed again by the
    full parser, which reports it with every command known.
    """
    first = next((a for a in arguments if not a.startswith("-")), None)
    if first is not None and _FULL_PARSER_WORDS.isdisjoint(arguments):
        partial = build_parser(only=first, parser_class=_PartialParser)
        if partial.knows_command:  # type: ignore[attr-defined]
            try:
                return partial.parse_args(arguments)
            except _Unparsable:
                pass
    return build_parser().parse_args(arguments)


def build_parser(
    only: str | None = None, parser_class: type[_Parser] = _Parser
) -> argparse.ArgumentParser:
    """Every command's parser; ``only``: just that command's (the others stand in)."""
    parser = parser_class(
        prog="tenantmig",
        description="Schema migrations for schema-per-tenant PostgreSQL: the shared schema "
        "once, every tenant schema in parallel, with a durable run ledger.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"tenantmig {__version__}")
    _common(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    parser.knows_command = only is None  # type: ignore[attr-defined]

    def add(
        name: str, help_text: str, description: str | None = None, **kwargs: Any
    ) -> argparse.ArgumentParser:
        if only is not None and name != only:
            return _Skipped()  # type: ignore[return-value]
        parser.knows_command = True  # type: ignore[attr-defined]
        p = sub.add_parser(
            name,
            help=help_text,
            description=description or help_text,
            epilog=SEE_EXIT_CODES,
            allow_abbrev=False,
            **kwargs,
        )
        _common(p, argparse.SUPPRESS)
        return p

    p = add(
        "upgrade",
        "Upgrade the shared schema and/or tenant schemas (default: everything "
        "to head, shared first).",
    )
    _selector(p, required=False)
    p.add_argument(
        "revision",
        nargs="?",
        default="head",
        help="target revision: head (default), a revision id, or +N; with --sql also FROM:TO",
    )
    _engine_options(p)
    _rollout_options(p)
    _metrics_options(p)
    _notify_options(p)

    p = add(
        "plan",
        "Show what an upgrade or downgrade would do to each tenant, before it runs.",
        "Show what `tenantmig upgrade` (or `downgrade`, with --downgrade) to REVISION would "
        "do to the selected tenants, changing nothing: for every distinct step they need, the "
        "tenants that take it, its statements as compiled (as a run replays them; Alembic's "
        "offline SQL for what a run sends through Alembic), the strongest lock each takes and "
        "on which table, what it does to the rows (rewrite, scan, metadata-only, "
        "destructive), and the tenants with the largest tables it rewrites or scans first. "
        "Needs read access and a scratch schema, as a run's compilation does "
        "(pip install 'tenantmig[plan]').",
    )
    _selector(p, required=False)
    p.add_argument(
        "--downgrade", action="store_true", help="plan a downgrade to REVISION (default: upgrade)"
    )
    p.add_argument(
        "revision", nargs="?", default="head", help="target revision: head (default), a revision "
        "id, +N, or with --downgrade a revision, base or -N",
    )  # fmt: skip
    _json(p)
    p.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="also write the plan as a self-contained HTML file",
    )

    p = add(
        "lint",
        "Check tenant revisions for what is risky across the fleet (exit 2 on errors).",
        "Check tenant revisions (default: those some tenant has not got yet) before they run: "
        "tenantmig's rules, which weigh each statement by the tenants' tables (a rewrite or "
        "scan that blocks writes on a table larger than lint_max_table_size in some tenant; a "
        "lock above ROW EXCLUSIVE held while rows are written; destructive statements), and "
        "squawk's (pip install 'tenantmig[lint]'). Exit 2 when an error-level finding is not "
        "allowed, 0 otherwise. Allow a rule in a revision file with a comment "
        "`# tenantmig: allow RULE reason`, for every revision with lint_allow in alembic.ini, "
        "or here with --allow RULE.",
    )
    p.add_argument("revisions", nargs="*", metavar="REVISION", help="revisions to lint")
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="RULE",
        help="allow a rule for this lint (repeatable), e.g. destructive",
    )
    _json(p)

    p = add(
        "downgrade",
        "Downgrade the shared schema or tenant schemas. A downgrade that drops tables or columns, "
        "or takes a tenant to base (also with -N or a revision), or of the shared schema (whose "
        "tables every tenant depends on, the tenant registry among them), asks for "
        "confirmation: --yes, or an answer on a terminal.",
    )
    _selector(p, required=True)
    p.add_argument("revision", help="target revision: a revision id, base, or -N (e.g. -1)")
    _yes(p)
    _engine_options(p)
    _rollout_options(p)
    _metrics_options(p)
    _notify_options(p)

    p = add(
        "stamp",
        "Record a revision in schemas without running migrations (like `alembic stamp`), for "
        "schemas built by hand or by another tool. Each schema is stamped under its lock and "
        "the run is recorded in the ledger; check with `tenantmig drift` afterwards.",
    )
    _selector(p, required=True)
    p.add_argument("revision", help="the revision the schemas are at: head, a revision id, or base")
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for another all-tenants run to finish (default: exit 4 at once)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON result object")

    p = add("current", "Show the current revision of the shared schema and tenants.")
    p.add_argument("--tenant", action="append", metavar="NAME", help="only this tenant")
    _json(p)
    _read_timeout(p)

    p = add(
        "status",
        "Shared and per-tenant revisions against head, with each tenant's last run outcome. "
        "With --check, the deploy gate: exit 0 when the shared schema and every active tenant "
        "are at head, 2 when any is not (counts by state and the first names), 1 on a usage "
        "or connection error; it reads only versions, in bulk.",
    )
    p.add_argument("--tenant", action="append", metavar="NAME", help="only this tenant")
    _database_filter(p)
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 2 unless the shared schema and every selected active tenant are at head "
        "(for a deploy pipeline or a readiness probe)",
    )
    p.add_argument(
        "--allow-behind",
        action="append",
        metavar="LABEL",
        help="with --check: tenants with label LABEL may be behind head (repeatable)",
    )
    _json(p)
    _read_timeout(p)

    p = add("history", "List the revisions of the shared and tenant chains.")
    chain = p.add_mutually_exclusive_group()
    chain.add_argument("--shared", action="store_true", help="only the shared chain")
    chain.add_argument("--tenant-chain", action="store_true", help="only the tenant chain")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="also each revision's file and full message"
    )

    p = add("revision", "Create a new revision file in one chain (like `alembic revision`).")
    _chain(p)
    p.add_argument("-m", "--message", required=True, help="what the revision does")
    p.add_argument("--rev-id", help="revision id to use instead of a generated one")
    p.add_argument(
        "--autogenerate",
        action="store_true",
        help="fill in the operations that bring the chain's head to its models "
        "(target_metadata), compared in a schema migrated to head inside a transaction that "
        "is rolled back; nothing is written when they agree",
    )

    p = add(
        "check",
        "Exit 2, listing the differences, when a chain's models (target_metadata) and its "
        "migrations disagree (like `alembic check`), for CI. Chains without models are skipped.",
    )
    _chain(p, required=False)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = add("heads", "Show the head revision(s) of each chain (like `alembic heads`).")
    _chain(p, required=False)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = add("branches", "Show revisions where a chain branches (like `alembic branches`).")
    _chain(p, required=False)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = add("show", "Show one revision of a chain (like `alembic show`).")
    _chain(p)
    p.add_argument("revision", help="a revision id, a unique prefix of one, or head")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = add(
        "merge",
        "Create a merge revision joining two or more revisions of a chain (like "
        "`alembic merge`); tenantmig migrates linear chains only, so diverged heads are "
        "merged before migrating.",
    )
    _chain(p)
    p.add_argument(
        "revisions", nargs="*", default=["heads"], help="the revisions to join (default: heads)"
    )
    p.add_argument("-m", "--message", required=True, help="what the merge does")
    p.add_argument("--rev-id", help="revision id to use instead of a generated one")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = add(
        "tenants",
        "Create, register, list, move and drop tenants.",
        description="Create, register, list, move and drop tenants: `create` registers new "
        "tenants, creates their schemas and migrates them to head; `register` adopts existing "
        "schemas; `list` shows them; `move` moves one to another database of the directory; "
        "`drop` drops their schemas and unregisters them.",
    )
    tsub = p.add_subparsers(dest="tenants_command", metavar="ACTION", required=True)
    create = _action(
        tsub, "create", "register tenants, create their schemas and migrate them to head"
    )
    create.add_argument("names", nargs="+", metavar="NAME", help="tenant names (= schema names)")
    create.add_argument(
        "--no-migrate", action="store_true", help="only register and create the schemas"
    )
    _json(create)
    create.add_argument(
        "-j", "--jobs", type=int, metavar="N", help="worker processes for the migration"
    )
    create.add_argument(
        "--database",
        default="control",
        metavar="DB",
        help="create the schemas in database DB of the [databases] directory (default: "
        "control, the --database-url one)",
    )
    create.add_argument(
        "--citus-schemas",
        choices=("distributed", "local"),
        help="on a Citus coordinator: make each new schema a distributed schema (placed on "
        "one worker node) or keep it local on the coordinator (default: "
        "$TENANTMIG_CITUS_SCHEMAS, citus_schemas in alembic.ini, else distributed); ignored "
        "on plain PostgreSQL",
    )
    register = _action(
        tsub,
        "register",
        "register existing schemas as tenants without changing them (then `tenantmig "
        "stamp` records their revision)",
    )
    register.add_argument(
        "names", nargs="+", metavar="NAME", help="tenant names (each schema named after it)"
    )
    register.add_argument(
        "--schema", metavar="SCHEMA", help="the schema of a single NAME (default: NAME)"
    )
    register.add_argument(
        "--database",
        default="control",
        metavar="DB",
        help="the schemas are in database DB of the [databases] directory (default: control)",
    )
    _json(register)
    listing = _action(tsub, "list", "list the tenants (from the configured tenant source)")
    _label_filter(listing)
    _json(listing)
    _read_timeout(listing)
    label = _action(
        tsub,
        "label",
        "add or remove tenants' labels",
        "Add labels to tenants or remove them. Labels select tenants (--label L on upgrade, "
        "downgrade, stamp, status, drift and tenants list) and make rollout waves. They are "
        "kept in tenantmig's own table in the shared schema (the tenant registry is not "
        "changed); with tenants_from = query: ..., the query may return them instead, as a "
        "column labels (text[]). A label is a lower-case letter, then lower-case letters, "
        "digits, _ or - (at most 63).",
    )
    label.add_argument("names", nargs="+", metavar="NAME", help="the tenants to label")
    label.add_argument(
        "--add", action="append", default=[], metavar="LABEL", help="add LABEL (repeatable)"
    )
    label.add_argument(
        "--remove",
        action="append",
        default=[],
        metavar="LABEL",
        help="remove LABEL (repeatable)",
    )
    _json(label)
    drop = _action(
        tsub,
        "drop",
        "drop tenant schemas (CASCADE) and unregister them",
        "Drop tenant schemas (CASCADE) and unregister them in batches of at most 25 tenants, "
        "fewer when their schemas hold many objects (a batch takes at most half the server's "
        "lock table). The report "
        "says per database what was dropped and what is untouched, also after a failure; the "
        "same command again finishes a drop that failed or was killed, and names the tenants "
        "already gone that an earlier drop named.",
    )
    drop.add_argument("names", nargs="+", metavar="NAME", help="the tenants to drop")
    _yes(drop)
    drop.add_argument(
        "--lock-timeout",
        type=float,
        metavar="SECONDS",
        help="longest to wait for a tenant's locks; a batch that waits longer is rolled back "
        "in every database (default: 5)",
    )
    _json(drop)
    move = _action(
        tsub,
        "move",
        "move a tenant's schema to another database of the directory",
        "Move a tenant's schema to another database of the [databases] directory: copied "
        "(pg_dump and pg_restore) under the tenant's lock, with the application's writes to "
        "its tables blocked meanwhile (reads go on), verified (row counts and structure), the "
        "directory switched, then the old schema dropped. Any failure before the switch leaves "
        "the tenant where it was.",
    )
    move.add_argument("name", metavar="NAME", help="the tenant to move")
    move.add_argument(
        "--to", required=True, metavar="DB", help="the database to move it to (control or a name)"
    )
    move.add_argument(
        "--lock-timeout",
        type=float,
        metavar="SECONDS",
        help="longest to wait for the tenant's locks (default: 5)",
    )
    _json(move)

    p = add(
        "drift",
        "Report tenants (and the shared schema) whose version or structure is not "
        "what their migrations should have produced. Exit code 2 when any drifted.",
    )
    p.add_argument(
        "--tenant", action="append", metavar="NAME", help="only this tenant (repeatable)"
    )
    _database_filter(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--html", type=Path, metavar="FILE", help="also write a self-contained HTML report"
    )
    p.add_argument(
        "--ignore",
        action="append",
        metavar="KIND",
        choices=["privileges", "owner", "owners", "comment", "comments"],
        help="leave out a kind of object managed outside the migrations: privileges, owner, "
        "comment (repeatable; default: drift_ignore in alembic.ini)",
    )
    _read_timeout(p)

    p = add(
        "runs",
        "Show past runs from the ledger: the last runs, one line each (`runs list`, the "
        "default), or one run with every tenant's outcome (`runs show RUN_ID`).",
    )
    p.add_argument("--limit", type=int, default=20, help="how many recent runs (default 20)")
    _json(p)
    _read_timeout(p)
    rsub = p.add_subparsers(dest="runs_command", metavar="ACTION")
    # `runs list` says what bare `runs` does, as `tenants list` does for tenants.
    runs_list = _action(rsub, "list", "the last runs, one line each (what `tenantmig runs` prints)")
    runs_list.add_argument(
        "--limit",
        type=int,
        default=argparse.SUPPRESS,
        help="how many recent runs (default 20)",
    )
    runs_list.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON object"
    )
    _read_timeout(runs_list, argparse.SUPPRESS)
    show = _action(rsub, "show", "one run with every tenant's outcome")
    show.add_argument("run_id", type=int, help="a run id from `tenantmig runs`")
    show.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON object"
    )
    _read_timeout(show, argparse.SUPPRESS)
    resume = _action(
        rsub,
        "resume",
        "go on with a paused or stopped rollout",
        "Go on with a rollout (a run with --waves) that is paused, was stopped by a wave's "
        "gate, was interrupted, or whose runner was killed: the same run, its unfinished "
        "tenants each to the revision and in the wave it recorded, the stopped wave's failed "
        "tenants first, then the later waves, with the rollout's own rules between waves. "
        "A tenant migrated meanwhile (by a --tenant run) is skipped; one moved to another "
        "database since is migrated where it lives now.",
    )
    resume.add_argument("run_id", type=int, help="the rollout's run id")
    resume.add_argument(
        "-j", "--jobs", type=int, metavar="N", help="worker processes (default: as for upgrade)"
    )
    resume.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON object"
    )
    resume.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    _metrics_options(resume)
    _notify_options(resume)
    cancel = _action(
        rsub,
        "cancel",
        "give up a paused or stopped rollout",
        "Give up a rollout that is paused, stopped, interrupted or abandoned: it is recorded "
        "as cancelled, its tenants stay where they are, and another all-tenants run may start.",
    )
    cancel.add_argument("run_id", type=int, help="the rollout's run id")
    cancel.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON object"
    )
    prune = _action(
        rsub,
        "prune",
        "remove old finished runs from the ledger",
        "Remove finished runs and their tenants' rows from the ledger: those older than "
        "--older-than, or beyond the --keep-last most recent (both given: only runs that are "
        "both). Never removed: a running or abandoned run, the latest run of each kind "
        "(--only-failed finishes it), and a run that holds a tenant's latest row saying it is "
        "not where it was meant to be. Asks first on a terminal; --yes otherwise. "
        "ledger_keep_days in alembic.ini prunes after every all-tenants run.",
    )
    prune.add_argument(
        "--older-than", metavar="AGE", help="an age such as 90d, 2w or 12h (days, weeks, hours)"
    )
    prune.add_argument(
        "--keep-last", type=int, metavar="N", help="keep the N most recent runs whatever their age"
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="say what would be removed; remove nothing"
    )
    prune.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON object"
    )
    _yes(prune)

    p = add(
        "restore",
        "Replace one tenant's schema with a dump taken by --backup, in one transaction: "
        "on any error the current schema is kept. The tenant's tables are locked meanwhile.",
    )
    p.add_argument("--tenant", required=True, metavar="NAME", help="the tenant to restore")
    p.add_argument("file", type=Path, metavar="FILE", help="a .dump file written by --backup")
    _yes(p)
    p.add_argument(
        "--lock-timeout",
        type=float,
        metavar="SECONDS",
        help="longest to wait for the tenant's locks (default: 5)",
    )
    _json(p)

    add(
        "demo",
        "Create demo tenants (acme, globex, initech) and run the full upgrade. Outside a "
        "project (no alembic.ini), uses the demo project shipped with tenantmig, with its "
        "database under ./.tenantmig/.",
    )

    p = add(
        "db",
        "The configured database (the embedded one included) for other tools: its URL, psql "
        "on it, or the embedded server kept running.",
    )
    dsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    url = _action(
        dsub,
        "url",
        "print the database URL as libpq clients take it (password masked)",
        "Print the database URL as libpq clients take it. The embedded server stops when "
        "tenantmig exits: keep it running with `tenantmig db serve`.",
    )
    url.add_argument("--show-password", action="store_true", help="print the real password")
    psql = _action(
        dsub,
        "psql",
        "run psql on the database (every argument after psql goes to psql)",
        "Run psql on the configured database, keeping the embedded server running meanwhile; "
        "the password goes through the environment. Every argument after `psql` goes to psql "
        "untouched (`tenantmig db psql -c 'select 1'`); tenantmig's own options go before "
        "`db`. Exits with psql's exit code.",
    )
    psql.add_argument(
        "psql_args",
        nargs=argparse.REMAINDER,
        metavar="PSQL_ARGS",
        help="arguments for psql",
    )
    if isinstance(psql, _Parser):  # not when `db` stands in (another command runs)
        psql.passthrough = "psql_args"
    _action(
        dsub,
        "serve",
        "keep the embedded server running until Ctrl-C, and print its URL",
        "Start the embedded server (if needed), print its URL and keep it running until "
        "interrupted (Ctrl-C or SIGTERM), for other programs to connect to.",
    )

    p = add(
        "grant",
        "One-time set-up, run by an administrator, for a role that may not create schemas or "
        "tables: create the run ledger, grant ROLE what tenantmig needs on the shared schema, "
        "and create the scratch schemas ROLE owns (scratch_schema, default tenantmig_scratch). "
        "Idempotent.",
    )
    p.add_argument("role", metavar="ROLE", help="the role that will run tenantmig")
    p.add_argument(
        "--sql", action="store_true", help="print the statements instead of running them"
    )
    _json(p)

    p = add(
        "init",
        "Start a project: write alembic.ini, migrations/shared and migrations/tenant (env.py, "
        "script.py.mako) and the tenant registry as the first shared revision. Needs no "
        "database; never overwrites an existing project.",
    )
    p.add_argument(
        "directory", nargs="?", default=".", type=Path, help="where (default: this directory)"
    )
    p.add_argument(
        "--demo", action="store_true", help="also write the demo chains (users, orders, ...)"
    )
    p.add_argument(
        "--no-registry",
        action="store_true",
        help="no tenant registry revision: the tenant list comes from the application "
        "(tenants_from in alembic.ini)",
    )
    _json(p)
    return parser
