"""Drift: which schemas are not what their migrations say they should be.

Version drift comes from the bulk version read. Structural drift compares each schema's catalog
snapshot with the snapshot of a *reference* schema built by running the migrations themselves to
the same revision (never a hand-written model that could disagree with them). References are
built inside a transaction that is rolled back, so nothing is left behind, even if the process
dies half way.

Speed: catalogs are read in bulk for chunks of schemas, each schema is reduced to a fingerprint,
and only one schema per distinct (revision, fingerprint) is compared in depth. Thousands of
tenants with the same structure cost one comparison.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.engine import Connection, Engine

from tenantmig.chains.context import VERSION_TABLE
from tenantmig.chains.runner import raised_by_autocommit_block, run_alembic
from tenantmig.chains.scripts import ChainScripts
from tenantmig.errors import ConfigError
from tenantmig.schema.catalog import (
    COLUMN,
    DEFAULT,
    NULLABILITY,
    SchemaStructure,
    invalid_indexes,
    read_fingerprints,
    read_structures,
)
from tenantmig.schema.owned import OWNED, RUNS
from tenantmig.schema.registry import Tenant
from tenantmig.schema.state import SchemaState, classify
from tenantmig.schema.versions import SchemaVersion, read_versions
from tenantmig.server.config import Chain, Settings
from tenantmig.server.flavour import ServerFlavour
from tenantmig.server.identifiers import quote_as_alembic, quote_ident

REFERENCE_SCHEMA = "tenantmig_reference"
_CHUNK = 500
# Fingerprints are read for this many schemas per query: each query scans pg_class and pg_type
# once (neither has an index on the namespace alone), so fewer, larger chunks keep 10,000
# tenants from costing 20 scans of a catalog that grows with them. Catalog reads take no locks
# on tenant tables, so a large chunk holds nothing but memory for the result.
_FINGERPRINT_CHUNK = 2500


@dataclass(frozen=True)
class Difference:
    kind: str  # table, column, column nullability, column default, index, constraint, ...
    object: str
    change: str  # missing, extra, changed
    expected: str | None
    actual: str | None
    # The statement that would make the schema what its migrations say, for the simple cases
    # (a missing index, column or constraint, a nullability or default); unqualified, to run
    # with search_path set to the tenant's schema. Shown, never executed by tenantmig.
    suggested_sql: str | None = None

    def headline(self) -> str:
        """``missing index ix_orders_status``: what is wrong, in a few words."""
        return f"{self.change} {self.kind} {self.object}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "object": self.object,
            "change": self.change,
            "expected": self.expected,
            "actual": self.actual,
            "suggested_sql": self.suggested_sql,
        }

    def describe(self) -> str:
        if self.change == "missing":
            return f"missing {self.kind} {self.object}: expected {self.expected}"
        if self.change == "extra":
            return f"extra {self.kind} {self.object}: {self.actual}"
        return f"{self.kind} {self.object}: expected {self.expected}, found {self.actual}"


@dataclass(frozen=True)
class SchemaDrift:
    name: str
    schema: str
    revision: str | None
    version_drift: str | None  # None when at head; else behind, unknown_revision, ...
    differences: tuple[Difference, ...] = ()
    detail: str | None = None
    behind_by: int | None = None  # revisions behind head, when behind

    def headline(self) -> str:
        """What is wrong with this schema, most serious first, in a few words."""
        parts: list[str] = []
        if self.version_drift == "behind" and self.behind_by:
            parts.append(f"{self.behind_by} revision(s) behind")
        elif self.version_drift is not None:
            parts.append(self.version_drift.replace("_", " "))
        if self.differences:
            ordered = sorted(self.differences, key=_difference_rank)
            more = len(ordered) - 1
            parts.append(
                ordered[0].headline() + (f" and {more} more difference(s)" if more else "")
            )
        return "; ".join(parts)

    @property
    def drifted(self) -> bool:
        return self.version_drift is not None or bool(self.differences)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "schema": self.schema,
            "revision": self.revision or "base",
            "version_drift": self.version_drift,
            "behind_by": self.behind_by,
            "detail": self.detail,
            "differences": [d.to_json() for d in self.differences],
        }


def _difference_rank(d: Difference) -> tuple[int, str, str]:
    """Missing tables first, then missing parts, then the rest."""
    if d.kind == "table" and d.change == "missing":
        return (0, d.kind, d.object)
    return (1 if d.change == "missing" else 2, d.kind, d.object)


@dataclass(frozen=True)
class DriftGroup:
    """Schemas with identical drift, headed by what is wrong with them."""

    title: str
    severity: int  # 0: version drift, 1: missing tables, 2: any other difference
    tenants: list[SchemaDrift]

    @property
    def example(self) -> SchemaDrift:
        return self.tenants[0]

    def suggested_sql(self) -> list[str]:
        return [d.suggested_sql for d in self.example.differences if d.suggested_sql]

    def to_json(self) -> dict[str, Any]:
        first = self.example
        return {
            "title": self.title,
            "severity": self.severity,
            "tenants": [t.name for t in self.tenants],
            "version_drift": first.version_drift,
            "behind_by": first.behind_by,
            "detail": first.detail,
            "differences": [d.to_json() for d in first.differences],
            "suggested_sql": self.suggested_sql(),
        }


@dataclass
class DriftReport:
    head: str | None
    shared_head: str | None
    tenants_checked: int
    shared: SchemaDrift | None
    drifted: list[SchemaDrift] = field(default_factory=list)
    database: str = ""  # host/database, password masked
    generated_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    ignored: tuple[str, ...] = ()  # kinds left out (drift_ignore)

    @property
    def any_drift(self) -> bool:
        return bool(self.drifted) or (self.shared is not None and self.shared.drifted)

    def groups(self) -> list[DriftGroup]:
        """Tenants grouped by identical drift, most serious first (version drift, then missing
        tables, then the rest), larger groups first within each."""
        grouped: dict[tuple[str | None, int | None, tuple[Difference, ...]], list[SchemaDrift]]
        grouped = {}
        for item in self.drifted:
            key = (item.version_drift, item.behind_by, item.differences)
            grouped.setdefault(key, []).append(item)
        found = []
        for items in grouped.values():
            first = items[0]
            if first.version_drift is not None:
                severity = 0
            elif any(d.kind == "table" and d.change == "missing" for d in first.differences):
                severity = 1
            else:
                severity = 2
            found.append(DriftGroup(first.headline(), severity, items))
        return sorted(found, key=lambda g: (g.severity, -len(g.tenants), g.example.name))

    def to_json(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "generated_at": self.generated_at.isoformat(timespec="seconds"),
            "head": self.head or "base",
            "shared_head": self.shared_head or "base",
            "tenants_checked": self.tenants_checked,
            "ignored": list(self.ignored),
            "shared": self.shared.to_json() if self.shared else None,
            "groups": [g.to_json() for g in self.groups()],
            "drifted": [d.to_json() for d in self.drifted],
        }


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
        for d in sorted(_collapse_whole_tables(found), key=_difference_rank)
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


def _without_own_tables(structure: SchemaStructure) -> SchemaStructure:
    cleaned = SchemaStructure(structure.schema)
    for kind, objects in structure.objects.items():
        for name, definition in objects.items():
            table = name.split(".", 1)[0]
            if table in OWNED or name in OWNED or RUNS in definition:  # the FK to it too
                continue
            cleaned.add(kind, name, definition)
    return cleaned


class ReferenceBuilder:
    """Expected structures per revision, built once each by running the migrations."""

    def __init__(
        self, settings: Settings, conn: Connection, flavour: ServerFlavour, chain: Chain
    ) -> None:
        self.settings = settings
        self.conn = conn
        self.flavour = flavour
        self.scripts = ChainScripts(settings, chain)
        self._cache: dict[str | None, SchemaStructure] = {}

    def expected(self, revision: str | None) -> SchemaStructure:
        if revision not in self._cache:
            self._cache[revision] = self._build(revision)
        return self._cache[revision]

    def _build(self, revision: str | None) -> SchemaStructure:
        # A configured scratch schema (roles that may not create schemas) is used as it is:
        # the transaction is rolled back, so it is left empty again.
        scratch = self.settings.scratch_schema
        schema = scratch or REFERENCE_SCHEMA
        transaction = self.conn.begin()
        try:
            if scratch is None:
                self.conn.exec_driver_sql(f"CREATE SCHEMA {quote_ident(schema)}")
            self.flavour.prepare_migration(self.conn, schema, self.settings.timeouts)
            if revision is not None:
                run_alembic(self.conn, self.scripts, schema, "upgrade", revision)
            structure = read_structures(self.conn, [schema])[schema]
        except Exception as exc:
            if not raised_by_autocommit_block(exc):
                raise
            if scratch is not None:
                raise ConfigError(
                    "the chain has autocommit blocks (CREATE INDEX CONCURRENTLY), which cannot "
                    "be built in the rolled-back scratch schema; drift needs a role that may "
                    "create schemas for this chain"
                ) from exc
            transaction.rollback()
            return self._build_outside_transaction(revision)
        finally:
            if transaction.is_active:
                transaction.rollback()  # the reference never outlives this transaction
        return structure

    def _build_outside_transaction(self, revision: str | None) -> SchemaStructure:
        """For chains with autocommit blocks (CREATE INDEX CONCURRENTLY), which cannot run in
        the rolled-back transaction: build in a per-process scratch schema that is committed,
        then dropped. Its own connection carries the session-level settings and is closed."""
        schema = f"{REFERENCE_SCHEMA}_{os.getpid()}"
        with self.conn.engine.connect() as conn:
            try:
                with conn.begin():
                    conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
                    conn.exec_driver_sql(f"CREATE SCHEMA {quote_ident(schema)}")
                    self.flavour.prepare_migration(
                        conn, schema, self.settings.timeouts, local=False
                    )
                if revision is not None:
                    run_alembic(conn, self.scripts, schema, "upgrade", revision, per_migration=True)
                with conn.begin():
                    return read_structures(conn, [schema])[schema]
            finally:
                conn.rollback()
                with conn.begin():
                    conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")


def version_drift(version: SchemaVersion | None, scripts: ChainScripts) -> tuple[str | None, str]:
    """(state, or None when at head; one line for a person), in status's vocabulary."""
    found = classify(version, scripts)
    state = None if found.state is SchemaState.CURRENT else found.state.value
    return state, found.detail


def check(
    settings: Settings,
    conn: Connection,
    flavour: ServerFlavour,
    tenants: Sequence[Tenant],
    *,
    include_shared: bool = True,
    database: str = "",
) -> DriftReport:
    tenant_refs = ReferenceBuilder(settings, conn, flavour, "tenant")
    scripts = tenant_refs.scripts
    ignore = settings.drift_ignore
    report = DriftReport(
        head=scripts.head,
        shared_head=None,
        tenants_checked=len(tenants),
        shared=None,
        database=database,
        ignored=tuple(sorted(ignore)),
    )
    if include_shared:
        shared_refs = ReferenceBuilder(settings, conn, flavour, "shared")
        report.shared_head = shared_refs.scripts.head
        report.shared = _check_shared(settings, conn, shared_refs)

    # Fingerprint every schema on the server, chunk by chunk; remember one sample schema per
    # distinct (revision, fingerprint) and read only those samples' catalogs in full.
    samples: dict[tuple[str | None, str], str] = {}
    keyed: list[tuple[Tenant, SchemaVersion | None, str | None]] = []
    for chunk, versions, fingerprints in _read_chunks(conn.engine, tenants):
        for tenant in chunk:
            version = versions.get(tenant.schema)
            fingerprint = fingerprints.get(tenant.schema)
            if version is None or fingerprint is None or not _comparable(version, scripts):
                fingerprint = None
            else:
                samples.setdefault((version.revision, fingerprint), tenant.schema)
            keyed.append((tenant, version, fingerprint))

    # One cheap query for the whole server: a failed CREATE INDEX CONCURRENTLY leaves an
    # INVALID index whose definition may match the expected one exactly.
    with conn.begin():
        invalid = invalid_indexes(conn, None)
    compared: dict[tuple[str | None, str], tuple[Difference, ...]] = {}
    sample_keys = list(samples.items())
    for start in range(0, len(sample_keys), _CHUNK):
        part = sample_keys[start : start + _CHUNK]
        with conn.begin():
            structures = read_structures(conn, [schema for _, schema in part])
        for key, schema in part:
            compared[key] = compare(tenant_refs.expected(key[0]), structures[schema], ignore)
    for tenant, version, fingerprint in keyed:
        state, detail = version_drift(version, scripts)
        differences: tuple[Difference, ...] = ()
        if fingerprint is not None and version is not None:
            differences = compared[(version.revision, fingerprint)]
        differences += tuple(
            Difference(
                "index", name, "invalid", "valid", "INVALID (a failed CREATE INDEX CONCURRENTLY?)"
            )
            for name in invalid.get(tenant.schema, ())
        )
        if state is not None or differences:
            report.drifted.append(
                SchemaDrift(
                    name=tenant.name,
                    schema=tenant.schema,
                    revision=version.revision if version else None,
                    version_drift=state,
                    differences=differences,
                    detail=detail,
                    behind_by=_behind_by(version, scripts) if state == "behind" else None,
                )
            )
    return report


_READERS = 2  # connections reading catalogs at once: the server does the work, on its cores


def _read_chunks(
    engine: Engine, tenants: Sequence[Tenant]
) -> Iterator[tuple[Sequence[Tenant], dict[str, SchemaVersion], dict[str, str]]]:
    """(chunk, versions, fingerprints) for every chunk of ``tenants``, in order.

    The queries are all server work (catalog scans, deparsing); two connections keep two server
    cores busy, so 1,000 tenants are read as two chunks of 500 at once, 10,000 as four of 2,500.
    """
    size = max(_CHUNK // 2, min(_FINGERPRINT_CHUNK, -(-len(tenants) // _READERS)))
    chunks = [tenants[start : start + size] for start in range(0, len(tenants), size)]

    def read(chunk: Sequence[Tenant]) -> tuple[dict[str, SchemaVersion], dict[str, str]]:
        schemas = [t.schema for t in chunk]
        with engine.connect() as conn:
            versions = read_versions(conn, schemas)
            with conn.begin():
                return versions, read_fingerprints(conn, schemas)

    if len(chunks) <= 1:
        for chunk in chunks:
            yield (chunk, *read(chunk))
        return
    with ThreadPoolExecutor(max_workers=_READERS, thread_name_prefix="drift") as pool:
        for chunk, (versions, fingerprints) in zip(chunks, pool.map(read, chunks), strict=True):
            yield chunk, versions, fingerprints


def _behind_by(version: SchemaVersion | None, scripts: ChainScripts) -> int | None:
    if version is None or scripts.head is None:
        return None
    return scripts.position(scripts.head) - scripts.position(version.revision)


def _comparable(version: SchemaVersion, scripts: ChainScripts) -> bool:
    """Structure can only be checked against a revision the migrations know."""
    return version.schema_exists and not version.diverged and scripts.knows(version.revision)


def _check_shared(settings: Settings, conn: Connection, refs: ReferenceBuilder) -> SchemaDrift:
    schema = settings.shared_schema
    version = read_versions(conn, [schema])[schema]
    with conn.begin():
        structure = read_structures(conn, [schema])[schema] if version.schema_exists else None
    state, detail = version_drift(version, refs.scripts)
    differences: tuple[Difference, ...] = ()
    if structure is not None and _comparable(version, refs.scripts):
        expected = refs.expected(version.revision)
        differences = compare(expected, _without_own_tables(structure), settings.drift_ignore)
        # The shared schema (often ``public``) may hold objects that no migration made, such
        # as an extension's functions: only what the migrations define, or tables, count.
        differences = tuple(
            d for d in differences if d.change != "extra" or d.kind in ("table", COLUMN)
        )
    return SchemaDrift(
        name="(shared)",
        schema=schema,
        revision=version.revision,
        version_drift=state,
        differences=differences,
        detail=detail,
        behind_by=_behind_by(version, refs.scripts) if state == "behind" else None,
    )
