"""Comparing a schema's snapshot with the reference its migrations produce, and the statements
that bring the simple differences back."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import replace

from tenantmig.chains.context import VERSION_TABLE
from tenantmig.schema.catalog import COLUMN, DEFAULT, NULLABILITY, SchemaStructure
from tenantmig.schema.drift_report import Difference
from tenantmig.schema.owned import OWNED, RUNS
from tenantmig.server.identifiers import quote_as_alembic


def compare(
    expected: SchemaStructure, actual: SchemaStructure, ignore: Collection[str] = ()
) -> tuple[Difference, ...]:
    """Every difference between two snapshots (kinds in ``ignore`` left out), each with a
    suggested statement where one is simple and safe to name.

    The order is the order the suggestions run in (see ``fix_rank``), so a reader, the JSON and
    the renderers all list a runnable sequence: one fix per difference, each needing only what
    the schema has or an earlier fix makes.
    """
    expected, actual = _without_version_table(expected), _without_version_table(actual)
    found: list[Difference] = []
    missing_columns = set(expected.objects.get(COLUMN, {})) - set(actual.objects.get(COLUMN, {}))
    extra_columns = set(actual.objects.get(COLUMN, {})) - set(expected.objects.get(COLUMN, {}))
    for kind in sorted((set(expected.objects) | set(actual.objects)) - set(ignore)):
        want = expected.objects.get(kind, {})
        have = actual.objects.get(kind, {})
        for name in sorted(set(want) | set(have)):
            if kind in (NULLABILITY, DEFAULT) and name in (missing_columns | extra_columns):
                continue  # implied by the missing/extra column itself
            if name not in have:
                found.append(Difference(kind, name, "missing", want[name], None))
            elif name not in want:
                found.append(Difference(kind, name, "extra", None, have[name]))
            elif want[name] != have[name]:
                found.append(Difference(kind, name, "changed", want[name], have[name]))
    differences = sorted(_collapse_whole_tables(found), key=fix_rank)
    unfixable = _unfixable(differences, expected, actual)
    return tuple(
        replace(d, suggested_sql=None if d in unfixable else suggest(d, expected))
        for d in differences
    )


def fix_rank(d: Difference) -> tuple[int, str, str]:
    """Where a difference's fix runs: drops first, foreign keys before the keys they need and
    constraints before indexes (an index can be what a foreign key needs); then what is added
    or changed, each after what it needs: tables, columns and their facts, keys, checks and
    indexes, and last the foreign keys that need those keys.

    Drops first also free a name for what comes back under it (a plain unique index where the
    migrations have a unique constraint of that name).
    """
    if d.change == "extra" and d.kind == "constraint":
        return (0 if _constraint_type(d.actual) == "FOREIGN KEY" else 1, d.kind, d.object)
    if d.change == "extra" and d.kind == "index":
        return (2, d.kind, d.object)
    if d.kind in ("table", "sequence", "type", "function"):
        return (3, d.kind, d.object)
    if d.kind == COLUMN and d.change == "missing":
        return (4, d.kind, d.object)
    if d.kind in (COLUMN, NULLABILITY, DEFAULT):
        return (5, d.kind, d.object)
    if d.kind == "constraint" and _constraint_type(d.expected) == "FOREIGN KEY":
        return (7, d.kind, d.object)
    if d.kind in ("constraint", "index"):
        return (6, d.kind, d.object)
    return (8, d.kind, d.object)


def suggest(d: Difference, expected: SchemaStructure) -> str | None:
    """The statement that brings one difference back to the migrations, for simple cases.

    Extra constraints and indexes are dropped (no data is lost); an extra constraint is
    dropped as a constraint, which takes the index behind it along (DROP INDEX on that index
    fails). Extra columns and tables are never dropped: they hold data.
    """
    table, _, part = d.object.partition(".")
    if d.kind == "index":
        drop = f"DROP INDEX {quote_as_alembic(d.object)};"
        if d.change == "missing":
            return f"{d.expected};"
        if d.change == "extra":
            return drop
        if d.change == "changed":
            return f"{drop} {d.expected};"
        return None
    if d.kind == COLUMN and d.change == "missing":
        default = expected.objects.get(DEFAULT, {}).get(d.object)
        not_null = expected.objects.get(NULLABILITY, {}).get(d.object) == "NOT NULL"
        return (
            f"ALTER TABLE {quote_as_alembic(table)} ADD COLUMN {quote_as_alembic(part)} "
            f"{d.expected}"
            + (f" DEFAULT {default}" if default else "")
            + (" NOT NULL" if not_null else "")
            + ";"
        )
    if d.kind == "constraint":
        alter = f"ALTER TABLE {quote_as_alembic(table)}"
        drop = f"DROP CONSTRAINT {quote_as_alembic(part)}"
        add = f"ADD CONSTRAINT {quote_as_alembic(part)} {d.expected}"
        if d.change == "missing":
            return f"{alter} {add};"
        if d.change == "extra":
            return f"{alter} {drop};"
        if d.change == "changed":  # one statement: never without the constraint in between
            return f"{alter} {drop}, {add};"
        return None
    alter = f"ALTER TABLE {quote_as_alembic(table)} ALTER COLUMN {quote_as_alembic(part)}"
    if d.kind == NULLABILITY and d.change == "changed":
        return f"{alter} {'SET' if d.expected == 'NOT NULL' else 'DROP'} NOT NULL;"
    if d.kind == DEFAULT and d.change in ("missing", "changed"):
        return f"{alter} SET DEFAULT {d.expected};"
    if d.kind == DEFAULT and d.change == "extra":
        return f"{alter} DROP DEFAULT;"
    return None


def _constraint_type(definition: str | None) -> str:
    """PRIMARY KEY, UNIQUE, EXCLUDE, CHECK or FOREIGN KEY, from pg_get_constraintdef's text."""
    for kind in ("PRIMARY KEY", "UNIQUE", "EXCLUDE", "CHECK", "FOREIGN KEY"):
        if (definition or "").startswith(kind):
            return kind
    return ""


# pg_get_constraintdef: "FOREIGN KEY (a) REFERENCES table(b) ..." (the table quoted if it must
# be, and qualified only when it is in another schema).
_REFERENCES = re.compile(r' REFERENCES ((?:"(?:[^"]|"")*"|[^\s("])+)\(([^)]*)\)')
# The columns of a key: "PRIMARY KEY (a, b)", "UNIQUE NULLS NOT DISTINCT (a)", or a unique
# index's "... USING btree (a, b)".
_KEY_COLUMNS = re.compile(r"^(?:PRIMARY KEY|UNIQUE(?: NULLS (?:NOT )?DISTINCT)?) \(([^)]*)\)")
_INDEX_COLUMNS = re.compile(r" USING \w+ \(([^)]*)\)")
_Key = tuple[str | None, frozenset[str] | None]  # a table and the columns of a key on it


def _referenced(definition: str | None) -> _Key:
    """The table and columns a foreign key references (the key it needs there)."""
    match = _REFERENCES.search(definition or "")
    if match is None:
        return None, None
    name = match.group(1)
    table = name[1:-1].replace('""', '"') if name.startswith('"') else name
    return table, frozenset(match.group(2).split(", "))


def _key(d: Difference, definition: str | None) -> _Key:
    """The table and columns of the key this constraint or index is (columns None when they
    cannot be read: then it counts as any key of its table)."""
    if d.kind == "constraint":
        match = _KEY_COLUMNS.search(definition or "")
    else:
        match = _INDEX_COLUMNS.search(definition or "")
    return _table_of(d), frozenset(match.group(1).split(", ")) if match else None


def _needs(reference: _Key, keys: set[_Key]) -> bool:
    """Whether a foreign key's reference may be served by one of ``keys``."""
    table, columns = reference
    return any(t == table and (c is None or c == columns) for t, c in keys)


def _index_table(definition: str | None) -> str | None:
    match = re.search(r" ON (?:ONLY )?(\S+) USING ", definition or "")
    return match.group(1).strip('"') if match is not None else None


_NEXTVAL = re.compile(r"nextval\('((?:[^']|'')+)'::regclass\)")


def _is_key(d: Difference, definition: str | None) -> bool:
    """Whether ``definition`` (of this constraint or index) is a key a foreign key can depend
    on: a primary key, a unique constraint or a unique index (an exclusion constraint's index
    is not unique, so no foreign key can use it)."""
    if d.kind == "constraint":
        return _constraint_type(definition) in ("PRIMARY KEY", "UNIQUE")
    return d.kind == "index" and (definition or "").startswith("CREATE UNIQUE INDEX")


def _table_of(d: Difference) -> str | None:
    if d.kind == "constraint":
        return d.object.partition(".")[0]
    return _index_table(d.expected if d.expected is not None else d.actual)


def _unfixable(
    differences: list[Difference], expected: SchemaStructure, actual: SchemaStructure
) -> set[Difference]:
    """Differences whose fix could not run where it stands in the list, so none is named
    (better than one that fails half way through):

    - a key re-made (dropped, then added) while a foreign key that stays depends on it:
      PostgreSQL refuses the drop;
    - a foreign key to a missing table, or to a table whose key was left unfixed;
    - a column whose default takes from a missing sequence (dropping a serial column takes
      its sequence along).
    """
    missing = {(d.kind, d.object) for d in differences if d.change == "missing"}
    dropped = {d.object for d in differences if d.change == "extra" and d.kind == "constraint"}
    kept_references = {
        _referenced(definition)
        for name, definition in actual.objects.get("constraint", {}).items()
        if name not in dropped and _constraint_type(definition) == "FOREIGN KEY"
    }
    # The keys PostgreSQL would refuse to drop, and the foreign keys that need them re-made.
    unfixable = {
        d
        for d in differences
        if d.change == "changed"
        and _is_key(d, d.actual)
        and any(_needs(reference, {_key(d, d.actual)}) for reference in kept_references)
    }
    unfixed_keys = {_key(d, d.expected) for d in unfixable}
    for d in differences:
        if d.kind == "constraint" and d.change in ("missing", "changed"):
            reference = _referenced(d.expected)
            if reference[0] is not None and (
                ("table", reference[0]) in missing or _needs(reference, unfixed_keys)
            ):
                unfixable.add(d)
        if d.kind == COLUMN and d.change == "missing":
            default = expected.objects.get(DEFAULT, {}).get(d.object, "")
            for sequence in _NEXTVAL.findall(default):
                if ("sequence", sequence.replace("''", "'").strip('"')) in missing:
                    unfixable.add(d)
    return unfixable


def _collapse_whole_tables(found: list[Difference]) -> tuple[Difference, ...]:
    """A missing or extra table implies its columns, constraints, indexes and triggers: report
    the table once instead of every part of it."""
    whole = {(d.object, d.change) for d in found if d.kind == "table" and d.change != "changed"}
    if not whole:
        return tuple(found)

    def part_of_whole_table(d: Difference) -> bool:
        if d.kind == "table":
            return False
        if "." in d.object and (d.object.split(".", 1)[0], d.change) in whole:
            return True
        if (d.object, d.change) in whole:  # its row security, privileges, owner, comment
            return True
        if d.kind == "sequence":  # a serial or identity column's sequence
            definition = d.expected if d.change == "missing" else d.actual
            match = re.search(r" OWNED BY (\w+)\.", definition or "")
            return match is not None and (match.group(1), d.change) in whole
        if d.kind == "index":
            table = _index_table(d.expected if d.change == "missing" else d.actual)
            return table is not None and (table, d.change) in whole
        return False

    return tuple(d for d in found if not part_of_whole_table(d))


def _without_version_table(structure: SchemaStructure) -> SchemaStructure:
    """Alembic's bookkeeping is checked by version drift, not compared as structure."""
    cleaned = SchemaStructure(structure.schema)
    for kind, objects in structure.objects.items():
        for name, definition in objects.items():
            if name.split(".", 1)[0] in (VERSION_TABLE, f"{VERSION_TABLE}_pkc"):
                continue
            cleaned.add(kind, name, definition)
    return cleaned


def without_own_tables(structure: SchemaStructure) -> SchemaStructure:
    cleaned = SchemaStructure(structure.schema)
    for kind, objects in structure.objects.items():
        for name, definition in objects.items():
            table = name.split(".", 1)[0]
            if table in OWNED or name in OWNED or RUNS in definition:  # the FK to it too
                continue
            cleaned.add(kind, name, definition)
    return cleaned
