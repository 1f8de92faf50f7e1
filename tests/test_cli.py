"""The CLI contract from end to end, through the real ``tenantmig`` command."""

from __future__ import annotations

import json
import subprocess

import sqlalchemy as sa

from tests.helpers import (
    SHARED_HEAD,
    TENANT_HEAD,
    run_cli,
    schemas,
    tables,
    tenant_rows,
    version,
)


def _setup(url: str, *tenants: str) -> None:
    assert run_cli("upgrade", "--shared", url=url).returncode == 0
    if tenants:
        done = run_cli("tenants", "create", *tenants, url=url)
        assert done.returncode == 0, done.stderr


def test_full_upgrade_with_no_selector_does_shared_then_tenants(
    database_url: str, engine: sa.Engine
) -> None:
    _setup(database_url)
    assert (
        run_cli("tenants", "create", "acme", "globex", "--no-migrate", url=database_url).returncode
        == 0
    )
    assert version(engine, "acme") is None  # --no-migrate: schema only
    done = run_cli("upgrade", url=database_url)
    assert done.returncode == 0, done.stderr
    assert version(engine, "public") == SHARED_HEAD
    assert version(engine, "acme") == TENANT_HEAD
    assert version(engine, "globex") == TENANT_HEAD
    assert {"users", "orders", "inventory_transactions", "locations", "alembic_version"} <= tables(
        engine, "acme"
    )
    # Tenant tables never land in the shared schema.
    assert "users" not in tables(engine, "public")
    assert {"tenants", "api_keys", "billing_cycles", "tenant_features"} <= tables(engine, "public")


def test_tenants_create_migrates_to_head_and_list_json(
    database_url: str, engine: sa.Engine
) -> None:
    _setup(database_url, "acme", "user")  # "user" is a keyword: quoting must hold
    assert version(engine, "acme") == TENANT_HEAD
    assert version(engine, "user") == TENANT_HEAD
    listed = run_cli("tenants", "list", "--json", url=database_url)
    assert listed.returncode == 0
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["schema"], r["status"]) for r in rows] == [
        ("acme", "acme", "active"),
        ("user", "user", "active"),
    ]


def test_upgrade_and_downgrade_to_specific_revisions(database_url: str, engine: sa.Engine) -> None:
    _setup(database_url, "acme", "globex")
    done = run_cli("downgrade", "--tenant", "acme", "-1", "--yes", url=database_url)
    assert done.returncode == 0, done.stderr
    assert version(engine, "acme") == "001_initial_schema"
    assert "locations" not in tables(engine, "acme")
    assert version(engine, "globex") == TENANT_HEAD  # untouched
    done = run_cli("downgrade", "--all-tenants", "base", "--yes", url=database_url)
    assert done.returncode == 0, done.stderr
    assert version(engine, "acme") is None and version(engine, "globex") is None
    assert tables(engine, "acme") == {"alembic_version"}
    done = run_cli(
        "upgrade", "--tenant", "acme", "--tenant", "globex", "001_initial_schema", url=database_url
    )
    assert done.returncode == 0, done.stderr
    assert version(engine, "acme") == "001_initial_schema"
    assert version(engine, "globex") == "001_initial_schema"
    done = run_cli("downgrade", "--shared", "001_initial_schema", "--yes", url=database_url)
    assert done.returncode == 0, done.stderr
    assert version(engine, "public") == "001_initial_schema"
    assert "api_keys" not in tables(engine, "public")


def test_status_json_shape_and_states(database_url: str, engine: sa.Engine) -> None:
    _setup(database_url, "acme", "globex")
    assert (
        run_cli("downgrade", "--tenant", "globex", "-1", "--yes", url=database_url).returncode == 0
    )
    done = run_cli("status", "--json", url=database_url)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["shared"] == {
        "schema": "public",
        "revision": SHARED_HEAD,
        "head": SHARED_HEAD,
        "state": "current",
    }
    by_name = {t["name"]: t for t in report["tenants"]}
    assert by_name["acme"]["revision"] == TENANT_HEAD
    assert by_name["acme"]["state"] == "current"
    assert by_name["globex"]["revision"] == "001_initial_schema"
    assert by_name["globex"]["state"] == "behind"
    assert by_name["globex"]["head"] == TENANT_HEAD
    assert set(by_name["acme"]) >= {"name", "schema", "revision", "head", "state", "last_error"}


def test_current_and_history(database_url: str) -> None:
    _setup(database_url, "acme")
    current = run_cli("current", url=database_url)
    assert current.returncode == 0
    assert f"shared (public): {SHARED_HEAD} (head)" in current.stdout
    assert f"acme: {TENANT_HEAD} (head)" in current.stdout
    history = run_cli("history", "--tenant-chain", "--verbose")
    assert history.returncode == 0
    assert "001_initial_schema -> 003_add_inventory_tracking (head)" in history.stdout
    assert "shared chain" not in history.stdout
    both = run_cli("history")
    assert "shared chain" in both.stdout and "tenant chain" in both.stdout


def test_hostile_tenant_names_are_refused_and_change_nothing(
    database_url: str, engine: sa.Engine
) -> None:
    _setup(database_url)
    before = schemas(engine)
    for name in [
        'x"; DROP SCHEMA public CASCADE; --',
        "Acme",
        "pg_evil",
        "a" * 64,
        "caf\u00e9",
        "public",
        "with space",
    ]:
        done = run_cli("tenants", "create", "good", name, url=database_url)
        assert done.returncode == 1, (name, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        assert "not allowed" in done.stderr or "bytes" in done.stderr
    assert schemas(engine) == before
    assert tenant_rows(engine) == []


def test_unknown_revision_and_unknown_tenant_change_nothing(
    database_url: str, engine: sa.Engine
) -> None:
    _setup(database_url, "acme")
    assert (
        run_cli("downgrade", "--tenant", "acme", "base", "--yes", url=database_url).returncode == 0
    )
    for args in (
        ["upgrade", "--all-tenants", "nope"],
        ["upgrade", "--tenant", "ghost"],
        ["upgrade", "--tenant", "Bad Name"],
    ):
        done = run_cli(*args, url=database_url)
        assert done.returncode == 1, (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert version(engine, "acme") is None


def test_existing_tenant_or_schema_is_refused(database_url: str, engine: sa.Engine) -> None:
    _setup(database_url, "acme")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA stray")
    again = run_cli("tenants", "create", "newco", "acme", url=database_url)
    assert again.returncode == 1 and "already registered" in again.stderr
    clash = run_cli("tenants", "create", "stray", url=database_url)
    assert clash.returncode == 1 and "already exist" in clash.stderr
    assert tenant_rows(engine) == ["acme"]
    assert "newco" not in schemas(engine)


def test_unreachable_database_is_one_line_with_masked_password(tmp_path: object) -> None:
    url = "postgresql://admin:s3cret-pw@127.0.0.1:9/nowhere"
    done = run_cli("status", url=url)
    assert done.returncode == 1
    assert "cannot connect" in done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    bad = run_cli("status", url="mysql://x@y/z")
    assert bad.returncode == 1 and "not PostgreSQL" in bad.stderr


def test_tenants_command_before_shared_upgrade_says_what_to_do(database_url: str) -> None:
    done = run_cli("tenants", "create", "acme", url=database_url)
    assert done.returncode == 1
    assert "tenantmig upgrade --shared" in done.stderr


def test_missing_schema_is_reported_not_a_crash(database_url: str, engine: sa.Engine) -> None:
    _setup(database_url, "acme", "globex")
    assert run_cli("downgrade", "--all-tenants", "base", "--yes", url=database_url).returncode == 0
    with engine.begin() as conn:
        conn.exec_driver_sql('DROP SCHEMA "globex" CASCADE')
    done = run_cli("upgrade", "--all-tenants", "--json", url=database_url)
    assert done.returncode == 3, done.stderr
    result = json.loads(done.stdout)
    statuses = {t["name"]: t["status"] for t in result["tenants"]}
    assert statuses == {"acme": "ok", "globex": "missing"}
    assert version(engine, "acme") == TENANT_HEAD
    status = json.loads(run_cli("status", "--json", url=database_url).stdout)
    globex = next(t for t in status["tenants"] if t["name"] == "globex")
    assert globex["state"] == "missing_schema"
    assert "does not exist" in globex["last_error"]


def test_tenants_drop_requires_yes(database_url: str, engine: sa.Engine) -> None:
    _setup(database_url, "acme", "globex")
    refused = run_cli("tenants", "drop", "acme", url=database_url)
    assert refused.returncode == 1 and "acme" in schemas(engine)
    done = run_cli("tenants", "drop", "acme", "--yes", url=database_url)
    assert done.returncode == 0, done.stderr
    assert "acme" not in schemas(engine)
    assert tenant_rows(engine) == ["globex"]


def test_revision_command_creates_a_file_in_the_chosen_chain(tmp_path: object) -> None:
    import shutil
    from pathlib import Path

    from tests.helpers import REPO

    root = Path(str(tmp_path)) / "proj"
    shutil.copytree(REPO / "migrations", root / "migrations")
    shutil.copy(REPO / "alembic.ini", root / "alembic.ini")
    done = run_cli(
        "--config",
        str(root / "alembic.ini"),
        "revision",
        "--tenant-chain",
        "-m",
        "add widgets",
        "--rev-id",
        "004_add_widgets",
    )
    assert done.returncode == 0, done.stderr
    created = list((root / "migrations" / "tenant" / "versions").glob("004_add_widgets*.py"))
    assert len(created) == 1
    text = created[0].read_text()
    assert "down_revision: str | Sequence[str] | None = '003_add_inventory_tracking'" in text
    history = run_cli("--config", str(root / "alembic.ini"), "history", "--tenant-chain")
    assert "004_add_widgets (head)" in history.stdout


def test_help_lists_exit_codes() -> None:
    done = run_cli("upgrade", "--help")
    assert done.returncode == 0
    # The table once, in the top-level help; each command points there.
    assert "--all-tenants" in done.stdout and "see `tenantmig --help`" in done.stdout
    top = run_cli("--help")
    assert top.returncode == 0 and "130  interrupted" in top.stdout


def test_a_custom_shared_schema_holds_shared_tables_and_ledger(
    database_url: str, engine: sa.Engine
) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("--shared-schema", "core", *args, url=database_url)

    assert cli("upgrade", "--shared").returncode == 0
    done = cli("tenants", "create", "acme")
    assert done.returncode == 0, done.stderr
    assert {"tenants", "api_keys", "tenantmig_runs"} <= tables(engine, "core")
    assert "tenants" not in tables(engine, "public")
    assert version(engine, "core") == SHARED_HEAD and version(engine, "acme") == TENANT_HEAD
    assert cli("drift").returncode == 0
    refused = cli("tenants", "create", "core")
    assert refused.returncode == 1 and "shared" in refused.stderr
