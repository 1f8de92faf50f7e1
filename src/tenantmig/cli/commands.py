"""One function per command: build settings and options from the parsed arguments, call the
API, render the result, return the exit code. No SQL here."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tenantmig import api
from tenantmig.chains.scripts import Direction
from tenantmig.cli import render
from tenantmig.cli.progress import Progress
from tenantmig.errors import ConfigError, ExitCode, some_names
from tenantmig.run.results import RunResult
from tenantmig.server.config import ENV_CONFIG, Chain, RolloutDefaults, Settings, load_settings
from tenantmig.server.database import mask_url
from tenantmig.server.directory import CONTROL

if TYPE_CHECKING:
    from tenantmig.observe.fanout import Observers
    from tenantmig.observe.notify import Notifications
    from tenantmig.observe.prometheus import Exports
    from tenantmig.run.bulk import DropResult
    from tenantmig.run.retention import PrunePlan


def _settings(args: argparse.Namespace, config_file: Path | None = None) -> Settings:
    return load_settings(
        config_file=config_file or args.config,
        database_url=args.database_url,
        shared_schema=args.shared_schema,
        lock_timeout_s=getattr(args, "lock_timeout", None),
        statement_timeout_s=getattr(args, "statement_timeout", None),
        retries=getattr(args, "retries", None),
        reconnect_timeout_s=getattr(args, "reconnect_timeout", None),
        tenants_from=args.tenants_from,
        scratch_schema=args.scratch_schema,
        drift_ignore=getattr(args, "ignore", None),
        citus_schemas=getattr(args, "citus_schemas", None),
    )


def _selection(args: argparse.Namespace) -> api.Selection:
    databases = getattr(args, "database", None)
    labels = getattr(args, "label", None)
    if args.shared:
        if databases:
            raise ConfigError("--database selects tenants; the shared schema is in control")
        if labels:
            raise ConfigError("--label selects tenants; the shared schema has no labels")
        return api.Selection.shared_only()
    if args.tenant:
        selection = api.Selection.named(args.tenant)
    elif args.all_tenants or databases or labels:
        selection = api.Selection.all_tenants()
    else:
        selection = api.Selection.everything()
    return selection.in_databases(databases).with_labels(labels)


# Up to this many tenant names are printed; past it, a count and progress lines.
BATCH_SHOWN = 25


def _run_options(args: argparse.Namespace) -> api.RunOptions:
    return api.RunOptions(
        jobs=args.jobs,
        jobs_per_database=args.jobs_per_database,
        connections_per_worker=args.connections_per_worker,
        fail_fast=args.fail_fast,
        max_failures=args.max_failures,
        only_failed=args.only_failed,
        wait_s=args.wait,
        log_file=args.log_file,
        replay=not args.no_replay,
        order=args.order,
        backup_dir=args.backup,
        # What migrations print is always in the run log; on a terminal it is shown as well,
        # never in --json mode, whose stdout is one JSON document.
        echo_output=not args.json and not args.quiet and sys.stderr.isatty(),
    )


def _finish_run(
    result: RunResult, args: argparse.Namespace, rerun: list[str], out: TextIO | None = None
) -> int:
    """Print the result (to ``out``, standard output by default); ``rerun`` is the command
    line that ran it (tenantmig's arguments)."""
    finish = finish_command(result, rerun)
    if args.json:
        print(json.dumps({**result.to_json(), "finish_command": finish}, indent=2), file=out)
    else:
        print(render.run_summary(result, finish), file=out)
    if result.interrupted or result.paused_by_signal:
        return ExitCode.INTERRUPTED
    if result.stopped is not None:
        return ExitCode.LOCKED  # it lost the run lock: the same code as finding it held
    return ExitCode.OK if result.succeeded else ExitCode.TENANTS_FAILED


def finish_command(result: RunResult, rerun: list[str]) -> str | None:
    """The command that finishes a run some tenants did not finish, or None.

    The run's own command line with --only-failed: it takes exactly the tenants that run did
    not finish, each to the revision that run resolved for it (see ``run.coordinator``), so it
    never moves a tenant further than that run meant to, even for a relative target. A failed
    shared schema was rolled back: the same command again retries it.
    """
    if result.shared is not None and not result.shared.status.is_done:
        return _command_line(rerun)
    if result.run_id is None or all(o.status.is_done for o in result.outcomes):
        return None
    if result.waves is not None:  # a rollout goes on as the same run, wave by wave
        return _command_line([*_global_flags(rerun), "runs", "resume", str(result.run_id)])
    return _command_line([*(a for a in rerun if a != "--only-failed"), "--only-failed"])


_GLOBAL_FLAGS = ("--config", "-c", "--database-url", "--shared-schema", "--tenants-from",
                 "--scratch-schema")  # fmt: skip


def _global_flags(rerun: list[str]) -> list[str]:
    """The flags of ``rerun`` that choose the configuration and database (with their values),
    for a printed command of another verb."""
    kept: list[str] = []
    for i, argument in enumerate(rerun):
        name = argument.split("=", 1)[0]
        if name in _GLOBAL_FLAGS:
            kept.append(argument)
            if "=" not in argument and i + 1 < len(rerun):
                kept.append(rerun[i + 1])
    return kept


def _confirm(args: argparse.Namespace, consequence: str) -> None:
    """Go on only with --yes or a "yes" typed on a terminal; else ConfigError (exit 1), before
    anything is changed."""
    if args.yes:
        return
    if sys.stdin.isatty() and sys.stderr.isatty():
        print(f"{consequence}. Type yes to go on: ", end="", file=sys.stderr, flush=True)
        try:
            answer = input()
        except EOFError:
            answer = ""
        if answer.strip().lower() == "yes":
            return
        raise ConfigError("not confirmed; nothing was changed")
    raise ConfigError(f"{consequence}: add --yes to confirm; nothing was changed")


def _connection_flags(args: argparse.Namespace) -> list[str]:
    """The flags that chose the configuration and database, to repeat in a printed command."""
    flags = []
    for flag, value in (
        ("--config", args.config),
        ("--database-url", args.database_url),
        ("--shared-schema", args.shared_schema),
        ("--tenants-from", args.tenants_from),
        ("--scratch-schema", args.scratch_schema),
    ):
        if value:
            flags += [flag, str(value)]
    return flags


def _command_line(arguments: list[str]) -> str:
    """``tenantmig ARGS`` for a shell, with a database URL's password masked."""
    shown = []
    for i, argument in enumerate(arguments):
        if i > 0 and arguments[i - 1] == "--database-url":
            argument = mask_url(argument)
        elif argument.startswith("--database-url="):
            argument = "--database-url=" + mask_url(argument.split("=", 1)[1])
        shown.append(argument)
    return shlex.join(["tenantmig", *shown])


@contextmanager
def live_progress(progress: Progress) -> Iterator[Progress]:
    """The progress display, closed whatever happens: an error or Ctrl-C leaves one line with
    the true counts, never a half-drawn bar."""
    try:
        yield progress
    except KeyboardInterrupt:
        progress.close(interrupted=True)
        raise
    finally:
        progress.close()


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a service manager, `kill`) stops the block like Ctrl-C: KeyboardInterrupt,
    which kills the block's client programs before they commit, records the operation as
    interrupted, and exits 130."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_sql(args: argparse.Namespace, settings: Settings) -> int:
    direction: Direction = "upgrade" if args.command == "upgrade" else "downgrade"
    scripts = api.sql(settings, _selection(args), direction, args.revision)
    if args.json:
        print(json.dumps({"command": direction, "schemas": [s.to_json() for s in scripts]},
                         indent=2))  # fmt: skip
        return ExitCode.OK
    if args.sql_dir is None:
        print(render.sql_stream(scripts, direction))
        return ExitCode.OK
    directory = args.sql_dir
    directory.mkdir(parents=True, exist_ok=True)
    written = 0
    for item in scripts:
        if item.sql is not None:
            apply = item.apply_with.replace("FILE", f"{item.schema}.sql")
            (directory / f"{item.schema}.sql").write_text(
                f"{item.header(direction)}\n-- apply with: {apply}\n\n" + item.sql
            )
            written += 1
    how = {item.apply_with for item in scripts if item.sql is not None} or {"psql -1 -f FILE"}
    which = " (each file says which)" if len(how) > 1 else ""
    print(f"wrote {written} file(s) to {directory} ({len(scripts) - written} schema(s) "
          f"already at the target); apply one with: {' or '.join(sorted(how))}{which}")  # fmt: skip
    return ExitCode.OK


def _rollout(
    args: argparse.Namespace, settings: Settings, selection: api.Selection
) -> dict[str, Any]:
    """The rollout options: the command line's, falling back to the [rollout] section's; its
    waves apply to an all-tenants run (not --only-failed, not with --no-waves)."""
    if args.no_waves and args.waves:
        raise ConfigError("--waves and --no-waves: give one")
    ini = settings.rollout
    waves = args.waves
    if waves is None and not args.no_waves and selection.every_tenant and not args.only_failed:
        waves = ini.waves
    if waves is None:  # no rollout: the rule options alone are refused by the plan
        ini = RolloutDefaults()

    def chosen(given: Any, configured: Any, default: Any) -> Any:
        return given if given is not None else configured if configured is not None else default

    return {
        "waves": waves,
        "wave_seed": chosen(args.wave_seed, ini.wave_seed, None),
        "wave_max_failures": chosen(args.wave_max_failures, ini.wave_max_failures, 0),
        "pause_after_wave": args.pause_after_wave or ini.pause_after_wave,
        "soak_s": chosen(args.soak, ini.soak_s, 0.0),
    }


def cmd_plan(args: argparse.Namespace) -> int:
    """`tenantmig plan` (and `upgrade --plan`, `downgrade --plan`)."""
    downgrade = getattr(args, "downgrade", False) or args.command == "downgrade"
    selection = _selection(args)
    if selection.shared and not selection.include_tenants:
        raise ConfigError("plan reviews tenant migrations: give --all-tenants or --tenant NAME")
    if selection.shared:  # no selection: every tenant (the shared chain is not planned)
        selection = replace(selection, shared=False)
    html_file = getattr(args, "html", None)
    if html_file is not None and not Path(html_file).parent.is_dir():
        raise ConfigError(f"--html: no directory {Path(html_file).parent}")
    report = api.plan(
        _settings(args), selection, "downgrade" if downgrade else "upgrade", args.revision
    )
    print(json.dumps(report.to_json(), indent=2) if args.json else report.text())
    if html_file is not None:
        from tenantmig.cli.plan_render import plan_html

        Path(html_file).write_text(plan_html(report), encoding="utf-8")
        if not args.json:
            print(f"HTML plan written to {html_file}")
    return ExitCode.OK


def cmd_lint(args: argparse.Namespace) -> int:
    report = api.lint(_settings(args), args.revisions, args.allow)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.text())
    return ExitCode.DRIFT if report.errors else ExitCode.OK


def cmd_migrate(args: argparse.Namespace) -> int:
    if getattr(args, "plan", False):
        return cmd_plan(args)
    settings = _settings(args)
    if args.sql or args.sql_dir is not None:
        if args.waves:
            raise ConfigError("--waves runs migrations; --sql and --sql-dir only print them")
        return cmd_sql(args, settings)
    selection = _selection(args)
    options = replace(_run_options(args), **_rollout(args, settings, selection))
    monitoring = _Monitoring.asked(args, settings)
    if args.command == "downgrade" and selection.shared:
        # The shared schema goes first, before tenants are read: asked up front.
        what = "the shared schema" + (" and every tenant" if selection.include_tenants else "")
        _confirm(
            args,
            f"downgrading {what} to {args.revision} drops tables and their rows "
            "(the tenant registry too, when its revision goes)",
        )
    elif args.command == "downgrade" and not args.yes:
        # Asked once each tenant's target is resolved: -1 or a revision reaches base, or drops
        # a table, for some tenants only; a downgrade that drops nothing is not asked. With
        # --yes there is nothing to ask, so the steps are not rendered to find out.
        def confirm(drops: api.Drops) -> bool:
            _confirm(args, drops.question(args.revision))
            return True

        options = replace(options, confirm_drops=confirm)
    verb = api.upgrade if args.command == "upgrade" else api.downgrade

    def run(observer: api.RunObserver) -> RunResult:
        return verb(settings, selection, args.revision, options, observer)

    return monitoring.run(args, args.command, args.revision, selection, run)


@dataclass(frozen=True)
class _Monitoring:
    """Where a run reports besides the terminal: events, telemetry, metrics, notifications."""

    events: str | None
    exports: Exports
    notifications: Notifications

    @classmethod
    def asked(cls, args: argparse.Namespace, settings: Settings) -> _Monitoring:
        """As the command line (else alembic.ini) asks; checked before anything changes: a
        missing package or directory, a bad URL is a usage error."""
        events = getattr(args, "events", None) or settings.events
        if events == "-" and getattr(args, "json", False):
            raise ConfigError("--events - and --json both write to standard output: give "
                              "--events a file, or leave out --json")  # fmt: skip
        monitoring = cls(events, _exports(args), _notifications(args, settings))
        monitoring.exports.check()
        monitoring.notifications.check()
        return monitoring

    def run(
        self,
        args: argparse.Namespace,
        command: str,
        target: str,
        selection: api.Selection,
        run: Callable[[api.RunObserver], RunResult],
    ) -> int:
        """``run`` with the progress display and these observers; its summary printed, then
        its metrics and notifications sent. The run's exit code."""
        quiet = getattr(args, "quiet", False) or getattr(args, "json", False)
        with live_progress(Progress(quiet=quiet)) as progress:
            with _watching(args, command, target, selection, self.events, progress) as observers:
                result = run(observers)
                progress.close(interrupted=result.interrupted)
                # With the event stream on standard output, the summary goes to standard error.
                out = sys.stderr if self.events == "-" else None
                code = _finish_run(result, args, args.argv, out)
                observers.finished(result, code, finish_command(result, args.argv))
        if self.exports:
            from tenantmig.observe.prometheus import export

            export(result, code, self.exports, _warn)
        if self.notifications:
            from tenantmig.observe.notify import payload, send

            finish = finish_command(result, args.argv)
            body = payload(result, code, finish, self.notifications.format)
            send(self.notifications, body, _warn)
        return code


def _warn(text: str) -> None:
    print(f"tenantmig: warning: {text}", file=sys.stderr)


@contextmanager
def _watching(
    args: argparse.Namespace,
    command: str,
    target: str,
    selection: api.Selection,
    events: str | None,
    progress: Progress,
) -> Iterator[Observers]:
    """The run's observers: the progress display, and the event stream and OpenTelemetry when
    asked for. Each is told how the run ended (also when it ended in an error), then closed:
    what they still send is waited for a bounded time."""
    from tenantmig.observe import otel
    from tenantmig.observe.fanout import Observers

    watchers: list[api.RunObserver] = [progress]
    if events is not None:
        from tenantmig.observe.events import EventSink, EventStream

        only_failed = bool(getattr(args, "only_failed", False))
        stream = EventStream(
            EventSink.open(events), command, target, selection, only_failed=only_failed
        )
        watchers.append(stream)
    if otel.check(bool(getattr(args, "otel", False)), _warn):
        watchers.append(otel.OtelRun(command, target))
    observers = Observers(watchers, _warn)
    try:
        yield observers
    except BaseException as exc:
        from tenantmig.cli import exit_code_for

        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        observers.aborted(text, int(exit_code_for(exc)))
        raise
    finally:
        observers.close()


def _notifications(args: argparse.Namespace, settings: Settings) -> Notifications:
    from tenantmig.observe.notify import Notifications

    # The command line's URLs, else alembic.ini's (already split by load_settings).
    urls = tuple(getattr(args, "notify", None) or settings.notify)
    chosen = getattr(args, "notify_format", None) or settings.notify_format
    return Notifications(urls, chosen)  # type: ignore[arg-type]  # checked by check()


def _exports(args: argparse.Namespace) -> Exports:
    from tenantmig.observe.prometheus import Exports

    return Exports(getattr(args, "metrics_file", None), getattr(args, "pushgateway", None))


def _labelled(changed: api.LabelChange, args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(changed.to_json(), indent=2))
        return ExitCode.OK
    for verb, labels, count in (
        ("added", changed.added, changed.pairs_added),
        ("removed", changed.removed, changed.pairs_removed),
    ):
        if labels:
            print(
                f"{verb} {', '.join(labels)} for {len(changed.tenants)} tenant(s) "
                f"({count} changed): {some_names(list(changed.tenants), BATCH_SHOWN)}"
            )
    return ExitCode.OK


def cmd_status(args: argparse.Namespace) -> int:
    if args.check:
        gate = api.deploy_check(
            _settings(args), args.tenant, args.database, args.label, args.allow_behind or ()
        )
        print(json.dumps(gate.to_json(), indent=2) if args.json else gate.text())
        return ExitCode.OK if gate.ok else ExitCode.DRIFT
    if args.allow_behind:
        raise ConfigError("--allow-behind goes with --check")
    report = api.status(_settings(args), args.tenant, args.database, args.label)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, default=str))
    else:
        print(render.status_text(report))
    return ExitCode.OK


def cmd_current(args: argparse.Namespace) -> int:
    report = api.status(_settings(args), args.tenant, getattr(args, "database", None))
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
    chains = _chains(args)
    print("\n".join(render.history_text(c, api.history(settings, c), args.verbose) for c in chains))
    return ExitCode.OK


def _chains(args: argparse.Namespace) -> list[Chain]:
    if args.shared:
        return ["shared"]
    if args.tenant_chain:
        return ["tenant"]
    return ["shared", "tenant"]


def cmd_revision(args: argparse.Namespace) -> int:
    (chain,) = _chains(args)
    created = api.revision(
        _settings(args), chain, args.message, args.rev_id, autogenerate=args.autogenerate
    )
    if created is None:
        print(f"no differences between the {chain} chain's models and its migrations: "
              "nothing generated")  # fmt: skip
    else:
        print(f"created {chain} revision {created.revision}: {created.path}")
    return ExitCode.OK


def cmd_check(args: argparse.Namespace) -> int:
    result = api.check(_settings(args), _chains(args))
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        for chain, differences in result.differences.items():
            if not differences:
                print(f"{chain}: models and migrations agree")
                continue
            print(f"{chain}: {len(differences)} difference(s) between the models and the "
                  "migrations (write a revision: tenantmig revision --autogenerate)")  # fmt: skip
            for line in differences:
                print(f"  {line}")
        for chain in result.skipped:
            print(f"{chain}: skipped, no models to compare (set target_metadata in the "
                  f"chain's env.py or its alembic.ini section to check it)")  # fmt: skip
    return ExitCode.OK if result.agree else ExitCode.DRIFT


def _print_revisions(args: argparse.Namespace, found: dict[str, list[api.RevisionInfo]]) -> int:
    if args.json:
        print(json.dumps({c: [r.to_json() for r in rs] for c, rs in found.items()}, indent=2))
        return ExitCode.OK
    for chain, revisions in found.items():
        print(render.revisions_text(chain, revisions))
    return ExitCode.OK


def cmd_heads(args: argparse.Namespace) -> int:
    settings = _settings(args)
    return _print_revisions(args, {c: api.heads(settings, c) for c in _chains(args)})


def cmd_branches(args: argparse.Namespace) -> int:
    settings = _settings(args)
    return _print_revisions(args, {c: api.branches(settings, c) for c in _chains(args)})


def cmd_show(args: argparse.Namespace) -> int:
    (chain,) = _chains(args)
    found = api.show(_settings(args), chain, args.revision)
    if args.json:
        print(json.dumps(found.to_json(), indent=2))
    else:
        print(render.revision_detail(chain, found))
    return ExitCode.OK


def cmd_merge(args: argparse.Namespace) -> int:
    (chain,) = _chains(args)
    made = api.merge(_settings(args), chain, args.revisions, args.message, args.rev_id)
    if args.json:
        print(json.dumps(made.to_json(), indent=2))
    else:
        print(f"created {chain} merge revision {made.revision} of {made.down_revision}: "
              f"{made.path}")  # fmt: skip
    return ExitCode.OK


def cmd_tenants(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.tenants_command == "list":
        rows = api.tenants(settings, args.label)
        if args.json:
            print(json.dumps([t.to_json() for t in rows], indent=2))
        else:
            print(render.tenants_text(rows))
        return ExitCode.OK
    if args.tenants_command == "label":
        return _labelled(api.label_tenants(settings, args.names, args.add, args.remove), args)
    if args.tenants_command == "drop":
        _confirm(args, f"dropping {len(args.names)} tenant schema(s) deletes their data")

        printed = [0]  # the last count printed

        def on_batch(done: int, total: int) -> None:
            # A line each time another 250 tenants are done (batches vary in size with their
            # schemas' objects) and at the end, for big drops only.
            if total > BATCH_SHOWN and (done == total or done // 250 > printed[0] // 250):
                printed[0] = done
                print(f"dropped {done}/{total} tenant(s)", file=sys.stderr, flush=True)

        return _dropped(api.drop_tenants(settings, args.names, on_batch), args)
    if args.tenants_command == "move":
        with sigterm_interrupts():
            moved = api.move_tenant(settings, args.name, args.to)
        if args.json:
            print(json.dumps(moved.to_json(), indent=2))
        else:
            finished = f", finishing run {moved.finished_run}'s move" if moved.finished_run else ""
            print(
                f"moved tenant {moved.tenant} from database {moved.from_database} to "
                f"{moved.to_database}: {moved.tables} table(s), {moved.rows} row(s) copied and "
                f"verified, at revision {moved.revision or 'base'}, in {moved.duration_s:.1f}s "
                f"(run {moved.run_id}{finished})"
            )
        return ExitCode.OK
    if args.tenants_command == "register":
        registered = api.register_tenants(settings, args.names, args.schema, args.database)
        if args.json:
            print(json.dumps({"registered": [t.to_json() for t in registered]}, indent=2))
        else:
            shown = [t.name if t.name == t.schema else f"{t.name} (schema {t.schema})"
                     for t in registered]  # fmt: skip
            print(
                f"registered {len(registered)} tenant(s){_in_database(args.database)}: "
                f"{some_names(shown, BATCH_SHOWN)}"
            )
            print(
                "next: record their revision with `tenantmig stamp --tenant NAME REVISION` "
                "(or --all-tenants), then check them with `tenantmig drift`"
            )
        return ExitCode.OK
    with live_progress(Progress(quiet=args.json)) as progress:
        created, result = api.create_tenants(
            settings,
            args.names,
            migrate=not args.no_migrate,
            options=api.RunOptions(jobs=args.jobs),
            observer=progress,
            database=args.database,
        )
    if args.json:
        print(
            json.dumps(
                {
                    "created": [t.name for t in created],
                    "database": args.database,
                    "run": result.to_json() if result else None,
                },
                indent=2,
            )
        )
    else:
        print(
            f"registered {len(created)} tenant(s){_in_database(args.database)}: "
            f"{some_names([t.name for t in created], BATCH_SHOWN)}"
        )
        if result is None and not args.no_migrate:
            print(
                "the tenant chain has no revisions yet: nothing to migrate (write the first "
                "with `tenantmig revision --tenant-chain -m MESSAGE`, then `tenantmig upgrade "
                "--all-tenants`)"
            )
        if result is not None:
            rerun = [*_connection_flags(args), "upgrade"]
            for tenant in created:
                rerun += ["--tenant", tenant.name]
            print(render.run_summary(result, finish_command(result, rerun)))
    if result is not None and not result.succeeded:
        return ExitCode.TENANTS_FAILED
    return ExitCode.OK


def _in_database(database: str) -> str:
    """Where new tenants' schemas are, when it is not the control database."""
    return "" if database == CONTROL else f" (schemas in database {database})"


def _dropped(result: DropResult, args: argparse.Namespace) -> int:
    from tenantmig.cli import drop_render

    """Print what a drop did in each database; when it stopped part way, why (stderr) and the
    exit code of the cause (a failed batch: 3, an interrupt: 130)."""
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(drop_render.drop_text(result))
    if result.succeeded:
        return ExitCode.OK
    print(f"tenantmig: error: {drop_render.drop_stopped(result)}", file=sys.stderr)
    return ExitCode.INTERRUPTED if result.interrupted else ExitCode.TENANTS_FAILED


def cmd_runs(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if getattr(args, "runs_command", None) == "prune":
        return _prune_runs(args, settings)
    if getattr(args, "runs_command", None) == "resume":
        return _resume(args, settings)
    if getattr(args, "runs_command", None) == "cancel":
        record = api.cancel_run(settings, args.run_id)
        if args.json:
            print(json.dumps(record.to_json(), indent=2))
        else:
            print(f"run {record.id} ({record.command} {record.target}): {record.reason}")
        return ExitCode.OK
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


def _resume(args: argparse.Namespace, settings: Settings) -> int:
    """`runs resume RUN_ID`: the rollout goes on, shown, reported and ended like the run it
    is (events, telemetry, metrics and notifications as for upgrade)."""
    monitoring = _Monitoring.asked(args, settings)
    record, _ = api.run_details(settings, args.run_id)
    options = api.RunOptions(jobs=args.jobs)

    def run(observer: api.RunObserver) -> RunResult:
        return api.resume_run(settings, args.run_id, options, observer)

    selection = api.Selection.all_tenants()
    return monitoring.run(args, record.command, record.target, selection, run)


def _prune_runs(args: argparse.Namespace, settings: Settings) -> int:
    from tenantmig.run.retention import Retention, parse_age

    retention = Retention(
        parse_age(args.older_than) if args.older_than is not None else None, args.keep_last
    )

    def confirm(plan: PrunePlan) -> bool:
        _confirm(args, plan.question())  # raises when not confirmed
        return True

    def progress(done: int, planned: int) -> None:
        if not args.json:
            print(f"removed {done}/{planned} run(s)", file=sys.stderr)

    result = api.prune_runs(
        settings, retention, dry_run=args.dry_run, confirm=confirm, on_batch=progress
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return ExitCode.OK
    verb = "would remove" if result.dry_run else "removed"
    print(
        f"{verb} {len(result.removed_runs)} run(s) {retention.describe()} and "
        f"{result.removed_rows} tenant row(s)"
        + (f" in {result.duration_s:.1f}s" if not result.dry_run else "")
    )
    for reason, count in result.kept.items():
        print(f"kept {count} run(s): {reason}")
    return ExitCode.OK


def cmd_demo(args: argparse.Namespace) -> int:
    if args.config or os.environ.get(ENV_CONFIG) or Path("alembic.ini").is_file():
        settings = _settings(args)
    else:
        # Outside a project: the demo project shipped in the package, its database here.
        settings = _settings(args, api.demo_config()).with_options(home=Path(".tenantmig"))
        print(
            "tenantmig: no alembic.ini here; running the demo project shipped with tenantmig "
            "(`tenantmig init --demo` writes it out)",
            file=sys.stderr,
        )

    def prepared(created: list[str], shared: RunResult) -> None:
        # Printed (and flushed) before the tenants' upgrade starts: its progress goes to
        # stderr, and must come after the line that introduces it, on a terminal or not.
        if created:
            print(f"registered demo tenants: {', '.join(created)}")
        print(render.run_summary(shared))
        print("$ tenantmig upgrade --all-tenants", flush=True)

    with live_progress(Progress()) as progress:
        result = api.demo(settings, progress, prepared)
    rerun = [*_connection_flags(args), "upgrade", "--all-tenants"]
    print(render.run_summary(result.tenants, finish_command(result.tenants, rerun)))
    print()
    print(render.status_text(result.status))
    return ExitCode.OK if result.tenants.succeeded else ExitCode.TENANTS_FAILED


def cmd_stamp(args: argparse.Namespace) -> int:
    settings = _settings(args)
    result = api.stamp(settings, _selection(args), args.revision, wait_s=args.wait)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(render.run_summary(result))
        print("check the stamped schemas against their migrations: tenantmig drift")
    return ExitCode.OK if result.succeeded else ExitCode.TENANTS_FAILED


def cmd_db(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.db_command == "url":
        print(api.database_url(settings, show_password=args.show_password))
        return ExitCode.OK
    if args.db_command == "psql":
        extra = list(args.psql_args)
        return api.run_psql(settings, extra[1:] if extra[:1] == ["--"] else extra)

    def ready(url: str) -> None:
        print(url, flush=True)
        print("tenantmig: serving the embedded database; Ctrl-C stops it", file=sys.stderr)

    # SIGTERM (a service manager, `kill`) ends the wait like Ctrl-C: the server is stopped.
    with sigterm_interrupts():
        api.serve(settings, ready)
    return ExitCode.OK


def cmd_grant(args: argparse.Namespace) -> int:
    result = api.grant(_settings(args), args.role, apply=not args.sql)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    elif args.sql:
        print("\n".join(f"{s};" for s in result.statements))
    else:
        print(f"prepared the database for role {result.role} ({len(result.statements)} statements)")
        print(
            f"the role runs tenantmig with scratch_schema = {result.scratch_schema} "
            "(alembic.ini, --scratch-schema or TENANTMIG_SCRATCH_SCHEMA)"
        )
    return ExitCode.OK


def cmd_init(args: argparse.Namespace) -> int:
    result = api.init_project(
        args.directory,
        demo=args.demo,
        registry=not args.no_registry,
        shared_schema=args.shared_schema,
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return ExitCode.OK
    print(f"wrote a tenantmig project in {result.directory}:")
    for path in result.files:
        print(f"  {path}")
    where = "" if result.directory == Path.cwd().resolve() else f"cd {args.directory} && "
    if result.registry:
        print(
            "next: set TENANTMIG_DATABASE_URL (or sqlalchemy.url in alembic.ini; without one an "
            "embedded PostgreSQL is used), then\n"
            f"  {where}tenantmig upgrade --shared && tenantmig tenants create acme"
        )
    else:
        print(
            "next: set tenants_from in alembic.ini to your application's tenant list, then\n"
            f"  {where}tenantmig revision --tenant-chain -m 'first tenant tables'"
        )
    return ExitCode.OK


def cmd_restore(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _confirm(
        args,
        f"restoring tenant {args.tenant} from {args.file} replaces its schema: rows written "
        "since the dump are lost",
    )
    with sigterm_interrupts():
        result = api.restore(settings, args.tenant, args.file)
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
    from tenantmig.cli.drift_render import drift_html, drift_text

    report = api.drift(_settings(args), args.tenant, args.database, args.label)
    if args.html is not None:
        try:
            args.html.write_text(drift_html(report), encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write {args.html}: {exc.strerror}") from exc
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
    "plan": cmd_plan,
    "lint": cmd_lint,
    "status": cmd_status,
    "current": cmd_current,
    "history": cmd_history,
    "revision": cmd_revision,
    "tenants": cmd_tenants,
    "runs": cmd_runs,
    "drift": cmd_drift,
    "demo": cmd_demo,
    "restore": cmd_restore,
    "stamp": cmd_stamp,
    "init": cmd_init,
    "grant": cmd_grant,
    "db": cmd_db,
    "check": cmd_check,
    "heads": cmd_heads,
    "branches": cmd_branches,
    "show": cmd_show,
    "merge": cmd_merge,
}
