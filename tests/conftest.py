"""Test databases: always a real PostgreSQL server.

Server, first found wins:
1. $TENANTMIG_TEST_DATABASE_URL: an existing server (a superuser URL; tests create databases);
2. Docker available: a throwaway postgres container through testcontainers;
3. otherwise the embedded server tenantmig would start (``tenantmig.server.embedded``), in a
   temporary directory.

Every test that asks for ``database_url`` gets a brand-new database, dropped afterwards.

With $TENANTMIG_TEST_POOLER_URL (a connection pooler in front of that server, e.g.
``postgresql://postgres@127.0.0.1:6432``, forwarding every database name), ``database_url`` and
everything the tests run go through the pooler; databases are still created and dropped directly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tenantmig.server import embedded
from tenantmig.server.config import Settings, load_settings
from tests.helpers import CONFIG


def _docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A superuser URL on a real PostgreSQL server for the whole session."""
    explicit = os.environ.get("TENANTMIG_TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    if _docker_works():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver="psycopg2") as container:
            yield container.get_connection_url()
        return
    # The embedded server tenantmig itself would start (the newest installed package).
    _provider, server = embedded.start(
        tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete"
    )
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def _admin_engine(admin_url: str) -> sa.Engine:
    url = make_url(admin_url).set(drivername="postgresql+psycopg2")
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)


@pytest.fixture()
def database_url(admin_url: str) -> Iterator[str]:
    """A fresh, empty database for this test only."""
    name = f"tm_{uuid.uuid4().hex[:12]}"
    engine = _admin_engine(admin_url)
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    pooler = os.environ.get("TENANTMIG_TEST_POOLER_URL")
    url = make_url(pooler or admin_url).set(drivername="postgresql+psycopg2", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        engine.dispose()


@pytest.fixture()
def settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(config_file=CONFIG, database_url=database_url, home=tmp_path / "home")


@pytest.fixture()
def engine(database_url: str) -> Iterator[sa.Engine]:
    # Named, so a pooler relabels the server connection it lends the tests (a pooled connection
    # keeps the last client's application_name otherwise, and tests count tenantmig's sessions).
    eng = sa.create_engine(
        database_url, poolclass=sa.NullPool, connect_args={"application_name": "tests"}
    )
    yield eng
    eng.dispose()
