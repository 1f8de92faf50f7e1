"""``tenantmig tenants move NAME --to DB``: a tenant's schema to another database of the directory.

Any failure before the directory is switched leaves the tenant where it was, complete:

1. On the source, one transaction takes the tenant's advisory lock (no tenantmig run migrates it
   meanwhile) and ``EXCLUSIVE`` locks on every table of the schema: the application's writes to
   the tenant wait until the move ends (reads go on; ``pg_dump``'s ``ACCESS SHARE`` is
   compatible). Both waits are bounded by ``--lock-timeout``.
2. ``pg_dump`` copies the schema (a consistent snapshot: nothing can write to it now).
3. ``psql --single-transaction`` restores it in the target: all of it or nothing.
4. Verification: every table's row count, and the structure (as drift reads it), are the same on
   both sides. A difference drops the copy in the target and stops: nothing moved.
5. The directory (the control database) now names the target.
6. The source schema is dropped, in the transaction that held the locks, whose commit releases
   the waiting writers, which then fail (the schema is gone) and must follow the directory.

A failure at 6 leaves the tenant in the target with a stale copy in the source, which the error
names.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from tenantmig.backup.dump import BackupPlan, LibpqConnection, find_pg_tools
from tenantmig.backup.restore import run_restore
from tenantmig.chains.context import VERSION_TABLE
from tenantmig.errors import BackupFailed, ConfigError, TenantExists
from tenantmig.schema.catalog import read_structures
from tenantmig.schema.compare import compare
from tenantmig.schema.placement import place
from tenantmig.schema.registry import Tenant, existing_schemas
from tenantmig.server.config import Settings
from tenantmig.server.database import Database
from tenantmig.server.errorcodes import first_line
from tenantmig.server.identifiers import qualified, quote_ident


@dataclass(frozen=True)
class MoveResult:
    tenant: str
    schema: str
    from_database: str
    to_database: str
    revision: str | None
    tables: int
    rows: int
    duration_s: float
    run_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.tenant,
            "schema": self.schema,
            "from": self.from_database,
            "to": self.to_database,
            "revision": self.revision or "base",
            "tables": self.tables,
            "rows": self.rows,
            "duration_s": round(self.duration_s, 3),
            "run_id": self.run_id,
        }


def _tables(conn: Connection, schema: str) -> list[str]:
    return list(
        conn.execute(
            sa.text(
                "SELECT relname FROM pg_class WHERE relnamespace = to_regnamespace(:s)"
                " AND relkind IN ('r', 'p') ORDER BY relname"
            ),
            {"s": quote_ident(schema)},
        ).scalars()
    )


def _revision(conn: Connection, schema: str) -> str | None:
    """The schema's recorded revision, read in the caller's transaction."""
    table = qualified(schema, VERSION_TABLE)
    if not conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar():
        return None
    return conn.execute(sa.text(f"SELECT min(version_num) FROM {table}")).scalar()


def _row_counts(conn: Connection, schema: str, tables: list[str]) -> dict[str, int]:
    return {
        table: int(
            conn.execute(sa.text(f"SELECT count(*) FROM {qualified(schema, table)}")).scalar() or 0
        )
        for table in tables
    }


def move_tenant(
    settings: Settings,
    control: Database,
    tenant: Tenant,
    source: Database,
    target: Database,
    target_name: str,
) -> MoveResult:
    """Move ``tenant`` from ``source`` to ``target`` (see the module docstring)."""
    started = time.monotonic()
    schema = tenant.schema
    timeouts = settings.timeouts
    with target.engine.connect() as conn, conn.begin():
        if existing_schemas(conn, [schema]):
            raise TenantExists(
                f"database {target_name} already has a schema {schema!r}; nothing was moved"
            )
    if target.server_major < source.server_major:
        raise ConfigError(
            f"database {target_name} runs PostgreSQL {target.server_major}, older than the "
            f"tenant's ({source.server_major}): a dump of a newer server may not load into an "
            "older one; nothing was moved"
        )
    tools = find_pg_tools(target.server_major)
    with source.engine.connect() as held:
        held.begin()
        try:
            # The tenant's lock, then the writers' (EXCLUSIVE blocks INSERT/UPDATE/DELETE and
            # DDL, not SELECT); lock_timeout bounds both waits.
            source.flavour.prepare_migration(held, schema, timeouts)
            tables = _tables(held, schema)
            for table in tables:
                held.exec_driver_sql(f"LOCK TABLE {qualified(schema, table)} IN EXCLUSIVE MODE")
            counts = _row_counts(held, schema, tables)
            revision = _revision(held, schema)
            expected = read_structures(held, [schema])[schema]
            with tempfile.TemporaryDirectory(prefix="tenantmig-move-") as scratch:
                plan = BackupPlan(
                    Path(scratch), tools, LibpqConnection.from_url(source.url), timeouts
                )
                archive = plan.dump(tenant.name, schema, revision, None)
                script = target.flavour.restore_script(
                    schema, timeouts, distribute=settings.citus_schemas == "distributed"
                )
                run_restore(tools, LibpqConnection.from_url(target.url), archive, script)
            _verify(settings, target, target_name, schema, tables, counts, expected)
            with control.engine.begin() as conn:
                place(conn, settings.shared_schema, [tenant.name], target_name)
        except BaseException:
            held.rollback()
            raise
        try:
            held.exec_driver_sql(f"DROP SCHEMA {quote_ident(schema)} CASCADE")
            held.commit()
        except DBAPIError as exc:
            raise BackupFailed(
                f"tenant {tenant.name} now lives in database {target_name} (copied and "
                f"verified), but its old schema in database {tenant.database} could not be "
                f"dropped: {first_line(exc)}; drop it by hand: DROP SCHEMA "
                f"{quote_ident(schema)} CASCADE"
            ) from exc
    return MoveResult(
        tenant=tenant.name,
        schema=schema,
        from_database=tenant.database,
        to_database=target_name,
        revision=revision,
        tables=len(tables),
        rows=sum(counts.values()),
        duration_s=time.monotonic() - started,
    )


def _verify(
    settings: Settings,
    target: Database,
    target_name: str,
    schema: str,
    tables: list[str],
    counts: dict[str, int],
    expected: Any,
) -> None:
    """Rows and structure in the target as in the source; else drop the copy and stop."""
    with target.engine.connect() as conn:
        with conn.begin():
            found_tables = _tables(conn, schema)
            found_counts = _row_counts(conn, schema, found_tables)
            differences = compare(
                expected, read_structures(conn, [schema])[schema], settings.drift_ignore
            )
        problem = None
        if found_tables != tables or found_counts != counts:
            wrong = [t for t in tables if found_counts.get(t) != counts[t]]
            problem = f"row counts differ in {', '.join(wrong) or 'the table list'}"
        elif differences:
            problem = f"structure differs: {differences[0].describe()}"
        if problem is None:
            return
        with conn.begin():
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    raise BackupFailed(
        f"the copy in database {target_name} did not match ({problem}); it was dropped and "
        "the tenant stays where it was: nothing was moved"
    )
