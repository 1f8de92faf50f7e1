"""The coordinator of one upgrade or downgrade: the shared schema, then the tenants.

For the tenants it takes the run lock (every-tenant runs), selects and triages them, records the
run in the ledger, compiles the steps worth replaying, fans the rest out to workers, records each
outcome, and finishes the run; it returns the RunResult instead of filling one passed in.

Only the coordinator writes the ledger, on its own connection, so a tenant's migration
transaction never touches a shared table and a failure's record survives its rollback.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from tenantmig.chains.context import VERSION_TABLE
from tenantmig.chains.scripts import ChainScripts, is_relative
from tenantmig.errors import ConfigError, DatabaseUnavailable, RunAborted
from tenantmig.run.ledger import Ledger
from tenantmig.run.locks import Clearance, RunLocks, RunLockWatch, acquire_run_lock
from tenantmig.run.observers import GuardedObserver, RunObserver, RunStart
from tenantmig.run.plan import RunPlan, default_jobs
from tenantmig.run.preflight import Needs, check_can_migrate, check_privileges, missing_privileges
from tenantmig.run.results import (
    RunOutcome,
    RunResult,
    RunScope,
    Target,
    TenantJob,
    TenantOutcome,
    TenantStatus,
)
from tenantmig.run.triage import triage
from tenantmig.schema.moves import read_moves
from tenantmig.schema.owned import OWNED
from tenantmig.schema.placement import read_placements
from tenantmig.schema.registry import (
    Tenant,
    by_database,
    list_tenants,
    select_tenants,
)
from tenantmig.schema.versions import SchemaVersion, read_versions, read_versions_parallel
from tenantmig.server.config import Settings
from tenantmig.server.database import Database, DatabaseSet
from tenantmig.server.directory import CONTROL
from tenantmig.server.errorcodes import connection_lost, first_line, lock_table_setting
from tenantmig.server.flavour import ServerFlavour
from tenantmig.server.identifiers import quote_ident

if TYPE_CHECKING:
    from tenantmig.run.executor import WorkerTarget
    from tenantmig.run.ledger import RolloutState
    from tenantmig.run.observers import Execution
    from tenantmig.run.replay import CompiledStep, NotReplayable, StepKey
    from tenantmig.run.rollout import Resumed
    from tenantmig.run.segments import SegmentedStep
    from tenantmig.run.waves import Rollout

# Start-up: the worker pool, the per-tenant migrator and replay (with what they import) are
# imported where a run first needs them, so that a run with nothing to do does not load them.

# Ledger writes are batched: one round trip per this many outcomes or seconds, not per tenant.
_FLUSH_OUTCOMES = 200
_FLUSH_SECONDS = 1.0


def migrate(plan: RunPlan, database: Database, observer: RunObserver | None = None) -> RunResult:
    """Run ``plan`` against ``database``: the shared schema first, then the tenants."""
    return _Coordinator(plan, database, observer).run()


class _Coordinator:
    def __init__(self, plan: RunPlan, database: Database, observer: RunObserver | None) -> None:
        self.plan = plan
        self.database = database
        # Whatever it raises is logged and switches it off: an observer never changes a run.
        self.observer = GuardedObserver(observer, logging.getLogger("tenantmig.run"))
        self.shared_schema = plan.settings.shared_schema
        self.result = RunResult(run_id=None, command=plan.direction, target=plan.target)
        self.migrating = False  # some schema may have committed: errors must not say otherwise
        # The control database and the directory's others, opened as the run needs them.
        self.databases = DatabaseSet(plan.settings, database)
        self._locks: RunLocks | None = None
        self.resumed: Resumed | None = None  # a resumed rollout's tenants (run/rollout.py)

    def run(self) -> RunResult:
        try:
            return self._run()
        finally:
            self.databases.close()

    def _run(self) -> RunResult:
        started = time.monotonic()
        plan = self.plan
        try:
            # The coordinator's connection: its checks, the tenants' selection and the ledger.
            with self.database.engine.connect() as conn:
                # Checked before anything changes: a role that cannot write, or a run that
                # cannot back up, must not start.
                check_can_migrate(conn, self.shared_schema, shared_chain=plan.selection.shared)
                conn.rollback()  # read only; the connection is idle again for what follows
                # Backups, the run log (with its rotating file handler) and the drop finder are
                # imported where a run uses them: a run with nothing to do starts without them.
                backup_dir = None
                if plan.backup_dir is not None and plan.tenant_scripts is not None:
                    from tenantmig.backup.dump import plan_backups

                    timeouts = plan.policy.timeouts
                    backup_dir = plan_backups(plan.backup_dir, self.database, timeouts).directory
                if plan.shared_scripts is not None:
                    self.result.shared = self._migrate_shared(plan.shared_scripts)
                    if self.result.shared.status is TenantStatus.FAILED:
                        return self._finished(started)
                    self._reference_tables()
                if plan.tenant_scripts is not None:
                    self._migrate_tenants(conn, plan.tenant_scripts, backup_dir)
        except DBAPIError as exc:
            if not self.migrating:
                raise  # nothing was changed: the CLI reports a plain database error
            where = f"run {self.result.run_id}" if self.result.run_id else "the run"
            raise RunAborted(
                f"database error after {where} had started migrating: {first_line(exc)}. "
                "Schemas it reached may have committed; each is at its old or its new revision. "
                "See `tenantmig status`"
                + (f" and `tenantmig runs show {self.result.run_id}`" if self.result.run_id else "")
                + ", then run the same command again to finish"
            ) from exc
        return self._finished(started)

    def _finished(self, started: float) -> RunResult:
        self.result.duration_s = time.monotonic() - started
        return self.result

    # -- the shared schema ------------------------------------------------------------------
    def _migrate_shared(self, scripts: ChainScripts) -> TenantOutcome:
        from tenantmig.logs import configure_run_log
        from tenantmig.run.migrator import SchemaMigrator

        schema = self.shared_schema
        if schema != "public":
            with self.database.engine.begin() as conn:
                conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        migrator = SchemaMigrator(
            self.plan.policy,
            scripts,
            self.database.worker_url,
            self.database.flavour,
            logger=configure_run_log(self.plan.log_file, None),
        )
        self.migrating = True
        try:
            outcome = migrator.migrate(TenantJob(name=schema, schema=schema))
        finally:
            migrator.close()
        if outcome.status is TenantStatus.SKIPPED:
            return outcome  # nothing done: not recorded, as for tenants (see _run_tenants)
        with self.database.engine.connect() as conn:
            ledger = Ledger(conn, schema)
            ledger.ensure()
            run_id = ledger.start_run(self.plan.direction, RunScope.SHARED, self.plan.target, {})
            ledger.finish_run(
                run_id,
                RunOutcome.FAILED
                if outcome.status is TenantStatus.FAILED
                else RunOutcome.SUCCEEDED,
                {"from": outcome.from_revision, "to": outcome.to_revision, "error": outcome.error},
            )
        return outcome

    def _reference_tables(self) -> None:
        """On Citus, with citus_reference_tables set: the shared tables it names become
        reference tables once they exist (after every shared upgrade, so new ones follow)."""
        wanted = self.plan.settings.reference_tables
        if wanted == ():
            return
        with self.database.engine.begin() as conn:
            made = self.database.flavour.make_reference_tables(
                conn,
                self.shared_schema,
                wanted,
                (VERSION_TABLE, *OWNED),
                self.plan.policy.timeouts,
            )
        if made:
            self.result.notices.append(f"made reference tables: {', '.join(made)}")

    # -- the tenants --------------------------------------------------------------------------
    def _migrate_tenants(
        self, conn: Connection, scripts: ChainScripts, backup_dir: Path | None
    ) -> None:
        try:
            if self.plan.selection.every_tenant:
                acquire_run_lock(self._run_locks(), conn, self.shared_schema, self.plan.wait_s)
            self._run_tenants(conn, scripts, backup_dir)
        finally:
            if self._locks is not None:
                self._locks.release()

    def _run_locks(self) -> RunLocks:
        """The run's lock connection, opened when first needed: an every-tenant run takes the
        run lock on it before anything else; a run of named tenants needs it only once it is
        recorded (its live-run marker), so one with nothing to do never opens it."""
        if self._locks is None:
            self._locks = RunLocks(self.database.engine)
        return self._locks

    def _can_compile(self, conn: Connection) -> bool:
        """Steps are compiled in scratch schemas: the configured ones, or short-lived ones this
        role creates. A role that may do neither migrates every tenant through Alembic."""
        with conn.begin():
            lacking = missing_privileges(conn, self.plan.settings, Needs(scratch=True))
        if lacking:
            self.result.notices.append(
                f"replay is off for this run, every tenant ran through Alembic: missing "
                f"{lacking[0].what}; to compile each step once instead: {lacking[0].remedy}"
            )
        return not lacking

    def _select(
        self, conn: Connection, ledger: Ledger
    ) -> tuple[list[Tenant], list[Tenant], dict[str, Target]]:
        """(every selected tenant, the ones this run takes, targets recorded for them).

        With --only-failed: the tenants the last run of this kind did not finish, each to the
        target that run recorded for it, so finishing a run never moves a tenant further than
        that run meant to. Without it, a relative target (-1) is refused while the last run of
        this kind that had one is unfinished: running it again would move the tenants that did
        finish a second step.
        """
        plan, selection = self.plan, self.plan.selection
        if self.resumed is not None:
            return self.resumed.tenants, self.resumed.tenants, self.resumed.targets
        with conn.begin():
            selected = selection.narrow(
                select_tenants(conn, plan.settings.tenant_source, selection.tenants)
            )
        if not plan.only_failed and not plan.policy.relative:
            return selected, selected, {}  # an absolute target: repeating it is always safe
        # Only now read the last run's rows: one row per tenant it selected.
        unfinished = ledger.unfinished_in_last_run(selection.same_kind_scopes, plan.direction)
        if not plan.only_failed:
            left = (
                sum(1 for t in selected if unfinished.wants(t.name))
                if unfinished is not None and is_relative(unfinished.target)
                else 0
            )
            if unfinished is not None and left:
                raise ConfigError(
                    f"run {unfinished.run_id} ({plan.direction} {unfinished.target}) did not "
                    f"finish for {left} tenant(s); running {plan.target} again would move the "
                    "tenants it did finish once more. Finish it first with --only-failed (the "
                    "same command with --only-failed), or give an absolute revision"
                )
            return selected, selected, {}
        if unfinished is None:
            self.result.notices.append("no earlier run to take failed tenants from; nothing to do")
            return selected, [], {}
        taken = [t for t in selected if unfinished.wants(t.name)]
        if not taken:
            self.result.notices.append(
                f"run {unfinished.run_id} ({plan.direction} {unfinished.target}) left no "
                "tenant unfinished; nothing to do"
            )
            return selected, [], {}
        if unfinished.target != plan.target:
            raise ConfigError(
                f"--only-failed finishes run {unfinished.run_id}, which was `{plan.direction} "
                f"{unfinished.target}` and left {len(taken)} tenant(s) unfinished; give the "
                f"same target ({unfinished.target}) to finish it"
            )
        if unfinished.abandoned:
            self.result.notices.append(
                f"run {unfinished.run_id} was abandoned (its runner was killed): taking "
                f"the {len(taken)} tenant(s) it did not finish"
            )
        return selected, taken, dict(unfinished.targets)

    def _confirm_drops(self, scripts: ChainScripts, jobs: Sequence[TenantJob]) -> None:
        """A downgrade that drops data asks first, with each tenant's target resolved (``-1``
        reaches base only for tenants at the first revision) and before the run is recorded,
        so a refusal leaves every schema and the ledger as they were."""
        confirm = self.plan.confirm_drops
        if confirm is None or self.plan.direction != "downgrade" or not jobs:
            return
        from tenantmig.run.drops import find_drops

        drops = find_drops(self.plan.settings, scripts, jobs)
        if drops and not confirm(drops):
            raise ConfigError(
                f"{drops.question(self.plan.target)}: not confirmed; nothing was changed"
            )

    def _run_tenants(
        self, conn: Connection, scripts: ChainScripts, backup_dir: Path | None
    ) -> None:
        plan, result = self.plan, self.result
        with conn.begin():
            check_privileges(conn, plan.settings, Needs(ledger=True, read_registry=True))
        ledger = Ledger(conn, self.shared_schema)
        ledger.ensure()
        state = None
        if plan.resume_run is not None:
            from tenantmig.run.rollout import resumable, resume_selection

            state = resumable(ledger, plan.resume_run, plan.direction)
            with conn.begin():
                now = list_tenants(conn, plan.settings.tenant_source)
            self.resumed = resume_selection(state, now)
        elif plan.selection.every_tenant:
            from tenantmig.run.rollout import refuse_beside_open_rollout

            refuse_beside_open_rollout(ledger, plan.direction)
        selected, tenants, recorded = self._select(conn, ledger)
        wave_of: dict[str, int] = {}
        rollout = plan.rollout
        if rollout is not None:
            from tenantmig.run.waves import assign

            waves, wave_of = assign(rollout.waves, selected, rollout.seed)
            rollout = replace(rollout, waves=waves)
        elif state is not None and self.resumed is not None:
            from tenantmig.run.waves import Rollout

            rollout = Rollout.from_options(state.options)
            wave_of = self.resumed.waves
        places = _Places(self.databases, tenants, conn)
        places.check_privileges(plan.settings)
        versions = places.read_versions()
        # Raises (usage, nothing changed yet) when a relative target leads past either end.
        sorted_out = triage(
            places.reachable, versions, scripts, plan.direction, plan.target, recorded=recorded
        )
        jobs = sorted_out.jobs
        settled = [*places.unreachable_outcomes(), *sorted_out.settled]
        if self.resumed is not None:
            settled += self.resumed.gone
        self._confirm_drops(scripts, jobs)  # asked about the tenants in name order
        if plan.order == "size" and len(jobs) > 1:
            # Largest first (longest-processing-time-first): a large tenant started last would
            # finish last, alone, while the other workers sit idle.
            sizes = places.read_sizes(jobs)
            jobs = sorted(jobs, key=lambda job: -sizes.get((job.database, job.schema), 0))
        nothing = not jobs and all(o.status is TenantStatus.SKIPPED for o in settled)
        if nothing and state is None:
            # Nothing to do and nothing wrong: every tenant is at its target. Such a run is
            # not recorded: a deploy step that runs `upgrade --all-tenants` on every release
            # would otherwise add a row per tenant per deploy that says nothing, and bury the
            # runs that did change something (the ones `--only-failed` and `runs` are for).
            result.outcomes.extend(settled)
            if settled or not result.notices:  # --only-failed has said why it took no tenant
                result.notices.append(
                    f"nothing to do: {_already_at(settled, plan.target)}; no run was recorded"
                )
            self._add_notices(conn, selected, False)
            return

        locks = self._run_locks()  # before the run is recorded: it is alive from its first row
        if state is not None:
            run_id = state.run_id  # a resumed rollout goes on as the same run
            ledger.reopen(run_id)
        else:
            run_id = ledger.start_run(
                plan.direction,
                plan.selection.scope,
                plan.target,
                {
                    "jobs": plan.jobs,
                    "fail_fast": plan.stop.fail_fast,
                    "max_failures": plan.stop.max_failures,
                    "only_failed": plan.only_failed,
                    "tenants": len(tenants),
                    "backup_dir": str(backup_dir) if backup_dir else None,
                    "databases": places.names,
                    **(rollout.to_options() if rollout is not None else {}),
                },
            )
        result.run_id = run_id
        locks.mark_alive(run_id)
        watch = (
            RunLockWatch(locks, self.shared_schema, run_id, plan.policy.reconnect_timeout_s)
            if plan.selection.every_tenant
            else None
        )
        # Every tenant is in the ledger from the start, with its target: the jobs as not run
        # (yet), so even a run killed now can be finished exactly, and its record says where
        # each tenant it did not reach is (from and to: the revision read).
        pending = [job.not_run() for job in jobs]
        ledger.record(run_id, [*settled, *pending], sorted_out.targets, wave_of or None)
        result.outcomes.extend(settled)

        caps = self._caps(jobs) if jobs else {}
        workers = self._choose_workers(conn, len(jobs), caps) if jobs else 0
        conn.commit()
        # Workers are forked from a server that imports what they need once; started now, it
        # does so while the steps below are compiled. Stopped when the run ends.
        pooled = workers > 1 and len(jobs) > 1
        if pooled:
            from tenantmig.run import worker_server

            worker_server.start()
        try:
            targets = self._targets(scripts, jobs, caps, backup_dir)
        except BaseException:
            if pooled:
                worker_server.stop()
            raise
        self.observer.started(
            RunStart(
                run_id,
                plan.direction,
                plan.target,
                len(jobs),
                workers,
                tuple(sorted({job.database for job in jobs})),
                len(selected),
                tuple(settled),
                # What each wave holds of the tenants this process will migrate (a resumed
                # rollout: what is left of each).
                _wave_sizes(rollout, {job.name: wave_of.get(job.name, 0) for job in jobs}),
            )
        )
        writer = _OutcomeWriter(ledger, run_id, self.observer)
        interrupted = False
        try:
            if jobs:
                from tenantmig.logs import configure_run_log
                from tenantmig.run.executor import WorkerSpec, run_jobs

                spec = WorkerSpec(
                    policy=plan.policy,
                    settings=plan.settings,
                    targets=targets,
                    log_file=plan.log_file,
                    run_id=run_id,
                    hooks=self.observer.tenant_hooks(),
                )
                self.migrating = True
                log = configure_run_log(plan.log_file, run_id)
                gate = _NotedGate(watch, ledger, log) if watch is not None else None

                def batch(some: Sequence[TenantJob]) -> tuple[list[TenantOutcome], bool]:
                    return run_jobs(
                        spec,
                        some,
                        min(workers, len(some)),
                        stop=plan.stop,
                        on_outcome=writer,
                        gate=gate,
                        notices=result.notices,
                        watcher=self.observer,
                        per_process=plan.connections_per_worker,
                    )

                if rollout is None:
                    outcomes, interrupted = batch(jobs)
                else:
                    outcomes, interrupted = self._waves(
                        rollout, wave_of, state, jobs, batch, writer, watch
                    )
                result.outcomes.extend(outcomes)
            writer.buffer.extend(self._follow_moves(conn))
        finally:
            if pooled:
                worker_server.stop()  # every worker has ended: the pool joined them
            result.interrupted = interrupted
            if watch is not None:
                result.stopped = watch.reason
                result.notices.extend(watch.notices)
            reconnect = plan.policy.reconnect_timeout_s
            _durably(conn, reconnect, writer.flush)
            reason = result.stopped or result.halted or result.paused

            def finish() -> None:
                # A resumed rollout's totals: all its tenants, as recorded, not only today's.
                totals = ledger.recorded_totals(run_id) if state is not None else result.totals()
                ledger.finish_run(run_id, result.outcome, totals, reason=reason)

            _durably(conn, reconnect, finish)
        self._add_notices(conn, selected, interrupted)
        if plan.selection.every_tenant and plan.settings.ledger_keep_days is not None:
            self._prune_ledger(conn, plan.settings.ledger_keep_days)

    def _waves(
        self,
        rollout: Rollout,
        wave_of: Mapping[str, int],
        state: RolloutState | None,
        jobs: Sequence[TenantJob],
        batch: Callable[[Sequence[TenantJob]], tuple[list[TenantOutcome], bool]],
        writer: _OutcomeWriter,
        watch: RunLockWatch | None,
    ) -> tuple[list[TenantOutcome], bool]:
        """Run ``jobs`` wave by wave (run/rollout.py); later waves' tenants that do not start
        are recorded with why, as they are decided."""
        from tenantmig.run.rollout import WaveRunner

        later: list[TenantOutcome] = []

        def record(outcome: TenantOutcome) -> None:
            # A later wave's tenant that does not start: in the ledger (written with the
            # rest at the end), not shown as progress: it never started.
            later.append(outcome)
            writer.buffer.append(outcome)

        taken = {job.name for job in jobs}
        done_before = (
            {r.tenant: r.status for r in state.rows if r.status.is_done and r.tenant not in taken}
            if state is not None
            else {}
        )
        runner = WaveRunner(
            rollout,
            wave_of,
            self.result,
            self.observer,
            record,
            self._drifted,
            failed_before=self.resumed.failed_before if self.resumed is not None else frozenset(),
            done_before=done_before,
        )
        outcomes, interrupted = runner.run(
            jobs, batch, lambda: watch is not None and watch.reason is not None
        )
        return [*outcomes, *later], interrupted

    def _drifted(self, names: Sequence[str]) -> list[str]:
        """Of the tenants ``names`` (migrated by this run), those whose structure differs from
        what their migrations make: a soak's check between waves."""
        from tenantmig.schema.drift import check

        wanted = set(names)
        drifted: list[str] = []
        with self.database.engine.connect() as conn, conn.begin():
            tenants = [t for t in list_tenants(conn, self.plan.settings.tenant_source)
                       if t.name in wanted]  # fmt: skip
        for name, group in by_database(tenants).items():
            member = self.databases.get(name)
            with member.engine.connect() as conn:
                report = check(
                    self.plan.settings,
                    conn,
                    member.flavour,
                    group,
                    include_shared=False,
                    database_name=name,
                )
            drifted += [d.name for d in report.drifted if d.drifted]
        return sorted(drifted)

    def _prune_ledger(self, conn: Connection, days: float) -> None:
        """ledger_keep_days: after an all-tenants run, its runs older than that go (see
        run.retention for what always stays). Best effort: the run's result stands."""
        from tenantmig.run.retention import Retention, plan_prune, prune

        try:
            with conn.begin():
                planned = plan_prune(conn, self.shared_schema, Retention(older_than_days=days))
            if not planned.runs:
                return
            done = prune(
                conn,
                self.shared_schema,
                planned,
                lock_timeout_s=self.plan.policy.timeouts.lock_timeout_s,
            )
        except DBAPIError as exc:
            self.result.notices.append(f"the ledger was not pruned: {first_line(exc)}")
            return
        self.result.notices.append(
            f"pruned {len(done.removed_runs)} run(s) older than {days:g} day(s) and "
            f"{done.removed_rows} tenant row(s) from the ledger (ledger_keep_days)"
        )

    def _follow_moves(self, conn: Connection) -> list[TenantOutcome]:
        """The tenants found missing that the directory now places in another database.

        ``tenants move`` holds a tenant's lock while it copies the schema, switches the
        directory and drops the old schema, so a worker that waited for that lock finds no
        schema (and one that read versions after the move found none either). Those tenants
        were moved during the run, not lost: their outcome says so, with the revision they have
        where they live now, and stays unfinished, so the run's finishing command
        (--only-failed, which reads the directory afresh) migrates them there. Returns the new
        outcomes (also put in the result), for the ledger. Best effort: a database that cannot
        be read leaves "missing", which the finishing command takes as well.
        """
        missing = {o.name: o for o in self.result.outcomes if o.status is TenantStatus.MISSING}
        if not missing or not self.plan.settings.tenant_source.is_registry:
            return []
        try:
            with conn.begin():
                placed = read_placements(conn, self.shared_schema)
                # A move between its fence and its switch: the source schema is renamed, the
                # directory not switched yet; the copy in the target is the tenant.
                moving = read_moves(conn, self.shared_schema, list(missing))
        except DBAPIError:
            return []
        now_in: dict[str, list[TenantOutcome]] = {}
        for name, outcome in missing.items():
            database = placed.get(name, CONTROL)
            if name in moving and database == outcome.database:
                database = moving[name].target
            if database != outcome.database:
                now_in.setdefault(database, []).append(outcome)
        moved: dict[str, TenantOutcome] = {}
        for database, outcomes in now_in.items():
            versions, unread = self._versions_in(database, [o.schema for o in outcomes])
            for o in outcomes:
                found = versions.get(o.schema)
                revision = found.revision if found is not None else None
                moved[o.name] = replace(
                    o,
                    status=TenantStatus.MOVED,
                    from_revision=revision,
                    to_revision=revision,
                    error=f"moved to {database} during this run, not migrated{unread}",
                    database=database,
                )
        self.result.outcomes = [moved.get(o.name, o) for o in self.result.outcomes]
        return list(moved.values())

    def _versions_in(
        self, database: str, schemas: list[str]
    ) -> tuple[dict[str, SchemaVersion], str]:
        """(versions of ``schemas`` in ``database``, "" or why they could not be read)."""
        try:
            with self.databases.get(database).engine.connect() as conn:
                return read_versions(conn, schemas), ""
        except (DBAPIError, DatabaseUnavailable) as exc:
            return {}, f" (its revision there could not be read: {first_line(exc)})"

    def _targets(
        self,
        scripts: ChainScripts,
        jobs: Sequence[TenantJob],
        caps: Mapping[str, int],
        backup_dir: Path | None,
    ) -> tuple[WorkerTarget, ...]:
        """Each database with jobs: its URL, flavour, cap, backup plan, and the steps compiled
        once per server version (compiled on the first database of that version)."""
        if not jobs:
            return ()
        from tenantmig.backup.dump import plan_backups
        from tenantmig.run.executor import WorkerTarget

        by_database: dict[str, list[TenantJob]] = {}
        for job in jobs:
            by_database.setdefault(job.database, []).append(job)
        by_version: dict[tuple[int, str], list[TenantJob]] = {}
        for name, its_jobs in by_database.items():
            database = self.databases.get(name)
            key = (database.server_version_num, database.flavour.name)
            by_version.setdefault(key, []).extend(its_jobs)
        compiled: dict[tuple[int, str], tuple[CompiledStep | SegmentedStep, ...]] = {}
        replay = self.plan.replay and len(jobs) > 1
        if self.plan.replay and len(jobs) == 1:
            # Compiling a step runs it twice in scratch schemas (to prove the SQL does not
            # depend on the schema's name): for one tenant that costs more than it saves.
            self.result.notices.append(
                f"tenant {jobs[0].name} ran through Alembic, not replayed: a step is compiled "
                "for replay when two or more tenants take it (compiling runs it twice)"
            )
        for key, its_jobs in by_version.items():
            first = next(n for n in by_database if self._version_key(n) == key)
            database = self.databases.get(first)
            compiled[key] = ()
            if replay:
                with database.engine.connect() as conn:
                    if self._can_compile(conn):
                        compiled[key] = self._compile_steps(
                            conn, database.flavour, scripts, its_jobs
                        )
        targets = []
        for name in by_database:
            database = self.databases.get(name)
            targets.append(
                WorkerTarget(
                    database=name,
                    url=database.worker_url,
                    flavour=database.flavour,
                    compiled=compiled[self._version_key(name)],
                    backup=(
                        plan_backups(backup_dir, database, self.plan.policy.timeouts)
                        if backup_dir is not None
                        else None
                    ),
                    cap=caps.get(name, 1 << 30),
                )
            )
        return tuple(targets)

    def _version_key(self, name: str) -> tuple[int, str]:
        database = self.databases.get(name)
        return (database.server_version_num, database.flavour.name)

    def _caps(self, jobs: Sequence[TenantJob]) -> dict[str, int]:
        """Per database: --jobs-per-database, else what its server can take (its free
        connections less a margin for the application)."""
        caps: dict[str, int] = {}
        for name in dict.fromkeys(job.database for job in jobs):
            if self.plan.jobs_per_database is not None:
                caps[name] = self.plan.jobs_per_database
                continue
            with self.databases.get(name).engine.connect() as conn:
                caps[name] = max(1, _free_connections(conn) - 2)
        return caps

    def _add_notices(self, conn: Connection, seen: Sequence[Tenant], interrupted: bool) -> None:
        result = self.result
        # A resumed rollout took its own tenants, not the tenant list: nothing to compare.
        if self.plan.selection.every_tenant and seen and self.resumed is None:
            with conn.begin():
                now = self.plan.selection.narrow(
                    list_tenants(conn, self.plan.settings.tenant_source), strict=False
                )
            known = {t.name for t in seen}
            newly_registered = sum(1 for t in now if t.name not in known)
            if newly_registered:
                result.notices.append(
                    f"{newly_registered} tenant(s) were registered during this run and were not "
                    "migrated; run again to include them"
                )
        lost = sorted({o.database for o in result.outcomes if o.lost_connection})
        if lost and set(lost) >= {o.database for o in result.outcomes}:
            result.notices.append(
                "stopped starting tenants: the database stayed unreachable; every tenant is at "
                "its old or its new revision. When the server is back, finish the run with the "
                "same command and --only-failed"
            )
        elif lost:
            result.notices.append(
                f"database(s) {', '.join(lost)} stayed unreachable: their tenants not finished "
                "are recorded as failed, the other databases' tenants went on; every tenant is "
                "at its old or its new revision. When it is back, finish the run with the same "
                "command and --only-failed"
            )
        if interrupted:
            result.notices.append(
                f"run {result.run_id} was interrupted; in-flight tenants committed or rolled "
                "back. Finish the rest with the same command and --only-failed"
            )
        elif result.stopped is not None:
            result.notices.append(
                f"run {result.run_id} stopped starting tenants: {result.stopped}. The tenants "
                "in flight then finished (each committed or rolled back); those not started "
                "are recorded as not run"
            )

    def _choose_workers(self, conn: Connection, pending: int, caps: Mapping[str, int]) -> int:
        """Worker count: requested or the CPU default, capped by pending work and by what the
        databases can take together. Each worker holds one connection to the database it is
        migrating in; leave a margin so the application keeps connecting."""
        wanted = self.plan.jobs if self.plan.jobs is not None else default_jobs()
        allowed = sum(caps.values()) if caps else max(1, _free_connections(conn) - 2)
        if wanted > allowed:
            if self.plan.jobs_per_database is None and len(caps) == 1:
                (name,) = caps
                self.result.notices.append(
                    f"--jobs {wanted} reduced to {allowed}: the server"
                    + ("" if name == CONTROL else f" of database {name}")
                    + f" has {allowed + 2} free connections"
                )
            elif self.plan.jobs is not None:
                self.result.notices.append(
                    f"--jobs {wanted} reduced to {allowed}: the per-database caps add up to that"
                )
            wanted = allowed
        return max(1, min(wanted, pending))

    def _compile_steps(
        self,
        conn: Connection,
        flavour: ServerFlavour,
        scripts: ChainScripts,
        jobs: Sequence[TenantJob],
    ) -> tuple[CompiledStep | SegmentedStep, ...]:
        """Compile each distinct step the jobs need, once, on the coordinator's connection:
        tenants at the same revision with the same resolved target share one (also for a
        relative target such as -1). A step that runs a revision that cannot be replayed is
        split around it (``run.segments``); a revision found not replayable is split around in
        every later step that runs it, without compiling it again. Each step that runs wholly
        or partly through Alembic is reported once, with why.
        """
        from tenantmig.logs import configure_run_log
        from tenantmig.run.replay import CompiledStep, StepKey, compile_or_explain
        from tenantmig.run.segments import SegmentedStep, ThroughAlembic, plan_step
        from tenantmig.run.walk import walk_step

        waiting: dict[StepKey, int] = {}
        for job in jobs:
            if (
                job.target is not None
                and job.seen_version_table is not None
                and scripts.knows(job.seen_revision)
            ):
                key = StepKey(job.seen_revision, job.target.revision, job.seen_version_table)
                waiting[key] = waiting.get(key, 0) + 1
        compiled: list[CompiledStep | SegmentedStep] = []
        ruled_out: dict[str, NotReplayable] = {}  # revision -> the verdict that named it
        log = configure_run_log(self.plan.log_file, self.result.run_id)

        def compile_step(key: StepKey, fingerprint_start: bool) -> CompiledStep | NotReplayable:
            return compile_or_explain(
                conn,
                scripts,
                key,
                self.plan.direction,
                self.plan.policy.timeouts,
                flavour,
                self.plan.settings.scratch_schemas,
                fingerprint_start=fingerprint_start,
            )

        walkable = self.plan.settings.scratch_schemas is None
        for key in sorted(waiting, key=lambda k: (k.from_revision or "", k.has_version_table)):
            # One walk of the step's revisions settles most steps; what it cannot settle is
            # planned compile by compile, which says why in its own words.
            walked = (
                walk_step(
                    conn,
                    scripts,
                    key,
                    self.plan.direction,
                    self.plan.policy.timeouts,
                    flavour,
                    ruled_out,
                )
                if walkable
                else None
            )
            if isinstance(walked, SegmentedStep):
                for part in walked.parts:
                    if isinstance(part, ThroughAlembic):
                        for why in part.whys:
                            if why.revision is not None:
                                ruled_out.setdefault(why.revision, why)
            if walkable and walked is None:
                log.info("step %s: compiled segment by segment (one walk did not settle it)",
                         key.describe())  # fmt: skip
            found = walked or plan_step(scripts, key, self.plan.direction, compile_step, ruled_out)
            if isinstance(found, CompiledStep):
                compiled.append(found)
                continue
            if isinstance(found, SegmentedStep):
                compiled.append(found)  # partly replayed: the notice says how
            message = found.describe(waiting[key])
            self.result.notices.append(message)
            log.info("%s", message)
        return tuple(compiled)


def _already_at(settled: Sequence[TenantOutcome], target: str) -> str:
    if not settled:
        return "no tenants"
    if len(settled) == 1:
        return f"tenant {settled[0].name} is already at {target}"
    return f"all {len(settled)} selected tenants are already at {target}"


class _NotedGate:
    """The run lock's watch as the worker pool asks it. Its first STOP goes to the run log and
    the ledger at once (best effort), not only when the run ends: a run whose in-flight tenants
    take long, or whose runner is killed meanwhile, already says why it stopped."""

    def __init__(self, watch: RunLockWatch, ledger: Ledger, log: logging.Logger) -> None:
        self.watch = watch
        self.ledger = ledger
        self.log = log
        self.noted = False

    def clearance(self) -> Clearance:
        clearance = self.watch.clearance()
        if clearance is Clearance.STOP and not self.noted:
            self.noted = True
            reason = self.watch.reason or "the run lock was lost"
            self.log.error("starting no more tenants: %s", reason)
            with contextlib.suppress(DBAPIError):
                self.ledger.note_reason(self.watch.run_id, reason)
        return clearance


class _OutcomeWriter:
    """Records outcomes in the ledger as they arrive, in batches, and passes them on.

    While the server is away (a restart) outcomes are kept and written later; the workers
    reconnect on their own.
    """

    def __init__(self, ledger: Ledger, run_id: int, observer: RunObserver) -> None:
        self.ledger = ledger
        self.run_id = run_id
        self.observer = observer
        self.buffer: list[TenantOutcome] = []
        self.last_flush = time.monotonic()

    def __call__(self, outcome: TenantOutcome, execution: Execution) -> None:
        self.buffer.append(outcome)
        due = time.monotonic() - self.last_flush > _FLUSH_SECONDS
        if len(self.buffer) >= _FLUSH_OUTCOMES or due:
            self.last_flush = time.monotonic()
            try:
                self.flush()
            except DBAPIError as exc:
                # Kept and written later: the server is away, or its lock table is full (a
                # tenant's migration filled it; it frees as transactions end).
                if not (connection_lost(exc) or lock_table_setting(exc)):
                    raise
        self.observer.outcome(outcome, execution)

    def flush(self) -> None:
        self.ledger.record(self.run_id, self.buffer)
        self.buffer.clear()


def _wave_sizes(rollout: Rollout | None, wave_of: Mapping[str, int]) -> tuple[str, ...]:
    """A rollout's waves with their sizes, for the progress line: ``label:canary (2)``."""
    if rollout is None:
        return ()
    sizes = [0] * len(rollout.waves)
    for index in wave_of.values():
        if 0 <= index < len(sizes):
            sizes[index] += 1
    return tuple(f"{wave} ({n})" for wave, n in zip(rollout.waves, sizes, strict=True))


def _durably(conn: Connection, timeout_s: float, write: Callable[[], None]) -> None:
    """Run a ledger write, reconnecting (with a pause) while the server is away or its lock
    table is full, up to ``timeout_s``. The coordinator's connection reconnects on its next use
    once rolled back."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            write()
            return
        except DBAPIError as exc:
            passing = connection_lost(exc) or lock_table_setting(exc) is not None
            if not passing or time.monotonic() > deadline:
                raise
            with contextlib.suppress(DBAPIError):
                conn.rollback()
            time.sleep(1.0)


def _free_connections(conn: Connection) -> int:
    row = conn.execute(
        sa.text(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
            " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        )
    ).scalar()
    return int(row or 0)


class _Places:
    """A run's tenants by the database they live in, with those databases opened."""

    def __init__(
        self, databases: DatabaseSet, tenants: Sequence[Tenant], control_conn: Connection
    ) -> None:
        self.databases = databases
        # The coordinator's own connection (idle between its transactions) serves the control
        # database's reads: one connection fewer to set up for every run.
        self.control_conn = control_conn
        self.groups = by_database(tenants)
        self.down = {
            name: why for name in self.groups if (why := databases.unreachable(name)) is not None
        }

    @property
    def names(self) -> list[str]:
        return list(self.groups)

    @property
    def reachable(self) -> list[Tenant]:
        return [t for name, group in self.groups.items() if name not in self.down for t in group]

    def unreachable_outcomes(self) -> list[TenantOutcome]:
        """The tenants of databases that cannot be reached: failed, nothing started there."""
        return [
            TenantOutcome(
                t.name,
                t.schema,
                TenantStatus.FAILED,
                error=f"database {name} unreachable: {why}",
                database=name,
            )
            for name, why in self.down.items()
            for t in self.groups[name]
        ]

    def check_privileges(self, settings: Settings) -> None:
        """Every reachable database: the role may migrate its tenants' schemas."""
        for name, group in self.groups.items():
            if name in self.down:
                continue
            with self._connect(name) as conn, conn.begin():
                check_privileges(conn, settings, Needs(schemas=[t.schema for t in group]))

    @contextmanager
    def _connect(self, name: str) -> Iterator[Connection]:
        if name == CONTROL:
            yield self.control_conn
            return
        with self.databases.get(name).engine.connect() as conn:
            yield conn

    def read_versions(self) -> dict[str, SchemaVersion]:
        """Every reachable tenant's revision, read in bulk in its own database, the databases
        at the same time (each on a connection of its own; the servers do the work)."""
        reachable = [(n, g) for n, g in self.groups.items() if n not in self.down]

        def read(name: str, group: list[Tenant]) -> dict[str, SchemaVersion]:
            # A large group is read over a second connection too (see read_versions_parallel).
            with self._connect(name) as conn:
                schemas = [t.schema for t in group]
                return read_versions_parallel(conn.engine, schemas, conn=conn)

        versions: dict[str, SchemaVersion] = {}
        if len(reachable) <= 1:
            for item in reachable:
                versions.update(read(*item))
            return versions
        with ThreadPoolExecutor(max_workers=len(reachable)) as pool:
            for found in pool.map(lambda item: read(*item), reachable):
                versions.update(found)
        return versions

    def read_sizes(self, jobs: Sequence[TenantJob]) -> dict[tuple[str, str], int]:
        """(database, schema) -> the schema's estimated size, from the catalog of each
        database the jobs are in (one query per 2,000 schemas)."""
        from tenantmig.schema.sizes import schema_sizes

        sizes: dict[tuple[str, str], int] = {}
        by_db: dict[str, list[str]] = {}
        for job in jobs:
            by_db.setdefault(job.database, []).append(job.schema)
        for name, schemas in by_db.items():
            with self._connect(name) as conn:
                for schema, size in schema_sizes(conn, schemas).items():
                    sizes[(name, schema)] = size
        return sizes
