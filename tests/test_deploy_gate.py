"""`tenantmig status --check` and `api.deploy_check`: the deploy gate, in every state."""

from __future__ import annotations

import json

import sqlalchemy as sa

from tenantmig import api
from tenantmig.server.config import Settings
from tests.helpers import run_cli
from tests.test_engine import make_tenants

HEAD = "003_add_inventory_tracking"


def test_the_gate_in_every_state(settings: Settings, engine: sa.Engine, database_url: str) -> None:
    make_tenants(settings, ["ok1", "ok2", "late", "gone", "ahead", "paused"], "head")
    done = run_cli("status", "--check", url=database_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == f"ok: shared schema public at head, 6 tenant(s) at head {HEAD}"

    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE \"late\".alembic_version SET version_num = '001_initial_schema'"
        )
        conn.exec_driver_sql('DROP SCHEMA "gone" CASCADE')
        conn.exec_driver_sql(
            "UPDATE \"ahead\".alembic_version SET version_num = '004_from_newer_code'"
        )
        conn.exec_driver_sql(
            "UPDATE \"paused\".alembic_version SET version_num = '001_initial_schema'"
        )
        conn.exec_driver_sql("UPDATE public.tenants SET status = 'suspended' WHERE name = 'paused'")
    done = run_cli("status", "--check", url=database_url)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (
        "not at head: 3 of 5 tenant(s) (1 behind, 1 missing schema, 1 unknown revision); head is "
        f"{HEAD}; 1 inactive not checked"
    )
    assert "  behind: late at 001_initial_schema" in lines
    assert "  missing schema: gone" in lines
    assert "  unknown revision: ahead at 004_from_newer_code" in lines

    gate = json.loads(run_cli("status", "--check", "--json", url=database_url).stdout)
    assert gate["ok"] is False and gate["checked"] == 5 and gate["not_at_head"] == 3
    assert gate["counts"] == {"current": 2, "behind": 1, "missing_schema": 1, "unknown_revision": 1}
    assert gate["shared"]["state"] == "current" and gate["inactive"] == 1
    assert {lag["name"]: lag["state"] for lag in gate["lagging"]} == {
        "late": "behind", "gone": "missing_schema", "ahead": "unknown_revision",
    }  # fmt: skip

    # A selection narrows the gate; named tenants leave the shared schema out.
    assert (
        run_cli(
            "status", "--check", "--tenant", "ok1", "--tenant", "ok2", url=database_url
        ).returncode
        == 0
    )
    run_cli("tenants", "label", "late", "--add", "slow", url=database_url)
    assert run_cli("status", "--check", "--label", "slow", url=database_url).returncode == 2
    allowed = run_cli(
        "status", "--check", "--tenant", "ok1", "--tenant", "late", "--allow-behind", "slow",
        url=database_url,
    )  # fmt: skip
    assert allowed.returncode == 0, allowed.stdout
    assert "1 behind with label slow (allowed)" in allowed.stdout
    # --allow-behind lets a label be behind, not missing or ahead.
    run_cli("tenants", "label", "gone", "--add", "slow", url=database_url)
    assert api.deploy_check(settings, ["gone"], allow_behind=["slow"]).ok is False

    # The shared schema behind head fails the gate even when every tenant is fine.
    with engine.begin() as conn:
        head = conn.exec_driver_sql("SELECT version_num FROM public.alembic_version").scalar()
        conn.exec_driver_sql("UPDATE public.alembic_version SET version_num = '001_initial_schema'")
    try:
        shared = api.deploy_check(settings, labels=None, databases=["control"])
        assert not shared.ok and shared.shared_state == "behind"
        assert "shared schema public behind (at 001_initial_schema" in shared.text()
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE public.alembic_version SET version_num = :v"), {"v": head})


def test_bad_input_and_no_server_exit_1(settings: Settings, database_url: str) -> None:
    make_tenants(settings, ["one"], "head")
    for args, message in (
        (["--allow-behind", "slow"], "--allow-behind goes with --check"),
        (["--check", "--allow-behind", "Slow"], "bad label"),
        (["--check", "--label", "nosuch"], "no tenant has the label(s) nosuch"),
        (["--check", "--tenant", "nobody"], "unknown tenant"),
    ):
        done = run_cli("status", *args, url=database_url)
        assert done.returncode == 1 and message in done.stderr, (args, done.stderr)
    nowhere = run_cli("status", "--check", url="postgresql://nobody@127.0.0.1:1/none")
    assert nowhere.returncode == 1, nowhere.stdout + nowhere.stderr
