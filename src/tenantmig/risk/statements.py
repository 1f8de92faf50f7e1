"""What one SQL statement of a migration does to a live table: the lock it takes, and its effect.

Statements are parsed with PostgreSQL's own parser (``pglast``, libpg_query). The lock levels
are PostgreSQL's documented ones ("Explicit Locking", and each command's page), written once
here and checked against ``pg_locks`` in the tests (``tests/test_risk_locks.py``: every
statement of the corpus is run in a rolled-back transaction and the locks it holds compared).

Effects, from worst:

- ``destructive``: data goes (DROP TABLE, DROP COLUMN, TRUNCATE, DELETE without WHERE);
- ``rewrite``: the table is rewritten under its lock (ALTER COLUMN TYPE that is not
  binary-coercible, ADD COLUMN with a volatile default or a stored generated or identity
  column, SET LOGGED/UNLOGGED, SET TABLESPACE, VACUUM FULL, CLUSTER);
- ``scan``: every row is read under the lock (SET NOT NULL, ADD CONSTRAINT without NOT
  VALID, VALIDATE CONSTRAINT, CREATE INDEX, a PRIMARY KEY or UNIQUE built from scratch,
  UPDATE or DELETE of the table);
- ``metadata-only``: the catalog changes, rows are not touched.

Whether a type change rewrites depends on the types: the server is asked (``Catalog``), from
the schema of a tenant that takes the step, at the revision the step starts from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantmig.errors import ConfigError

# PostgreSQL's table lock modes, weakest first.
LOCK_MODES = (
    "ACCESS SHARE",
    "ROW SHARE",
    "ROW EXCLUSIVE",
    "SHARE UPDATE EXCLUSIVE",
    "SHARE",
    "SHARE ROW EXCLUSIVE",
    "EXCLUSIVE",
    "ACCESS EXCLUSIVE",
)
EFFECTS = ("metadata-only", "scan", "rewrite", "destructive")
# What blocks what, for a person: the modes that stop reads, or writes, of the table.
BLOCKS = {
    "ACCESS SHARE": "nothing but ACCESS EXCLUSIVE",
    "ROW SHARE": "EXCLUSIVE locks only",
    "ROW EXCLUSIVE": "SHARE and stronger locks; no read or write",
    "SHARE UPDATE EXCLUSIVE": "other schema changes and VACUUM; reads and writes go on",
    "SHARE": "writes; reads go on",
    "SHARE ROW EXCLUSIVE": "writes; reads go on",
    "EXCLUSIVE": "writes and SELECT FOR UPDATE; plain reads go on",
    "ACCESS EXCLUSIVE": "every read and write",
}


def stronger(a: str | None, b: str | None) -> str | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if LOCK_MODES.index(a) >= LOCK_MODES.index(b) else b


def worse(a: str, b: str) -> str:
    return a if EFFECTS.index(a) >= EFFECTS.index(b) else b


@dataclass
class Assessment:
    """One statement: its strongest lock and on which table, and what it does to the rows."""

    sql: str
    command: str  # ALTER TABLE, CREATE INDEX, ...
    lock: str | None = None  # the strongest lock on an existing table (None: none)
    table: str | None = None  # the table that lock is on
    locks: dict[str, str] = field(default_factory=dict)  # every table it locks: mode
    effect: str = "metadata-only"
    why: list[str] = field(default_factory=list)  # what makes it a rewrite, scan, ...
    creates: str | None = None  # the table a CREATE TABLE makes

    def take(self, table: str | None, mode: str) -> None:
        if table is None:
            return
        self.locks[table] = stronger(self.locks.get(table), mode) or mode
        if self.lock is None or (stronger(self.lock, mode) == mode and mode != self.lock):
            self.lock, self.table = mode, table

    def does(self, effect: str, why: str) -> None:
        self.effect = worse(self.effect, effect)
        self.why.append(why)

    @property
    def bookkeeping(self) -> bool:
        """Alembic's own statement (its version table) or tenantmig's lock on the schema
        (``SELECT pg_advisory_lock(...)`` in SQL for review), not the migration's."""
        return (
            self.table == "alembic_version"
            or "alembic_version" in self.sql
            or self.sql.startswith(("SELECT pg_advisory_xact_lock(", "SELECT pg_advisory_lock(",
                                    "SELECT pg_advisory_unlock("))
        )  # fmt: skip

    @property
    def touches_rows(self) -> bool:
        """A rewrite or scan: its time, under its lock, grows with the table."""
        return self.effect in ("rewrite", "scan")

    def to_json(self) -> dict[str, Any]:
        return {
            "sql": self.sql,
            "command": self.command,
            "lock": self.lock,
            "table": self.table,
            "locks": dict(self.locks),
            "effect": self.effect,
            "why": list(self.why),
        }


class Catalog:
    """What the server says about the tables a step starts from (answers cached). ``ask`` runs
    one query and returns its rows; None: no server (every type change counts as a rewrite)."""

    def __init__(self, ask: Callable[[str, dict[str, Any]], list[Any]] | None) -> None:
        self.ask = ask
        self._columns: dict[tuple[str, str], tuple[int, int, str] | None] = {}

    def column(self, table: str, column: str) -> tuple[int, int, str] | None:
        """(type oid, typmod, formatted type) of ``table.column`` now; None if unknown."""
        key = (table, column)
        if key not in self._columns:
            rows = (
                self.ask(
                    "SELECT a.atttypid::int AS oid, a.atttypmod AS typmod,"
                    " format_type(a.atttypid, a.atttypmod) AS shown FROM pg_attribute a"
                    " JOIN pg_class c ON c.oid = a.attrelid"
                    " WHERE c.relnamespace = CAST(current_schema() AS regnamespace)"
                    " AND c.relname = :t AND a.attname = :c AND NOT a.attisdropped",
                    {"t": table, "c": column},
                )
                if self.ask
                else []
            )
            self._columns[key] = (rows[0].oid, rows[0].typmod, rows[0].shown) if rows else None
        return self._columns[key]

    def type_of(self, name: str, mods: Sequence[int]) -> tuple[int, int, str] | None:
        """(oid, typmod, formatted) of a type as written: its name (``varchar``,
        ``pg_catalog.int8``) and modifiers (``(80)``); None if the server does not know it."""
        if self.ask is None:
            return None
        try:
            rows = self.ask(
                "SELECT to_regtype(:n)::oid::int AS oid, format_type(to_regtype(:n), NULL) AS base",
                {"n": name},
            )
        except Exception:
            return None
        if not rows or rows[0].oid is None:
            return None
        oid, base = rows[0].oid, rows[0].base
        typmod = _typmod(base, mods)
        shown = self.ask("SELECT format_type(:o, :m) AS shown", {"o": oid, "m": typmod})
        return oid, typmod, shown[0].shown if shown else base

    def binary_coercible(self, source: int, target: int) -> bool:
        if self.ask is None:
            return False
        rows = self.ask(
            "SELECT 1 FROM pg_cast WHERE castsource = :s AND casttarget = :t AND castmethod = 'b'",
            {"s": source, "t": target},
        )
        return bool(rows)

    def volatile(self, functions: Sequence[str]) -> bool:
        """Is any of ``functions`` volatile? Without a server, any function is assumed so."""
        if not functions:
            return False
        if self.ask is None:
            return True
        rows = self.ask(
            "SELECT 1 FROM pg_proc WHERE proname = ANY(:f) AND provolatile = 'v' LIMIT 1",
            {"f": list(functions)},
        )
        return bool(rows)


def _typmod(base: str, mods: Sequence[int]) -> int:
    """The typmod PostgreSQL stores for ``base(mods)``: lengths carry a 4-byte header,
    numeric packs precision and scale (-1: none given)."""
    if not mods:
        return -1
    if base in ("character varying", "character", "bit varying", "bit"):
        return mods[0] + (4 if base.startswith("character") else 0)
    if base == "numeric":
        scale = mods[1] if len(mods) > 1 else 0
        return ((mods[0] << 16) | scale) + 4
    return mods[0]  # timestamp(p), time(p), interval(p)


@contextmanager
def catalog_of(conn: Connection, schema: str) -> Iterator[Catalog]:
    """A catalog that answers about ``schema`` (its search_path), in one transaction."""
    with conn.begin():
        conn.execute(sa.text("SELECT set_config('search_path', :s, true)"), {"s": f'"{schema}"'})

        def ask(query: str, params: dict[str, Any]) -> list[Any]:
            return list(conn.execute(sa.text(query), params).all())

        yield Catalog(ask)


def require_parser() -> None:
    try:
        import pglast  # noqa: F401
    except ImportError:
        raise ConfigError(
            "tenantmig plan and lint read SQL with PostgreSQL's parser: pip install "
            "'tenantmig[plan]'"
        ) from None
