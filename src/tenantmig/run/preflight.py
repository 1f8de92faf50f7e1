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


def missing_privileges(conn: Connection, settings: Settings, needs: Needs) -> list[Missing]:
    """Every privilege ``needs`` asks for that the current role lacks (read-only queries)."""
    shared = settings.shared_schema
    who = conn.execute(sa.text("SELECT current_user")).scalar_one()
    role = quote_ident(who)
    found: list[Missing] = []

    def can(function: str, target: str, privilege: str) -> bool:
        return bool(
            conn.execute(
                sa.text(f"SELECT {function}(:target, :privilege)"),
                {"target": target, "privilege": privilege},
            ).scalar()
        )

    def exists(relation: str) -> bool:
        return bool(
            conn.execute(sa.text("SELECT to_regclass(:r) IS NOT NULL"), {"r": relation}).scalar()
        )

    shared_exists = bool(
        conn.execute(
            sa.text("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :s)"), {"s": shared}
        ).scalar()
    )
    if shared_exists and not can("has_schema_privilege", shared, "USAGE"):
        found.append(
            Missing(
                f"USAGE on schema {shared}",
                f"GRANT USAGE ON SCHEMA {quote_ident(shared)} TO {role};",
            )
        )
    if needs.ledger:
        tables = [qualified(shared, RUNS), qualified(shared, RUN_TENANTS)]
        if not all(exists(t) for t in tables):
            if not (shared_exists and can("has_schema_privilege", shared, "CREATE")):
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
                           if not can("has_table_privilege", table, p)]  # fmt: skip
                if lacking:
                    found.append(
                        Missing(
                            f"{', '.join(lacking)} on {table}",
                            f"GRANT SELECT, INSERT, UPDATE ON {table} TO {role};",
                        )
                    )
    registry = qualified(shared, TENANTS_TABLE)
    if settings.tenant_source.is_registry and (needs.read_registry or needs.write_registry):
        wanted = ["SELECT"] + (["INSERT", "DELETE"] if needs.write_registry else [])
        if exists(registry):
            lacking = [p for p in wanted if not can("has_table_privilege", registry, p)]
            if lacking:
                found.append(
                    Missing(
                        f"{', '.join(lacking)} on the tenant registry {registry}",
                        f"GRANT {', '.join(wanted)} ON {registry} TO {role};",
                    )
                )
    version_table = qualified(shared, VERSION_TABLE)
    if (
        needs.read_registry
        and exists(version_table)
        and not can("has_table_privilege", version_table, "SELECT")
    ):
        found.append(
            Missing(
                f"SELECT on the shared schema's revision {version_table}",
                f"GRANT SELECT ON {version_table} TO {role};",
            )
        )
    database = conn.execute(sa.text("SELECT current_database()")).scalar_one()
    may_create = can("has_database_privilege", database, "CREATE")
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
