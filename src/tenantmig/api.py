"""The public Python API. Every CLI verb is one function here returning a result object.

from tenantmig import api
from tenantmig.config import load_settings
result = api.upgrade(load_settings(), Selection.all_tenants())
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from tenantmig.backup import (
    BackupFailed,
    BackupPlan,
    LibpqConnection,
    check_writable_directory,
    find_pg_tools,
)
from tenantmig.catalog import invalid_indexes
from tenantmig.config import Chain, Settings
from tenantmig.database import Database, open_database
from tenantmig.drift import DriftReport
from tenantmig.drift import check as check_drift
from tenantmig.errors import ConfigError, RunLocked, SharedSchemaNotReady
from tenantmig.executor import Execution, StopPolicy, WorkerSpec, run_jobs
from tenantmig.identifiers import quote_ident, validate_tenant_name
from tenantmig.ledger import Ledger, RunRecord
from tenantmig.logs import configure_run_log
from tenantmig.preflight import check_can_migrate
from tenantmig.registry import (
    Tenant,
    drop_tenant,
    list_tenants,
    register_tenants,
    select_tenants,
)
from tenantmig.replay import CompiledStep, StepKey, compile_step
from tenantmig.restore import RestoreResult, restore_tenant
from tenantmig.results import Direction, RunResult, TenantJob, TenantOutcome, TenantStatus
from tenantmig.scripts import ChainScripts, RevisionInfo, is_relative
from tenantmig.session import (
    Timeouts,
    hold_live_run_lock,
    release_live_run_lock,
    release_run_lock,
    run_lock_holder,
    try_run_lock,
)
from tenantmig.tenant_run import Plan, SchemaMigrator, connection_lost
from tenantmig.versions import SchemaVersion, read_versions

DEMO_TENANTS = ("acme", "globex", "initech")
OutcomeCallback = Callable[[TenantOutcome, Execution], None]


# -- what to migrate ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Selection:
    """Which schemas a command acts on."""

    shared: bool = False
    tenants: tuple[str, ...] | None = None  # None with include_tenants: every tenant
    include_tenants: bool = False

    @classmethod
    def everything(cls) -> Selection:
        return cls(shared=True, include_tenants=True)

    @classmethod
    def shared_only(cls) -> Selection:
        return cls(shared=True)

    @classmethod
    def all_tenants(cls) -> Selection:
        return cls(include_tenants=True)

    @classmethod
    def named(cls, names: Sequence[str]) -> Selection:
        return cls(tenants=tuple(names), include_tenants=True)

    @property
    def scope(self) -> str:
        if self.include_tenants and self.tenants is None:
            return "all-tenants" if not self.shared else "shared+all-tenants"
        if self.include_tenants:
            return "tenants"
        return "shared"


@dataclass(frozen=True)
class RunOptions:
    """How a tenant run behaves; defaults are what a careful operator would pick."""

    jobs: int | None = None  # None: min(CPU-based default, what the server can take)
    fail_fast: bool = False
    max_failures: int | None = None
    only_failed: bool = False
    wait_s: float = 0.0  # how long to wait for another run's run lock
    log_file: Path | None = None  # default: <home>/logs/tenantmig.log
    on_outcome: OutcomeCallback | None = None
    on_start: Callable[[int, int], None] | None = None  # (tenants to migrate, workers)
    replay: bool = True  # replay compiled steps where provably equivalent (see replay.py)
    backup_dir: Path | None = None  # pg_dump each tenant here before migrating it


# -- upgrade / downgrade -------------------------------------------------------------------------
def upgrade(
    settings: Settings,
    selection: Selection,
    revision: str = "head",
    options: RunOptions | None = None,
) -> RunResult:
    return _migrate(settings, selection, "upgrade", revision, options or RunOptions())


def downgrade(
    settings: Settings, selection: Selection, revision: str, options: RunOptions | None = None
) -> RunResult:
    return _migrate(settings, selection, "downgrade", revision, options or RunOptions())


def _migrate(
    settings: Settings,
    selection: Selection,
    direction: Direction,
    revision: str,
    options: RunOptions,
) -> RunResult:
    if selection.shared and selection.include_tenants and revision not in ("head", "base"):
        raise ConfigError(
            f"revision {revision!r} names one chain; choose --shared or --tenant/--all-tenants"
        )
    if options.backup_dir is not None and not selection.include_tenants:
        raise ConfigError(
            "--backup dumps tenant schemas and this run migrates only the shared schema; "
            "back it up with pg_dump -Fc -n SCHEMA instead"
        )
    # Validate names and the revision before touching the database. The scripts are loaded
    # once here and used for the whole run.
    for name in selection.tenants or ():
        validate_tenant_name(name, shared_schema=settings.shared_schema)
    shared_scripts = ChainScripts(settings, "shared") if selection.shared else None
    tenant_scripts = ChainScripts(settings, "tenant") if selection.include_tenants else None
    for scripts in (shared_scripts, tenant_scripts):
        if scripts is not None and not is_relative(revision):
            scripts.resolve_target(revision)
    started = time.monotonic()
    result = RunResult(run_id=None, command=direction, target=revision)
    with open_database(settings) as database:
        # Checked before anything changes: a role that cannot write, or a run that cannot
        # back up, must not start.
        with database.engine.connect() as conn:
            check_can_migrate(conn, settings.shared_schema, shared_chain=selection.shared)
        backup = _backup_plan(settings, database, options) if tenant_scripts else None
        if shared_scripts is not None:
            result.shared = _migrate_shared(settings, database, shared_scripts, direction, revision)
            if result.shared.status is TenantStatus.FAILED:
                result.duration_s = time.monotonic() - started
                return result
        if tenant_scripts is not None:
            _migrate_tenants(
                settings,
                database,
                tenant_scripts,
                selection,
                direction,
                revision,
                options,
                result,
                backup,
            )
    result.duration_s = time.monotonic() - started
    return result


def _backup_plan(settings: Settings, database: Database, options: RunOptions) -> BackupPlan | None:
    if options.backup_dir is None:
        return None
    tools = find_pg_tools(database.server_major)
    return BackupPlan(
        directory=check_writable_directory(options.backup_dir),
        tools=tools,
        connection=LibpqConnection.from_url(database.url),
        lock_timeout_s=settings.lock_timeout_s,
    )


def _migrate_shared(
    settings: Settings,
    database: Database,
    scripts: ChainScripts,
    direction: Direction,
    revision: str,
) -> TenantOutcome:
    schema = settings.shared_schema
    if schema != "public":
        with database.engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
    migrator = SchemaMigrator(
        settings,
        database.url.render_as_string(hide_password=False),
        Plan(direction, revision),
        scripts=scripts,
        logger=configure_run_log(_log_file(settings, None), None),
    )
    try:
        outcome = migrator.migrate(TenantJob(name=schema, schema=schema))
    finally:
        migrator.close()
    with database.engine.connect() as conn:
        ledger = Ledger(conn, schema)
        ledger.ensure()
        run_id = ledger.start_run(direction, "shared", revision, {})
        ledger.finish_run(
            run_id,
            "succeeded" if outcome.status is not TenantStatus.FAILED else "failed",
            {"from": outcome.from_revision, "to": outcome.to_revision, "error": outcome.error},
        )
    return outcome


def _log_file(settings: Settings, options: RunOptions | None) -> Path:
    if options is not None and options.log_file is not None:
        return options.log_file
    return settings.home / "logs" / "tenantmig.log"


def _free_connections(conn: Connection) -> int:
    row = conn.execute(
        sa.text(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
            " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        )
    ).scalar()
    return int(row or 0)


def default_jobs() -> int:
    return max(2, os.cpu_count() or 2)


def _choose_workers(
    conn: Connection, requested: int | None, pending: int, notices: list[str]
) -> int:
    """Worker count: requested or the CPU default, capped by pending work and free connections.

    Each worker holds one connection; leave a margin so the application keeps connecting.
    """
    wanted = requested if requested is not None else default_jobs()
    free = _free_connections(conn)
    allowed = max(1, free - 2)
    if wanted > allowed:
        notices.append(
            f"--jobs {wanted} reduced to {allowed}: the server has {free} free connections"
        )
        wanted = allowed
    return max(1, min(wanted, pending))


def _migrate_tenants(
    settings: Settings,
    database: Database,
    scripts: ChainScripts,
    selection: Selection,
    direction: Direction,
    revision: str,
    options: RunOptions,
    result: RunResult,
    backup: BackupPlan | None,
) -> None:
    with database.engine.connect() as conn:
        lock_held = False
        if selection.tenants is None:
            lock_held = _acquire_run_lock(conn, settings.shared_schema, options.wait_s)
        try:
            _run_tenants(
                settings,
                database,
                conn,
                scripts,
                selection,
                direction,
                revision,
                options,
                result,
                backup,
            )
        finally:
            if lock_held:
                with contextlib.suppress(DBAPIError):  # released with the connection if lost
                    release_run_lock(conn, settings.shared_schema)
                    conn.commit()


def _durably(conn: Connection, timeout_s: float, write: Callable[[], None]) -> None:
    """Run a ledger write, reconnecting (with a pause) while the server is away, up to
    ``timeout_s``. The coordinator's connection reconnects on its next use once rolled back."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            write()
            return
        except DBAPIError as exc:
            if not (exc.connection_invalidated or connection_lost(exc)):
                raise
            if time.monotonic() > deadline:
                raise
            with contextlib.suppress(DBAPIError):
                conn.rollback()
            time.sleep(1.0)


def _acquire_run_lock(conn: Connection, shared_schema: str, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while True:
        got = try_run_lock(conn, shared_schema)
        conn.commit()
        if got:
            return True
        if time.monotonic() >= deadline:
            holder = run_lock_holder(conn, shared_schema)
            conn.commit()
            raise RunLocked(
                f"another all-tenants run holds the run lock: {holder}; wait for it, or pass "
                "--wait SECONDS to queue behind it"
            )
        time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))


def _run_tenants(
    settings: Settings,
    database: Database,
    conn: Connection,
    scripts: ChainScripts,
    selection: Selection,
    direction: Direction,
    revision: str,
    options: RunOptions,
    result: RunResult,
    backup: BackupPlan | None,
) -> None:
    with conn.begin():
        tenants = select_tenants(
            conn,
            settings.shared_schema,
            None if selection.tenants is None else list(selection.tenants),
        )
    ledger = Ledger(conn, settings.shared_schema)
    ledger.ensure()
    if options.only_failed:
        scopes = (
            ("all-tenants", "shared+all-tenants") if selection.tenants is None else ("tenants",)
        )
        unfinished = ledger.unfinished_in_last_run(scopes, direction)
        if unfinished is None:
            result.notices.append("no earlier run to take failed tenants from; nothing to do")
            tenants = []
        else:
            tenants = [t for t in tenants if unfinished.wants(t.name)]
            if unfinished.abandoned:
                result.notices.append(
                    f"run {unfinished.run_id} was abandoned (its runner was killed): taking "
                    f"the {len(tenants)} tenant(s) it did not finish"
                )
    versions = read_versions(conn, [t.schema for t in tenants])
    precomputed, jobs = _triage(tenants, versions, scripts, direction, revision)

    run_id = ledger.start_run(
        direction,
        selection.scope,
        revision,
        {
            "jobs": options.jobs,
            "fail_fast": options.fail_fast,
            "max_failures": options.max_failures,
            "only_failed": options.only_failed,
            "tenants": len(tenants),
            "backup_dir": str(backup.directory) if backup else None,
        },
    )
    result.run_id = run_id
    hold_live_run_lock(conn, run_id)
    conn.commit()
    ledger.record(run_id, precomputed)
    result.outcomes.extend(precomputed)

    workers = _choose_workers(conn, options.jobs, len(jobs), result.notices) if jobs else 0
    conn.commit()
    compiled = (
        _compile_steps(settings, conn, scripts, jobs, direction, revision)
        if options.replay and len(jobs) > 1
        else ()
    )
    if options.on_start is not None:
        options.on_start(len(jobs), workers)
    buffer: list[TenantOutcome] = []
    last_flush = time.monotonic()

    def collect(outcome: TenantOutcome, execution: Execution) -> None:
        nonlocal last_flush
        buffer.append(outcome)
        # Batch ledger writes: one round trip per second (or 200 tenants), not per tenant.
        if len(buffer) >= 200 or time.monotonic() - last_flush > 1.0:
            last_flush = time.monotonic()
            try:
                ledger.record(run_id, buffer)
                buffer.clear()
            except DBAPIError as exc:
                if not (exc.connection_invalidated or connection_lost(exc)):
                    raise
                # The server is away (restart): keep the outcomes and write them later; the
                # workers reconnect on their own.
        if options.on_outcome is not None:
            options.on_outcome(outcome, execution)

    interrupted = False
    try:
        if jobs:
            spec = WorkerSpec(
                settings=settings,
                url=database.url.render_as_string(hide_password=False),
                plan=Plan(direction, revision),
                log_file=_log_file(settings, options),
                run_id=run_id,
                compiled=compiled,
                backup=backup,
            )
            policy = StopPolicy(options.fail_fast, options.max_failures)
            outcomes, interrupted = run_jobs(spec, jobs, workers, policy=policy, on_outcome=collect)
            result.outcomes.extend(outcomes)
    finally:
        result.interrupted = interrupted
        outcome = "interrupted" if interrupted else ("failed" if result.failed else "succeeded")
        reconnect = settings.reconnect_timeout_s
        _durably(conn, reconnect, lambda: ledger.record(run_id, buffer))
        _durably(conn, reconnect, lambda: ledger.finish_run(run_id, outcome, result.totals()))
        with contextlib.suppress(DBAPIError):  # gone anyway if the connection was lost
            release_live_run_lock(conn, run_id)
            conn.commit()
    newly_registered = (
        _count_registered_since(conn, settings.shared_schema, tenants)
        if selection.tenants is None
        else 0
    )
    if newly_registered:
        result.notices.append(
            f"{newly_registered} tenant(s) were registered during this run and were not "
            "migrated; run again to include them"
        )
    if any(o.lost_connection for o in result.outcomes):
        result.notices.append(
            "stopped starting tenants: the database stayed unreachable; every tenant is at its "
            "old or its new revision. Run the same command again when the server is back"
        )
    if interrupted:
        result.notices.append(
            f"run {run_id} was interrupted; in-flight tenants committed or rolled back. Run the "
            "same command again to finish the rest"
        )


def _count_registered_since(conn: Connection, shared_schema: str, seen: list[Tenant]) -> int:
    with conn.begin():
        now = list_tenants(conn, shared_schema)
    known = {t.name for t in seen}
    return sum(1 for t in now if t.name not in known) if seen else 0


def _triage(
    tenants: Sequence[Tenant],
    versions: dict[str, SchemaVersion],
    scripts: ChainScripts,
    direction: Direction,
    revision: str,
) -> tuple[list[TenantOutcome], list[TenantJob]]:
    """Settle what the bulk version read already answers; the rest become jobs.

    Missing schemas and tenants already at an absolute target never reach a worker, so a run
    with nothing to do costs a few queries however many tenants there are. Anything unusual
    (unknown or diverged revisions, relative targets) goes to a worker, which decides under the
    tenant's lock.
    """
    relative = is_relative(revision)
    target = None if relative else scripts.resolve_target(revision)
    done: list[TenantOutcome] = []
    jobs: list[TenantJob] = []
    for tenant in tenants:
        version = versions.get(tenant.schema)
        if version is None or not version.schema_exists:
            done.append(
                TenantOutcome(
                    tenant.name,
                    tenant.schema,
                    TenantStatus.MISSING,
                    error=f"schema {tenant.schema!r} does not exist",
                )
            )
            continue
        current = version.revision
        if not relative and not version.diverged and scripts.knows(current):
            here, there = scripts.position(current), scripts.position(target)
            nothing = there <= here if direction == "upgrade" else there >= here
            if nothing:
                done.append(
                    TenantOutcome(
                        tenant.name, tenant.schema, TenantStatus.SKIPPED, current, current
                    )
                )
                continue
        jobs.append(TenantJob(tenant.name, tenant.schema, current, version.has_version_table))
    return done, jobs


def _compile_steps(
    settings: Settings,
    conn: Connection,
    scripts: ChainScripts,
    jobs: Sequence[TenantJob],
    direction: Direction,
    revision: str,
) -> tuple[CompiledStep, ...]:
    """Compile each distinct step the jobs need, once, on the coordinator's connection."""
    if is_relative(revision):
        return ()  # relative targets differ per tenant: no shared step
    target = scripts.resolve_target(revision)
    keys = {
        StepKey(job.seen_revision, target, bool(job.seen_version_table))
        for job in jobs
        if job.seen_version_table is not None and scripts.knows(job.seen_revision)
    }
    timeouts = Timeouts(settings.lock_timeout_s, settings.statement_timeout_s)
    steps = [
        compile_step(conn, scripts, key, direction, timeouts)
        for key in sorted(keys, key=lambda k: (k.from_revision or "", k.has_version_table))
    ]
    return tuple(step for step in steps if step is not None)


# -- tenants -----------------------------------------------------------------------------------
def create_tenants(
    settings: Settings,
    names: Sequence[str],
    *,
    migrate: bool = True,
    options: RunOptions | None = None,
) -> tuple[list[Tenant], RunResult | None]:
    """Register tenants and create their schemas (all or nothing), then migrate them to head."""
    for name in names:
        validate_tenant_name(name, shared_schema=settings.shared_schema)
    with open_database(settings) as database:
        with database.engine.begin() as conn:
            created = register_tenants(conn, settings.shared_schema, names)
    if not migrate:
        return created, None
    result = upgrade(settings, Selection.named([t.name for t in created]), "head", options)
    return created, result


def tenants(settings: Settings) -> list[Tenant]:
    with open_database(settings, notice=False) as database, database.engine.begin() as conn:
        return list_tenants(conn, settings.shared_schema)


def drop_tenants(settings: Settings, names: Sequence[str]) -> None:
    """Drop tenant schemas and their registry rows, all in one transaction."""
    for name in names:
        validate_tenant_name(name, shared_schema=settings.shared_schema)
    with open_database(settings) as database, database.engine.begin() as conn:
        select_tenants(conn, settings.shared_schema, names)  # validates every name first
        for name in names:
            drop_tenant(conn, settings.shared_schema, name)


# -- status / current / history -------------------------------------------------------------------
@dataclass(frozen=True)
class TenantState:
    name: str
    schema: str
    revision: str | None
    head: str | None
    # current, behind, uninitialized, missing_schema, unknown_revision, diverged, or
    # needs_attention (INVALID indexes left by a failed CREATE INDEX CONCURRENTLY)
    state: str
    last_status: str | None = None
    last_error: str | None = None
    last_run_id: int | None = None
    invalid_indexes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "schema": self.schema,
            "revision": self.revision,
            "head": self.head,
            "state": self.state,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "last_run_id": self.last_run_id,
            "invalid_indexes": list(self.invalid_indexes),
        }


@dataclass(frozen=True)
class StatusReport:
    shared_schema: str
    shared_revision: str | None
    shared_head: str | None
    shared_state: str
    tenants: list[TenantState] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "shared": {
                "schema": self.shared_schema,
                "revision": self.shared_revision,
                "head": self.shared_head,
                "state": self.shared_state,
            },
            "tenants": [t.to_json() for t in self.tenants],
        }


def classify(version: SchemaVersion | None, scripts: ChainScripts) -> str:
    if version is None or not version.schema_exists:
        return "missing_schema"
    if version.diverged:
        return "diverged"
    if not version.has_version_table or version.revision is None:
        return "uninitialized" if scripts.head is not None else "current"
    if not scripts.knows(version.revision):
        return "unknown_revision"
    return "current" if version.revision == scripts.head else "behind"


def status(settings: Settings, names: Sequence[str] | None = None) -> StatusReport:
    shared_scripts = ChainScripts(settings, "shared")
    tenant_scripts = ChainScripts(settings, "tenant")
    with open_database(settings, notice=False) as database, database.engine.connect() as conn:
        shared_version = read_versions(conn, [settings.shared_schema])[settings.shared_schema]
        try:
            with conn.begin():
                tenant_rows = select_tenants(conn, settings.shared_schema, names)
        except SharedSchemaNotReady:
            if names:
                raise
            tenant_rows = []
        versions = read_versions(conn, [t.schema for t in tenant_rows])
        with conn.begin():
            invalid = invalid_indexes(conn, [t.schema for t in tenant_rows])
        last = Ledger(conn, settings.shared_schema).last_outcomes([t.name for t in tenant_rows])
    states = []
    for tenant in tenant_rows:
        version = versions.get(tenant.schema)
        previous = last.get(tenant.name)
        failed = previous is not None and previous.status not in ("ok", "skipped")
        broken = tuple(invalid.get(tenant.schema, ()))
        states.append(
            TenantState(
                name=tenant.name,
                schema=tenant.schema,
                revision=version.revision if version else None,
                head=tenant_scripts.head,
                state="needs_attention" if broken else classify(version, tenant_scripts),
                last_status=previous.status if previous else None,
                last_error=previous.error if previous and failed else None,
                last_run_id=previous.run_id if previous else None,
                invalid_indexes=broken,
            )
        )
    return StatusReport(
        shared_schema=settings.shared_schema,
        shared_revision=shared_version.revision,
        shared_head=shared_scripts.head,
        shared_state=classify(shared_version, shared_scripts),
        tenants=states,
    )


def history(settings: Settings, chain: Chain) -> list[RevisionInfo]:
    """Revisions of one chain, newest first (no database needed)."""
    return ChainScripts(settings, chain).revisions()


# -- drift ---------------------------------------------------------------------------------------
def drift(settings: Settings, names: Sequence[str] | None = None) -> DriftReport:
    """Version and structural drift of the shared schema and the (named) tenants."""
    for name in names or ():
        validate_tenant_name(name, shared_schema=settings.shared_schema)
    with open_database(settings, notice=False) as database, database.engine.connect() as conn:
        with conn.begin():
            selected = select_tenants(conn, settings.shared_schema, names)
        return check_drift(settings, conn, selected, include_shared=not names)


# -- runs ----------------------------------------------------------------------------------------
def restore(settings: Settings, tenant: str, archive: Path) -> RestoreResult:
    """Replace one tenant's schema with a ``--backup`` dump, atomically; recorded in the ledger."""
    validate_tenant_name(tenant, shared_schema=settings.shared_schema)
    with open_database(settings) as database:
        try:
            result = restore_tenant(settings, database, tenant, archive)
        except BackupFailed as exc:
            _record_restore(database, settings, tenant, archive, None, str(exc))
            raise
        run_id = _record_restore(database, settings, tenant, archive, result, None)
    return replace(result, run_id=run_id)


def _record_restore(
    database: Database,
    settings: Settings,
    tenant: str,
    archive: Path,
    result: RestoreResult | None,
    error: str | None,
) -> int:
    with database.engine.connect() as conn:
        ledger = Ledger(conn, settings.shared_schema)
        ledger.ensure()
        run_id = ledger.start_run("restore", "tenants", str(archive), {"file": str(archive)})
        outcome = TenantOutcome(
            name=tenant,
            schema=result.schema if result else tenant,
            status=TenantStatus.OK if result else TenantStatus.FAILED,
            from_revision=result.from_revision if result else None,
            to_revision=result.to_revision if result else None,
            attempts=1,
            duration_s=result.duration_s if result else 0.0,
            error=error,
            backup=str(archive),
        )
        ledger.record(run_id, [outcome])
        ledger.finish_run(run_id, "succeeded" if result else "failed", {outcome.status.value: 1})
    return run_id


def runs(settings: Settings, limit: int = 20) -> list[RunRecord]:
    with open_database(settings, notice=False) as database, database.engine.connect() as conn:
        return Ledger(conn, settings.shared_schema).runs_list(limit)


def run_details(settings: Settings, run_id: int) -> tuple[RunRecord, list[TenantOutcome]]:
    with open_database(settings, notice=False) as database, database.engine.connect() as conn:
        found = Ledger(conn, settings.shared_schema).run(run_id)
    if found is None:
        raise ConfigError(f"no run {run_id} in the ledger; see `tenantmig runs`")
    return found


# -- demo ----------------------------------------------------------------------------------------
@dataclass
class DemoResult:
    created: list[str]
    shared: RunResult
    tenants: RunResult
    status: StatusReport


def demo(settings: Settings, options: RunOptions | None = None) -> DemoResult:
    """Shared upgrade, register the demo tenants (if new), then upgrade --all-tenants."""
    shared = upgrade(settings, Selection.shared_only(), "head")
    existing = {t.name for t in tenants(settings)}
    new = [n for n in DEMO_TENANTS if n not in existing]
    if new:
        create_tenants(settings, new, migrate=False)
    result = upgrade(settings, Selection.all_tenants(), "head", options)
    return DemoResult(created=new, shared=shared, tenants=result, status=status(settings))
