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
    """Snapshot every schema in ``schemas`` with five catalog queries in total."""
    result = {s: SchemaStructure(s) for s in schemas}
    params = {"schemas": list(schemas)}
    for r in conn.execute(sa.text(_TABLES), params):
        result[r.schema].add("table", r.name, _KINDS[r.kind])
    for r in conn.execute(sa.text(_COLUMNS), params):
        parts = [r.type, "NOT NULL" if r.notnull else "NULL"]
        if r.default is not None:
            parts.append(f"DEFAULT {_strip(r.schema, r.default)}")
        if r.identity:
            parts.append(
                "GENERATED " + ("ALWAYS" if r.identity == "a" else "BY DEFAULT") + " AS IDENTITY"
            )
        if r.generated:
            parts.append("GENERATED STORED")
        result[r.schema].add("column", f"{r.table}.{r.name}", " ".join(parts))
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
    return result
