"""``tenantmig stamp``: record a revision in schemas without running their migrations.

For schemas built by hand or by another tool (adopting a database): the version row is written
exactly as ``alembic stamp`` writes it (Alembic's own stamp step runs, creating the version table
if missing), one transaction per schema, under that schema's advisory lock so that no migration
of it runs at the same time. An all-tenants stamp also holds the run lock. Each stamp is a run in
the ledger, with every schema's outcome.

Nothing about the schema's tables is checked: ``tenantmig drift`` afterwards says whether the
schemas really match the stamped revision.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from tenantmig.chains.context import VERSION_TABLE, context_options
from tenantmig.chains.scripts import ChainScripts
from tenantmig.errors import SchemaMissing
from tenantmig.run.ledger import Ledger
from tenantmig.run.locks import RunLocks, acquire_run_lock
from tenantmig.run.plan import Selection
from tenantmig.run.preflight import Needs, check_can_migrate, check_privileges
from tenantmig.run.results import RunResult, TenantOutcome, TenantStatus
from tenantmig.schema.registry import Tenant, by_database, select_tenants
from tenantmig.schema.versions import read_versions
from tenantmig.server.config import Chain, Settings
from tenantmig.server.database import Database, DatabaseSet
from tenantmig.server.directory import CONTROL
from tenantmig.server.errorcodes import first_line
from tenantmig.server.identifiers import qualified

OnStamped = Callable[[TenantOutcome], None]


def stamp_schema(conn: Connection, scripts: ChainScripts, schema: str, revision: str) -> None:
    """Alembic's stamp of ``schema`` to ``revision``, in the caller's transaction (search_path
    and lock already set up by the caller)."""
    script = scripts.script

    def step(current: Any, _context: MigrationContext) -> Any:
        return script._stamp_revs(revision, current)  # what `alembic stamp` runs

    environment = EnvironmentContext(scripts.config, script, fn=step, destination_rev=revision)
    with environment:
        environment.configure(connection=conn, **context_options(schema))
        environment.run_migrations()


def stamp(
    settings: Settings,
    database: Database,
    selection: Selection,
    revision: str,
    wait_s: float = 0.0,
    on_stamped: OnStamped | None = None,
) -> RunResult:
    """Stamp the selected schemas (the shared schema, or tenants) at ``revision``."""
    chain: Chain = "shared" if selection.shared else "tenant"
    scripts = ChainScripts(settings, chain)
    target = scripts.resolve_target(revision)  # UnknownRevision before anything changes
    target_text = target or "base"
    result = RunResult(run_id=None, command="stamp", target=revision)
    started = time.monotonic()
    locks: RunLocks | None = None
    with database.engine.connect() as conn:
        with conn.begin():
            check_can_migrate(conn, settings.shared_schema, shared_chain=selection.shared)
        with conn.begin():
            check_privileges(conn, settings, Needs(ledger=True, read_registry=True))
            if selection.shared:
                schemas = [Tenant(settings.shared_schema, settings.shared_schema, "active")]
            else:
                schemas = selection.narrow(
                    select_tenants(conn, settings.tenant_source, selection.tenants)
                )
            here = [t.schema for t in schemas if t.database == CONTROL]
            check_privileges(conn, settings, Needs(schemas=here))
        groups = by_database(schemas)
        databases = DatabaseSet(settings, database)
        try:
            # Before anything is recorded: the role may stamp in every reachable database (an
            # unreachable one fails its tenants below, as a run does).
            for name, group in groups.items():
                if name != CONTROL and databases.unreachable(name) is None:
                    with databases.get(name).engine.connect() as member, member.begin():
                        needs = Needs(schemas=[t.schema for t in group])
                        check_privileges(member, settings, needs)
            if selection.every_tenant:
                locks = RunLocks(database.engine)
                acquire_run_lock(locks, conn, settings.shared_schema, wait_s)
            ledger = Ledger(conn, settings.shared_schema)
            ledger.ensure()
            run_id = ledger.start_run("stamp", selection.scope, target_text, {"chain": chain})
            if locks is not None:
                locks.mark_alive(run_id)
            result.run_id = run_id
            for name, group in groups.items():
                for outcome in _stamp_in(databases, name, group, settings, scripts, target_text):
                    result.outcomes.append(outcome)
                    ledger.record(run_id, [outcome])
                    if on_stamped is not None:
                        on_stamped(outcome)
            ledger.finish_run(run_id, result.outcome, result.totals())
        finally:
            databases.close()
            if locks is not None:
                locks.release()
    result.duration_s = time.monotonic() - started
    if selection.shared and result.outcomes:
        result.shared = result.outcomes.pop()
    return result


def _stamp_in(
    databases: DatabaseSet,
    name: str,
    tenants: list[Tenant],
    settings: Settings,
    scripts: ChainScripts,
    target: str,
) -> Iterator[TenantOutcome]:
    """Stamp the tenants living in database ``name``, each in its own transaction there."""
    why = databases.unreachable(name)
    if why is not None:
        for tenant in tenants:
            yield TenantOutcome(
                tenant.name, tenant.schema, TenantStatus.FAILED, None, None, 0, 0.0,
                f"database {name} unreachable: {why}", database=name,
            )  # fmt: skip
        return
    database = databases.get(name)
    with database.engine.connect() as conn:
        before = read_versions(conn, [t.schema for t in tenants])
        for tenant in tenants:
            outcome = _stamp_one(
                conn, database, settings, scripts, tenant, target, before[tenant.schema].revision
            )
            yield replace(outcome, database=name)


def _stamp_one(
    conn: Connection,
    database: Database,
    settings: Settings,
    scripts: ChainScripts,
    tenant: Tenant,
    target: str,
    before: str | None,
) -> TenantOutcome:
    began = time.monotonic()
    try:
        with conn.begin():
            # The schema's lock (bounded by lock_timeout), then its search_path; verify=True
            # raises SchemaMissing when there is no such schema.
            database.flavour.prepare_migration(conn, tenant.schema, settings.timeouts)
            stamp_schema(conn, scripts, tenant.schema, target)
            rows = conn.execute(
                sa.text(f"SELECT version_num FROM {qualified(tenant.schema, VERSION_TABLE)}")
            ).scalars()
            after = ",".join(sorted(rows)) or None
    except SchemaMissing as exc:
        return TenantOutcome(
            tenant.name, tenant.schema, TenantStatus.MISSING, before, before, 1,
            time.monotonic() - began, str(exc),
        )  # fmt: skip
    except DBAPIError as exc:
        return TenantOutcome(
            tenant.name, tenant.schema, TenantStatus.FAILED, before, before, 1,
            time.monotonic() - began, first_line(exc),
        )  # fmt: skip
    status = TenantStatus.SKIPPED if after == before else TenantStatus.OK
    return TenantOutcome(
        tenant.name, tenant.schema, status, before, after, 1, time.monotonic() - began
    )
