"""Starting a project and adopting an existing database: init, tenants register, stamp, and
where the tenant list comes from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from tenantmig import api
from tenantmig.errors import (
    ConfigError,
    RunLocked,
    SchemaMissing,
    TenantExists,
    UnknownRevision,
    UnknownTenant,
)
from tenantmig.run.locks import RunLocks
from tenantmig.server.config import Settings, load_settings
from tenantmig.server.session import LOCK_NAMESPACE, lock_key

from .helpers import (
    REPO,
    SHARED_HEAD,
    TENANT_HEAD,
    run_cli,
    schemas,
    snapshot,
    tenant_rows,
    version,
)

# -- init ------------------------------------------------------------------------------------


def test_init_writes_a_project_that_migrates(tmp_path: Path, database_url: str) -> None:
    result = api.init_project(tmp_path / "app")
    written = {str(p) for p in result.files}
    assert "alembic.ini" in written
    assert "migrations/shared/versions/001_initial_schema.py" in written
    assert not list((tmp_path / "app/migrations/tenant/versions").iterdir())
    settings = load_settings(config_file=tmp_path / "app/alembic.ini", database_url=database_url)
    shared = api.upgrade(settings, api.Selection.shared_only())
    assert shared.shared is not None and shared.shared.to_revision == "001_initial_schema"
    created, _ = api.create_tenants(settings, ["acme"])
    assert [t.name for t in created] == ["acme"]
    # A first tenant revision written with `tenantmig revision`, then run.
    info = api.revision(settings, "tenant", "users", rev_id="t1")
    Path(info.path).write_text(
        '"""users"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        'revision = "t1"\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade() -> None:\n"
        '    op.create_table("users", sa.Column("id", sa.Integer, primary_key=True))\n\n\n'
        "def downgrade() -> None:\n"
        '    op.drop_table("users")\n'
    )
    run = api.upgrade(settings, api.Selection.all_tenants())
    assert run.succeeded and [o.to_revision for o in run.outcomes] == ["t1"]
    assert not api.drift(settings).any_drift


def test_init_never_overwrites_and_checks_its_options(tmp_path: Path) -> None:
    api.init_project(tmp_path)
    before = (tmp_path / "alembic.ini").read_text()
    with pytest.raises(ConfigError, match="never overwrites"):
        api.init_project(tmp_path, demo=True)
    assert (tmp_path / "alembic.ini").read_text() == before
    with pytest.raises(ConfigError, match="--demo needs the tenant registry"):
        api.init_project(tmp_path / "other", demo=True, registry=False)
    assert not (tmp_path / "other").exists()


def test_init_demo_is_the_demo_chains_and_no_registry_has_no_revision(tmp_path: Path) -> None:
    demo = api.init_project(tmp_path / "demo", demo=True)
    for chain in ("shared", "tenant"):
        ours = sorted(p.name for p in (REPO / "migrations" / chain / "versions").glob("*.py"))
        theirs = sorted(
            p.name for p in (demo.directory / "migrations" / chain / "versions").iterdir()
        )
        assert theirs == ours
    bare = api.init_project(tmp_path / "bare", registry=False, shared_schema="app_shared")
    assert not list((bare.directory / "migrations/shared/versions").iterdir())
    assert "shared_schema = app_shared" in (bare.directory / "alembic.ini").read_text()


def test_init_cli_in_an_empty_directory(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tenantmig", "init", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("TENANTMIG_")},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["registry"] is True
    again = subprocess.run(
        [sys.executable, "-m", "tenantmig", "init"], cwd=tmp_path, capture_output=True, text=True
    )
    assert again.returncode == 1 and "never overwrites" in again.stderr


# -- tenants register ------------------------------------------------------------------------


def _shared_ready(settings: Settings) -> None:
    assert api.upgrade(settings, api.Selection.shared_only()).succeeded


def test_register_adopts_existing_schemas_without_changing_them(
    settings: Settings, engine: sa.Engine
) -> None:
    _shared_ready(settings)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA legacy_acme; CREATE TABLE legacy_acme.t (id int)")
        conn.exec_driver_sql("CREATE SCHEMA globex")
    before = snapshot(engine, "legacy_acme")
    registered = api.register_tenants(settings, ["acme"], schema="legacy_acme")
    assert [(t.name, t.schema) for t in registered] == [("acme", "legacy_acme")]
    api.register_tenants(settings, ["globex"])
    assert tenant_rows(engine) == ["acme", "globex"]
    assert snapshot(engine, "legacy_acme") == before
    assert version(engine, "legacy_acme") is None


def test_register_refuses_bad_input_and_registers_nothing(
    settings: Settings, engine: sa.Engine
) -> None:
    _shared_ready(settings)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA initech")
    with pytest.raises(SchemaMissing, match="nosuch"):
        api.register_tenants(settings, ["initech", "nosuch"])
    with pytest.raises(ConfigError, match="exactly one NAME"):
        api.register_tenants(settings, ["a", "b"], schema="initech")
    assert tenant_rows(engine) == []
    api.register_tenants(settings, ["initech"])
    with pytest.raises(TenantExists, match="already registered"):
        api.register_tenants(settings, ["initech"])
    # create refuses an existing schema and points at register
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA hooli")
    with pytest.raises(TenantExists, match="tenants register"):
        api.create_tenants(settings, ["hooli"], migrate=False)
    cli = run_cli("tenants", "register", "Bad-Name", url=settings.database_url)
    assert cli.returncode == 1 and "not allowed" in cli.stderr
    assert tenant_rows(engine) == ["initech"]


# -- stamp -----------------------------------------------------------------------------------


def _hand_built(settings: Settings, engine: sa.Engine, name: str) -> None:
    """A tenant schema at head built without tenantmig: migrate a scratch tenant, then move
    its tables into a fresh schema with no version table."""
    api.create_tenants(settings, [f"{name}_tmp"])
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {name}_tmp.alembic_version")
        conn.exec_driver_sql(f"ALTER SCHEMA {name}_tmp RENAME TO {name}")
        conn.exec_driver_sql(f"DELETE FROM public.tenants WHERE name = '{name}_tmp'")


def test_stamp_records_the_revision_under_the_lock_and_in_the_ledger(
    settings: Settings, engine: sa.Engine
) -> None:
    _shared_ready(settings)
    _hand_built(settings, engine, "acme")
    _hand_built(settings, engine, "globex")
    api.register_tenants(settings, ["acme", "globex"])
    structure = snapshot(engine, "acme")
    result = api.stamp(settings, api.Selection.all_tenants(), "head")
    assert result.succeeded and result.run_id is not None
    assert {o.name: (o.from_revision, o.to_revision) for o in result.outcomes} == {
        "acme": (None, TENANT_HEAD),
        "globex": (None, TENANT_HEAD),
    }
    assert version(engine, "acme") == TENANT_HEAD
    # Only the version table was added.
    after = snapshot(engine, "acme")
    without_version = {
        kind: {name: d for name, d in objects.items() if "alembic_version" not in name}
        for kind, objects in after.items()
    }
    assert without_version == structure
    record, outcomes = api.run_details(settings, result.run_id)
    assert record.command == "stamp" and {o.name for o in outcomes} == {"acme", "globex"}
    assert not api.drift(settings).any_drift
    # Stamping again changes nothing; stamping base removes the version row, as alembic does.
    again = api.stamp(settings, api.Selection.named(["acme"]), "head")
    assert [o.status.value for o in again.outcomes] == ["skipped"]
    api.stamp(settings, api.Selection.named(["acme"]), "base")
    assert version(engine, "acme") is None


def test_stamp_waits_at_most_lock_timeout_for_a_tenant_being_migrated(
    settings: Settings, engine: sa.Engine
) -> None:
    _shared_ready(settings)
    api.create_tenants(settings, ["acme", "globex"], migrate=False)
    quick = settings.with_options(lock_timeout_s=0.5)
    with engine.connect() as holder:
        holder.begin()
        holder.execute(
            sa.text("SELECT pg_advisory_xact_lock(:ns, :key)"),
            {"ns": LOCK_NAMESPACE, "key": lock_key("acme")},
        )
        result = api.stamp(quick, api.Selection.all_tenants(), "head")
        holder.rollback()
    by_name = {o.name: o for o in result.outcomes}
    assert by_name["acme"].status.value == "failed" and "lock" in (by_name["acme"].error or "")
    assert by_name["globex"].status.value == "ok"
    assert version(engine, "acme") is None and version(engine, "globex") == TENANT_HEAD


def test_an_all_tenants_stamp_waits_for_no_other_run(settings: Settings, engine: sa.Engine) -> None:
    """An all-tenants stamp takes the run lock: while another all-tenants run holds it, the
    stamp exits 4 and stamps nothing."""
    _shared_ready(settings)
    api.create_tenants(settings, ["acme"], migrate=False)
    locks = RunLocks(engine)
    try:
        assert locks.try_run_lock(settings.shared_schema)
        with pytest.raises(RunLocked, match="another all-tenants run"):
            api.stamp(settings, api.Selection.all_tenants(), "head")
        cli = run_cli("stamp", "--all-tenants", "head", url=settings.database_url)
        assert cli.returncode == 4, cli.stderr
    finally:
        locks.release()
    assert version(engine, "acme") is None
    assert api.stamp(settings, api.Selection.all_tenants(), "head").succeeded


def test_stamp_refuses_bad_input_and_changes_nothing(settings: Settings, engine: sa.Engine) -> None:
    _shared_ready(settings)
    api.create_tenants(settings, ["acme"], migrate=False)
    with pytest.raises(UnknownRevision):
        api.stamp(settings, api.Selection.all_tenants(), "nope")
    with pytest.raises(UnknownTenant):
        api.stamp(settings, api.Selection.named(["globex"]), "head")
    with pytest.raises(ConfigError, match="one chain"):
        api.stamp(settings, api.Selection.everything(), "head")
    assert version(engine, "acme") is None
    assert api.runs(settings)[0].command == "upgrade"  # no stamp run was recorded
    cli = run_cli("stamp", "head", url=settings.database_url)
    assert cli.returncode == 1 and "one of the arguments" in cli.stderr


def test_stamp_shared(settings: Settings, engine: sa.Engine) -> None:
    _shared_ready(settings)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM public.alembic_version")
    cli = run_cli("stamp", "--shared", "head", "--json", url=settings.database_url)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["shared"]["to"] == SHARED_HEAD
    assert version(engine, "public") == SHARED_HEAD


# -- the README walkthrough: plain Alembic and hand-made schemas, adopted -----------------------


def test_adoption_walkthrough(tmp_path: Path, settings: Settings, engine: sa.Engine) -> None:
    url = settings.database_url
    assert url is not None
    _shared_ready(settings)
    # One tenant schema made with plain Alembic (version table included), one by hand at the
    # first revision (no version table).
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA acme; CREATE SCHEMA globex")
    plain = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), "-n", "tenant",
         "-x", "tenant=acme", "-x", f"url={url}", "upgrade", "head"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    # Its log lines are rendered (alembic.ini's logging format is read raw by fileConfig).
    assert "INFO  [alembic.runtime.migration] Running upgrade" in plain.stderr
    assert "%(levelname)" not in plain.stderr
    api.create_tenants(settings, ["tmp_first"], migrate=False)
    api.upgrade(settings, api.Selection.named(["tmp_first"]), "001_initial_schema")
    with engine.begin() as conn:
        for table in conn.execute(
            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'tmp_first'")
        ).scalars():
            if table != "alembic_version":
                conn.exec_driver_sql(f"ALTER TABLE tmp_first.{table} SET SCHEMA globex")
    for step in (
        ["tenants", "register", "acme", "globex"],
        ["stamp", "--tenant", "globex", "001_initial_schema"],
    ):
        done = run_cli(*step, url=url)
        assert done.returncode == 0, done.stderr
    drift = run_cli("drift", "--tenant", "acme", "--tenant", "globex", "--json", url=url)
    assert drift.returncode == 2  # globex is behind head: version drift, nothing structural
    report = json.loads(drift.stdout)
    assert report["tenants_checked"] == 2
    (globex,) = report["drifted"]  # acme, made by plain Alembic, matches its migrations
    assert globex["name"] == "globex" and globex["version_drift"] == "behind"
    assert globex["differences"] == []
    upgrade = run_cli("upgrade", "--tenant", "globex", url=url)
    assert upgrade.returncode == 0, upgrade.stderr
    final = run_cli("drift", "--tenant", "acme", "--tenant", "globex", url=url)
    assert final.returncode == 0, final.stdout
    assert version(engine, "globex") == TENANT_HEAD


# -- where the tenant list comes from ----------------------------------------------------------


def test_tenants_from_the_applications_own_table(settings: Settings, engine: sa.Engine) -> None:
    _shared_ready(settings)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE public.accounts (slug text, schema text, active bool);"
            "INSERT INTO public.accounts VALUES ('acme', 'acct_acme', true),"
            " ('old', 'acct_old', false), ('globex', 'acct_globex', true);"
            "CREATE SCHEMA acct_acme; CREATE SCHEMA acct_globex; CREATE SCHEMA acct_old"
        )
    app = settings.with_options(
        tenants_from="query: SELECT slug AS name, schema AS schema_name FROM public.accounts"
        " WHERE active"
    )
    assert [(t.name, t.schema) for t in api.tenants(app)] == [
        ("acme", "acct_acme"),
        ("globex", "acct_globex"),
    ]
    run = api.upgrade(app, api.Selection.all_tenants())
    assert run.succeeded and len(run.outcomes) == 2
    assert version(engine, "acct_acme") == TENANT_HEAD and version(engine, "acct_old") is None
    assert api.status(app, ["globex"]).tenants[0].revision == TENANT_HEAD
    with pytest.raises(ConfigError, match="application's query"):
        api.create_tenants(app, ["initech"])
    with pytest.raises(ConfigError, match="application's query"):
        api.register_tenants(app, ["initech"])
    # The same source from the command line.
    cli = run_cli(
        "--tenants-from", "query: SELECT slug AS name, schema AS schema_name FROM accounts",
        "tenants", "list", "--json", url=settings.database_url,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert [t["schema"] for t in json.loads(cli.stdout)] == ["acct_acme", "acct_globex", "acct_old"]


def test_tenants_from_a_schema_glob(settings: Settings, engine: sa.Engine) -> None:
    _shared_ready(settings)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA tenant_a; CREATE SCHEMA tenant_b; CREATE SCHEMA other")
    globbed = settings.with_options(tenants_from="schemas: tenant_*")
    assert [t.name for t in api.tenants(globbed)] == ["tenant_a", "tenant_b"]
    _created, run = api.create_tenants(globbed, ["tenant_c"])
    assert run is not None and run.succeeded
    assert "tenant_c" in schemas(engine) and tenant_rows(engine) == []  # no registry rows
    with pytest.raises(ConfigError, match="would not be tenants"):
        api.create_tenants(globbed, ["other_d"])
    assert api.upgrade(globbed, api.Selection.all_tenants()).succeeded
    assert version(engine, "tenant_b") == TENANT_HEAD and version(engine, "other") is None
    with pytest.raises(ConfigError, match="nothing to register"):
        api.register_tenants(globbed, ["tenant_a"])
    # tenantmig's own schemas never count as tenants, whatever the glob.
    with engine.begin() as conn:
        conn.exec_driver_sql(
            'CREATE SCHEMA tenantmig_scratch; CREATE SCHEMA "tenantmig_scratch_Check"'
        )
    wide = settings.with_options(tenants_from="schemas: t*")
    assert [t.name for t in api.tenants(wide)] == ["tenant_a", "tenant_b", "tenant_c"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("rows", "not understood"),
        ("query: DELETE FROM accounts", "must be a SELECT"),
        ("query: SELECT 1; DROP TABLE tenants", "one statement"),
        ("schemas: *", "not allowed"),
        ("schemas: Tenant_*", "not allowed"),
    ],
)
def test_bad_tenant_sources_are_refused_at_start(
    settings: Settings, spec: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        settings.with_options(tenants_from=spec)


def test_a_failing_or_unsafe_query_is_a_clear_error(settings: Settings, engine: sa.Engine) -> None:
    _shared_ready(settings)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE accounts (slug text, schema text);"
            "INSERT INTO accounts VALUES ('acme', 'Acme Corp')"
        )
    wrong = settings.with_options(tenants_from="query: SELECT slug FROM accounts")
    with pytest.raises(ConfigError, match="must return the columns name and schema_name"):
        api.tenants(wrong)
    unsafe = settings.with_options(
        tenants_from="query: SELECT slug AS name, schema AS schema_name FROM accounts"
    )
    with pytest.raises(ConfigError, match="will not migrate"):
        api.upgrade(unsafe, api.Selection.all_tenants())
    cli = run_cli(
        "--tenants-from", "query: SELECT slug FROM accounts", "upgrade", "--all-tenants",
        url=settings.database_url,
    )  # fmt: skip
    assert cli.returncode == 1 and "schema_name" in cli.stderr
