"""Read many schemas' alembic_version rows in a few bulk queries.

Asking Alembic per tenant costs a connection setup and an inspector round-trip each: with
thousands of tenants that alone takes minutes. Here schemas are read in chunks: per chunk, one
catalog query finds which exist and have a version table, and one UNION ALL query reads their
version rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tenantmig.chains.context import VERSION_TABLE
from tenantmig.server.identifiers import qualified
from tenantmig.server.reads import own_reads

_CHUNK = 500
# Connections reading at once in read_versions_parallel: the server's work, not ours.
_READERS = 2


@dataclass(frozen=True)
class SchemaVersion:
    schema: str
    schema_exists: bool
    has_version_table: bool
    revisions: tuple[str, ...] = ()

    @property
    def revision(self) -> str | None:
        """The single revision (None at base); callers check ``diverged`` first."""
        return self.revisions[0] if self.revisions else None

    @property
    def diverged(self) -> bool:
        return len(self.revisions) > 1


def read_versions(
    conn: Connection, schemas: Sequence[str], *, statement_timeout_s: float | None = None
) -> dict[str, SchemaVersion]:
    """Versions of ``schemas``. Call outside a transaction: each chunk runs in its own, whose
    statements run for at most ``statement_timeout_s`` each (None: no limit, whatever the role
    sets; see server.reads).

    Reading a table takes an ACCESS SHARE lock held to the end of the transaction, and the
    server's lock table is sized max_locks_per_transaction x max_connections (6,400 slots by
    default). Reading 10,000 version tables in one transaction exhausts it ("out of shared
    memory"), so every chunk commits and releases its locks. The catalog is asked about each
    chunk's schemas alone, in the same transaction, so no statement grows with the fleet.
    """
    found: dict[str, SchemaVersion] = {}
    for start in range(0, len(schemas), _CHUNK):
        with own_reads(conn, statement_timeout_s):
            found.update(_read_chunk(conn, schemas[start : start + _CHUNK]))
    return found


def read_versions_parallel(
    engine: Engine,
    schemas: Sequence[str],
    *,
    statement_timeout_s: float | None = None,
    conn: Connection | None = None,
) -> dict[str, SchemaVersion]:
    """read_versions of a fleet over two connections at once, in ``schemas``' order.

    Nearly all of a large read is the server's: on a new connection every version table is
    opened for the first time, its relation cache entry built from the catalogs (about 0.1 ms
    a table, 10 s at 100,000 tenants) while this process waits. Two connections keep two
    server cores at it. Each reads a contiguous half, chunk by chunk as read_versions does,
    so each holds no more locks than one chunk's. ``conn``, the caller's connection (outside a
    transaction), reads the first half: a read of one chunk or less opens no connection.
    """
    # Halves cut at a chunk boundary: every query but the last reads a whole chunk.
    half = max(_CHUNK, -(-len(schemas) // (_CHUNK * _READERS)) * _CHUNK)
    parts = [schemas[start : start + half] for start in range(0, len(schemas), half)]

    def read(part: Sequence[str]) -> dict[str, SchemaVersion]:
        if conn is not None and part is parts[0]:
            return read_versions(conn, part, statement_timeout_s=statement_timeout_s)
        with engine.connect() as own:
            return read_versions(own, part, statement_timeout_s=statement_timeout_s)

    if len(parts) <= 1:
        return read(parts[0]) if parts else {}

    found: dict[str, SchemaVersion] = {}
    with ThreadPoolExecutor(max_workers=_READERS, thread_name_prefix="versions") as pool:
        for read_part in pool.map(read, parts):
            found.update(read_part)
    return found


def _read_chunk(conn: Connection, schemas: Sequence[str]) -> dict[str, SchemaVersion]:
    """Which of ``schemas`` exist and have a version table (one catalog query), then the
    version rows of those that have one (one UNION ALL query)."""
    rows = _catalog_rows(conn, schemas)
    with_table = [r.name for r in rows if r.has_table]
    found: dict[str, list[str]] = {}
    if with_table:
        # Each row says which schema by its position in the chunk, an integer literal: no bound
        # parameters, so the driver sends the text as it is (compiling 500 named parameters
        # per chunk cost more than the server's reads at 10,000 tenants). The names become
        # SQL only through qualified().
        parts = [
            f"SELECT {i} AS n, version_num FROM {qualified(name, VERSION_TABLE)}"
            for i, name in enumerate(with_table)
        ]
        for n, version in conn.exec_driver_sql(" UNION ALL ".join(parts)):
            found.setdefault(with_table[n], []).append(version)
    return {
        r.name: SchemaVersion(
            schema=r.name,
            schema_exists=bool(r.schema_exists),
            has_version_table=bool(r.has_table),
            revisions=tuple(sorted(found.get(r.name, []))),
        )
        for r in rows
    }


def _catalog_rows(conn: Connection, schemas: Sequence[str]) -> Sequence[sa.Row[Any]]:
    return conn.execute(
        sa.text(
            "SELECT s.name, n.oid IS NOT NULL AS schema_exists, c.oid IS NOT NULL AS has_table "
            "FROM unnest(CAST(:names AS text[])) AS s(name) "
            "LEFT JOIN pg_namespace n ON n.nspname = s.name "
            "LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = :table "
            "AND c.relkind IN ('r', 'p')"
        ),
        {"names": list(schemas), "table": VERSION_TABLE},
    ).all()
