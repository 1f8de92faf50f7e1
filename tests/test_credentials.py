"""Wrong passwords and under-privileged roles: one clear line, nothing changed, no secret shown.

The test servers trust local connections. For these tests members of one group role must log
in with a password (scram-sha-256): the fixture adds that rule to pg_hba.conf when the server is
the embedded one, or when TENANTMIG_TEST_EDIT_HBA=1 says the server's pg_hba.conf may be edited
(CI's second cluster). On any other server the tests run only if it already enforces passwords.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tenantmig.server.config import Settings
from tests.helpers import run_cli, version
from tests.test_engine import make_tenants

GROUP = "tenantmig_password_auth"
HBA_RULES = (
    f"local all +{GROUP} scram-sha-256\n"
    f"host all +{GROUP} 127.0.0.1/32 scram-sha-256\n"
    f"host all +{GROUP} ::1/128 scram-sha-256\n"
)


def _admin(url: str) -> sa.Engine:
    return sa.create_engine(
        make_url(url).set(drivername="postgresql+psycopg2"),
        isolation_level="AUTOCOMMIT",
        poolclass=sa.NullPool,
    )


def _as_role(url: str, role: str, password: str) -> str:
    parsed = make_url(url).set(username=role, password=password)
    return parsed.render_as_string(hide_password=False)


def _rejects(url: str) -> bool:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect():
            return False
    except sa.exc.OperationalError:
        return True
    finally:
        engine.dispose()


@pytest.fixture()
def password_role(database_url: str) -> Iterator[tuple[str, str]]:
    """(role, password) of a login role that must authenticate with its password."""
    role, password = f"tm_pw_{uuid.uuid4().hex[:8]}", f"s3cret-{uuid.uuid4().hex[:6]}"
    admin = _admin(database_url)
    with admin.connect() as conn:
        conn.exec_driver_sql(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{GROUP}')"
            f" THEN CREATE ROLE {GROUP} NOLOGIN; END IF; END $$"
        )
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE {GROUP}")
        hba = Path(str(conn.exec_driver_sql("SHOW hba_file").scalar()))
        may_edit = not os.environ.get("TENANTMIG_TEST_DATABASE_URL") or (
            os.environ.get("TENANTMIG_TEST_EDIT_HBA") == "1"
        )
        if may_edit and hba.exists() and GROUP not in hba.read_text():
            hba.write_text(HBA_RULES + hba.read_text())
            conn.exec_driver_sql("SELECT pg_reload_conf()")
    try:
        wrong = _as_role(database_url, role, "not-the-password")
        deadline = time.monotonic() + 10  # the reload is asynchronous
        while not _rejects(wrong):
            if time.monotonic() > deadline:
                pytest.skip("this test server does not ask local connections for passwords")
            time.sleep(0.1)
        yield role, password
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP OWNED BY {role}")
            conn.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()


def test_wrong_password_is_one_line_with_the_password_masked(
    settings: Settings, database_url: str, password_role: tuple[str, str]
) -> None:
    role, password = password_role
    make_tenants(settings, ["acme"], "001_initial_schema")
    with _admin(database_url).connect() as conn:
        conn.exec_driver_sql(f"GRANT SELECT ON public.tenants TO {role}")
    wrong = _as_role(database_url, role, "Wr0ng-pa55")
    for command in (["upgrade", "--all-tenants"], ["status"], ["drift"], ["tenants", "list"]):
        done = run_cli(*command, url=wrong)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, (command, done.stderr)
        assert "password authentication failed" in lines[0]
        assert f"{role}:***@" in lines[0]
        assert "Wr0ng-pa55" not in done.stdout + done.stderr
    # The right password gets in: what failed above was the password, nothing else.
    right = run_cli("tenants", "list", url=_as_role(database_url, role, password))
    assert right.returncode == 0, right.stderr
    assert "acme" in right.stdout and password not in right.stdout + right.stderr


def test_roles_that_cannot_write_are_refused_before_anything_changes(
    settings: Settings, engine: sa.Engine, database_url: str, password_role: tuple[str, str]
) -> None:
    role, password = password_role
    make_tenants(settings, ["acme", "globex"], "001_initial_schema")
    with _admin(database_url).connect() as conn:
        conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA acme, globex TO {role}")
        for schema in ("public", "acme", "globex"):
            conn.exec_driver_sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
        runs_before = conn.exec_driver_sql("SELECT count(*) FROM tenantmig_runs").scalar()
    url = _as_role(database_url, role, password)

    # A role with read access only: it may look, not migrate.
    assert run_cli("status", url=url).returncode == 0
    for command in (
        ["upgrade", "--all-tenants"],
        ["upgrade"],
        ["downgrade", "--tenant", "acme", "base", "--yes"],
    ):
        done = run_cli(*command, url=url)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert done.stderr.strip().count("\n") == 0
        assert f"role {role} may not create objects in schema 'public'" in done.stderr

    # A role whose transactions are read-only (as on a replica, or by policy).
    with _admin(database_url).connect() as conn:
        conn.exec_driver_sql(f"GRANT CREATE ON SCHEMA public TO {role}")
        conn.exec_driver_sql(f"ALTER ROLE {role} SET default_transaction_read_only = on")
    done = run_cli("upgrade", "--all-tenants", url=url)
    assert done.returncode == 1, done.stderr
    assert "read-only transactions" in done.stderr

    assert version(engine, "acme") == version(engine, "globex") == "001_initial_schema"
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM tenantmig_runs").scalar() == runs_before
