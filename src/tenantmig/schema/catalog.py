"""Structural snapshots of schemas, read from pg_catalog in bulk.

A fixed number of queries covers any number of schemas (information_schema is far slower with
many schemas, and SQLAlchemy's inspector costs a round-trip per object). Definitions come from
PostgreSQL itself (format_type, pg_get_expr, pg_get_indexdef, pg_get_constraintdef) with the
schema's own name stripped, so two tenants with the same structure have identical snapshots.
"""

from __future__ import annotations

import functools
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
ROW_SECURITY = "row level security"
PRIVILEGES = "privileges"
OWNER = "owner"
COMMENT = "comment"
# Kinds a team may manage outside its migrations: server.config.DRIFT_IGNORABLE names them.

# Objects an extension created (pg_stat_statements' views, an extension's functions and types)
# belong to the extension, not to the migrations: drift leaves them out.
_NOT_EXTENSION = (
    "NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass"
    " AND e.objid = {oid} AND e.deptype = 'e')"
)
_TABLES = f"""
SELECT n.nspname AS schema, c.relname AS name, c.relkind AS kind,
       c.relrowsecurity AS rls, c.relforcerowsecurity AS forced_rls
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(:schemas) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND {_NOT_EXTENSION.format(catalog="pg_class", oid="c.oid")}
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
# The index behind a primary key, unique or exclusion constraint is part of that constraint:
# same name, created and dropped with it, and described by the constraint's definition (columns,
# INCLUDE, an exclusion's method and predicate; storage parameters added, see _CONSTRAINTS).
# Listed as an index as well, one dropped constraint would be two differences with two fixes,
# and the second (CREATE UNIQUE INDEX) would collide with what the first (ADD CONSTRAINT) made.
# A plain unique index stays an index.
_INDEXES = """
SELECT n.nspname AS schema, ic.relname AS name, pg_get_indexdef(i.indexrelid) AS definition,
       i.indisvalid AS valid, tc.relname AS table
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class tc ON tc.oid = i.indrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
WHERE n.nspname = ANY(:schemas)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k
                  WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid
                    AND k.contype IN ('p', 'u', 'x'))
"""
# The storage parameters of a primary key's or unique constraint's index (see _INDEXES):
# pg_get_constraintdef leaves them out (an exclusion constraint's definition has them).
_CONSTRAINTS = """
SELECT n.nspname AS schema, c.relname AS table, con.conname AS name,
       pg_get_constraintdef(con.oid) AS definition,
       CASE WHEN con.contype IN ('p', 'u') THEN
         (SELECT array_to_string(ic.reloptions, ', ') FROM pg_class ic WHERE ic.oid = con.conindid)
       END AS index_options
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(:schemas) AND con.contype IN ('p', 'f', 'u', 'c', 'x')
"""
_SEQUENCES = """
SELECT n.nspname AS schema, c.relname AS name,
       format_type(s.seqtypid, NULL) AS type, s.seqincrement AS increment,
       s.seqmin AS min, s.seqmax AS max, s.seqstart AS start, s.seqcache AS cache,
       s.seqcycle AS cycle,
       (SELECT t.relname || '.' || a.attname FROM pg_depend d
        JOIN pg_class t ON t.oid = d.refobjid
        JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
          AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')) AS owned_by
FROM pg_sequence s
JOIN pg_class c ON c.oid = s.seqrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(:schemas)
"""
# Relations an extension created: their columns, indexes, constraints, grants and comments are
# the extension's too (Citus's views in the shared schema, pg_stat_statements' views).
_EXTENSION_RELATIONS = """
SELECT n.nspname AS schema, c.relname AS name
FROM pg_depend e
JOIN pg_class c ON e.classid = 'pg_class'::regclass AND c.oid = e.objid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE e.deptype = 'e' AND n.nspname = ANY(:schemas)
"""
_TRIGGERS = """
SELECT n.nspname AS schema, c.relname AS table, t.tgname AS name,
       pg_get_triggerdef(t.oid) AS definition
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(:schemas) AND NOT t.tgisinternal
"""
_FUNCTIONS = f"""
SELECT n.nspname AS schema, p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
       AS name, pg_get_function_result(p.oid) AS result, md5(p.prosrc) AS body
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = ANY(:schemas) AND {_NOT_EXTENSION.format(catalog="pg_proc", oid="p.oid")}
"""
# User-defined types: enums, domains, composite types made with CREATE TYPE (not a table's row
# type), ranges.
_TYPES = f"""
SELECT n.nspname AS schema, t.typname AS name, t.typtype AS kind,
  CASE t.typtype
    WHEN 'e' THEN 'ENUM (' || (SELECT string_agg(quote_literal(e.enumlabel), ', '
                                                 ORDER BY e.enumsortorder)
                               FROM pg_enum e WHERE e.enumtypid = t.oid) || ')'
    WHEN 'd' THEN 'DOMAIN ' || format_type(t.typbasetype, t.typtypmod)
                  || CASE WHEN t.typnotnull THEN ' NOT NULL' ELSE '' END
                  || coalesce(' DEFAULT ' || t.typdefault, '')
                  || coalesce((SELECT ' ' || string_agg(pg_get_constraintdef(k.oid), ' '
                                                        ORDER BY k.conname)
                               FROM pg_constraint k WHERE k.contypid = t.oid), '')
    WHEN 'c' THEN 'COMPOSITE (' || (SELECT string_agg(a.attname || ' '
                                      || format_type(a.atttypid, a.atttypmod), ', '
                                      ORDER BY a.attnum)
                                    FROM pg_attribute a WHERE a.attrelid = t.typrelid
                                      AND a.attnum > 0 AND NOT a.attisdropped) || ')'
    WHEN 'r' THEN 'RANGE OF ' || (SELECT format_type(r.rngsubtype, NULL) FROM pg_range r
                                 WHERE r.rngtypid = t.oid)
  END AS definition
FROM pg_type t
JOIN pg_namespace n ON n.oid = t.typnamespace
LEFT JOIN pg_class rc ON rc.oid = t.typrelid
WHERE n.nspname = ANY(:schemas) AND t.typtype IN ('e', 'd', 'c', 'r')
  AND (t.typtype <> 'c' OR rc.relkind = 'c')
  AND {_NOT_EXTENSION.format(catalog="pg_type", oid="t.oid")}
"""
_POLICIES = """
SELECT n.nspname AS schema, c.relname AS table, p.polname AS name,
       CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                     WHEN 'd' THEN 'DELETE' ELSE 'ALL' END AS command,
       p.polpermissive AS permissive,
       CASE WHEN p.polroles = '{0}' THEN 'PUBLIC'
            ELSE (SELECT string_agg(quote_ident(r.rolname), ', ' ORDER BY r.rolname)
                  FROM pg_roles r WHERE r.oid = ANY(p.polroles)) END AS roles,
       pg_get_expr(p.polqual, p.polrelid) AS qual,
       pg_get_expr(p.polwithcheck, p.polrelid) AS with_check
FROM pg_policy p
JOIN pg_class c ON c.oid = p.polrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(:schemas)
"""
# Privileges as pg_dump would GRANT them: only where they are not the defaults. The owner is
# named "owner", so schemas owned by different roles compare equal.
_PRIVILEGES = """
SELECT n.nspname AS schema, c.relname AS name,
       ARRAY(SELECT CASE WHEN a.grantee = c.relowner THEN 'owner'
                         WHEN a.grantee = 0 THEN 'PUBLIC'
                         ELSE quote_ident(pg_get_userbyid(a.grantee)) END
                    || ' ' || a.privilege_type
                    || CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END
             FROM aclexplode(c.relacl) a ORDER BY 1) AS granted,
       ARRAY(SELECT 'owner ' || a.privilege_type
             FROM aclexplode(acldefault(CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char",
                                        c.relowner)) a ORDER BY 1) AS defaults
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(:schemas) AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND c.relacl IS NOT NULL
UNION ALL
SELECT n.nspname, '(schema)',
       ARRAY(SELECT CASE WHEN a.grantee = n.nspowner THEN 'owner'
                         WHEN a.grantee = 0 THEN 'PUBLIC'
                         ELSE quote_ident(pg_get_userbyid(a.grantee)) END
                    || ' ' || a.privilege_type
                    || CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END
             FROM aclexplode(n.nspacl) a ORDER BY 1),
       ARRAY(SELECT 'owner ' || a.privilege_type
             FROM aclexplode(acldefault('n'::"char", n.nspowner)) a ORDER BY 1)
FROM pg_namespace n WHERE n.nspname = ANY(:schemas) AND n.nspacl IS NOT NULL
"""
# Owners other than the schema's own: a table created by another role (or handed to one) is
# what pg_dump shows as ALTER ... OWNER TO; objects owned like their schema are the norm.
_OWNERS = """
SELECT n.nspname AS schema, c.relname AS name, pg_get_userbyid(c.relowner) AS owner
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(:schemas) AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND c.relowner <> n.nspowner
UNION ALL
SELECT n.nspname, p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       pg_get_userbyid(p.proowner)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = ANY(:schemas) AND p.proowner <> n.nspowner
UNION ALL
SELECT n.nspname, t.typname, pg_get_userbyid(t.typowner)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
LEFT JOIN pg_class rc ON rc.oid = t.typrelid
WHERE n.nspname = ANY(:schemas) AND t.typtype IN ('e', 'd', 'c', 'r')
  AND (t.typtype <> 'c' OR rc.relkind = 'c') AND t.typowner <> n.nspowner
"""
_COMMENTS = """
SELECT n.nspname AS schema,
       c.relname || coalesce('.' || a.attname, '') AS name, d.description
FROM pg_description d
JOIN pg_class c ON d.classoid = 'pg_class'::regclass AND d.objoid = c.oid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON d.objsubid > 0 AND a.attrelid = c.oid AND a.attnum = d.objsubid
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


def _with_index_options(definition: str, options: str | None) -> str:
    """A key's definition with its index's storage parameters where ADD CONSTRAINT takes them:
    after the columns and INCLUDE, before DEFERRABLE."""
    if not options:
        return definition
    tail = ""
    for suffix in (" INITIALLY DEFERRED", " DEFERRABLE"):
        if definition.endswith(suffix):
            definition, tail = definition[: -len(suffix)], suffix + tail
    return f"{definition} WITH ({options}){tail}"


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
    """Snapshot every schema in ``schemas`` with a dozen catalog queries in total (inside a
    transaction: JIT is switched off for it, see read_fingerprints)."""
    conn.exec_driver_sql("SET LOCAL jit = off")
    params = {"schemas": list(schemas)}
    extension = {(r.schema, r.name) for r in conn.execute(sa.text(_EXTENSION_RELATIONS), params)}
    result = {s: _Snapshot(s, extension) for s in schemas}
    for r in conn.execute(sa.text(_TABLES), params):
        result[r.schema].add("table", r.name, _KINDS[r.kind])
        if r.rls or r.forced_rls:
            state = "enabled" if r.rls else "not enabled"
            result[r.schema].add(ROW_SECURITY, r.name, state + (", forced" if r.forced_rls else ""))
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
        if (r.schema, r.table) in extension:
            continue
        definition = _strip(r.schema, r.definition) + ("" if r.valid else " INVALID")
        result[r.schema].add("index", r.name, definition)
    for r in conn.execute(sa.text(_CONSTRAINTS), params):
        definition = _with_index_options(r.definition, r.index_options)
        result[r.schema].add("constraint", f"{r.table}.{r.name}", _strip(r.schema, definition))
    for r in conn.execute(sa.text(_SEQUENCES), params):
        result[r.schema].add(
            "sequence",
            r.name,
            f"{r.type} INCREMENT {r.increment} MINVALUE {r.min} MAXVALUE {r.max} "
            f"START {r.start} CACHE {r.cache}"
            + (" CYCLE" if r.cycle else "")
            + (f" OWNED BY {r.owned_by}" if r.owned_by else ""),
        )
    for r in conn.execute(sa.text(_TRIGGERS), params):
        result[r.schema].add("trigger", f"{r.table}.{r.name}", _strip(r.schema, r.definition))
    for r in conn.execute(sa.text(_FUNCTIONS), params):
        result[r.schema].add(
            "function",
            _strip(r.schema, r.name),
            f"RETURNS {_strip(r.schema, r.result)} body md5 {r.body}",
        )
    for r in conn.execute(sa.text(_TYPES), params):
        result[r.schema].add("type", r.name, _strip(r.schema, r.definition))
    for r in conn.execute(sa.text(_POLICIES), params):
        clauses = f" USING ({_strip(r.schema, r.qual)})" if r.qual else ""
        if r.with_check:
            clauses += f" WITH CHECK ({_strip(r.schema, r.with_check)})"
        kind = "PERMISSIVE" if r.permissive else "RESTRICTIVE"
        result[r.schema].add(
            "policy", f"{r.table}.{r.name}", f"{kind} FOR {r.command} TO {r.roles}{clauses}"
        )
    for r in conn.execute(sa.text(_PRIVILEGES), params):
        if list(r.granted) != list(r.defaults):
            result[r.schema].add(PRIVILEGES, r.name, "; ".join(r.granted) or "none")
    for r in conn.execute(sa.text(_OWNERS), params):
        result[r.schema].add(OWNER, _strip(r.schema, r.name), f"owned by {r.owner}")
    for r in conn.execute(sa.text(_COMMENTS), params):
        result[r.schema].add(COMMENT, r.name, r.description)
    return {schema: snapshot.structure() for schema, snapshot in result.items()}


class _Snapshot(SchemaStructure):
    """A structure being read: facts about an extension's relations (named by the relation, or
    "relation.part") are left out as they arrive."""

    def __init__(self, schema: str, extension: set[tuple[str, str]]) -> None:
        super().__init__(schema)
        self._extension = {name for owner, name in extension if owner == schema}

    def add(self, kind: str, name: str, definition: str) -> None:
        if name.split(".", 1)[0] not in self._extension:
            super().add(kind, name, definition)

    def structure(self) -> SchemaStructure:
        return SchemaStructure(self.schema, self.objects)


# One row per schema: an md5 over every structural fact, computed by the server from raw catalog
# columns (attribute numbers, type oids, flags) rather than deparsed definitions, which are the
# slow part of reading a catalog. Equal fingerprints imply equal structure (every input of the
# deparsed definitions is covered); unequal fingerprints may still hide equal structure (e.g. a
# column dropped and re-added gets a new attnum), which only costs an extra in-depth comparison.
# The schema's own name is stripped from the few deparsed expressions (defaults, CHECK and index
# expressions), so tenants compare equal to each other.
_FINGERPRINTS = r"""
WITH s AS MATERIALIZED (
    SELECT oid, nspname, nspowner, nspacl FROM pg_namespace WHERE nspname = ANY(:schemas)
), owned AS MATERIALIZED (
    -- What the schemas hold, found through pg_depend's index on the referenced object: every
    -- table, view, sequence, standalone type and function depends on its schema (SET SCHEMA
    -- moves the dependency with the object). pg_class, pg_type and pg_proc have no index on the
    -- namespace alone: scanning them whole once per chunk made drift grow with the square of
    -- the fleet (40 chunks, each scanning 600,000 relations, at 100,000 tenants). This way a
    -- chunk, or one tenant's structure check, costs what its own schemas hold.
    SELECT d.classid, d.objid FROM s
    JOIN pg_depend d ON d.refclassid = 'pg_namespace'::regclass AND d.refobjid = s.oid
), relations AS MATERIALIZED (
    -- Relations that depend on their schema, and composite types' relations (their pg_type
    -- row holds the dependency). Indexes are reached through their table, below.
    SELECT o.objid AS oid FROM owned o WHERE o.classid = 'pg_class'::regclass
  UNION ALL
    SELECT t.typrelid FROM owned o JOIN pg_type t ON t.oid = o.objid
    WHERE o.classid = 'pg_type'::regclass AND t.typtype = 'c' AND t.typrelid <> 0
), rels AS MATERIALIZED (
    -- Every other catalog is reached from here through its index on the relation's oid.
    SELECT c.oid, c.relnamespace AS ns, c.relname, c.relkind, c.relam, c.reltype, s.nspname,
           c.relrowsecurity, c.relforcerowsecurity, c.relacl, c.reloptions,
           CASE WHEN c.relowner = s.nspowner THEN '' ELSE c.relowner::text END AS owner
    FROM (SELECT x.oid FROM relations x
          UNION ALL
          SELECT i.indexrelid FROM relations x JOIN pg_index i ON i.indrelid = x.oid) AS found
    JOIN pg_class c ON c.oid = found.oid
    JOIN s ON s.oid = c.relnamespace
    WHERE NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_class'::regclass
                      AND e.objid = c.oid AND e.deptype = 'e')
), parts AS (
    SELECT r.ns, concat_ws('|', 't', r.relname, r.relkind, r.relrowsecurity,
        r.relforcerowsecurity, r.relacl::text, r.owner) AS item
    FROM rels r WHERE r.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  UNION ALL
    SELECT s.oid, concat_ws('|', 'n', s.nspacl::text) FROM s WHERE s.nspacl IS NOT NULL
  UNION ALL
    SELECT r.ns, concat_ws('|', 'd', r.relname, d.objsubid, d.description)
    FROM rels r JOIN pg_description d ON d.objoid = r.oid AND d.classoid = 'pg_class'::regclass
  UNION ALL
    SELECT r.ns, concat_ws('|', 'p', r.relname, p.polname, p.polcmd, p.polpermissive,
        p.polroles::text,
        {strip:p.polqual:pg_get_expr(p.polqual, p.polrelid)},
        {strip:p.polwithcheck:pg_get_expr(p.polwithcheck, p.polrelid)})
    FROM rels r JOIN pg_policy p ON p.polrelid = r.oid
  UNION ALL
    SELECT t.typnamespace, concat_ws('|', 'y', t.typname, t.typtype,
        {type:t.typbasetype:t.typnamespace},
        t.typtypmod, t.typnotnull, t.typdefault, t.typacl::text,
        CASE WHEN t.typowner = s.nspowner THEN '' ELSE t.typowner::text END,
        (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
         FROM pg_enum e WHERE e.enumtypid = t.oid),
        (SELECT string_agg(k.conname || ' ' || pg_get_constraintdef(k.oid), ',' ORDER BY k.conname)
         FROM pg_constraint k WHERE k.contypid = t.oid),
        (SELECT string_agg(a.attname || ' ' || {type:a.atttypid:t.typnamespace} || ' '
                           || a.atttypmod, ','
                           ORDER BY a.attnum)
         FROM pg_attribute a WHERE t.typtype = 'c' AND a.attrelid = t.typrelid
           AND a.attnum > 0 AND NOT a.attisdropped),
        (SELECT {type:g.rngsubtype:t.typnamespace} FROM pg_range g WHERE g.rngtypid = t.oid))
    -- Enums, domains, ranges and composite types (a table's row type depends on the table,
    -- not on the schema, so it is not found here).
    FROM owned o
    JOIN pg_type t ON o.classid = 'pg_type'::regclass AND t.oid = o.objid
    JOIN s ON s.oid = t.typnamespace
    WHERE (t.typtype IN ('e', 'd', 'r')
           OR (t.typtype = 'c'
               AND t.oid IN (SELECT r.reltype FROM rels r WHERE r.relkind = 'c')))
      AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_type'::regclass
                      AND e.objid = t.oid AND e.deptype = 'e')
  UNION ALL
    SELECT r.ns, concat_ws('|', 'c', r.relname, a.attname, a.attnum,
        {type:a.atttypid:r.ns},
        a.atttypmod, a.attnotnull, a.attidentity, a.attgenerated,
        {strip:d.adbin:pg_get_expr(d.adbin, d.adrelid)})
    FROM rels r
    JOIN pg_attribute a ON a.attrelid = r.oid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE r.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
    SELECT r.ns, concat_ws('|', 'i', r.relname, tc.relname, i.indisunique,
        i.indisprimary, i.indisvalid, {nulls_not_distinct}, am.amname, i.indkey::text,
        i.indclass::text, i.indoption::text, i.indcollation::text, coalesce(r.reloptions::text, ''),
        {strip:i.indexprs:pg_get_expr(i.indexprs, i.indrelid)},
        {strip:i.indpred:pg_get_expr(i.indpred, i.indrelid)})
    FROM rels r
    JOIN pg_index i ON i.indexrelid = r.oid
    JOIN pg_class tc ON tc.oid = i.indrelid
    JOIN pg_am am ON am.oid = r.relam
    WHERE NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_class'::regclass
                      AND e.objid = i.indrelid AND e.deptype = 'e')
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
        q.seqmin, q.seqmax, q.seqstart, q.seqcache, q.seqcycle,
        (SELECT d.refobjsubid || ' ' || tr.relname FROM pg_depend d
         JOIN pg_class tr ON tr.oid = d.refobjid
         WHERE d.classid = 'pg_class'::regclass AND d.objid = r.oid
           AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
    FROM rels r JOIN pg_sequence q ON q.seqrelid = r.oid
  UNION ALL
    SELECT r.ns, concat_ws('|', 'g', r.relname, t.tgname,
        {strip:t.oid:pg_get_triggerdef(t.oid)})
    FROM rels r JOIN pg_trigger t ON t.tgrelid = r.oid
    WHERE NOT t.tgisinternal
  UNION ALL
    SELECT p.pronamespace, concat_ws('|', 'f', p.proname,
        {strip:p.oid:pg_get_function_identity_arguments(p.oid)},
        {type:p.prorettype:p.pronamespace}, md5(p.prosrc), p.proacl::text,
        CASE WHEN p.proowner = r.nspowner THEN '' ELSE p.proowner::text END)
    FROM owned o
    JOIN pg_proc p ON o.classid = 'pg_proc'::regclass AND p.oid = o.objid
    JOIN s AS r ON r.oid = p.pronamespace  -- named r: the schema name is stripped as r's
    WHERE NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_proc'::regclass
                      AND e.objid = p.oid AND e.deptype = 'e')
)
-- COLLATE "C": a byte order is all the fingerprint needs, and sorting tens of thousands of
-- items with the database's linguistic collation was most of the query's time.
SELECT s.nspname AS schema,
       md5(coalesce(string_agg(parts.item, E'\n' ORDER BY parts.item COLLATE "C"), ''))
       AS fingerprint
FROM s LEFT JOIN parts ON parts.ns = s.oid
GROUP BY s.nspname
"""


def _strip_sql(guard: str, expression: str) -> str:
    """SQL that strips the row's own schema name (r.nspname) from a deparsed expression.

    ``guard`` is the raw catalog column being deparsed: most rows have none (no default, no
    index expression) and skip the per-row subquery, which costs about as much as deparsing.
    The subquery deparses once for both the test and the result (deparsing twice measured
    slower); the regular expression only runs when the name occurs at all (quoted or not:
    ``"Name".f()`` as pg_get_triggerdef writes a name that needs quoting).
    """
    return (
        f"CASE WHEN {guard} IS NOT NULL THEN "
        "(SELECT CASE WHEN strpos(x.e, r.nspname) > 0 THEN "
        "regexp_replace(x.e, '(^|[^\\w\"])(\"?)' || r.nspname || '\\2\\.', '\\1', 'g') "
        f"ELSE x.e END FROM (SELECT {expression} AS e) AS x) END"
    )


_STRIP = re.compile(r"\{strip:([^{}:]+):([^{}]+)\}")


def _type_sql(type_oid: str, namespace: str) -> str:
    """SQL naming a type the same way in every tenant: a built-in type by its oid, a type of
    the row's own schema (``namespace``) by its name, any other type by its oid.

    Each tenant's own enum, domain or composite type has an oid of its own: by oid, a column
    of such a type made every tenant's fingerprint unique, so drift compared every tenant in
    depth and a structure check before a replayed segment never matched its reference.
    """
    return (
        f"CASE WHEN {type_oid} < 16384::oid THEN {type_oid}::text ELSE "
        "(SELECT CASE WHEN y.typnamespace = " + namespace + " THEN y.typname::text "
        f"ELSE y.oid::text END FROM pg_type y WHERE y.oid = {type_oid}) END"
    )


_TYPE = re.compile(r"\{type:([^{}:]+):([^{}]+)\}")


@functools.cache
def _fingerprints_query(nulls_not_distinct: bool) -> sa.TextClause:
    """The fingerprint query for a server with (PostgreSQL 15 on) or without NULLS NOT
    DISTINCT, built once: a structure check before each replayed segment reads it."""
    query = _STRIP.sub(lambda m: _strip_sql(m.group(1), m.group(2)), _FINGERPRINTS)
    query = _TYPE.sub(lambda m: _type_sql(m.group(1), m.group(2)), query)
    nulls = "i.indnullsnotdistinct" if nulls_not_distinct else "false"
    return sa.text(query.replace("{nulls_not_distinct}", nulls))


# Up to this many schemas, a fingerprint read walks the catalogs' indexes (see below).
_FEW_SCHEMAS = 10


def read_fingerprints(conn: Connection, schemas: Sequence[str]) -> dict[str, str]:
    """A structural fingerprint per existing schema, in one query (see _FINGERPRINTS).

    Call inside a transaction: JIT is switched off for it. The query's cost estimate is far
    above jit_above_cost (catalog subqueries are estimated badly), and compiling it took 2 of
    the 2.5 seconds a chunk of 500 schemas cost on a server built with LLVM.

    For a few schemas (a tenant's structure checked before a replayed segment) hash and merge
    joins are switched off too: the planner, misled by the same estimates, hashes whole
    catalogs (every tenant's columns and constraints), so one schema's check cost what the
    whole database holds, 100 ms at 200 tenants of 260 relations and growing with each
    tenant. Nested loops over the catalogs' indexes cost what the schema holds (20 ms there).

    The settings are put back as they were afterwards: the caller's transaction may be a
    tenant's migration, whose own statements must plan as they always do. They are set after a
    savepoint, and rolling back to it undoes them (PostgreSQL documents that for SET LOCAL):
    two round trips in all, where reading, setting and restoring each one took seven. A
    tenant's structure is checked before each replayed segment that follows a data migration,
    so those round trips were a sixth of a replayed tenant's time on a busy server.
    """
    nulls_not_distinct = (conn.dialect.server_version_info or (0,)) >= (15,)
    statement = _fingerprints_statement(nulls_not_distinct, len(schemas) <= _FEW_SCHEMAS)
    rows = conn.execute(statement, {"schemas": list(schemas)}).all()
    conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}; RELEASE SAVEPOINT {_SAVEPOINT}")
    return {r.schema: r.fingerprint for r in rows}


_SAVEPOINT = "tenantmig_fingerprints"


@functools.cache
def _fingerprints_statement(nulls_not_distinct: bool, few: bool) -> sa.TextClause:
    """One string: the savepoint, the planner settings, then the fingerprint query, whose rows
    the driver returns (the last statement's)."""
    settings = "SET LOCAL jit = off"
    if few:
        settings += "; SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"
    query = _fingerprints_query(nulls_not_distinct).text
    return sa.text(f"SAVEPOINT {_SAVEPOINT}; {settings}; {query}")


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
