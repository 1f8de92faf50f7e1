"""How many locks dropping a schema takes, and how many one transaction may take.

``DROP SCHEMA ... CASCADE`` locks every object it deletes, one lock-table entry each: the
relations (tables, indexes, sequences, views, and each table's TOAST table and index), their
types (a row type and an array type per table), functions, constraints, triggers, column
defaults and rewrite rules. The lock table is shared by every session of the server and holds
``max_locks_per_transaction x (max_connections + max_prepared_transactions)`` entries (6,400 by
default); a transaction that needs more than are free fails with "out of shared memory"
(SQLSTATE 53200). A bulk operation sizes its batches from both, read once per database.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

# The share of a server's lock table one batch may take: the application's transactions, and
# tenantmig's own other work, keep the rest.
LOCK_TABLE_SHARE = 2

_LOCK_TABLE = sa.text(
    "SELECT current_setting('max_locks_per_transaction')::int"
    " * (current_setting('max_connections')::int"
    " + current_setting('max_prepared_transactions')::int)"
)

# One scan of each catalog for all the schemas asked about (grouped), never one per schema:
# the catalogs of a large fleet hold millions of rows. Objects owned by a table (its TOAST
# table and index, triggers, defaults, rules) are counted through the table.
_OBJECTS = sa.text(
    """
WITH ns AS (
    SELECT oid, nspname FROM pg_namespace WHERE nspname = ANY(:schemas)
), rels AS (
    SELECT c.relnamespace AS ns, count(*) AS n,
           count(*) FILTER (WHERE c.reltoastrelid <> 0) * 2 AS toast,
           count(*) FILTER (WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')) AS typed
    FROM pg_class c WHERE c.relnamespace IN (SELECT oid FROM ns) GROUP BY 1
), owned AS (
    SELECT c.relnamespace AS ns, count(*) AS n FROM (
        SELECT tgrelid AS rel FROM pg_trigger WHERE NOT tgisinternal
        UNION ALL SELECT adrelid FROM pg_attrdef
        UNION ALL SELECT ev_class FROM pg_rewrite
    ) o JOIN pg_class c ON c.oid = o.rel
    WHERE c.relnamespace IN (SELECT oid FROM ns) GROUP BY 1
), types AS (
    SELECT typnamespace AS ns, count(*) AS n FROM pg_type
    WHERE typnamespace IN (SELECT oid FROM ns) GROUP BY 1
), procs AS (
    SELECT pronamespace AS ns, count(*) AS n FROM pg_proc
    WHERE pronamespace IN (SELECT oid FROM ns) GROUP BY 1
), cons AS (
    SELECT connamespace AS ns, count(*) AS n FROM pg_constraint
    WHERE connamespace IN (SELECT oid FROM ns) GROUP BY 1
)
SELECT ns.nspname,
       1 + coalesce(rels.n, 0) + coalesce(rels.toast, 0) + coalesce(owned.n, 0)
         + coalesce(types.n, 0) + coalesce(procs.n, 0) + coalesce(cons.n, 0) AS objects
FROM ns
LEFT JOIN rels ON rels.ns = ns.oid LEFT JOIN owned ON owned.ns = ns.oid
LEFT JOIN types ON types.ns = ns.oid LEFT JOIN procs ON procs.ns = ns.oid
LEFT JOIN cons ON cons.ns = ns.oid
"""
)


def lock_budget(conn: Connection) -> int:
    """The locks one batch may take on this server (a share of its lock table)."""
    total = int(conn.execute(_LOCK_TABLE).scalar_one())
    return max(1, total // LOCK_TABLE_SHARE)


def drop_costs(conn: Connection, schemas: Sequence[str]) -> dict[str, int]:
    """Schema -> the locks dropping it takes (about: one per object it holds). A schema that
    does not exist costs nothing and is left out."""
    rows = conn.execute(_OBJECTS, {"schemas": list(schemas)}).all()
    return {r.nspname: int(r.objects) for r in rows}
