"""The configured database for other tools (`tenantmig db`), and the embedded server's programs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy.engine import make_url

from tenantmig.backup.dump import find_pg_tools
from tenantmig.server import embedded

from .helpers import CONFIG, REPO, run_cli


def _without_url() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "TENANTMIG_DATABASE_URL"}


def test_db_url_masks_the_password_unless_asked(database_url: str) -> None:
    shown = run_cli("db", "url", url=database_url)
    assert shown.returncode == 0, shown.stderr
    printed = shown.stdout.strip()
    assert printed.startswith("postgresql://") and "+psycopg2" not in printed
    real = run_cli("db", "url", "--show-password", url=database_url).stdout.strip()
    with psycopg2.connect(real) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        assert cursor.fetchone() == (make_url(database_url).database,)


def test_db_psql_runs_on_the_configured_database(database_url: str) -> None:
    done = run_cli("db", "psql", "--", "-Atc", "SELECT current_database()", url=database_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == make_url(database_url).database
    failed = run_cli("db", "psql", "--", "-c", "SELECT no_such_column", url=database_url)
    assert failed.returncode != 0 and "no_such_column" in failed.stderr


def test_db_serve_keeps_the_embedded_server_until_sigterm(tmp_path: Path) -> None:
    env = {**_without_url(), "TENANTMIG_HOME": str(tmp_path / "home")}
    server = subprocess.Popen(
        [sys.executable, "-m", "tenantmig", "--config", str(CONFIG), "db", "serve"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        masked = server.stdout.readline().strip()
        assert masked.startswith("postgresql://") and "tenantmig" in masked
        # While it serves, another program connects (and another tenantmig finds it running).
        real = run_cli("db", "url", "--show-password", env=env).stdout.strip()
        with psycopg2.connect(real) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
        conn.close()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(real, connect_timeout=5).close()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_db_serve_refuses_a_configured_server(database_url: str) -> None:
    done = run_cli("db", "serve", url=database_url)
    assert done.returncode == 1 and "embedded" in done.stderr


def test_backup_programs_are_found_in_the_embedded_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no pg_dump on PATH and only older system programs, the embedded server's own are
    used: --backup, restore and db psql work on the embedded server out of the box."""
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("TENANTMIG_PG_BIN", raising=False)
    provider, _module = embedded.choose()
    tools = find_pg_tools(provider.major)
    assert tools.bin_dir == embedded.bin_dir()
    assert tools.major >= provider.major
