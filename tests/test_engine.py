"""The all-tenants engine: parallel workers, failure isolation, ledger, locks, recovery."""

from __future__ import annotations

import json
import threading
import time

import pytest
import sqlalchemy as sa

from tenantmig import api
from tenantmig.errors import RunLocked
from tenantmig.run.locks import RUN_LOCK_NAME
from tenantmig.run.results import TenantStatus
from tenantmig.server.config import Settings
from tenantmig.server.session import LOCK_NAMESPACE, lock_key
from tests.helpers import TENANT_HEAD, run_cli, snapshot, start_cli, version


def make_tenants(settings: Settings, names: list[str], revision: str | None = None) -> None:
    assert api.upgrade(settings, api.Selection.shared_only()).succeeded
    api.create_tenants(settings, names, migrate=False)
    if revision is not None:
        result = api.upgrade(settings, api.Selection.all_tenants(), revision)
        assert result.succeeded, result.to_json()


def names(n: int, prefix: str = "t") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


def ledger_rows(engine: sa.Engine, run_id: int) -> dict[str, tuple[str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT tenant, status, error FROM tenantmig_run_tenants WHERE run_id = :id"),
            {"id": run_id},
        ).all()
    return {r.tenant: (r.status, r.error) for r in rows}


def test_parallel_run_migrates_every_tenant_and_records_the_run(
    settings: Settings, engine: sa.Engine
) -> None:
    tenants = names(12)
    make_tenants(settings, tenants)
    result = api.upgrade(settings, api.Selection.all_tenants(), options=api.RunOptions(jobs=3))
    assert result.succeeded
    assert result.count(TenantStatus.OK) == 12
    assert all(version(engine, t) == TENANT_HEAD for t in tenants)
    assert result.run_id is not None
    rows = ledger_rows(engine, result.run_id)
    assert {status for status, _ in rows.values()} == {"ok"} and len(rows) == 12
    # Nothing left to do: the second run skips everything without starting workers.
    again = api.upgrade(settings, api.Selection.all_tenants(), options=api.RunOptions(jobs=3))
    assert again.count(TenantStatus.SKIPPED) == 12 and again.succeeded


def _break_tenant(engine: sa.Engine, schema: str) -> None:
    """An object in the way of revision 003: its CREATE TABLE locations will fail."""
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE TABLE "{schema}".locations (id int)')


def test_one_failing_tenant_is_isolated_recorded_and_recovered(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    tenants = names(6)
    make_tenants(settings, tenants, "001_initial_schema")
    _break_tenant(engine, "t003")
    before = snapshot(engine, "t003")

    done = run_cli("upgrade", "--all-tenants", "--jobs", "2", "--json", url=database_url)
    assert done.returncode == 3, done.stderr
    result = json.loads(done.stdout)
    statuses = {t["name"]: t["status"] for t in result["tenants"]}
    assert statuses.pop("t003") == "failed"
    assert set(statuses.values()) == {"ok"}
    failed = next(t for t in result["tenants"] if t["name"] == "t003")
    assert "already exists" in failed["error"]
    assert failed["from"] == "001_initial_schema"
    # Rolled back completely: same revision, same catalog as before the run.
    assert version(engine, "t003") == "001_initial_schema"
    assert snapshot(engine, "t003") == before
    assert all(version(engine, t) == TENANT_HEAD for t in tenants if t != "t003")
    assert "already exists" in ledger_rows(engine, result["run_id"])["t003"][1]

    status = json.loads(run_cli("status", "--json", url=database_url).stdout)
    t003 = next(t for t in status["tenants"] if t["name"] == "t003")
    assert t003["state"] == "behind" and "already exists" in t003["last_error"]

    with engine.begin() as conn:
        conn.exec_driver_sql('DROP TABLE "t003".locations')
    retry = run_cli("upgrade", "--all-tenants", "--only-failed", "--json", url=database_url)
    assert retry.returncode == 0, retry.stderr
    retried = json.loads(retry.stdout)
    assert [(t["name"], t["status"]) for t in retried["tenants"]] == [("t003", "ok")]
    assert version(engine, "t003") == TENANT_HEAD


def test_fail_fast_and_max_failures_stop_scheduling(settings: Settings, engine: sa.Engine) -> None:
    tenants = names(8)
    make_tenants(settings, tenants, "001_initial_schema")
    for broken in ("t000", "t001", "t002"):
        _break_tenant(engine, broken)
    result = api.upgrade(
        settings, api.Selection.all_tenants(), options=api.RunOptions(jobs=1, fail_fast=True)
    )
    assert result.count(TenantStatus.FAILED) == 1  # t000, then nothing else started
    assert result.count(TenantStatus.NOT_RUN) == 7
    assert all(version(engine, t) == "001_initial_schema" for t in tenants)
    result = api.upgrade(
        settings, api.Selection.all_tenants(), options=api.RunOptions(jobs=1, max_failures=2)
    )
    assert result.count(TenantStatus.FAILED) == 2
    assert result.count(TenantStatus.NOT_RUN) == 6


def test_run_lock_refuses_a_second_all_tenants_run(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    make_tenants(settings, names(2))
    key = lock_key(f"{RUN_LOCK_NAME}:public")
    # Held as tenantmig holds it: in an open transaction (a session lock would outlive its
    # client on a pooled server connection).
    with engine.connect() as holder:
        holder.execute(
            sa.text("SELECT pg_advisory_xact_lock(:ns, :key)"), {"ns": LOCK_NAMESPACE, "key": key}
        )
        done = run_cli("upgrade", "--all-tenants", url=database_url)
        assert done.returncode == 4, done.stderr
        assert "run lock" in done.stderr and "server pid" in done.stderr
        assert version(engine, "t000") is None  # nothing was done

        def release() -> None:
            time.sleep(1.5)
            holder.rollback()

        releaser = threading.Thread(target=release)
        releaser.start()
        waited = run_cli("upgrade", "--all-tenants", "--wait", "20", url=database_url)
        releaser.join()
    assert waited.returncode == 0, waited.stderr
    assert version(engine, "t000") == TENANT_HEAD
    # Named tenants do not need the run lock (per-tenant locks protect them).
    with engine.connect() as holder:
        holder.execute(
            sa.text("SELECT pg_advisory_xact_lock(:ns, :key)"), {"ns": LOCK_NAMESPACE, "key": key}
        )
        with pytest.raises(RunLocked):
            api.upgrade(settings, api.Selection.all_tenants())
        assert api.downgrade(settings, api.Selection.named(["t001"]), "-1").succeeded


def test_two_runs_started_together_migrate_each_tenant_once(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    tenants = names(10)
    make_tenants(settings, tenants)
    procs = [
        start_cli("upgrade", "--all-tenants", "--jobs", "2", "--wait", "60", url=database_url)
        for _ in range(2)
    ]
    codes = [p.wait(timeout=120) for p in procs]
    assert codes == [0, 0], [p.stderr.read() for p in procs if p.stderr]
    assert all(version(engine, t) == TENANT_HEAD for t in tenants)
    with engine.connect() as conn:
        per_tenant = conn.execute(
            sa.text(
                "SELECT tenant, count(*) FILTER (WHERE status = 'ok') AS ok "
                "FROM tenantmig_run_tenants GROUP BY tenant"
            )
        ).all()
    assert {r.tenant: r.ok for r in per_tenant} == dict.fromkeys(tenants, 1)


def test_lock_held_by_another_session_does_not_hang_the_run(
    settings: Settings, engine: sa.Engine
) -> None:
    tenants = names(4)
    make_tenants(settings, tenants, "001_initial_schema")
    fast = settings.with_options(lock_timeout_s=0.3, retries=2)
    with engine.connect() as blocker:
        # A long-running reader: ACCESS SHARE conflicts with the ALTER TABLE in revision 003.
        blocker.exec_driver_sql('LOCK TABLE "t002".inventory_items IN ACCESS SHARE MODE')
        started = time.monotonic()
        result = api.upgrade(fast, api.Selection.all_tenants(), options=api.RunOptions(jobs=2))
        elapsed = time.monotonic() - started
        blocker_pid = blocker.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        blocker.rollback()
    outcome = {o.name: o for o in result.outcomes}
    assert outcome["t002"].status is TenantStatus.FAILED
    assert outcome["t002"].attempts == 3  # first try + 2 retries
    error = outcome["t002"].error or ""
    assert "lock timeout" in error or "canceling statement due to lock timeout" in error
    assert f"pid {blocker_pid}" in error and "inventory_items" in error
    assert version(engine, "t002") == "001_initial_schema"
    assert all(version(engine, t) == TENANT_HEAD for t in tenants if t != "t002")
    assert elapsed < 30  # bounded by retries x lock_timeout + backoff, not by the blocker
    # Once the blocker is gone, a re-run finishes the tenant.
    assert api.upgrade(fast, api.Selection.all_tenants()).succeeded
    assert version(engine, "t002") == TENANT_HEAD


def test_downgrade_all_tenants_isolates_a_failure(settings: Settings, engine: sa.Engine) -> None:
    tenants = names(5)
    make_tenants(settings, tenants, "head")
    with engine.begin() as conn:
        # A view depending on a column revision 003 would drop: that downgrade must fail.
        conn.exec_driver_sql('CREATE VIEW "t001".skus AS SELECT sku FROM "t001".inventory_items')
    before = snapshot(engine, "t001")
    result = api.downgrade(
        settings, api.Selection.all_tenants(), "-1", options=api.RunOptions(jobs=2)
    )
    assert not result.succeeded
    outcome = {o.name: o for o in result.outcomes}
    assert outcome["t001"].status is TenantStatus.FAILED
    assert "depend" in (outcome["t001"].error or "")
    assert version(engine, "t001") == TENANT_HEAD and snapshot(engine, "t001") == before
    assert all(version(engine, t) == "001_initial_schema" for t in tenants if t != "t001")


def test_runs_listing_and_details(settings: Settings, database_url: str) -> None:
    make_tenants(settings, names(3))
    result = api.upgrade(settings, api.Selection.all_tenants())
    listing = run_cli("runs", "--json", url=database_url)
    assert listing.returncode == 0
    runs = json.loads(listing.stdout)
    assert runs[0]["run_id"] == result.run_id and runs[0]["outcome"] == "succeeded"
    assert runs[0]["totals"]["ok"] == 3
    shown = run_cli("runs", "show", str(result.run_id), "--json", url=database_url)
    detail = json.loads(shown.stdout)
    assert sorted(t["name"] for t in detail["tenants"]) == names(3)
    assert run_cli("runs", "show", "999999", url=database_url).returncode == 1
    text = run_cli("runs", "show", str(result.run_id), url=database_url)
    assert text.returncode == 0 and "t002" in text.stdout
