"""`upgrade --sql` / `downgrade --sql`: the SQL each selected schema would run, for review.

Each schema gets Alembic's offline SQL (``chains.offline``) from its own current revision, read
from the database, to the target resolved for it (relative targets from its revision, as a run
would), or over an explicit ``FROM:TO`` range as in Alembic. Schemas already at the target get
no SQL. Nothing is changed and nothing is recorded in the ledger.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tenantmig.chains.offline import offline_sql, one_transaction
from tenantmig.chains.scripts import ChainScripts, Direction
from tenantmig.run.plan import Selection
from tenantmig.schema.registry import Tenant, by_database, select_tenants
from tenantmig.schema.versions import SchemaVersion, read_versions
from tenantmig.server.config import Chain, Settings
from tenantmig.server.database import Database, DatabaseSet


@dataclass(frozen=True)
class SchemaSQL:
    name: str
    schema: str
    chain: Chain
    from_revision: str | None
    to_revision: str | None
    sql: str | None  # None: already at the target

    @property
    def one_transaction(self) -> bool:
        """It may run as one transaction (no autocommit block in its range)."""
        return self.sql is None or one_transaction(self.sql)

    @property
    def apply_with(self) -> str:
        """The psql command that applies it, ``FILE`` for its path."""
        return "psql -1 -f FILE" if self.one_transaction else "psql -v ON_ERROR_STOP=1 -f FILE"

    def header(self, direction: Direction) -> str:
        what = "shared schema" if self.chain == "shared" else "tenant"
        span = f"{self.from_revision or 'base'} -> {self.to_revision or 'base'}"
        return f"-- {what} {self.name} (schema {self.schema}): {direction} {span}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "schema": self.schema,
            "chain": self.chain,
            "from": self.from_revision or "base",
            "to": self.to_revision or "base",
            "sql": self.sql,
            "one_transaction": self.one_transaction,
        }


def schema_sql(
    settings: Settings,
    database: Database,
    selection: Selection,
    direction: Direction,
    target: str,
) -> list[SchemaSQL]:
    """The SQL for every selected schema: the shared schema first, then the tenants."""
    explicit_start, _, end = target.rpartition(":") if ":" in target else (None, "", target)
    found: list[SchemaSQL] = []
    for_citus = database.flavour.name == "citus"
    with database.engine.connect() as conn:
        chains: list[tuple[Chain, list[Tenant]]] = []
        if selection.shared:
            shared = settings.shared_schema
            chains.append(("shared", [Tenant(shared, shared, "active")]))
        if selection.include_tenants:
            with conn.begin():
                tenants = selection.narrow(
                    select_tenants(conn, settings.tenant_source, selection.tenants)
                )
            chains.append(("tenant", tenants))
        for chain, schemas in chains:
            scripts = ChainScripts(settings, chain)
            start = None if explicit_start is None else scripts.resolve_target(explicit_start)
            versions = _versions(settings, database, schemas)
            for tenant in schemas:
                current = start if explicit_start is not None else versions[tenant.schema].revision
                found.append(
                    _one(settings, scripts, tenant, chain, direction, current, end, for_citus)
                )
    return found


def _one(
    settings: Settings,
    scripts: ChainScripts,
    tenant: Tenant,
    chain: Chain,
    direction: Direction,
    current: str | None,
    target: str,
    for_citus: bool,
) -> SchemaSQL:
    destination = scripts.resolve_target(target, current)
    if scripts.already_there(direction, current, destination):
        return SchemaSQL(tenant.name, tenant.schema, chain, current, current, None)
    sql = offline_sql(
        settings, chain, tenant.schema, direction, current, destination, for_citus=for_citus
    )
    return SchemaSQL(tenant.name, tenant.schema, chain, current, destination, sql)


def _versions(
    settings: Settings, control: Database, tenants: Sequence[Tenant]
) -> dict[str, SchemaVersion]:
    """Each tenant's revision, read in the database it lives in (one that cannot be reached
    stops the command: the SQL is the starting point of a review, so it must be complete)."""
    databases = DatabaseSet(settings, control)
    try:
        versions: dict[str, SchemaVersion] = {}
        for name, group in by_database(tenants).items():
            with databases.get(name).engine.connect() as conn:
                versions.update(read_versions(conn, [t.schema for t in group]))
        return versions
    finally:
        databases.close()
