"""The ``tenantmig`` command: argument parsing, rendering and exit codes. No SQL here."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alembic import command as alembic_command
from sqlalchemy.exc import DBAPIError

from tenantmig import __version__, api, render
from tenantmig.config import Chain, Settings, load_settings
from tenantmig.database import mask_url
from tenantmig.drift_render import drift_html, drift_text
from tenantmig.errors import ExitCode, TenantmigError
from tenantmig.results import RunResult

EPILOG = """\
exit codes:
  0    success
  1    usage or configuration error (nothing was changed)
  2    drift found
  3    some tenants failed (the others finished; failed ones were rolled back)
  4    another all-tenants run holds the run lock
  130  interrupted (SIGINT/SIGTERM); in-flight tenants committed or rolled back

database: --database-url, else $TENANTMIG_DATABASE_URL, else sqlalchemy.url in alembic.ini,
else an embedded PostgreSQL under ./.tenantmig/ (pip install 'tenantmig[embedded]').
"""


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
        "--debug", action="store_true", default=default, help="show tracebacks for errors"
    )


def _engine_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run options")
    group.add_argument(
        "-j",
        "--jobs",
        type=int,
        metavar="N",
        help="worker processes (default: number of CPUs, capped by the server's free connections)",
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
        "--fail-fast", action="store_true", help="stop starting tenants after the first failure"
    )
    group.add_argument(
        "--max-failures", type=int, metavar="N", help="stop starting tenants after N failures"
    )
    group.add_argument(
        "--only-failed",
        action="store_true",
        help="only the tenants that failed (or did not run) in the last run of this kind; "
        "after a killed run, all it did not finish",
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
        "--backup",
        type=Path,
        metavar="DIR",
        help="pg_dump -Fc each tenant's schema into DIR just before migrating it (the run "
        "refuses to start if pg_dump is missing or DIR is not writable); restore one with "
        "`tenantmig restore`",
    )
    group.add_argument("--json", action="store_true", help="print one JSON result object")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def _selector(parser: argparse.ArgumentParser, *, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--shared", action="store_true", help="only the shared schema")
    group.add_argument(
        "--tenant", action="append", metavar="NAME", help="only this tenant (repeatable)"
    )
    group.add_argument("--all-tenants", action="store_true", help="every registered tenant")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tenantmig",
        description="Schema migrations for schema-per-tenant PostgreSQL: the shared schema "
        "once, every tenant schema in parallel, with a durable run ledger.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tenantmig {__version__}")
    _common(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str, **kwargs: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
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
        help="target revision: head (default), a revision id, or +N",
    )
    _engine_options(p)

    p = add("downgrade", "Downgrade the shared schema or tenant schemas.")
    _selector(p, required=True)
    p.add_argument("revision", help="target revision: a revision id, base, or -N (e.g. -1)")
    _engine_options(p)

    p = add("current", "Show the current revision of the shared schema and tenants.")
    p.add_argument("--tenant", action="append", metavar="NAME", help="only this tenant")
    p.add_argument("--json", action="store_true")

    p = add(
        "status",
        "Shared and per-tenant revisions against head, with each tenant's last run outcome.",
    )
    p.add_argument("--tenant", action="append", metavar="NAME", help="only this tenant")
    p.add_argument("--json", action="store_true")

    p = add("history", "List the revisions of the shared and tenant chains.")
    chain = p.add_mutually_exclusive_group()
    chain.add_argument("--shared", action="store_true", help="only the shared chain")
    chain.add_argument("--tenant-chain", action="store_true", help="only the tenant chain")
    p.add_argument("-v", "--verbose", action="store_true")

    p = add("revision", "Create a new revision file in one chain (like `alembic revision`).")
    chain = p.add_mutually_exclusive_group(required=True)
    chain.add_argument("--shared", action="store_true", help="in migrations/shared")
    chain.add_argument("--tenant-chain", action="store_true", help="in migrations/tenant")
    p.add_argument("-m", "--message", required=True)
    p.add_argument("--rev-id", help="revision id to use instead of a generated one")

    p = add("tenants", "Register, list and drop tenants.")
    tsub = p.add_subparsers(dest="tenants_command", metavar="ACTION", required=True)
    create = tsub.add_parser(
        "create", help="register tenants, create their schemas and migrate them to head"
    )
    _common(create, argparse.SUPPRESS)
    create.add_argument("names", nargs="+", metavar="NAME")
    create.add_argument(
        "--no-migrate", action="store_true", help="only register and create the schemas"
    )
    create.add_argument("--json", action="store_true")
    create.add_argument("-j", "--jobs", type=int, metavar="N")
    listing = tsub.add_parser("list", help="list registered tenants")
    _common(listing, argparse.SUPPRESS)
    listing.add_argument("--json", action="store_true")
    drop = tsub.add_parser("drop", help="drop tenant schemas (CASCADE) and unregister them")
    _common(drop, argparse.SUPPRESS)
    drop.add_argument("names", nargs="+", metavar="NAME")
    drop.add_argument("--yes", action="store_true", help="required: confirms the data loss")

    p = add(
        "drift",
        "Report tenants (and the shared schema) whose version or structure is not "
        "what their migrations should have produced. Exit code 2 when any drifted.",
    )
    p.add_argument(
        "--tenant", action="append", metavar="NAME", help="only this tenant (repeatable)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--html", type=Path, metavar="FILE", help="also write a self-contained HTML report"
    )

    p = add("runs", "Show past runs from the ledger (`runs show RUN_ID` for one run).")
    p.add_argument("--limit", type=int, default=20, help="how many recent runs (default 20)")
    p.add_argument("--json", action="store_true")
    rsub = p.add_subparsers(dest="runs_command", metavar="ACTION")
    show = rsub.add_parser("show", help="one run with every tenant's outcome")
    _common(show, argparse.SUPPRESS)
    show.add_argument("run_id", type=int)
    show.add_argument("--json", action="store_true", default=argparse.SUPPRESS)

    p = add(
        "restore",
        "Replace one tenant's schema with a dump taken by --backup, in one transaction: "
        "on any error the current schema is kept. The tenant's tables are locked meanwhile.",
    )
    p.add_argument("--tenant", required=True, metavar="NAME", help="the tenant to restore")
    p.add_argument("file", type=Path, metavar="FILE", help="a .dump file written by --backup")
    p.add_argument(
        "--lock-timeout",
        type=float,
        metavar="SECONDS",
        help="longest to wait for the tenant's locks (default: 5)",
    )
    p.add_argument("--json", action="store_true")

    add("demo", "Create demo tenants (acme, globex, initech) and run the full upgrade.")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        config_file=args.config,
        database_url=args.database_url,
        shared_schema=args.shared_schema,
        lock_timeout_s=getattr(args, "lock_timeout", None),
        statement_timeout_s=getattr(args, "statement_timeout", None),
        retries=getattr(args, "retries", None),
        reconnect_timeout_s=getattr(args, "reconnect_timeout", None),
    )


def _selection(args: argparse.Namespace) -> api.Selection:
    if args.shared:
        return api.Selection.shared_only()
    if args.tenant:
        return api.Selection.named(args.tenant)
    if args.all_tenants:
        return api.Selection.all_tenants()
    return api.Selection.everything()


def _run_options(args: argparse.Namespace) -> tuple[api.RunOptions, render.Progress]:
    quiet = bool(getattr(args, "quiet", False))
    progress = render.Progress(quiet=quiet)
    if args.jobs is not None and args.jobs < 1:
        raise TenantmigError("--jobs must be at least 1")
    if getattr(args, "max_failures", None) is not None and args.max_failures < 1:
        raise TenantmigError("--max-failures must be at least 1")
    options = api.RunOptions(
        jobs=args.jobs,
        fail_fast=getattr(args, "fail_fast", False),
        max_failures=getattr(args, "max_failures", None),
        only_failed=getattr(args, "only_failed", False),
        wait_s=getattr(args, "wait", 0.0),
        log_file=getattr(args, "log_file", None),
        on_outcome=progress,
        on_start=progress.start,
        replay=not getattr(args, "no_replay", False),
        backup_dir=getattr(args, "backup", None),
    )
    return options, progress


def _finish_run(result: RunResult, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(render.run_summary(result))
    if result.interrupted:
        return ExitCode.INTERRUPTED
    return ExitCode.OK if result.succeeded else ExitCode.TENANTS_FAILED


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    options, _ = _run_options(args)
    selection = _selection(args)
    if args.command == "upgrade":
        result = api.upgrade(settings, selection, args.revision, options)
    else:
        result = api.downgrade(settings, selection, args.revision, options)
    return _finish_run(result, args.json)


def cmd_status(args: argparse.Namespace) -> int:
    report = api.status(_settings(args), args.tenant)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, default=str))
    else:
        print(render.status_text(report))
    return ExitCode.OK


def cmd_current(args: argparse.Namespace) -> int:
    report = api.status(_settings(args), args.tenant)
    if args.json:
        print(
            json.dumps(
                {
                    "shared": report.shared_revision,
                    "tenants": {t.name: t.revision for t in report.tenants},
                },
                indent=2,
            )
        )
        return ExitCode.OK
    if not args.tenant:
        print(
            f"shared ({report.shared_schema}): {report.shared_revision or 'base'}"
            + (" (head)" if report.shared_revision == report.shared_head else "")
        )
    for t in report.tenants:
        head = " (head)" if t.revision and t.revision == t.head else ""
        print(f"{t.name}: {t.revision or 'base'}{head}")
    return ExitCode.OK


def cmd_history(args: argparse.Namespace) -> int:
    settings = _settings(args)
    chains: list[Chain] = (
        ["shared"] if args.shared else ["tenant"] if args.tenant_chain else ["shared", "tenant"]
    )
    print("\n".join(render.history_text(c, api.history(settings, c), args.verbose) for c in chains))
    return ExitCode.OK


def cmd_revision(args: argparse.Namespace) -> int:
    settings = _settings(args)
    chain: Chain = "shared" if args.shared else "tenant"
    cfg = settings.alembic_config(chain)
    script = alembic_command.revision(cfg, message=args.message, rev_id=args.rev_id)
    path = script.path if script is not None and not isinstance(script, list) else "?"
    print(f"created {chain} revision {getattr(script, 'revision', '?')}: {path}")
    return ExitCode.OK


def cmd_tenants(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.tenants_command == "list":
        rows = api.tenants(settings)
        if args.json:
            print(
                json.dumps(
                    [
                        {
                            "name": t.name,
                            "schema": t.schema,
                            "status": t.status,
                            "created_at": t.created_at.isoformat() if t.created_at else None,
                        }
                        for t in rows
                    ],
                    indent=2,
                )
            )
        else:
            print(render.tenants_text(rows))
        return ExitCode.OK
    if args.tenants_command == "drop":
        if not args.yes:
            raise TenantmigError("dropping tenants deletes their data: add --yes to confirm")
        api.drop_tenants(settings, args.names)
        print(f"dropped {len(args.names)} tenant(s): {', '.join(args.names)}")
        return ExitCode.OK
    progress = render.Progress(quiet=args.json)
    options = api.RunOptions(jobs=args.jobs, on_outcome=progress, on_start=progress.start)
    created, result = api.create_tenants(
        settings, args.names, migrate=not args.no_migrate, options=options
    )
    if args.json:
        print(
            json.dumps(
                {"created": [t.name for t in created], "run": result.to_json() if result else None},
                indent=2,
            )
        )
    else:
        print(f"registered {len(created)} tenant(s): {', '.join(t.name for t in created)}")
        if result is not None:
            print(render.run_summary(result))
    if result is not None and not result.succeeded:
        return ExitCode.TENANTS_FAILED
    return ExitCode.OK


def cmd_runs(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if getattr(args, "runs_command", None) == "show":
        record, outcomes = api.run_details(settings, args.run_id)
        if args.json:
            print(
                json.dumps(
                    {**record.to_json(), "tenants": [o.to_json() for o in outcomes]}, indent=2
                )
            )
        else:
            print(render.run_text(record, outcomes))
        return ExitCode.OK
    records = api.runs(settings, args.limit)
    if args.json:
        print(json.dumps([r.to_json() for r in records], indent=2))
    else:
        print(render.runs_text(records))
    return ExitCode.OK


def cmd_demo(args: argparse.Namespace) -> int:
    settings = _settings(args)
    progress = render.Progress()
    result = api.demo(settings, api.RunOptions(on_outcome=progress, on_start=progress.start))
    if result.created:
        print(f"registered demo tenants: {', '.join(result.created)}")
    print(render.run_summary(result.shared))
    print("$ tenantmig upgrade --all-tenants")
    print(render.run_summary(result.tenants))
    print()
    print(render.status_text(result.status))
    return ExitCode.OK if result.tenants.succeeded else ExitCode.TENANTS_FAILED


def cmd_restore(args: argparse.Namespace) -> int:
    result = api.restore(_settings(args), args.tenant, args.file)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(
            f"restored tenant {result.tenant} from {result.file}: revision "
            f"{result.from_revision or 'base'} -> {result.to_revision or 'base'} "
            f"in {result.duration_s:.1f}s (run {result.run_id})"
        )
    return ExitCode.OK


def cmd_drift(args: argparse.Namespace) -> int:
    report = api.drift(_settings(args), args.tenant)
    if args.html is not None:
        try:
            args.html.write_text(drift_html(report), encoding="utf-8")
        except OSError as exc:
            raise TenantmigError(f"cannot write {args.html}: {exc.strerror}") from exc
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(drift_text(report))
        if args.html is not None:
            print(f"HTML report written to {args.html}")
    return ExitCode.DRIFT if report.any_drift else ExitCode.OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "upgrade": cmd_migrate,
    "downgrade": cmd_migrate,
    "status": cmd_status,
    "current": cmd_current,
    "history": cmd_history,
    "revision": cmd_revision,
    "tenants": cmd_tenants,
    "runs": cmd_runs,
    "drift": cmd_drift,
    "demo": cmd_demo,
    "restore": cmd_restore,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(COMMANDS[args.command](args))
    except TenantmigError as exc:
        if args.debug:
            raise
        print(f"tenantmig: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except DBAPIError as exc:
        if args.debug:
            raise
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        url = args.database_url
        where = f" ({mask_url(url)})" if url else ""
        print(f"tenantmig: database error{where}: {detail}", file=sys.stderr)
        return int(ExitCode.USAGE)
    except KeyboardInterrupt:
        print("tenantmig: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
