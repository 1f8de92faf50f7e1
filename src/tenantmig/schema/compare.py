"""Comparing a schema's snapshot with the reference its migrations produce, and the statements
that bring the simple differences back."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import replace

from tenantmig.chains.context import VERSION_TABLE
from tenantmig.schema.catalog import COLUMN, DEFAULT, NULLABILITY, SchemaStructure
from tenantmig.schema.drift_report import Difference, difference_rank
from tenantmig.schema.owned import OWNED, RUNS
from tenantmig.server.identifiers import quote_as_alembic


def compare(
    expected: SchemaStructure, actual: SchemaStructure, ignore: Collection[str] = ()
) -> tuple[Difference, ...]:
    """Every difference between two snapshots, in a stable order (kinds in ``ignore`` left
    out), each with a suggested statement where one is simple and safe to name."""
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
    return tuple(
        replace(d, suggested_sql=suggest(d, expected))
        for d in sorted(_collapse_whole_tables(found), key=difference_rank)
    )


def suggest(d: Difference, expected: SchemaStructure) -> str | None:
    """The statement that brings one difference back to the migrations, for simple cases."""
    table, _, part = d.object.partition(".")
    if d.kind == "index" and d.change == "missing":
        return f"{d.expected};"
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
    if d.kind == "constraint" and d.change == "missing":
        return (
            f"ALTER TABLE {quote_as_alembic(table)} ADD CONSTRAINT {quote_as_alembic(part)} "
            f"{d.expected};"
        )
    alter = f"ALTER TABLE {quote_as_alembic(table)} ALTER COLUMN {quote_as_alembic(part)}"
    if d.kind == NULLABILITY and d.change == "changed":
        return f"{alter} {'SET' if d.expected == 'NOT NULL' else 'DROP'} NOT NULL;"
    if d.kind == DEFAULT and d.change in ("missing", "changed"):
        return f"{alter} SET DEFAULT {d.expected};"
    if d.kind == DEFAULT and d.change == "extra":
        return f"{alter} DROP DEFAULT;"
    return None


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
            definition = d.expected if d.change == "missing" else d.actual
            match = re.search(r" ON (?:ONLY )?(\S+) USING ", definition or "")
            return match is not None and (match.group(1).strip('"'), d.change) in whole
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
