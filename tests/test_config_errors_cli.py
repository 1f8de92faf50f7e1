"""A malformed database directory stops ``tenantmig upgrade --all-tenants`` before anything runs:
exit 1, one line, no traceback, no password, and every tenant where it was (no run recorded).

Before, a URL with a continuation line or a space became a database with a strange name and the
run migrated the control database's tenants anyway (exit 3); a password with ``;`` or ``%``
ended in a traceback quoting it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.helpers import TENANT_HEAD, project_with, run_cli, version

OLD = "001_initial_schema"
SECRET = "S3CRET"
TENANTS = ("a1", "a2")


def runs_recorded(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM public.tenantmig_runs")).scalar_one())


@pytest.fixture()
def tenants_at_old(database_url: str, engine: sa.Engine) -> int:
    """a1 and a2 in the control database at OLD; the number of runs recorded so far."""
    assert run_cli("upgrade", "--shared", url=database_url).returncode == 0
    done = run_cli("tenants", "create", *TENANTS, "--no-migrate", url=database_url)
    assert done.returncode == 0, done.stderr
    done = run_cli("upgrade", "--all-tenants", OLD, url=database_url)
    assert done.returncode == 0, done.stderr
    return runs_recorded(engine)


BAD_ENVIRONMENT = {
    "an unencoded ; in a password": f"eu=postgresql://app:{SECRET};x=1@127.0.0.1/db",
    "a space in a URL": f"eu=postgresql://app:pw@127.0.0.1/app {SECRET}",
    "a password without its @": f"eu=postgresql+psycopg2://app:{SECRET}",
}
BAD_SECTIONS = {
    "a continuation line": f"eu = postgresql://app:pw@127.0.0.1/app\n    {SECRET}\n",
    "a port that is not a number": f"eu = postgresql://app:{SECRET}@127.0.0.1:x5432/app\n",
    "a doubled %": f"eu = postgresql://app:{SECRET}%%40x@127.0.0.1/app\n",
    "a name given twice": (
        f"eu = postgresql://app:{SECRET}@127.0.0.1/app\neu = postgresql://app:{SECRET}@h/app\n"
    ),
}


def assert_refused(done: object, case: str) -> None:
    assert hasattr(done, "returncode") and hasattr(done, "stderr") and hasattr(done, "stdout")
    assert done.returncode == 1, (case, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, (case, done.stderr)
    assert SECRET not in done.stderr + done.stdout, (case, done.stderr)
    assert done.stderr.startswith("tenantmig: error: "), (case, done.stderr)
    assert done.stderr.count("\n") == 1, (case, done.stderr)


def test_a_malformed_directory_url_changes_nothing(
    database_url: str, engine: sa.Engine, tenants_at_old: int, tmp_path: Path
) -> None:
    for case, value in BAD_ENVIRONMENT.items():
        done = run_cli(
            "upgrade", "--all-tenants", url=database_url, env={"TENANTMIG_DATABASES": value}
        )
        assert_refused(done, case)
    config = project_with(tmp_path, {})
    base = config.read_text()
    for case, section in BAD_SECTIONS.items():
        config.write_text(base + "\n[databases]\n" + section)
        done = run_cli("--config", str(config), "upgrade", "--all-tenants", url=database_url)
        assert_refused(done, case)
    bad_control = f"postgresql://app:{SECRET}@127.0.0.1:x5432/app"
    done = run_cli("upgrade", "--all-tenants", "--database-url", bad_control, url=database_url)
    assert_refused(done, "a malformed --database-url")

    assert [version(engine, name) for name in TENANTS] == [OLD, OLD]
    assert runs_recorded(engine) == tenants_at_old


# A password that needs every escape the directory documents: ; (the separator), % and @.
PASSWORD = "Tr0ub;4%dor@x"


@pytest.fixture()
def database_with_password(admin_url: str) -> Iterator[str]:
    """A second database, owned by a role whose password is PASSWORD; its URL, percent-encoded
    the way SQLAlchemy renders it."""
    name, role = f"tm_{uuid.uuid4().hex[:12]}", f"tm_pw_{uuid.uuid4().hex[:8]}"
    direct = make_url(admin_url).set(drivername="postgresql+psycopg2")
    admin = sa.create_engine(direct, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        # psycopg2 binds on the client side, so a parameter works in this utility statement.
        conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN PASSWORD %s', (PASSWORD,))
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" OWNER "{role}"')
    try:
        url = direct.set(database=name, username=role, password=PASSWORD)
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        admin.dispose()


def test_a_percent_encoded_password_with_a_semicolon_works(
    database_url: str, database_with_password: str
) -> None:
    assert "%3B" in database_with_password and "%25" in database_with_password
    env = {"TENANTMIG_DATABASES": f"eu={database_with_password};us=postgresql://h/db"}
    assert run_cli("upgrade", "--shared", url=database_url, env=env).returncode == 0
    done = run_cli("tenants", "create", "e1", "--database", "eu", url=database_url, env=env)
    assert done.returncode == 0, done.stderr
    placed = sa.create_engine(database_with_password, poolclass=sa.NullPool)
    try:
        assert version(placed, "e1") == TENANT_HEAD
    finally:
        placed.dispose()
