"""A real read-only standby (pg_basebackup -R of the test server): refused before anything
changes, while reading commands still work there."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tenantmig.server import embedded
from tenantmig.server.config import Settings
from tests.helpers import TENANT_HEAD, run_cli, version
from tests.test_engine import make_tenants


def _as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its programs as the postgres user."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


def _server_programs(major: int) -> Path | None:
    """The directory of this major version's server programs (Debian's, or the embedded
    server's): pg_basebackup, pg_ctl and postgres together."""
    candidates = [Path(f"/usr/lib/postgresql/{major}/bin")]
    candidates += embedded.bin_dirs()
    for bin_dir in candidates:
        if all((bin_dir / p).is_file() for p in ("pg_basebackup", "pg_ctl", "postgres")):
            version = subprocess.run(
                [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True
            ).stdout
            if f" {major}." in version:
                return bin_dir
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def start_standby(engine: sa.Engine, database_url: str) -> Iterator[Callable[[], str]]:
    """Start a hot standby of the test server (streaming from it); returns its URL for the
    test's database. Stopped and removed afterwards."""
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres user to run a standby as")
    with engine.connect() as conn:
        major = int(conn.exec_driver_sql("SHOW server_version_num").scalar_one()) // 10000
        # A standby refuses to start with any of these lower than on its primary.
        matched = " ".join(
            f"-c {name}={conn.exec_driver_sql(f'SHOW {name}').scalar_one()}"
            for name in (
                "max_connections",
                "max_worker_processes",
                "max_wal_senders",
                "max_prepared_transactions",
                "max_locks_per_transaction",
            )
        )
    bin_dir = _server_programs(major)
    if bin_dir is None:
        pytest.skip(f"no pg_basebackup, pg_ctl and postgres of PostgreSQL {major} here")
    primary = make_url(database_url)
    work = Path(tempfile.mkdtemp(prefix="tenantmig-standby-"))
    data = work / "data"
    if os.geteuid() == 0:
        shutil.chown(work, "postgres")
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]

    def start() -> str:
        host = primary.query.get("host") or primary.host or "127.0.0.1"
        # As ourselves (a client may be root), then handed to the user the standby runs as.
        backup = subprocess.run(
            (
                [
                    str(bin_dir / "pg_basebackup"),
                    # -c fast: checkpoint now, not spread over minutes.
                    *("-D", str(data), "-R", "-X", "stream", "-c", "fast", "-h", str(host)),
                    *("-p", str(primary.port or 5432), "-U", primary.username or "postgres"),
                ]
            ),
            capture_output=True,
            text=True,
        )
        if backup.returncode != 0:
            pytest.skip(f"the test server allows no base backup: {backup.stderr.strip()[:200]}")
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "postgres:", str(data)], check=True)
            data.chmod(0o700)
        port = _free_port()
        options = f"-p {port} -k {work} -c listen_addresses=127.0.0.1 -c hot_standby=on {matched}"
        started = subprocess.run(
            _as_server_user(
                [*pg_ctl, "-l", str(work / "standby.log"), "-w", "-o", options, "start"]
            ),
            capture_output=True,
            text=True,
        )
        assert started.returncode == 0, started.stderr
        url = primary.set(host="127.0.0.1", port=port, query={})
        return url.render_as_string(hide_password=False)

    try:
        yield start
    finally:
        subprocess.run(_as_server_user([*pg_ctl, "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def test_a_standby_is_refused_before_anything_changes_and_still_answers_reads(
    settings: Settings, engine: sa.Engine, start_standby: Callable[[], str]
) -> None:
    make_tenants(settings, ["acme", "globex"], "001_initial_schema")
    standby = start_standby()
    with sa.create_engine(standby, poolclass=sa.NullPool).connect() as conn:
        assert conn.exec_driver_sql("SELECT pg_is_in_recovery()").scalar() is True
    for command in (
        ["upgrade", "--all-tenants"],
        ["upgrade"],
        ["downgrade", "--tenant", "acme", "-1"],
    ):
        done = run_cli(*command, url=standby)
        assert done.returncode == 1, (command, done.stderr)
        assert "read-only standby" in done.stderr and "primary" in done.stderr, done.stderr
        assert done.stderr.strip().count("\n") == 0  # one line, no traceback
    assert version(engine, "acme") == version(engine, "globex") == "001_initial_schema"
    status = run_cli("status", url=standby)
    assert status.returncode == 0 and "behind" in status.stdout, status.stderr
    assert (
        run_cli(
            "upgrade", "--all-tenants", url=engine.url.render_as_string(hide_password=False)
        ).returncode
        == 0
    )
    assert version(engine, "acme") == TENANT_HEAD
