"""How big each tenant's schema is, from the catalog alone: for the run's queue order.

``relpages`` is what the last VACUUM, ANALYZE or CREATE INDEX counted: an estimate, read from
``pg_class`` without touching a file (``pg_total_relation_size`` stats every file of every
relation: seconds over a fleet). Tables and their indexes count (TOAST lives in pg_toast).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantmig.server.reads import own_reads

_CHUNK = 2000  # schemas per query


def schema_sizes(
    conn: Connection, schemas: Sequence[str], *, statement_timeout_s: float | None = None
) -> dict[str, int]:
    """Schema -> its estimated size in bytes (schemas without relations: absent). Call outside
    a transaction: each chunk reads in its own."""
    sizes: dict[str, int] = {}
    for start in range(0, len(schemas), _CHUNK):
        with own_reads(conn, statement_timeout_s):
            rows = conn.execute(
                sa.text(
                    "SELECT n.nspname AS schema,"
                    " sum(c.relpages)::bigint * current_setting('block_size')::bigint AS bytes"
                    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = ANY(:schemas) AND c.relkind IN ('r', 'p', 'm', 'i')"
                    " GROUP BY n.nspname"
                ),
                {"schemas": list(schemas[start : start + _CHUNK])},
            ).all()
        sizes.update({r.schema: int(r.bytes or 0) for r in rows})
    return sizes


def table_sizes(
    conn: Connection, schemas: Sequence[str], tables: Sequence[str]
) -> dict[tuple[str, str], tuple[int, int]]:
    """(schema, table) -> (total bytes with indexes and TOAST, estimated rows) for ``tables``
    in ``schemas``: what a migration's scan or rewrite of them reads. One query per 1,000
    schemas, in the caller's transaction (``pg_total_relation_size`` reads each file's size)."""
    found: dict[tuple[str, str], tuple[int, int]] = {}
    for start in range(0, len(schemas), _CHUNK // 2):
        rows = conn.execute(
            sa.text(
                "SELECT n.nspname AS schema, c.relname AS table,"
                " pg_total_relation_size(c.oid) AS bytes,"
                " greatest(c.reltuples, 0)::bigint AS rows"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = ANY(:schemas) AND c.relname = ANY(:tables)"
                " AND c.relkind IN ('r', 'p', 'm')"
            ),
            {"schemas": list(schemas[start : start + _CHUNK // 2]), "tables": list(tables)},
        ).all()
        found.update({(r.schema, r.table): (int(r.bytes), int(r.rows)) for r in rows})
    return found
