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
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.engine import Connection, Engine

from tenantmig.chains.runner import raised_by_autocommit_block, run_alembic
from tenantmig.chains.scripts import ChainScripts
from tenantmig.errors import ConfigError
from tenantmig.schema.catalog import (
    COLUMN,
    SchemaStructure,
    invalid_indexes,
    read_fingerprints,
    read_structures,
)
from tenantmig.schema.compare import compare, without_own_tables
from tenantmig.schema.drift_report import Difference, DriftReport, SchemaDrift
from tenantmig.schema.registry import Tenant
from tenantmig.schema.state import SchemaState, classify
from tenantmig.schema.versions import SchemaVersion, read_versions
from tenantmig.server.config import Chain, Settings
from tenantmig.server.directory import CONTROL
from tenantmig.server.flavour import ServerFlavour
from tenantmig.server.identifiers import quote_ident
from tenantmig.server.reads import own_reads

REFERENCE_SCHEMA = "tenantmig_reference"
_CHUNK = 500
# Fingerprints are read for this many schemas per query: each query scans pg_class and pg_type
# once (neither has an index on the namespace alone), so fewer, larger chunks keep 10,000
# tenants from costing 20 scans of a catalog that grows with them. Catalog reads take no locks
# on tenant tables, so a large chunk holds nothing but memory for the result.
_FINGERPRINT_CHUNK = 2500


class ReferenceBuilder:
    """Expected structures per revision, built once each by running the migrations."""

    def __init__(
        self,
        settings: Settings,
        conn: Connection,
        flavour: ServerFlavour,
        chain: Chain,
        cache: dict[str | None, SchemaStructure] | None = None,
    ) -> None:
        self.settings = settings
        self.conn = conn
        self.flavour = flavour
        self.scripts = ChainScripts(settings, chain)
        # Shared by the databases of one server version and kind: built once for all of them.
        self._cache: dict[str | None, SchemaStructure] = {} if cache is None else cache

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
            self.flavour.begin_scratch(self.conn)
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
                    self.flavour.begin_scratch(conn)
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
    database_name: str = CONTROL,
    reference_cache: dict[str | None, SchemaStructure] | None = None,
) -> DriftReport:
    """Drift of ``tenants`` (all in the database of ``conn``, the directory's
    ``database_name``) and, with ``include_shared``, of the shared schema. References come
    from ``reference_cache`` where another database of the same server version built them."""
    tenant_refs = ReferenceBuilder(settings, conn, flavour, "tenant", reference_cache)
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
    limit = settings.statement_timeout_s
    for chunk, versions, fingerprints in _read_chunks(conn.engine, tenants, limit):
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
    with own_reads(conn, limit):
        invalid = invalid_indexes(conn, None)
    compared: dict[tuple[str | None, str], tuple[Difference, ...]] = {}
    sample_keys = list(samples.items())
    for start in range(0, len(sample_keys), _CHUNK):
        part = sample_keys[start : start + _CHUNK]
        with own_reads(conn, limit):
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
                    database=database_name,
                )
            )
    return report


_READERS = 2  # connections reading catalogs at once: the server does the work, on its cores


def _read_chunks(
    engine: Engine, tenants: Sequence[Tenant], statement_timeout_s: float | None
) -> Iterator[tuple[Sequence[Tenant], dict[str, SchemaVersion], dict[str, str]]]:
    """(chunk, versions, fingerprints) for every chunk of ``tenants``, in order; each
    statement runs for at most ``statement_timeout_s`` (None: no limit).

    The queries are all server work (catalog scans, deparsing); two connections keep two server
    cores busy, so 1,000 tenants are read as two chunks of 500 at once, 10,000 as four of 2,500.
    """
    size = max(_CHUNK // 2, min(_FINGERPRINT_CHUNK, -(-len(tenants) // _READERS)))
    chunks = [tenants[start : start + size] for start in range(0, len(tenants), size)]

    def read(chunk: Sequence[Tenant]) -> tuple[dict[str, SchemaVersion], dict[str, str]]:
        schemas = [t.schema for t in chunk]
        with engine.connect() as conn:
            versions = read_versions(conn, schemas, statement_timeout_s=statement_timeout_s)
            with own_reads(conn, statement_timeout_s):
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
    limit = settings.statement_timeout_s
    version = read_versions(conn, [schema], statement_timeout_s=limit)[schema]
    with own_reads(conn, limit):
        structure = read_structures(conn, [schema])[schema] if version.schema_exists else None
    state, detail = version_drift(version, refs.scripts)
    differences: tuple[Difference, ...] = ()
    if structure is not None and _comparable(version, refs.scripts):
        expected = refs.expected(version.revision)
        differences = compare(expected, without_own_tables(structure), settings.drift_ignore)
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
