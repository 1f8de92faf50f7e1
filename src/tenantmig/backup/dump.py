"""Per-tenant backups with pg_dump before a migration, and restoring one tenant from one.

``--backup DIR`` dumps each tenant's schema (``pg_dump -Fc -n <schema>``) right before it is
migrated, while the migrating transaction holds that tenant's advisory lock: no other tenantmig
runner can migrate the tenant between the dump and the migration, and a tenant with nothing to
do is never dumped. The dump runs in its own pg_dump session and takes only ACCESS SHARE locks,
which do not conflict with the advisory lock we hold.

The password never appears on a command line (where ``ps`` would show it): pg_dump, pg_restore
and psql get it through ``PGPASSWORD`` in their environment, and the rest of the connection as
a libpq conninfo string without it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from psycopg2.extensions import make_dsn
from sqlalchemy.engine import URL

from tenantmig.backup import children
from tenantmig.errors import BackupFailed, ConfigError
from tenantmig.server import embedded
from tenantmig.server.database import Database
from tenantmig.server.identifiers import quote_ident
from tenantmig.server.session import Timeouts

PG_BIN_ENV = "TENANTMIG_PG_BIN"
_VERSION = re.compile(r"\(PostgreSQL\) (\d+)")
_UNSAFE_IN_FILE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class PgTools:
    """pg_dump, pg_restore and psql from one PostgreSQL installation (same major version)."""

    bin_dir: Path
    major: int

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)


def _tool_major(pg_dump: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(pg_dump), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out)
    return int(match.group(1)) if match else None


def _candidate_bin_dirs() -> Iterator[Path]:
    on_path = shutil.which("pg_dump")
    if on_path:
        yield Path(on_path).parent
    # The embedded servers' own programs (whichever package is installed).
    yield from embedded.bin_dirs()
    # Debian/Ubuntu keep each major version's programs side by side.
    yield from sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def find_pg_tools(server_major: int) -> PgTools:
    """Find pg_dump/pg_restore/psql able to handle this server (same or newer major version).

    ``TENANTMIG_PG_BIN`` names the directory explicitly; otherwise PATH, the embedded server's
    programs and /usr/lib/postgresql/*/bin are tried in that order. An older pg_dump refuses to
    dump a newer server, so a version check here saves a run that would fail on every tenant.
    """
    explicit = os.environ.get(PG_BIN_ENV)
    dirs = [Path(explicit)] if explicit else list(_candidate_bin_dirs())
    seen: list[str] = []
    for bin_dir in dirs:
        if not all((bin_dir / name).is_file() for name in ("pg_dump", "pg_restore", "psql")):
            continue
        major = _tool_major(bin_dir / "pg_dump")
        if major is None:
            continue
        seen.append(f"{bin_dir} ({major})")
        if major >= server_major:
            return PgTools(bin_dir, major)
    where = f"{PG_BIN_ENV}={explicit}" if explicit else "PATH and the usual install directories"
    found = f"; found only {', '.join(seen)}" if seen else ""
    raise ConfigError(
        f"--backup, restore and db psql need pg_dump, pg_restore and psql of PostgreSQL "
        f"{server_major} or newer, "
        f"none in {where}{found}; install the PostgreSQL client programs or set {PG_BIN_ENV} "
        "to their directory"
    )


def check_writable_directory(directory: Path) -> Path:
    """Create the backup directory if needed and prove we can write a file in it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".tenantmig-write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"backup directory {str(directory)!r} is not writable: {exc.strerror or exc}"
        ) from exc
    return directory.resolve()


@dataclass(frozen=True)
class LibpqConnection:
    """How a PostgreSQL client program reaches the database, the password kept apart."""

    dsn: str
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: URL, application_name: str = "tenantmig backup") -> LibpqConnection:
        params: dict[str, str] = {}
        for key, value in url.query.items():
            params[key] = value if isinstance(value, str) else value[-1]
        if url.host:
            params["host"] = url.host
        if url.port:
            params["port"] = str(url.port)
        if url.username:
            params["user"] = url.username
        if url.database:
            params["dbname"] = url.database
        params["application_name"] = application_name
        return cls(make_dsn(**params), url.password if url.password else None)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env


def error_line(stderr: str) -> str:
    """The line of a PostgreSQL client program's stderr that says what went wrong."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    for line in lines:
        if "error:" in line.lower():
            return line
    return lines[-1] if lines else "no error output"


@dataclass(frozen=True)
class BackupPlan:
    """Where and how a run dumps each tenant; pickled to every worker."""

    directory: Path
    tools: PgTools
    connection: LibpqConnection
    timeouts: Timeouts

    def dump(self, tenant: str, schema: str, revision: str | None, run_id: int | None) -> Path:
        """Dump one schema; the file appears under its final name only once complete."""
        label = _UNSAFE_IN_FILE_NAME.sub("_", revision or "base")
        final = self.directory / f"{tenant}.run{run_id or 0}.{label}.dump"
        partial = final.with_name(final.name + ".partial")
        command = [
            self.tools.tool("pg_dump"),
            "--format=custom",
            # -n takes a pattern; a double-quoted name matches exactly that schema.
            f"--schema={quote_ident(schema)}",
            f"--file={partial}",
            # pg_dump waits for ACCESS SHARE on every table; never behind a long lock.
            f"--lock-wait-timeout={self.timeouts.lock_timeout_ms}",
            f"--dbname={self.connection.dsn}",
        ]
        try:
            done = children.run(command, env=self.connection.environment())
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise BackupFailed(f"backup failed, not migrated: {error_line(done.stderr)}")
        os.replace(partial, final)
        return final


def plan_backups(directory: Path, database: Database, timeouts: Timeouts) -> BackupPlan:
    """Check, before a run changes anything, that it can back up: client programs of the
    server's version or newer are found and ``directory`` is writable (ConfigError if not)."""
    tools = find_pg_tools(database.server_major)  # first: a missing tool creates no directory
    return BackupPlan(
        directory=check_writable_directory(directory),
        tools=tools,
        connection=LibpqConnection.from_url(database.url),
        timeouts=timeouts,
    )
