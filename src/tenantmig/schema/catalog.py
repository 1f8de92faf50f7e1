"""Structural snapshots of schemas, read from pg_catalog in bulk.

A fixed number of queries covers any number of schemas (information_schema is far slower with
many schemas, and SQLAlchemy's inspector costs a round-trip per object). Definitions come from
PostgreSQL itself (format_type, pg_get_expr, pg_get_indexdef, pg_get_constraintdef) with the
schema's own name stripped, so two tenants with the same structure have identical snapshots.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

Snapshot = dict[str, dict[str, str]]  # kind -> object name -> definition

# Column facts are separate kinds so a drift report can say exactly what changed.
COLUMN = "column"
NULLABILITY = "column nullability"
DEFAULT = "column default"

_TABLES = """
SELECT n.nspname AS schema, c.relname AS name, c.relkind AS kind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(:schemas) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
"""
_COLUMNS = """
SELECT n.nspname AS schema, c.relname AS table, a.attname AS name,
       format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS notnull,
       pg_get_expr(d.adbin, d.adrelid) AS default, a.attidentity AS identity,
       a.attgenerated AS generated
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = ANY(:schemas) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND a.attnum > 0 AND NOT a.attisdropped
"""
_INDEXES = """
SELECT n.nspname AS schema, ic.relname AS name, pg_get_indexdef(i.indexrelid) AS definition,
       i.indisvalid AS valid
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
WHERE n.nspname = ANY(:schemas)
"""
_CONSTRAINTS = """
SELECT n.nspname AS schema, c.relname AS table, con.conname AS name,
       pg_get_constraintdef(con.oid) AS definition
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(:schemas) AND con.contype IN ('p', 'f', 'u', 'c', 'x')
"""
_SEQUENCES = """
SELECT n.nspname AS schema, c.relname AS name,
       format_type(s.seqtypid, NULL) AS type, s.seqincrement AS increment,
       s.seqmin AS min, s.seqmax AS max, s.seqcycle AS cycle
FROM pg_sequence s
JOIN pg_class c ON c.oid = s.seqrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(:schemas)
"""
_TRIGGERS = """
SELECT n.nspname AS schema, c.relname AS table, t.tgname AS name,
       pg_get_triggerdef(t.oid) AS definition
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(:schemas) AND NOT t.tgisinternal
"""
_FUNCTIONS = """
SELECT n.nspname AS schema, p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
       AS name, pg_get_function_result(p.oid) AS result, md5(p.prosrc) AS body
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = ANY(:schemas)
"""
_KINDS = {
    "r": "table",
    "p": "partitioned table",
    "v": "view",
    "m": "materialized view",
    "f": "foreign table",
}


def _strip(schema: str, text: str | None) -> str:
    """Remove this schema's qualification (quoted or not) from a definition."""
    if text is None:
        return ""
    quoted = '"' + schema.replace('"', '""') + '"'
    text = text.replace(quoted + ".", "")
    return re.sub(rf"(?<![\w\"]){re.escape(schema)}\.", "", text)


@dataclass
class SchemaStructure:
    schema: str
    objects: Snapshot = field(default_factory=dict)

    def add(self, kind: str, name: str, definition: str) -> None:
        self.objects.setdefault(kind, {})[name] = definition

    def fingerprint(self) -> str:
        canonical = json.dumps(self.objects, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def read_structures(conn: Connection, schemas: Sequence[str]) -> dict[str, SchemaStructure]:
    """Snapshot every schema in ``schemas`` with seven catalog queries in total."""
    result = {s: SchemaStructure(s) for s in schemas}
    params = {"schemas": list(schemas)}
    for r in conn.execute(sa.text(_TABLES), params):
        result[r.schema].add("table", r.name, _KINDS[r.kind])
    for r in conn.execute(sa.text(_COLUMNS), params):
        column = f"{r.table}.{r.name}"
        kind = r.type
        if r.identity:
            kind += " GENERATED " + ("ALWAYS" if r.identity == "a" else "BY DEFAULT")
            kind += " AS IDENTITY"
        if r.generated:
            kind += f" GENERATED ALWAYS AS ({_strip(r.schema, r.default)}) STORED"
        structure = result[r.schema]
        structure.add(COLUMN, column, kind)
        structure.add(NULLABILITY, column, "NOT NULL" if r.notnull else "NULL")
        if r.default is not None and not r.generated:
            structure.add(DEFAULT, column, _strip(r.schema, r.default))
    for r in conn.execute(sa.text(_INDEXES), params):
        definition = _strip(r.schema, r.definition) + ("" if r.valid else " INVALID")
        result[r.schema].add("index", r.name, definition)
    for r in conn.execute(sa.text(_CONSTRAINTS), params):
        result[r.schema].add("constraint", f"{r.table}.{r.name}", _strip(r.schema, r.definition))
    for r in conn.execute(sa.text(_SEQUENCES), params):
        result[r.schema].add(
            "sequence",
            r.name,
            f"{r.type} INCREMENT {r.increment} MINVALUE {r.min} MAXVALUE {r.max}"
            + (" CYCLE" if r.cycle else ""),
        )
    for r in conn.execute(sa.text(_TRIGGERS), params):
        result[r.schema].add("trigger", f"{r.table}.{r.name}", _strip(r.schema, r.definition))
    for r in conn.execute(sa.text(_FUNCTIONS), params):
        result[r.schema].add(
            "function",
            _strip(r.schema, r.name),
            f"RETURNS {_strip(r.schema, r.result)} body md5 {r.body}",
        )
    return result


# One row per schema: an md5 over every structural fact, computed by the server from raw catalog
# columns (attribute numbers, type oids, flags) rather than deparsed definitions, which are the
# slow part of reading a catalog. Equal fingerprints imply equal structure (every input of the
# deparsed definitions is covered); unequal fingerprints may still hide equal structure (e.g. a
# column dropped and re-added gets a new attnum), which only costs an extra in-depth comparison.
# The schema's own name is stripped from the few deparsed expressions (defaults, CHECK and index
# expressions), so tenants compare equal to each other.
_FINGERPRINTS = r"""
WITH s AS MATERIALIZED (
    SELECT oid, nspname FROM pg_namespace WHERE nspname = ANY(:schemas)
), rels AS MATERIALIZED (
    -- One pass over pg_class; every other catalog is then reached through its index on the
    -- relation's oid, so a chunk costs what its own schemas hold, not the whole database.
    SELECT c.oid, c.relnamespace AS ns, c.relname, c.relkind, c.relam, s.nspname
    FROM pg_class c JOIN s ON s.oid = c.relnamespace
), parts AS (
    SELECT r.ns, concat_ws('|', 't', r.relname, r.relkind) AS item
    FROM rels r WHERE r.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  UNION ALL
    SELECT r.ns, concat_ws('|', 'c', r.relname, a.attname, a.attnum, a.atttypid,
        a.atttypmod, a.attnotnull, a.attidentity, a.attgenerated,
        {strip:d.adbin:pg_get_expr(d.adbin, d.adrelid)})
    FROM rels r
    JOIN pg_attribute a ON a.attrelid = r.oid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE r.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
    SELECT r.ns, concat_ws('|', 'i', r.relname, tc.relname, i.indisunique,
        i.indisprimary, i.indisvalid, {nulls_not_distinct}, am.amname, i.indkey::text,
        i.indclass::text, i.indoption::text, i.indcollation::text,
        {strip:i.indexprs:pg_get_expr(i.indexprs, i.indrelid)},
        {strip:i.indpred:pg_get_expr(i.indpred, i.indrelid)})
    FROM rels r
    JOIN pg_index i ON i.indexrelid = r.oid
    JOIN pg_class tc ON tc.oid = i.indrelid
    JOIN pg_am am ON am.oid = r.relam
  UNION ALL
    SELECT r.ns, concat_ws('|', 'k', r.relname, con.conname, con.contype,
        con.conkey::text, fc.relname, fn.nspname = r.nspname, con.confkey::text,
        con.confupdtype, con.confdeltype, con.confmatchtype, con.condeferrable,
        con.condeferred, con.convalidated, con.connoinherit,
        {strip:con.conbin:pg_get_expr(con.conbin, con.conrelid)})
    FROM rels r
    JOIN pg_constraint con ON con.conrelid = r.oid
    LEFT JOIN pg_class fc ON fc.oid = con.confrelid
    LEFT JOIN pg_namespace fn ON fn.oid = fc.relnamespace
    WHERE con.contype IN ('p', 'f', 'u', 'c', 'x')
  UNION ALL
    SELECT r.ns, concat_ws('|', 'q', r.relname, q.seqtypid, q.seqincrement,
        q.seqmin, q.seqmax, q.seqcycle)
    FROM rels r JOIN pg_sequence q ON q.seqrelid = r.oid
  UNION ALL
    SELECT r.ns, concat_ws('|', 'g', r.relname, t.tgname,
        {strip:t.oid:pg_get_triggerdef(t.oid)})
    FROM rels r JOIN pg_trigger t ON t.tgrelid = r.oid
    WHERE NOT t.tgisinternal
  UNION ALL
    SELECT p.pronamespace, concat_ws('|', 'f', p.proname,
        pg_get_function_identity_arguments(p.oid), p.prorettype, md5(p.prosrc))
    FROM pg_proc p JOIN s ON s.oid = p.pronamespace
)
SELECT s.nspname AS schema, md5(coalesce(string_agg(parts.item, E'\n' ORDER BY parts.item), ''))
       AS fingerprint
FROM s LEFT JOIN parts ON parts.ns = s.oid
GROUP BY s.nspname
"""


def _strip_sql(guard: str, expression: str) -> str:
    """SQL that strips the row's own schema name (r.nspname) from a deparsed expression.

    ``guard`` is the raw catalog column being deparsed: most rows have none (no default, no
    index expression) and skip the per-row subquery, which costs about as much as deparsing.
    The subquery deparses once for both the test and the result (deparsing twice measured
    slower); the regular expression only runs when the name occurs at all.
    """
    return (
        f"CASE WHEN {guard} IS NOT NULL THEN "
        "(SELECT CASE WHEN strpos(x.e, r.nspname || '.') > 0 THEN "
        "regexp_replace(x.e, '(^|[^\\w\"])(\"?)' || r.nspname || '\\2\\.', '\\1', 'g') "
        f"ELSE x.e END FROM (SELECT {expression} AS e) AS x) END"
    )


_STRIP = re.compile(r"\{strip:([^{}:]+):([^{}]+)\}")


def read_fingerprints(conn: Connection, schemas: Sequence[str]) -> dict[str, str]:
    """A structural fingerprint per existing schema, in one query (see _FINGERPRINTS)."""
    version = int(conn.execute(sa.text("SHOW server_version_num")).scalar_one())
    # NULLS NOT DISTINCT exists from PostgreSQL 15 on.
    nulls = "i.indnullsnotdistinct" if version >= 150000 else "false"
    query = _STRIP.sub(lambda m: _strip_sql(m.group(1), m.group(2)), _FINGERPRINTS)
    query = query.replace("{nulls_not_distinct}", nulls)
    rows = conn.execute(sa.text(query), {"schemas": list(schemas)})
    return {r.schema: r.fingerprint for r in rows}


def invalid_indexes(conn: Connection, schemas: Sequence[str] | None) -> dict[str, list[str]]:
    """INVALID indexes per schema (all schemas when None).

    A failed or interrupted CREATE INDEX CONCURRENTLY leaves its index behind, marked invalid:
    never used by queries, yet still maintained on every write, and it blocks a re-run with
    "already exists". (An index being built right now is invalid too, until it finishes.)
    """
    where = "" if schemas is None else "AND n.nspname = ANY(:schemas)"
    rows = conn.execute(
        sa.text(
            "SELECT n.nspname AS schema, c.relname AS name FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            f" WHERE NOT i.indisvalid {where} ORDER BY 1, 2"
        ),
        {} if schemas is None else {"schemas": list(schemas)},
    ).all()
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row.schema, []).append(row.name)
    return found
