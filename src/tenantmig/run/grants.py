"""``tenantmig grant ROLE``: an administrator's one-time set-up for a least-privileged role.

Production often runs migrations as a role that owns the tenant schemas and may read and write
the shared tables, but may not create schemas in the database or tables in the shared schema.
Such a role can migrate tenants and report drift once an administrator has, once:

- created the run ledger's tables (the role then only inserts and updates rows);
- granted it USAGE on the shared schema, SELECT, INSERT, UPDATE, DELETE on the ledger (DELETE
  for ``runs prune`` and the ledger's retention after a run) and SELECT, INSERT, DELETE on the
  tenant registry (``tenants create``, ``register`` and ``drop``);
- created the scratch schemas it owns, where steps are compiled and drift references are built
  inside transactions that are always rolled back (``scratch_schema`` in alembic.ini).

Every statement is idempotent, so running it again is harmless; ``--sql`` prints them instead.
Tenant schemas are not touched: they belong to the role that migrates them (documented).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantmig.chains.context import VERSION_TABLE
from tenantmig.errors import ConfigError
from tenantmig.run.ledger import Ledger
from tenantmig.schema.owned import RUN_TENANTS, RUNS
from tenantmig.schema.registry import TENANTS_TABLE
from tenantmig.server.config import Settings
from tenantmig.server.identifiers import qualified, quote_ident

DEFAULT_SCRATCH = "tenantmig_scratch"


@dataclass
class GrantResult:
    role: str
    scratch_schema: str
    statements: list[str] = field(default_factory=list)
    applied: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "role": self.role,
            "scratch_schema": self.scratch_schema,
            "statements": self.statements,
            "applied": self.applied,
        }


def grant_statements(
    conn: Connection, settings: Settings, role: str, *, for_citus: bool = False
) -> GrantResult:
    """The statements that prepare the database for ``role`` (nothing is executed).

    ``for_citus``: on a Citus coordinator the schemas made here stay on the coordinator
    (steps are compiled and references built in the scratch schemas without any worker).
    """
    exists = conn.execute(
        sa.text("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :r)"), {"r": role}
    ).scalar()
    if not exists:
        raise ConfigError(f"there is no role {role!r} in this server; create it first")
    shared = settings.shared_schema
    scratch = settings.scratch_schema or DEFAULT_SCRATCH
    scratch_names = settings.with_options(scratch_schema=scratch).scratch_schemas or ()
    who = quote_ident(role)
    statements = ["SET LOCAL citus.enable_schema_based_sharding = off"] if for_citus else []
    statements.append(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(shared)}")
    statements += Ledger(conn, shared).creation_sql()
    statements += [
        f"GRANT USAGE ON SCHEMA {quote_ident(shared)} TO {who}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {qualified(shared, RUNS)}, "
        f"{qualified(shared, RUN_TENANTS)} TO {who}",
    ]
    registry = qualified(shared, TENANTS_TABLE)
    has_registry = conn.execute(
        sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": registry}
    ).scalar()
    if settings.tenant_source.is_registry and has_registry:
        statements.append(f"GRANT SELECT, INSERT, DELETE ON {registry} TO {who}")
    # The shared schema's revision, read by status and drift.
    version_table = qualified(shared, VERSION_TABLE)
    if conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": version_table}).scalar():
        statements.append(f"GRANT SELECT ON {version_table} TO {who}")
    for name in scratch_names:
        statements.append(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(name)} AUTHORIZATION {who}")
    return GrantResult(role=role, scratch_schema=scratch, statements=statements)


def grant(
    conn: Connection, settings: Settings, role: str, *, apply: bool, for_citus: bool = False
) -> GrantResult:
    """Compute the statements and, with ``apply``, run them in one transaction."""
    with conn.begin():
        result = grant_statements(conn, settings, role, for_citus=for_citus)
        if apply:
            for statement in result.statements:
                conn.exec_driver_sql(statement)
            result.applied = True
    return result
