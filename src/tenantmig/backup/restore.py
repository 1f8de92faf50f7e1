"""Restoring one tenant's schema from a ``--backup`` dump, all or nothing.

pg_restore turns the archive into SQL; psql runs it in ONE transaction between the server
flavour's own statements (before: take the tenant's advisory lock, drop the current schema; on
Citus also after: distribute the schema again). PostgreSQL's transactional DDL makes
the whole replacement atomic: if anything fails, the tenant keeps its current schema untouched,
and readers see either the old schema or the restored one, never a half-restored mix. While the
transaction runs, the dropped tables are ACCESS EXCLUSIVE locked, so the tenant's queries wait.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from tenantmig.backup import children
from tenantmig.backup.dump import LibpqConnection, PgTools, error_line, find_pg_tools
from tenantmig.chains.context import VERSION_TABLE
from tenantmig.errors import BackupFailed, ConfigError, TenantBusy
from tenantmig.schema.moves import read_moves
from tenantmig.schema.placement import read_placements
from tenantmig.schema.registry import Tenant
from tenantmig.server.config import Settings
from tenantmig.server.database import Database
from tenantmig.server.directory import CONTROL
from tenantmig.server.errorcodes import is_lock_timeout
from tenantmig.server.flavour import RestoreScript
from tenantmig.server.identifiers import qualified
from tenantmig.server.session import Timeouts, hold_open


@dataclass(frozen=True)
class RestoreResult:
    tenant: str
    schema: str
    file: str
    from_revision: str | None
    to_revision: str | None
    duration_s: float
    run_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.tenant,
            "schema": self.schema,
            "file": self.file,
            "from": self.from_revision or "base",
            "to": self.to_revision or "base",
            "duration_s": round(self.duration_s, 3),
            "run_id": self.run_id,
        }


def archive_schemas(tools: PgTools, archive: Path) -> set[str]:
    """Schemas a custom-format archive creates, from its table of contents."""
    listed = children.run([tools.tool("pg_restore"), "--list", str(archive)])
    if listed.returncode != 0:
        raise ConfigError(
            f"{archive} is not a pg_dump custom-format archive: {error_line(listed.stderr)}"
        )
    schemas = set()
    for line in listed.stdout.splitlines():
        # "215; 2615 16385 SCHEMA - acme postgres"
        parts = line.split()
        if len(parts) >= 6 and not line.startswith(";") and parts[3:5] == ["SCHEMA", "-"]:
            schemas.add(parts[5])
    return schemas


def run_restore(
    tools: PgTools, connection: LibpqConnection, archive: Path, script: RestoreScript
) -> None:
    """pg_restore's SQL piped into one ``psql --single-transaction`` between ``script``'s
    statements. Both programs die with tenantmig (``backup.children``): interrupted or killed,
    psql's connection closes before COMMIT and the server rolls the restore back."""
    env = connection.environment()
    with (
        tempfile.TemporaryFile() as restore_err,
        tempfile.TemporaryFile() as psql_err,
        children.Children() as started,
    ):
        psql = started.start(
            [
                tools.tool("psql"),
                "--no-psqlrc",
                "--quiet",
                "--single-transaction",
                "--set=ON_ERROR_STOP=1",
                "--file=-",
                f"--dbname={connection.dsn}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=psql_err,
            env=env,
        )
        restore = started.start(
            [tools.tool("pg_restore"), "--file=-", str(archive)],
            stdout=subprocess.PIPE,
            stderr=restore_err,
        )
        assert psql.stdin is not None and restore.stdout is not None
        try:
            psql.stdin.write(script.before.encode())
            shutil.copyfileobj(restore.stdout, psql.stdin)
            psql.stdin.write(f"\n{script.after}".encode())
        except BrokenPipeError:
            pass  # psql stopped on an error; its stderr says which
        finally:
            restore.stdout.close()
            try:
                psql.stdin.close()
            except BrokenPipeError:
                pass
        restore_code, psql_code = restore.wait(), psql.wait()
        if restore_code == 0 and psql_code == 0:
            return
        restore_err.seek(0)
        psql_err.seek(0)
        errors = (psql_err.read() if psql_code else restore_err.read()).decode(errors="replace")
        raise BackupFailed(f"restore failed, nothing changed: {error_line(errors)}")


def schema_revision(conn: Connection, schema: str) -> str | None:
    """The schema's recorded revision, read in the caller's transaction (None: base, or no
    schema)."""
    table = qualified(schema, VERSION_TABLE)
    if not conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar():
        return None
    revision: str | None = conn.execute(sa.text(f"SELECT min(version_num) FROM {table}")).scalar()
    return revision


def _revision(database: Database, schema: str) -> str | None:
    with database.engine.connect() as conn, conn.begin():
        return schema_revision(conn, schema)


def lock_tenant(conn: Connection, database: Database, tenant: Tenant, timeouts: Timeouts) -> None:
    """Take the tenant's advisory lock in the caller's transaction (bounded by lock_timeout)
    and keep that transaction alive however long the caller then works.

    The lock is the one every tenantmig operation on a tenant takes first (a run's migrator, a
    move, a restore): holding it, nothing else of tenantmig's changes the tenant meanwhile.
    """
    try:
        database.flavour.prepare_migration(conn, tenant.schema, timeouts, verify=False)
    except DBAPIError as exc:
        if is_lock_timeout(exc):
            raise TenantBusy(
                f"tenant {tenant.name} is held by another tenantmig operation (a run, a move "
                f"or a restore) for longer than lock_timeout ({timeouts.lock_timeout_s:g}s); "
                "nothing changed: try again when it ends"
            ) from exc
        raise
    hold_open(conn)


def check_still_lives_in(control: Database, shared_schema: str, tenant: Tenant) -> None:
    """Under the tenant's lock: the directory still names the database we locked it in, and
    no move of it is under way. A move commits its record before it takes the tenant's lock,
    and fences the source before it switches the directory, so whatever a move did before we
    got the lock, this read sees it."""
    with control.engine.connect() as conn, conn.begin():
        pending = read_moves(conn, shared_schema, [tenant.name]).get(tenant.name)
        placed = read_placements(conn, shared_schema).get(tenant.name, CONTROL)
    if pending is not None:
        raise TenantBusy(f"{pending.describe()}; nothing restored")
    if placed != tenant.database:
        raise TenantBusy(
            f"tenant {tenant.name} was moved to database {placed} meanwhile; nothing restored: "
            "run the restore again to restore it there"
        )


def check_archive(database: Database, target: Tenant, archive: Path) -> PgTools:
    """The archive is a dump of exactly this tenant's schema, and client programs for the
    database's server exist (ConfigError if not, before anything changes)."""
    if not archive.is_file():
        raise ConfigError(f"backup file {str(archive)!r} does not exist or is not a file")
    tools = find_pg_tools(database.server_major)
    found = archive_schemas(tools, archive)
    if found != {target.schema}:
        holds = ", ".join(sorted(found)) or "no schema"
        raise ConfigError(
            f"{archive} holds {holds}, not tenant {target.name}'s schema {target.schema!r}; "
            "nothing restored"
        )
    return tools


def restore_tenant(
    settings: Settings,
    control: Database,
    database: Database,
    target: Tenant,
    archive: Path,
    tools: PgTools,
) -> RestoreResult:
    """Replace ``target``'s schema with the one in ``archive`` (a ``--backup`` dump);
    ``database`` is the one the directory says it lives in, ``control`` holds the directory;
    ``tools`` are what ``check_archive`` found.

    The tenant's lock is taken first, on a connection of our own, and held until the restore
    has committed or rolled back; the directory is read again under it, so a move that got
    there first (or is under way) makes the restore refuse instead of rebuilding a copy the
    directory no longer names.
    """
    started = time.monotonic()
    with database.engine.connect() as held:
        held.begin()
        try:
            lock_tenant(held, database, target, settings.timeouts)
            check_still_lives_in(control, settings.shared_schema, target)
            # Read on a connection of its own: the held transaction must take no lock on the
            # tenant's tables, or the restore's DROP SCHEMA would wait for it.
            before = _revision(database, target.schema)
            # On Citus a distributed schema is distributed again; a local one stays local.
            distribute = database.flavour.is_distributed(held, target.schema)
            script = database.flavour.restore_script(
                target.schema, settings.timeouts, distribute=distribute, lock=False
            )
            run_restore(tools, LibpqConnection.from_url(database.url), archive, script)
            after = _revision(database, target.schema)
        finally:
            with contextlib.suppress(DBAPIError):
                held.rollback()  # the lock's transaction wrote nothing; this releases it
    return RestoreResult(
        tenant=target.name,
        schema=target.schema,
        file=str(archive.resolve()),
        from_revision=before,
        to_revision=after,
        duration_s=time.monotonic() - started,
    )
