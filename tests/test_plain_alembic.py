"""Plain Alembic keeps working on the same files, and agrees with tenantmig."""

from __future__ import annotations

import os
import subprocess
import sys

import sqlalchemy as sa

from tenantmig import api
from tenantmig.server.config import Settings
from tests.helpers import CONFIG, REPO, SHARED_HEAD, TENANT_HEAD, snapshot, tables, version


def alembic(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TENANTMIG_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(CONFIG), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )


def test_plain_alembic_shared_and_tenant_match_tenantmig(
    settings: Settings, database_url: str, engine: sa.Engine
) -> None:
    done = alembic("-n", "shared", "upgrade", "head", url=database_url)
    assert done.returncode == 0, done.stderr
    assert version(engine, "public") == SHARED_HEAD
    api.create_tenants(settings, ["acme", "globex"], migrate=False)

    done = alembic("-n", "tenant", "-x", "tenant=acme", "upgrade", "head", url=database_url)
    assert done.returncode == 0, done.stderr
    assert version(engine, "acme") == TENANT_HEAD
    assert version(engine, "globex") is None  # only the named tenant

    assert api.upgrade(settings, api.Selection.named(["globex"])).succeeded
    assert snapshot(engine, "acme") == snapshot(engine, "globex")

    current = alembic("-n", "tenant", "-x", "tenant=acme", "current", url=database_url)
    assert current.returncode == 0 and TENANT_HEAD in current.stdout
    history = alembic("-n", "tenant", "history", "--verbose", url=database_url)
    assert history.returncode == 0 and "001_initial_schema" in history.stdout

    down = alembic("-n", "tenant", "-x", "tenant=acme", "downgrade", "-1", url=database_url)
    assert down.returncode == 0, down.stderr
    assert version(engine, "acme") == "001_initial_schema"
    status = api.status(settings)
    assert {t.name: t.state for t in status.tenants} == {"acme": "behind", "globex": "current"}


def test_plain_alembic_refuses_a_hostile_tenant(database_url: str, engine: sa.Engine) -> None:
    done = alembic(
        "-n", "tenant", "-x", 'tenant=x";drop schema public;--', "upgrade", "head", url=database_url
    )
    assert done.returncode != 0
    assert "not allowed" in done.stderr
    assert "public" in {r for r in _schemas(engine)}


def _schemas(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT nspname FROM pg_namespace")).scalars())


def test_offline_sql_pins_search_path_and_qualifies_version_table(database_url: str) -> None:
    done = alembic(
        "-n", "tenant", "-x", "tenant=acme", "upgrade", "head", "--sql", url=database_url
    )
    assert done.returncode == 0, done.stderr
    sql = done.stdout
    assert 'SET LOCAL search_path TO "acme"' in sql
    assert "CREATE TABLE acme.alembic_version" in sql
    assert "CREATE TABLE users" in sql
    assert sql.index("BEGIN") < sql.index("SET LOCAL search_path") < sql.index("CREATE TABLE")


def test_version_table_ignores_a_stale_search_path(
    settings: Settings, database_url: str, engine: sa.Engine
) -> None:
    """A database-level search_path pointing at another tenant must not redirect anything."""
    api.upgrade(settings, api.Selection.shared_only())
    api.create_tenants(settings, ["acme", "globex"], migrate=False)
    dbname = sa.engine.make_url(database_url).database
    with engine.begin() as conn:
        conn.exec_driver_sql(f'ALTER DATABASE "{dbname}" SET search_path TO globex, public')
    assert api.upgrade(settings, api.Selection.named(["acme"])).succeeded
    done = alembic("-n", "tenant", "-x", "tenant=acme", "current", url=database_url)
    assert done.returncode == 0
    assert "users" in tables(engine, "acme")
    assert tables(engine, "globex") == set()  # nothing leaked into the search_path's schema
    assert version(engine, "acme") == TENANT_HEAD
    assert version(engine, "globex") is None
