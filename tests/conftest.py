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


# -- Citus ---------------------------------------------------------------------------------------
# $TENANTMIG_TEST_CITUS_URL: a superuser URL on the coordinator of a Citus cluster whose workers
# are $TENANTMIG_TEST_CITUS_WORKERS (host:port,host:port; default the coordinator's port + 1
# and + 2, as ../shared/vendor/citus/cluster.sh starts them). Tests marked ``citus`` get a fresh
# database on every node with the workers added and schema-based sharding on, and are skipped
# when no cluster is given.
def citus_workers(coordinator: str) -> list[tuple[str, int]]:
    listed = os.environ.get("TENANTMIG_TEST_CITUS_WORKERS")
    if listed:
        return [(h, int(p)) for h, p in (w.strip().rsplit(":", 1) for w in listed.split(","))]
    url = make_url(coordinator)
    port = url.port or 5432
    return [(url.host or "127.0.0.1", port + 1), (url.host or "127.0.0.1", port + 2)]


@pytest.fixture()
def citus_url() -> Iterator[str]:
    """A new database on a real Citus cluster (coordinator + workers), dropped afterwards."""
    coordinator = os.environ.get("TENANTMIG_TEST_CITUS_URL")
    if not coordinator:
        pytest.skip("no Citus cluster: set TENANTMIG_TEST_CITUS_URL (see .ci/run)")
    name = f"tm_{uuid.uuid4().hex[:12]}"
    base = make_url(coordinator)
    nodes = [base] + [base.set(host=h, port=p) for h, p in citus_workers(coordinator)]
    engines = [_admin_engine(n.render_as_string(hide_password=False)) for n in nodes]
    in_db = [_admin_engine(n.set(database=name).render_as_string(hide_password=False))
             for n in nodes]  # fmt: skip
    try:
        for admin, engine in zip(engines, in_db, strict=True):
            with admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
            with engine.connect() as conn:
                conn.exec_driver_sql("CREATE EXTENSION citus")
        with in_db[0].connect() as conn:
            conn.execute(
                sa.text("SELECT citus_set_coordinator_host(:h, :p)"),
                {"h": base.host or "127.0.0.1", "p": base.port or 5432},
            )
            for worker in nodes[1:]:
                conn.execute(
                    sa.text("SELECT citus_add_node(:h, :p)"), {"h": worker.host, "p": worker.port}
                )
            conn.exec_driver_sql(
                f'ALTER DATABASE "{name}" SET citus.enable_schema_based_sharding = on'
            )
        yield base.set(drivername="postgresql+psycopg2", database=name).render_as_string(
            hide_password=False
        )
    finally:
        for engine in in_db:
            engine.dispose()
        for admin in engines:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()


@pytest.fixture()
def citus_settings(citus_url: str, tmp_path: Path) -> Settings:
    return load_settings(config_file=CONFIG, database_url=citus_url, home=tmp_path / "home")


@pytest.fixture()
def citus_engine(citus_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(
        citus_url, poolclass=sa.NullPool, connect_args={"application_name": "tests"}
    )
    yield eng
    eng.dispose()
