"""Restoring one tenant's schema from a ``--backup`` dump, all or nothing.

pg_restore turns the archive into SQL; psql runs it in ONE transaction between the server
flavour's own statements (before: take the tenant's advisory lock, drop the current schema; on
Citus also after: distribute the schema again). PostgreSQL's transactional DDL makes
the whole replacement atomic: if anything fails, the tenant keeps its current schema untouched,
and readers see either the old schema or the restored one, never a half-restored mix. While the
transaction runs, the dropped tables are ACCESS EXCLUSIVE locked, so the tenant's queries wait.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenantmig.backup.dump import LibpqConnection, PgTools, error_line, find_pg_tools
from tenantmig.errors import BackupFailed, ConfigError
from tenantmig.schema.registry import Tenant
from tenantmig.schema.versions import read_versions
from tenantmig.server.config import Settings
from tenantmig.server.database import Database
from tenantmig.server.flavour import RestoreScript


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
    listed = subprocess.run(
        [tools.tool("pg_restore"), "--list", str(archive)], capture_output=True, text=True
    )
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
    env = connection.environment()
    with tempfile.TemporaryFile() as restore_err, tempfile.TemporaryFile() as psql_err:
        psql = subprocess.Popen(
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
        restore = subprocess.Popen(
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


def restore_tenant(
    settings: Settings, database: Database, target: Tenant, archive: Path
) -> RestoreResult:
    """Replace ``target``'s schema with the one in ``archive`` (a ``--backup`` dump);
    ``database`` is the one the tenant lives in."""
    tenant = target.name
    if not archive.is_file():
        raise ConfigError(f"backup file {str(archive)!r} does not exist or is not a file")
    started = time.monotonic()
    with database.engine.connect() as conn:
        tools = find_pg_tools(database.server_major)
        found = archive_schemas(tools, archive)
        if found != {target.schema}:
            holds = ", ".join(sorted(found)) or "no schema"
            raise ConfigError(
                f"{archive} holds {holds}, not tenant {tenant}'s schema {target.schema!r}; "
                "nothing restored"
            )
        before = read_versions(conn, [target.schema])[target.schema].revision
        with conn.begin():
            # On Citus a distributed schema is distributed again; a local one stays local.
            distribute = database.flavour.is_distributed(conn, target.schema)
        script = database.flavour.restore_script(
            target.schema, settings.timeouts, distribute=distribute
        )
        run_restore(tools, LibpqConnection.from_url(database.url), archive, script)
        after = read_versions(conn, [target.schema])[target.schema].revision
    return RestoreResult(
        tenant=tenant,
        schema=target.schema,
        file=str(archive.resolve()),
        from_revision=before,
        to_revision=after,
        duration_s=time.monotonic() - started,
    )
