"""A role that owns the tenant schemas but may not create schemas or shared tables.

The administrator's one-time set-up is ``tenantmig grant ROLE``; after it, the role migrates
tenants (replaying compiled steps in its scratch schemas) and reports drift. Before it, every
command names what is missing and how to grant it, and changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tenantmig import api
from tenantmig.errors import CannotWrite
from tenantmig.run.retention import Retention
from tenantmig.server.config import Settings

from .helpers import TENANT_HEAD, run_cli, version

TENANTS = ["acme", "globex", "initech"]


@pytest.fixture()
def app_role(engine: sa.Engine) -> Iterator[str]:
    """A login role with no privileges beyond PUBLIC's (roles are cluster-wide: unique name)."""
    role = f"tm_app_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
    yield role
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP OWNED BY "{role}" CASCADE')
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP ROLE "{role}"')


@pytest.fixture()
def admin(settings: Settings, engine: sa.Engine, app_role: str) -> Settings:
    """The administrator's part before `grant`: shared tables, tenant schemas owned by the
    role, registered."""
    assert api.upgrade(settings, api.Selection.shared_only()).succeeded
    with engine.begin() as conn:
        for name in TENANTS:
            conn.exec_driver_sql(f'CREATE SCHEMA {name} AUTHORIZATION "{app_role}"')
    api.register_tenants(settings, TENANTS)
    return settings


def _as(settings: Settings, role: str, **changes: object) -> Settings:
    assert settings.database_url is not None
    url = make_url(settings.database_url).set(username=role, password=None)
    return settings.with_options(database_url=url.render_as_string(hide_password=False), **changes)


def _ledger_exists(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(sa.text("SELECT to_regclass('public.tenantmig_runs')")).scalar())


def test_before_grant_every_command_names_what_is_missing(
    admin: Settings, engine: sa.Engine, app_role: str
) -> None:
    with engine.begin() as conn:  # `upgrade --shared` by the admin made the ledger: start over
        conn.exec_driver_sql("DROP TABLE public.tenantmig_run_tenants, public.tenantmig_runs")
    app = _as(admin, app_role)
    with pytest.raises(CannotWrite, match=f"tenantmig grant {app_role}"):
        api.upgrade(app, api.Selection.all_tenants())
    with pytest.raises(CannotWrite) as drift_error:
        api.drift(app)
    assert 'GRANT SELECT ON "public"."tenants"' in str(drift_error.value)
    assert "scratch_schema" in str(drift_error.value)
    with pytest.raises(CannotWrite, match="CREATE on database"):
        api.create_tenants(app, ["newco"])
    assert not _ledger_exists(engine)
    assert all(version(engine, name) is None for name in TENANTS)
    cli = run_cli("upgrade", "--all-tenants", url=app.database_url)
    assert cli.returncode == 1 and f"tenantmig grant {app_role}" in cli.stderr


def test_grant_sql_only_prints(admin: Settings, engine: sa.Engine, app_role: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE public.tenantmig_run_tenants, public.tenantmig_runs")
    printed = run_cli("grant", app_role, "--sql", url=admin.database_url)
    assert printed.returncode == 0, printed.stderr
    assert f'CREATE SCHEMA IF NOT EXISTS "tenantmig_scratch" AUTHORIZATION "{app_role}";' in (
        printed.stdout
    )
    assert "CREATE TABLE IF NOT EXISTS" in printed.stdout
    assert not _ledger_exists(engine)
    missing = run_cli("grant", "no_such_role", url=admin.database_url)
    assert missing.returncode == 1 and "no role" in missing.stderr


def test_after_grant_the_role_migrates_replays_and_reports_drift(
    admin: Settings, engine: sa.Engine, app_role: str
) -> None:
    done = run_cli("grant", app_role, url=admin.database_url)
    assert done.returncode == 0, done.stderr
    done = run_cli("grant", app_role, url=admin.database_url)  # again: harmless
    assert done.returncode == 0, done.stderr

    # Without its scratch schema configured the role still migrates, through Alembic.
    plain = _as(admin, app_role)
    first = api.upgrade(plain, api.Selection.all_tenants(), "001_initial_schema")
    assert first.succeeded and not any(o.replayed for o in first.outcomes)
    assert any("replay is off" in n for n in first.notices)
    with pytest.raises(CannotWrite, match="scratch"):
        api.drift(plain)

    app = _as(admin, app_role, scratch_schema="tenantmig_scratch")
    second = api.upgrade(app, api.Selection.all_tenants())
    assert second.succeeded and all(o.replayed for o in second.outcomes), second.notices
    assert all(version(engine, name) == TENANT_HEAD for name in TENANTS)
    assert not api.drift(app).any_drift
    with engine.connect() as conn:  # the scratch schemas are left empty
        left = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname LIKE 'tenantmig_scratch%'"
            )
        ).scalar()
    assert left == 0
    stamped = api.stamp(app, api.Selection.named(["acme"]), "001_initial_schema")
    assert stamped.succeeded and version(engine, "acme") == "001_initial_schema"
    pruned = api.prune_runs(app, Retention(keep_last=1))  # the ledger's retention
    assert pruned.removed_runs  # DELETE was granted: without it, a permission error
    assert not set(pruned.removed_runs) & {run.id for run in api.runs(app)}


def test_a_table_the_role_does_not_own_is_named_before_anything_runs(
    admin: Settings, engine: sa.Engine, app_role: str
) -> None:
    api.grant(admin, app_role)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE globex.legacy (id int)")  # owned by the admin
    app = _as(admin, app_role, scratch_schema="tenantmig_scratch")
    with pytest.raises(CannotWrite, match=r"globex\.legacy"):
        api.upgrade(app, api.Selection.all_tenants())
    assert all(version(engine, name) is None for name in TENANTS)
