"""The tenant directory: rows of the shared ``tenants`` table and the schemas they name."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantmig.errors import SharedSchemaNotReady, TenantExists, UnknownTenant, some_names
from tenantmig.server.identifiers import qualified, quote_ident, validate_tenant_name

TENANTS_TABLE = "tenants"


@dataclass(frozen=True)
class Tenant:
    name: str
    schema: str
    status: str
    created_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "schema": self.schema,
            "status": self.status,
            "created_at": self.created_at.isoformat() if self.created_at else None,
        }


def require_tenants_table(conn: Connection, shared_schema: str) -> None:
    exists = conn.execute(
        sa.text("SELECT to_regclass(:name) IS NOT NULL"),
        {"name": qualified(shared_schema, TENANTS_TABLE)},
    ).scalar()
    if not exists:
        raise SharedSchemaNotReady(
            f"no {shared_schema}.{TENANTS_TABLE} table yet: run `tenantmig upgrade --shared` "
            "first to create the shared tables"
        )


def list_tenants(conn: Connection, shared_schema: str) -> list[Tenant]:
    """Registered tenants, ordered by name; tenants whose status is 'deleted' are left out."""
    require_tenants_table(conn, shared_schema)
    rows = conn.execute(
        sa.text(
            f"SELECT name, schema_name, status, created_at "
            f"FROM {qualified(shared_schema, TENANTS_TABLE)} WHERE status <> 'deleted' "
            "ORDER BY name"
        )
    ).all()
    return [Tenant(r.name, r.schema_name, r.status, r.created_at) for r in rows]


def select_tenants(
    conn: Connection, shared_schema: str, names: Sequence[str] | None
) -> list[Tenant]:
    """All live tenants (names is None) or exactly the named ones, validated, in given order."""
    tenants = list_tenants(conn, shared_schema)
    if names is None:
        return tenants
    for name in names:
        validate_tenant_name(name, shared_schema=shared_schema)
    by_name = {t.name: t for t in tenants}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UnknownTenant(
            f"{len(unknown)} unknown tenant(s): {some_names(unknown)}; see `tenantmig tenants "
            "list`, or register "
            "with `tenantmig tenants create NAME`"
        )
    return [by_name[n] for n in dict.fromkeys(names)]


def existing_schemas(conn: Connection, schemas: Iterable[str]) -> set[str]:
    rows = conn.execute(
        sa.text("SELECT nspname FROM pg_namespace WHERE nspname = ANY(:names)"),
        {"names": list(schemas)},
    ).scalars()
    return set(rows)


def register_tenants(conn: Connection, shared_schema: str, names: Sequence[str]) -> list[Tenant]:
    """Insert tenant rows and create their schemas, all or nothing, in the caller's transaction.

    Names are validated and checked against both the registry and existing schemas before the
    first write, so a bad name in a list registers none of them.
    """
    for name in names:
        validate_tenant_name(name, shared_schema=shared_schema)
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    if duplicates:
        raise TenantExists(f"tenant(s) named more than once: {', '.join(duplicates)}")
    require_tenants_table(conn, shared_schema)
    table = qualified(shared_schema, TENANTS_TABLE)
    taken = (
        conn.execute(
            sa.text(
                f"SELECT name FROM {table} WHERE name = ANY(:names) OR schema_name = ANY(:names)"
            ),
            {"names": list(names)},
        )
        .scalars()
        .all()
    )
    if taken:
        raise TenantExists(
            f"{len(taken)} tenant(s) already registered: {some_names(sorted(taken))}"
        )
    clashing = existing_schemas(conn, names)
    if clashing:
        raise TenantExists(
            f"{len(clashing)} schema(s) already exist but are not registered tenants: "
            f"{some_names(sorted(clashing))}; pick another name or drop the schema"
        )
    created: list[Tenant] = []
    for name in names:
        row = conn.execute(
            sa.text(
                f"INSERT INTO {table} (name, schema_name) "
                "VALUES (:name, :name) RETURNING status, created_at"
            ),
            {"name": name},
        ).one()
        conn.exec_driver_sql(f"CREATE SCHEMA {quote_ident(name)}")
        created.append(Tenant(name, name, row.status, row.created_at))
    return created


def drop_tenant(conn: Connection, shared_schema: str, tenant: Tenant) -> None:
    """Drop a tenant's schema (CASCADE) and remove its row, in the caller's transaction."""
    conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(tenant.schema)} CASCADE")
    conn.execute(
        sa.text(f"DELETE FROM {qualified(shared_schema, TENANTS_TABLE)} WHERE name = :name"),
        {"name": tenant.name},
    )
