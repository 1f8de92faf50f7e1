"""Checks before a run changes anything: can this role, on this server, write at all?

Without them a read-only role or a hot standby would fail on every tenant with the same error,
or halfway through the shared schema. One clear line up front is kinder, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantmig.chains.context import VERSION_TABLE
from tenantmig.errors import CannotWrite, some_names
from tenantmig.schema.owned import RUN_TENANTS, RUNS
from tenantmig.schema.registry import TENANTS_TABLE
from tenantmig.server.config import Settings
from tenantmig.server.identifiers import qualified, quote_ident


def check_can_migrate(conn: Connection, shared_schema: str, *, shared_chain: bool) -> None:
    """Raise CannotWrite unless this connection can run migrations and write the ledger.

    ``shared_chain``: the run migrates the shared schema too, so it needs CREATE there (or,
    while the schema does not exist yet, in the database) whatever the ledger's state.
    """
    row = conn.execute(
        sa.text(
            "SELECT current_user AS who, pg_is_in_recovery() AS standby,"
            " current_setting('default_transaction_read_only') = 'on' AS read_only,"
            " CASE WHEN EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :schema)"
            "  THEN has_schema_privilege(:schema, 'CREATE')"
            "  ELSE has_database_privilege(current_database(), 'CREATE') END AS can_create,"
            " to_regclass(:runs) IS NOT NULL AS has_ledger,"
            " CASE WHEN to_regclass(:runs) IS NOT NULL"
            "  THEN has_table_privilege(:runs, 'INSERT') END AS can_record"
        ),
        {"schema": shared_schema, "runs": qualified(shared_schema, RUNS)},
    ).one()
    if row.standby:
        raise CannotWrite(
            "the server is a read-only standby (in recovery); point tenantmig at the primary"
        )
    if row.read_only:
        raise CannotWrite(
            f"role {row.who} gets read-only transactions (default_transaction_read_only is on); "
            "run tenantmig as the role that owns the schemas"
        )
    if not row.can_create and not shared_chain and not row.has_ledger:
        raise CannotWrite(
            f"the run ledger does not exist in schema {shared_schema!r} and role {row.who} may "
            f"not create it; an administrator runs once: tenantmig grant {row.who}"
        )
    if not row.can_create and (shared_chain or not (row.has_ledger and row.can_record)):
        raise CannotWrite(
            f"role {row.who} may not create objects in schema {shared_schema!r} "
            "(no CREATE privilege); run tenantmig as the role that owns the schemas"
        )


@dataclass(frozen=True)
class Missing:
    """One privilege a command needs and the role lacks, with how to get it."""

    what: str
    remedy: str


@dataclass(frozen=True)
class Needs:
    """What a command is about to do, so the preflight checks exactly that."""

    ledger: bool = False  # record the run
    read_registry: bool = False
    write_registry: bool = False  # tenants create / register / drop
    create_schemas: bool = False  # tenants create
    scratch: bool = False  # build drift references (replay falls back without one)
    schemas: Sequence[str] = ()  # tenant schemas it will change (or read, for drift)
    change_schemas: bool = True  # False: drift only reads them


_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


@dataclass(frozen=True)
class _Facts:
    """The role, its database, the shared schema and the tables the checks ask about."""

    who: str
    database: str
    database_create: bool
    shared_usage: bool | None  # None: the shared schema does not exist
    shared_create: bool | None
    tables: dict[str, frozenset[str]]  # existing table -> the privileges the role has on it

    def can(self, table: str, privilege: str) -> bool:
        return privilege in self.tables.get(table, frozenset())

    @classmethod
    def read(cls, conn: Connection, shared: str, tables: Sequence[str]) -> _Facts:
        privileges = ", ".join(
            f"has_table_privilege(c.oid, '{p}') AS {p.lower()}" for p in _TABLE_PRIVILEGES
        )
        row = conn.execute(
            sa.text(
                "SELECT current_user AS who, current_database() AS database,"
                " has_database_privilege(current_database(), 'CREATE') AS database_create,"
                " has_schema_privilege(n.oid, 'USAGE') AS shared_usage,"
                " has_schema_privilege(n.oid, 'CREATE') AS shared_create"
                " FROM (SELECT 1) AS one LEFT JOIN pg_namespace n ON n.nspname = :shared"
            ),
            {"shared": shared},
        ).one()
        found = conn.execute(
            sa.text(
                f"SELECT t.name, {privileges} FROM unnest(CAST(:tables AS text[])) AS t(name)"
                " JOIN LATERAL (SELECT to_regclass(t.name) AS oid) AS c ON c.oid IS NOT NULL"
            ),
            {"tables": list(tables)},
        )
        held = {
            r.name: frozenset(p for p in _TABLE_PRIVILEGES if getattr(r, p.lower())) for r in found
        }
        return cls(
            who=row.who,
            database=row.database,
            database_create=bool(row.database_create),
            shared_usage=row.shared_usage,
            shared_create=row.shared_create,
            tables=held,
        )


def missing_privileges(conn: Connection, settings: Settings, needs: Needs) -> list[Missing]:
    """Every privilege ``needs`` asks for that the current role lacks (read-only queries)."""
    shared = settings.shared_schema
    runs, run_tenants = qualified(shared, RUNS), qualified(shared, RUN_TENANTS)
    registry = qualified(shared, TENANTS_TABLE)
    version_table = qualified(shared, VERSION_TABLE)
    # Every fact the checks below need, in one round trip: a command that has nothing to do
    # should not spend its time asking the server one privilege at a time.
    facts = _Facts.read(conn, shared, [runs, run_tenants, registry, version_table])
    who, database = facts.who, facts.database
    role = quote_ident(who)
    found: list[Missing] = []

    shared_exists = facts.shared_usage is not None
    if shared_exists and not facts.shared_usage:
        found.append(
            Missing(
                f"USAGE on schema {shared}",
                f"GRANT USAGE ON SCHEMA {quote_ident(shared)} TO {role};",
            )
        )
    if needs.ledger:
        tables = [runs, run_tenants]
        if not all(t in facts.tables for t in tables):
            if not (shared_exists and facts.shared_create):
                found.append(
                    Missing(
                        f"the run ledger's tables in schema {shared} (they do not exist and "
                        f"{who} may not create them)",
                        f"an administrator runs once: tenantmig grant {who}",
                    )
                )
        else:
            for table in tables:
                lacking = [p for p in ("SELECT", "INSERT", "UPDATE")
                           if not facts.can(table, p)]  # fmt: skip
                if lacking:
                    found.append(
                        Missing(
                            f"{', '.join(lacking)} on {table}",
                            f"GRANT SELECT, INSERT, UPDATE ON {table} TO {role};",
                        )
                    )
    if settings.tenant_source.is_registry and (needs.read_registry or needs.write_registry):
        wanted = ["SELECT"] + (["INSERT", "DELETE"] if needs.write_registry else [])
        if registry in facts.tables:
            lacking = [p for p in wanted if not facts.can(registry, p)]
            if lacking:
                found.append(
                    Missing(
                        f"{', '.join(lacking)} on the tenant registry {registry}",
                        f"GRANT {', '.join(wanted)} ON {registry} TO {role};",
                    )
                )
    if (
        needs.read_registry
        and version_table in facts.tables
        and not facts.can(version_table, "SELECT")
    ):
        found.append(
            Missing(
                f"SELECT on the shared schema's revision {version_table}",
                f"GRANT SELECT ON {version_table} TO {role};",
            )
        )
    may_create = facts.database_create
    if needs.create_schemas and not may_create:
        found.append(
            Missing(
                f"CREATE on database {database} (to create tenant schemas)",
                f"GRANT CREATE ON DATABASE {quote_ident(database)} TO {role}; or have an "
                "administrator create the schemas and run `tenantmig tenants register`",
            )
        )
    if needs.scratch:
        found.extend(_scratch_missing(conn, settings, who, may_create))
    if needs.schemas:
        found.extend(_schema_missing(conn, needs, who))
    return found


def _scratch_missing(
    conn: Connection, settings: Settings, who: str, may_create: bool
) -> list[Missing]:
    names = settings.scratch_schemas
    if names is None:
        if may_create:
            return []
        return [
            Missing(
                "a scratch schema to build references in (the role may not create schemas)",
                "set scratch_schema = tenantmig_scratch in alembic.ini and have an administrator "
                f"run once: tenantmig grant {who}",
            )
        ]
    usable = set(
        conn.execute(
            sa.text(
                "SELECT nspname FROM pg_namespace WHERE nspname = ANY(:names)"
                " AND has_schema_privilege(oid, 'CREATE') AND has_schema_privilege(oid, 'USAGE')"
            ),
            {"names": list(names)},
        ).scalars()
    )
    lacking = [n for n in names if n not in usable]
    if not lacking:
        return []
    return [
        Missing(
            f"scratch schema(s) {', '.join(lacking)} (missing, or {who} may not create in them)",
            f"an administrator runs once: tenantmig --scratch-schema {names[0]} grant {who}",
        )
    ]


def _schema_missing(conn: Connection, needs: Needs, who: str) -> list[Missing]:
    """Tenant schemas the role may not use (or change), and tables in them it does not own
    (ALTER and DROP need ownership): one query over the catalog for all of them."""
    privileges = (
        "'USAGE') AND has_schema_privilege(n.oid, 'CREATE'" if needs.change_schemas else "'USAGE'"
    )
    denied = list(
        conn.execute(
            sa.text(
                "SELECT nspname FROM pg_namespace n WHERE nspname = ANY(:schemas)"
                f" AND NOT (has_schema_privilege(n.oid, {privileges})) ORDER BY 1"
            ),
            {"schemas": list(needs.schemas)},
        ).scalars()
    )
    found: list[Missing] = []
    if denied:
        verb = "USAGE and CREATE" if needs.change_schemas else "USAGE"
        found.append(
            Missing(
                f"{verb} on {len(denied)} tenant schema(s): {some_names(denied)}",
                f"ALTER SCHEMA {quote_ident(denied[0])} OWNER TO {quote_ident(who)}; (for each; "
                "tenant schemas belong to the role that migrates them)",
            )
        )
    if needs.change_schemas:
        foreign = list(
            conn.execute(
                sa.text(
                    "SELECT n.nspname || '.' || c.relname FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = ANY(:schemas)"
                    " AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')"
                    " AND NOT pg_has_role(c.relowner, 'USAGE') ORDER BY 1 LIMIT 6"
                ),
                {"schemas": list(needs.schemas)},
            ).scalars()
        )
        if foreign:
            found.append(
                Missing(
                    f"ownership of tables in tenant schemas: {some_names(foreign)}",
                    f"REASSIGN OWNED BY <their owner> TO {quote_ident(who)}; or ALTER TABLE ... "
                    f"OWNER TO {quote_ident(who)}; (migrations alter and drop tables)",
                )
            )
    return found


def check_privileges(conn: Connection, settings: Settings, needs: Needs) -> None:
    """CannotWrite listing every missing privilege with its remedy, before anything changes."""
    found = missing_privileges(conn, settings, needs)
    if found:
        who = conn.execute(sa.text("SELECT current_user")).scalar_one()
        lines = "\n".join(f"  - {m.what}\n      {m.remedy}" for m in found)
        raise CannotWrite(
            f"role {who} lacks what this command needs (nothing was changed):\n{lines}"
        )
