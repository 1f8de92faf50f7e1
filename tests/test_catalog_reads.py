"""What a structural fingerprint sees, and bulk reads cut into chunks.

A fingerprint finds a schema's objects through pg_depend's index (every table, view, sequence,
standalone type and function depends on its schema; indexes are reached through their table),
so a chunk of schemas costs what it holds rather than a scan of the whole catalog. Each kind of
object, and objects moved into the schema with SET SCHEMA, must change the fingerprint; the
same objects in two schemas must give the same fingerprint.

Versions and fingerprints are read in chunks; a fleet whose size is a multiple of the chunk,
or one more, must still be read whole, each schema once, in order.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tenantmig.schema import drift, versions
from tenantmig.schema.catalog import read_fingerprints
from tenantmig.schema.registry import Tenant
from tenantmig.schema.versions import read_versions, read_versions_parallel
from tenantmig.server.config import Settings
from tests.helpers import TENANT_HEAD
from tests.test_engine import make_tenants

BASE = "CREATE TABLE {s}.base (id integer PRIMARY KEY, v integer)"
# kind -> DDL run on top of BASE ({s}: the schema, {o}: another schema to move objects from)
KINDS = {
    "table": "CREATE TABLE {s}.t (id integer)",
    "index": "CREATE INDEX base_v ON {s}.base (v)",
    "partitioned table": (
        "CREATE TABLE {s}.p (id integer, k integer) PARTITION BY RANGE (k);"
        "CREATE TABLE {s}.p1 PARTITION OF {s}.p FOR VALUES FROM (0) TO (10)"
    ),
    "partitioned table and index": (
        "CREATE TABLE {s}.p (id integer, k integer) PARTITION BY RANGE (k);"
        "CREATE TABLE {s}.p1 PARTITION OF {s}.p FOR VALUES FROM (0) TO (10);"
        "CREATE INDEX p_id ON {s}.p (id)"
    ),
    "view": "CREATE VIEW {s}.v AS SELECT 1 AS one",
    "materialized view": "CREATE MATERIALIZED VIEW {s}.m AS SELECT 1 AS one",
    "materialized view index": (
        "CREATE MATERIALIZED VIEW {s}.m AS SELECT 1 AS one; CREATE INDEX m_one ON {s}.m (one)"
    ),
    "sequence": "CREATE SEQUENCE {s}.q",
    "enum": "CREATE TYPE {s}.e AS ENUM ('a', 'b')",
    "domain": "CREATE DOMAIN {s}.d AS integer CHECK (VALUE > 0)",
    "range": "CREATE TYPE {s}.r AS RANGE (subtype = float8)",
    "composite type": "CREATE TYPE {s}.c AS (a integer)",
    "composite type column comment": (
        "CREATE TYPE {s}.c AS (a integer); COMMENT ON COLUMN {s}.c.a IS 'the a'"
    ),
    # Types of the schema's own, used by a column, a domain, a composite type and a function:
    # two tenants with the same ones must still compare equal (each has its own type oids).
    "column of an own enum": (
        "CREATE TYPE {s}.mood AS ENUM ('ok'); ALTER TABLE {s}.base ADD COLUMN m {s}.mood"
    ),
    "own types used by types and functions": (
        "CREATE TYPE {s}.mood AS ENUM ('ok'); CREATE DOMAIN {s}.good AS {s}.mood;"
        "CREATE TYPE {s}.pair AS (a {s}.mood, b {s}.good[]);"
        "CREATE FUNCTION {s}.g(x {s}.mood) RETURNS {s}.good LANGUAGE sql AS 'SELECT x'"
    ),
    "function": "CREATE FUNCTION {s}.f() RETURNS integer LANGUAGE sql AS 'SELECT 1'",
    "procedure": "CREATE PROCEDURE {s}.pr() LANGUAGE sql AS 'SELECT 1'",
    "aggregate": "CREATE AGGREGATE {s}.total(integer) (SFUNC = int4pl, STYPE = integer)",
    "table moved in": (
        "CREATE TABLE {o}.moved (id integer PRIMARY KEY); ALTER TABLE {o}.moved SET SCHEMA {s}"
    ),
    "sequence moved in": "CREATE SEQUENCE {o}.mq; ALTER SEQUENCE {o}.mq SET SCHEMA {s}",
    "view moved in": "CREATE VIEW {o}.mv AS SELECT 2 AS two; ALTER VIEW {o}.mv SET SCHEMA {s}",
    "type moved in": "CREATE TYPE {o}.me AS ENUM ('x'); ALTER TYPE {o}.me SET SCHEMA {s}",
    "function moved in": (
        "CREATE FUNCTION {o}.mf() RETURNS integer LANGUAGE sql AS 'SELECT 2';"
        "ALTER FUNCTION {o}.mf() SET SCHEMA {s}"
    ),
}
# kind -> the kind it adds one object to: the added object alone must change the fingerprint
ADDS_TO = {
    "partitioned table and index": "partitioned table",
    "materialized view index": "materialized view",
    "composite type column comment": "composite type",
}


def _make(conn: sa.Connection, schema: str, ddl: str) -> None:
    other = f"{schema}_other"
    conn.exec_driver_sql(f"CREATE SCHEMA {schema}; CREATE SCHEMA {other}")
    for statement in (BASE + ";" + ddl).split(";"):
        if statement.strip():
            conn.exec_driver_sql(statement.format(s=schema, o=other))


def test_every_kind_of_object_and_what_was_moved_in_changes_the_fingerprint(
    engine: sa.Engine,
) -> None:
    with engine.begin() as conn:
        _make(conn, "plain", "")
        for i, ddl in enumerate(KINDS.values()):
            _make(conn, f"k{i}", ddl)
            _make(conn, f"twin{i}", ddl)
        names = ["plain"] + [f"{p}{i}" for i in range(len(KINDS)) for p in ("k", "twin")]
        found = read_fingerprints(conn, names)
        alone = {name: read_fingerprints(conn, [name])[name] for name in names}
    assert found == alone  # a few schemas are read with other joins: the same fingerprints
    by_kind = {kind: found[f"k{i}"] for i, kind in enumerate(KINDS)}
    for i, kind in enumerate(KINDS):
        assert by_kind[kind] != found["plain"], kind
        assert by_kind[kind] == found[f"twin{i}"], kind
    assert len(set(by_kind.values())) == len(KINDS)
    for kind, smaller in ADDS_TO.items():
        assert by_kind[kind] != by_kind[smaller], kind


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 3 schemas: versions read 3 at a time, fingerprints 3 per chunk (drift reads
    at least half its own chunk per query, so its chunk is 6)."""
    monkeypatch.setattr(versions, "_CHUNK", 3)
    monkeypatch.setattr(drift, "_CHUNK", 6)
    monkeypatch.setattr(drift, "_FINGERPRINT_CHUNK", 3)


@pytest.mark.parametrize("count", [6, 7])
def test_reads_at_a_chunk_boundary_see_every_schema_once_in_order(
    small_chunks: None, settings: Settings, engine: sa.Engine, count: int
) -> None:
    names = [f"c{i:02d}" for i in range(count)]
    make_tenants(settings, names[:-1], TENANT_HEAD)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {names[-1]}")  # no version table
    schemas = [*names, "missing"]
    with engine.connect() as conn:
        read = read_versions(conn, schemas)
    assert list(read) == schemas
    assert [read[n].revision for n in names] == [TENANT_HEAD] * (count - 1) + [None]
    assert not read[names[-1]].has_version_table and read[names[-1]].schema_exists
    assert not read["missing"].schema_exists
    with engine.connect() as conn:  # two connections, the caller's reading the first half
        assert list(read_versions_parallel(engine, schemas, conn=conn).items()) == list(
            read.items()
        )
    assert read_versions_parallel(engine, schemas[:2]) == {n: read[n] for n in schemas[:2]}

    tenants = [Tenant(name=n, schema=n, status="active") for n in schemas]
    chunks = list(drift._read_chunks(engine, tenants, None))
    assert [len(chunk) for chunk, _, _ in chunks] == [3] * (count // 3) + [count % 3 + 1]
    assert [t.name for chunk, _, _ in chunks for t in chunk] == schemas
    with engine.begin() as conn:
        whole = read_fingerprints(conn, names)
    fingerprints = {k: v for _, _, part in chunks for k, v in part.items()}
    assert fingerprints == whole and len(set(list(whole.values())[:-1])) == 1
    versions_read = {k: v for _, part, _ in chunks for k, v in part.items()}
    assert versions_read == read
