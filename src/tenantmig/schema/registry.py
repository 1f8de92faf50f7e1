"""The tenant directory: where the list of tenants comes from, and the registry tenantmig keeps.

The list comes from a ``TenantSource`` (server.config): tenantmig's registry, the ``tenants``
table of the shared schema (the only source ``tenants create/register/drop`` write to), a query
over the application's own table, or every schema matching a glob. Whatever the source, each
schema name it yields is validated as a tenant name is before anything runs in it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from tenantmig.errors import (
    ConfigError,
    InvalidTenantName,
    RunAborted,
    SchemaMissing,
    SharedSchemaNotReady,
    TenantExists,
    UnknownTenant,
    some_names,
)
from tenantmig.schema.labels import check_labels, forget_labels, known_labels, read_labels
from tenantmig.schema.placement import place, read_placements
from tenantmig.server.config import TenantSource
from tenantmig.server.directory import CONTROL
from tenantmig.server.errorcodes import first_line
from tenantmig.server.flavour import ServerFlavour
from tenantmig.server.identifiers import qualified, quote_ident, validate_tenant_name

TENANTS_TABLE = "tenants"


@dataclass(frozen=True)
class Tenant:
    name: str
    schema: str
    status: str
    created_at: datetime | None = None
    database: str = CONTROL  # the directory's name of the database holding the schema
    labels: tuple[str, ...] = ()  # sorted (schema/labels.py)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "schema": self.schema,
            "status": self.status,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "database": self.database,
            "labels": list(self.labels),
        }


def require_tenants_table(conn: Connection, shared_schema: str) -> None:
    exists = conn.execute(
        sa.text("SELECT to_regclass(:name) IS NOT NULL"),
        {"name": qualified(shared_schema, TENANTS_TABLE)},
    ).scalar()
    if not exists:
        raise SharedSchemaNotReady(
            f"no {shared_schema}.{TENANTS_TABLE} table yet: run `tenantmig upgrade --shared` "
            "first to create the shared tables"
        )


def list_tenants(conn: Connection, source: TenantSource) -> list[Tenant]:
    """Live tenants from ``source``, ordered by name (registry rows with status 'deleted' are
    left out). A schema name tenantmig could not migrate safely stops the listing with an error
    naming it, before anything runs."""
    if source.kind == "query":
        tenants = _from_query(conn, source)
        if not any(t.labels for t in tenants):  # the query gave none: the table's, if any
            tenants = _labelled(conn, source, tenants)
    elif source.kind == "schemas":
        matching = conn.execute(
            sa.text(
                # Never the shared schema, system schemas, or tenantmig's own scratch and
                # reference schemas (a glob such as t* would match them).
                "SELECT nspname FROM pg_namespace WHERE nspname ~ :pattern"
                " AND nspname <> :shared AND nspname !~ '^pg_' AND nspname !~* '^tenantmig_'"
                " AND nspname NOT IN ('public', 'information_schema') ORDER BY nspname"
            ),
            {"pattern": source.schema_regex, "shared": source.shared_schema},
        ).scalars()
        tenants = _labelled(conn, source, [Tenant(name, name, "active") for name in matching])
    else:
        require_tenants_table(conn, source.shared_schema)
        rows = conn.execute(
            sa.text(
                f"SELECT name, schema_name, status, created_at "
                f"FROM {qualified(source.shared_schema, TENANTS_TABLE)} "
                "WHERE status <> 'deleted' ORDER BY name"
            )
        ).all()
        placed = read_placements(conn, source.shared_schema)
        labels = read_labels(conn, source.shared_schema)
        tenants = [
            Tenant(
                r.name,
                r.schema_name,
                r.status,
                r.created_at,
                placed.get(r.name, CONTROL),
                labels.get(r.name, ()),
            )
            for r in rows
        ]
    _check_schema_names(tenants, source)
    return tenants


def _labelled(conn: Connection, source: TenantSource, tenants: list[Tenant]) -> list[Tenant]:
    labels = read_labels(conn, source.shared_schema)
    if not labels:
        return tenants
    return [replace(t, labels=labels.get(t.name, ())) for t in tenants]


def labels_from_query(tenants: Sequence[Tenant], source: TenantSource) -> bool:
    """The labels come from the application's query (its ``labels`` column), not the table."""
    return source.kind == "query" and any(t.labels for t in tenants)


def narrowed(
    tenants: Sequence[Tenant],
    databases: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    *,
    strict: bool = True,
) -> list[Tenant]:
    """The tenants living in one of ``databases`` and having one of ``labels`` (None: any).
    ``strict``: a label no tenant has is an error (a typo must not select nothing and
    succeed)."""
    chosen = in_databases(tenants, databases)
    if not labels:
        return chosen
    known = known_labels({t.name: t.labels for t in tenants})
    unknown = [label for label in labels if label not in known]
    if unknown and strict:
        raise ConfigError(
            f"no tenant has the label(s) {some_names(unknown)}; labels in use: "
            f"{some_names(known) if known else 'none'} (`tenantmig tenants label NAME --add L`)"
        )
    wanted = set(labels)
    return [t for t in chosen if wanted.intersection(t.labels)]


def by_database(tenants: Sequence[Tenant]) -> dict[str, list[Tenant]]:
    """``tenants`` grouped by the database they live in, in the order first seen."""
    groups: dict[str, list[Tenant]] = {}
    for tenant in tenants:
        groups.setdefault(tenant.database, []).append(tenant)
    return groups


def in_databases(tenants: Sequence[Tenant], databases: Sequence[str] | None) -> list[Tenant]:
    """The tenants living in one of ``databases`` (None: all of them)."""
    if databases is None:
        return list(tenants)
    wanted = set(databases)
    return [t for t in tenants if t.database in wanted]


def _from_query(conn: Connection, source: TenantSource) -> list[Tenant]:
    """The application's query, read as a subquery: a subquery cannot write (INSERT, UPDATE
    or DELETE there are syntax errors) and cannot hold a second statement."""
    try:
        with conn.begin_nested():
            rows = conn.execute(
                sa.text(
                    # labels: a third column the query may return (text[]); null without it.
                    f"SELECT CAST(name AS text) AS name, CAST(schema_name AS text) AS schema_name,"
                    f" to_jsonb(tenant_source) -> 'labels' AS labels"
                    f" FROM ({source.query}) AS tenant_source ORDER BY 1"
                ).columns(name=sa.Text, schema_name=sa.Text)
            ).all()
    except DBAPIError as exc:
        raise ConfigError(
            f"tenants_from query failed: {first_line(exc)}. It must return the columns name and "
            f"schema_name, e.g. `query: SELECT slug AS name, schema AS schema_name FROM "
            f"accounts WHERE active`; it was: {source.query}"
        ) from exc
    nameless = [r.schema_name for r in rows if not r.name or not r.schema_name]
    if nameless:
        raise ConfigError(
            f"tenants_from query returned {len(nameless)} row(s) with an empty name or "
            f"schema_name; both must be set: {source.query}"
        )
    names = [r.name for r in rows]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"tenants_from query returned tenant name(s) more than once: {some_names(repeated)}"
        )
    return [Tenant(r.name, r.schema_name, "active", labels=_query_labels(r, source)) for r in rows]


def _query_labels(row: Any, source: TenantSource) -> tuple[str, ...]:
    value = row.labels
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"tenants_from query: the labels column must be text[] (tenant {row.name}): "
            f"{source.query}"
        )
    try:
        return tuple(sorted(check_labels(value)))
    except ConfigError as exc:
        raise ConfigError(f"tenants_from query, tenant {row.name}: {exc}") from None


def _check_schema_names(tenants: Sequence[Tenant], source: TenantSource) -> None:
    bad: list[str] = []
    for tenant in tenants:
        try:
            validate_tenant_name(tenant.schema, shared_schema=source.shared_schema)
        except InvalidTenantName as exc:
            bad.append(f"{tenant.name} ({exc})")
    if bad:
        raise ConfigError(
            f"the tenant source ({source.describe()}) names {len(bad)} schema(s) tenantmig will "
            f"not migrate: {some_names(bad, 3)}"
        )


def select_tenants(
    conn: Connection, source: TenantSource, names: Sequence[str] | None
) -> list[Tenant]:
    """All live tenants (names is None) or exactly the named ones, in the order given."""
    tenants = list_tenants(conn, source)
    if names is None:
        return tenants
    check_tenant_names(names, source)
    by_name = {t.name: t for t in tenants}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        hint = (
            "see `tenantmig tenants list`, or register with `tenantmig tenants create NAME` "
            "(new schema) or `tenantmig tenants register NAME` (existing schema)"
            if source.is_registry
            else f"see `tenantmig tenants list` (tenants from {source.describe()})"
        )
        raise UnknownTenant(f"{len(unknown)} unknown tenant(s): {some_names(unknown)}; {hint}")
    return [by_name[n] for n in dict.fromkeys(names)]


def check_tenant_names(names: Iterable[str], source: TenantSource) -> None:
    """Validate tenant names given by a user before the database is touched: identifier rules
    for tenantmig's registry and for schema globs (the name is the schema's); a query's names
    are the application's, only required to be non-empty."""
    for name in names:
        if source.kind == "query":
            if not name or "\x00" in name:
                raise InvalidTenantName(f"tenant name {name!r} is empty or holds a NUL byte")
        else:
            validate_tenant_name(name, shared_schema=source.shared_schema)


def require_registry(source: TenantSource, action: str) -> None:
    """``tenants create/register/drop`` write tenantmig's registry; other sources are the
    application's to change."""
    if source.kind == "query":
        raise ConfigError(
            f"cannot {action}: tenants come from the application's query "
            f"({source.describe()}); add or remove them there, then run "
            "`tenantmig upgrade --tenant NAME`"
        )
    if source.kind == "schemas" and action == "register tenants":
        raise ConfigError(
            f"nothing to register: every schema matching {source.glob!r} is a tenant already "
            "(tenants_from = schemas)"
        )


def existing_schemas(conn: Connection, schemas: Iterable[str]) -> set[str]:
    rows = conn.execute(
        sa.text("SELECT nspname FROM pg_namespace WHERE nspname = ANY(:names)"),
        {"names": list(schemas)},
    ).scalars()
    return set(rows)


def _check_new(source: TenantSource, pairs: Sequence[tuple[str, str]]) -> None:
    """Validate (name, schema) pairs about to enter the registry: nothing is written until
    every pair is fine."""
    for name, schema in pairs:
        validate_tenant_name(name, shared_schema=source.shared_schema)
        validate_tenant_name(schema, shared_schema=source.shared_schema)
    for label, values in (("tenant", [n for n, _ in pairs]), ("schema", [s for _, s in pairs])):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise TenantExists(f"{label}(s) named more than once: {some_names(repeated)}")
    if source.kind == "schemas":
        pattern = re.compile(source.schema_regex)
        outside = [s for _, s in pairs if not pattern.match(s)]
        if outside:
            raise ConfigError(
                f"{some_names(outside)} would not be tenants: tenants are the schemas matching "
                f"{source.glob!r} (tenants_from = schemas)"
            )


def _registered(conn: Connection, source: TenantSource, values: Sequence[str]) -> list[str]:
    """Names among ``values`` already used as a tenant's name or schema in the registry."""
    require_tenants_table(conn, source.shared_schema)
    return sorted(
        conn.execute(
            sa.text(
                f"SELECT name FROM {qualified(source.shared_schema, TENANTS_TABLE)}"
                " WHERE name = ANY(:values) OR schema_name = ANY(:values)"
            ),
            {"values": list(values)},
        ).scalars()
    )


def _insert(
    conn: Connection, source: TenantSource, name: str, schema: str, database: str = CONTROL
) -> Tenant:
    row = conn.execute(
        sa.text(
            f"INSERT INTO {qualified(source.shared_schema, TENANTS_TABLE)} (name, schema_name) "
            "VALUES (:name, :schema) RETURNING status, created_at"
        ),
        {"name": name, "schema": schema},
    ).one()
    return Tenant(name, schema, row.status, row.created_at, database)


def create_tenants(
    conn: Connection,
    source: TenantSource,
    names: Sequence[str],
    flavour: ServerFlavour,
    *,
    distribute: bool = True,
    database: str = CONTROL,
    schema_conn: Connection | None = None,
) -> list[Tenant]:
    """Create each tenant's schema (and its registry row), all or nothing, in the callers'
    transactions: the registry's in ``conn`` (the control database), the schemas' in
    ``schema_conn`` (the tenants' ``database``; default ``conn``). Every name is checked
    before the first write: one bad name creates none. ``distribute``: on a Citus cluster,
    make each a distributed schema (else a local one)."""
    require_registry(source, "create tenants")
    _check_new(source, [(n, n) for n in names])
    where = schema_conn or conn
    if source.is_registry:
        taken = _registered(conn, source, names)
        if taken:
            raise TenantExists(f"{len(taken)} tenant(s) already registered: {some_names(taken)}")
    clashing = sorted(existing_schemas(where, names))
    if clashing:
        raise TenantExists(
            f"{len(clashing)} schema(s) already exist: {some_names(clashing)}; to adopt an "
            "existing schema as a tenant use `tenantmig tenants register NAME`"
        )
    created: list[Tenant] = []
    for name in names:
        if source.is_registry:
            created.append(_insert(conn, source, name, name, database))
        else:
            created.append(Tenant(name, name, "active"))
        flavour.create_schema(where, name, distribute=distribute)
    if database != CONTROL:
        place(conn, source.shared_schema, names, database)
    return created


def commit_created(
    conn: Connection, control: Engine, source: TenantSource, created: list[Tenant], database: str
) -> None:
    """Commit ``conn``, the registry rows of tenants whose schemas ``database`` has committed
    already. If that fails, RunAborted saying what is there, read back from the registry on
    ``control`` (a COMMIT whose answer was lost may have happened)."""
    try:
        conn.commit()
    except DBAPIError as exc:
        if database == CONTROL:  # the schemas were in this transaction: nothing is left
            raise
        names = [t.name for t in created]
        try:
            with control.begin() as check:
                registered: set[str] | None = {t.name for t in list_tenants(check, source)}
        except DBAPIError:
            registered = None
        if registered is not None and set(names) <= registered:
            return
        state = (
            "their schemas exist, empty; whether they were registered could not be read back "
            "(see `tenantmig tenants list`)"
            if registered is None
            else "their schemas exist, empty and unregistered"
        )
        raise RunAborted(
            f"created the schemas of {len(names)} tenant(s) in database {database}, but "
            f"registering them failed: {first_line(exc)}; {state}: {some_names(names)}; "
            f"`tenantmig tenants register NAME ... --database {database}` adopts them (then "
            "`tenantmig upgrade --tenant NAME`)"
        ) from exc


def register_existing(
    conn: Connection,
    source: TenantSource,
    pairs: Sequence[tuple[str, str]],
    *,
    database: str = CONTROL,
    schema_conn: Connection | None = None,
) -> list[Tenant]:
    """Register existing schemas as tenants, changing nothing in them, all or nothing. The
    schemas are looked for in ``schema_conn`` (the tenants' ``database``; default ``conn``)."""
    require_registry(source, "register tenants")
    _check_new(source, pairs)
    taken = _registered(conn, source, [v for pair in pairs for v in pair])
    if taken:
        raise TenantExists(f"{len(taken)} tenant(s) already registered: {some_names(taken)}")
    schemas = [s for _, s in pairs]
    present = existing_schemas(schema_conn or conn, schemas)
    missing = [s for s in schemas if s not in present]
    if missing:
        raise SchemaMissing(
            f"{len(missing)} schema(s) do not exist: {some_names(missing)}; `tenants register` "
            "adopts existing schemas (`tenants create` makes new ones); nothing was registered"
        )
    registered = [_insert(conn, source, name, schema, database) for name, schema in pairs]
    if database != CONTROL:
        place(conn, source.shared_schema, [name for name, _ in pairs], database)
    return registered


def drop_tenant(conn: Connection, source: TenantSource, tenant: Tenant) -> None:
    """Drop a tenant's schema (CASCADE) and its registry row, in the caller's transaction
    (a tenant in another database: ``forget_tenant`` here, ``drop_schema`` there)."""
    drop_schema(conn, tenant)
    forget_tenant(conn, source, tenant)


def drop_schema(conn: Connection, tenant: Tenant) -> None:
    conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(tenant.schema)} CASCADE")


def forget_tenant(conn: Connection, source: TenantSource, tenant: Tenant) -> None:
    """The tenant's registry row, placement and labels, in the control database."""
    if tenant.database != CONTROL:
        place(conn, source.shared_schema, [tenant.name], CONTROL)
    forget_labels(conn, source.shared_schema, [tenant.name])
    if source.is_registry:
        conn.execute(
            sa.text(
                f"DELETE FROM {qualified(source.shared_schema, TENANTS_TABLE)} WHERE name = :name"
            ),
            {"name": tenant.name},
        )
