"""How many locks dropping a schema takes, and how many one transaction may take.

``DROP SCHEMA ... CASCADE`` locks every object it deletes, one lock-table entry each: the
relations (tables, indexes, sequences, views, and each table's TOAST table and index), their
types (a row type and an array type per table), functions, constraints, triggers, column
defaults and rewrite rules. The lock table is shared by every session of the server and holds
``max_locks_per_transaction x (max_connections + max_prepared_transactions)`` entries (6,400 by
default); a transaction that needs more than are free fails with "out of shared memory"
(SQLSTATE 53200). A bulk operation sizes its batches from both, read once per database.

A migration locks each relation it touches, until its transaction ends: tenants migrating in
parallel share the same table. A run that fills it retries the tenant with fewer at once
(``run.executor``); a tenant that does not fit even alone gets the words below: which setting
to raise, to what, and why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

# The share of a server's lock table one batch may take: the application's transactions, and
# tenantmig's own other work, keep the rest.
LOCK_TABLE_SHARE = 2

_SETTINGS = sa.text(
    "SELECT current_setting('max_locks_per_transaction')::int AS per_transaction,"
    " current_setting('max_connections')::int AS connections,"
    " current_setting('max_prepared_transactions')::int AS prepared"
)
_RELATIONS = sa.text(
    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = :schema"
)


@dataclass(frozen=True)
class LockTable:
    """The settings that size a server's lock table (changed only by a restart)."""

    per_transaction: int  # max_locks_per_transaction
    connections: int  # max_connections
    prepared: int  # max_prepared_transactions

    @property
    def slots(self) -> int:
        """About how many locks the table holds (the server adds its background processes
        and some spare memory, so somewhat more in fact)."""
        return self.per_transaction * (self.connections + self.prepared)

    def describe(self) -> str:
        return (
            f"about {self.slots:,} locks ({self.per_transaction} max_locks_per_transaction x "
            f"({self.connections} max_connections + {self.prepared} "
            "max_prepared_transactions)), shared by every session"
        )

    def per_transaction_for(self, locks: int) -> int:
        """The max_locks_per_transaction at which ``locks`` take no more than a batch's share
        of the table."""
        return max(1, math.ceil(locks * LOCK_TABLE_SHARE / (self.connections + self.prepared)))


def read_lock_table(conn: Connection) -> LockTable:
    row = conn.execute(_SETTINGS).one()
    return LockTable(int(row.per_transaction), int(row.connections), int(row.prepared))


def relations(conn: Connection, schema: str) -> int:
    """The relations of ``schema`` (tables, indexes, sequences, views...): a migration that
    touches them all takes a lock on each."""
    return int(conn.execute(_RELATIONS, {"schema": schema}).scalar_one())


def too_big_alone(table: LockTable | None, schema: str, count: int | None) -> str:
    """What to do about a tenant whose migration filled the lock table while it was the only
    one of its run migrating: the setting to raise (to what), or why it should have fit.
    ``table`` and ``count`` are None when they could not be read."""
    if table is None or count is None:
        return (
            "raise max_locks_per_transaction and restart PostgreSQL, or migrate the tenant "
            "when fewer transactions hold locks"
        )
    setting = f"max_locks_per_transaction (currently {table.per_transaction})"
    sizes = (
        f"the lock table holds {table.describe()}; schema {schema} has {count:,} relations, "
        f"and a migration that touches them all needs a lock on each ({count:,} locks)"
    )
    wanted = table.per_transaction_for(count)
    if wanted > table.per_transaction:
        return f"raise {setting} to at least {wanted} and restart PostgreSQL: {sizes}"
    return (
        f"{sizes}, which fit: other sessions held the rest (another run, the application). "
        f"Migrate it when fewer transactions hold locks, or raise {setting} and restart "
        "PostgreSQL"
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
    return max(1, read_lock_table(conn).slots // LOCK_TABLE_SHARE)


def drop_costs(conn: Connection, schemas: Sequence[str]) -> dict[str, int]:
    """Schema -> the locks dropping it takes (about: one per object it holds). A schema that
    does not exist costs nothing and is left out."""
    rows = conn.execute(_OBJECTS, {"schemas": list(schemas)}).all()
    return {r.nspname: int(r.objects) for r in rows}
