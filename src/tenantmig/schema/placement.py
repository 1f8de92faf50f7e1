"""Where each tenant lives: ``<shared>.tenantmig_placements`` in the control database.

A tenant without a row lives in the control database, so a project that never uses a second
database never gets the table, and the registry (the application's ``tenants`` table, made by
the project's own shared migration) is not changed. The table is tenantmig's own, like the run
ledger: no migration makes it, and drift leaves it out.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantmig.schema.owned import PLACEMENTS
from tenantmig.server.directory import CONTROL
from tenantmig.server.identifiers import qualified


def placements_sql(shared_schema: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified(shared_schema, PLACEMENTS)} ("
        " tenant text PRIMARY KEY,"
        " database text NOT NULL,"
        " placed_at timestamptz NOT NULL DEFAULT now())"
    )


def read_placements(conn: Connection, shared_schema: str) -> dict[str, str]:
    """Tenant name -> database name, for tenants outside the control database."""
    table = qualified(shared_schema, PLACEMENTS)
    if not conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar():
        return {}
    rows = conn.execute(sa.text(f"SELECT tenant, database FROM {table}")).all()
    return {r.tenant: r.database for r in rows}


def place(conn: Connection, shared_schema: str, tenants: Iterable[str], database: str) -> None:
    """Record ``tenants`` as living in ``database``, in the caller's transaction."""
    names = list(tenants)
    table = qualified(shared_schema, PLACEMENTS)
    if database == CONTROL:
        if conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar():
            conn.execute(sa.text(f"DELETE FROM {table} WHERE tenant = ANY(:n)"), {"n": names})
        return
    conn.exec_driver_sql(placements_sql(shared_schema))
    conn.execute(
        sa.text(
            f"INSERT INTO {table} (tenant, database) SELECT unnest(CAST(:n AS text[])), :d"
            " ON CONFLICT (tenant) DO UPDATE SET database = excluded.database, placed_at = now()"
        ),
        {"n": names, "d": database},
    )
