"""Killing or interrupting a run never leaves a tenant half-migrated or a lock behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable

import sqlalchemy as sa

from tenantmig import api
from tenantmig.server.config import Settings
from tests.helpers import TENANT_HEAD, run_cli, start_cli, version
from tests.test_engine import make_tenants, names


def start_run(url: str, *args: str) -> subprocess.Popen[str]:
    return start_cli("upgrade", "--all-tenants", *args, url=url, new_session=True)


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def count(engine: sa.Engine, query: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(query)).scalar() or 0)


def waiting_lock_requests(engine: sa.Engine) -> int:
    """tenantmig sessions waiting in a lock queue."""
    return count(
        engine,
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE NOT l.granted AND a.application_name LIKE 'tenantmig%'",
    )


def tenantmig_advisory_locks(engine: sa.Engine) -> int:
    """Advisory locks held by anyone but this session."""
    return count(
        engine,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid <> pg_backend_pid()",
    )


def tenantmig_sessions(engine: sa.Engine) -> int:
    return count(
        engine, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'tenantmig%'"
    )


def test_sigkill_of_the_runner_leaves_every_tenant_at_old_or_new_revision(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    tenants = names(10)
    make_tenants(settings, tenants, "001_initial_schema")
    with engine.connect() as blocker:
        blocker.exec_driver_sql('LOCK TABLE "t000".inventory_items IN ACCESS SHARE MODE')
        run = start_run(database_url, "--jobs", "2", "--lock-timeout", "60")
        # t000 sits in the lock queue, mid-transaction, with DDL of revision 003 already done.
        wait_for(lambda: waiting_lock_requests(engine) == 1)
        wait_for(lambda: sum(version(engine, t) == TENANT_HEAD for t in tenants) == 9)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        # The worker dies with its coordinator; its connection closes and rolls back.
        wait_for(lambda: tenantmig_sessions(engine) == 0, timeout=30)
        blocker.rollback()
    assert version(engine, "t000") == "001_initial_schema"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('t000.locations')")).scalar() is None
    assert tenantmig_advisory_locks(engine) == 0
    runs = json.loads(run_cli("runs", "--json", url=database_url).stdout)
    assert runs[0]["outcome"] == "abandoned"
    # --only-failed after a killed run takes what that run did not finish (not the failures
    # of some older run): t000, plus any tenant whose success was not yet written down.
    again = run_cli("upgrade", "--all-tenants", "--only-failed", "--json", url=database_url)
    assert again.returncode == 0, again.stderr
    assert all(version(engine, t) == TENANT_HEAD for t in tenants)
    report = json.loads(again.stdout)
    statuses = {t["name"]: t["status"] for t in report["tenants"]}
    assert statuses.pop("t000") == "ok"
    assert set(statuses.values()) <= {"skipped"}
    assert any("abandoned" in notice for notice in report["notices"])


def test_sigterm_lets_in_flight_tenants_finish_then_stops(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    tenants = names(10)
    make_tenants(settings, tenants, "001_initial_schema")
    with engine.connect() as blocker:
        blocker.exec_driver_sql(
            'LOCK TABLE "t000".inventory_items, "t001".inventory_items IN ACCESS SHARE MODE'
        )
        run = start_run(database_url, "--jobs", "2", "--lock-timeout", "60")
        wait_for(lambda: waiting_lock_requests(engine) == 2)
        # A service manager's SIGTERM goes to every process of the group, workers included.
        os.killpg(run.pid, signal.SIGTERM)
        time.sleep(1.0)
        assert run.poll() is None  # still waiting for its in-flight tenants
        blocker.rollback()
        out, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert "interrupted" in out
    assert version(engine, "t000") == TENANT_HEAD  # in flight: allowed to commit
    assert version(engine, "t001") == TENANT_HEAD
    untouched = [t for t in tenants if version(engine, t) == "001_initial_schema"]
    assert len(untouched) == 8  # nothing new was started after the signal
    runs = json.loads(run_cli("runs", "--json", url=database_url).stdout)
    assert runs[0]["outcome"] == "interrupted"
    assert runs[0]["totals"]["not_run"] == 8
    assert api.upgrade(settings, api.Selection.all_tenants()).succeeded
    assert all(version(engine, t) == TENANT_HEAD for t in tenants)


def test_worker_killed_mid_tenant_is_recorded_and_replaced(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    tenants = names(6)
    make_tenants(settings, tenants, "001_initial_schema")
    with engine.connect() as blocker:
        blocker.exec_driver_sql('LOCK TABLE "t000".inventory_items IN ACCESS SHARE MODE')
        run = start_run(database_url, "--jobs", "2", "--lock-timeout", "60", "--json")
        wait_for(lambda: waiting_lock_requests(engine) == 1)
        with engine.connect() as conn:
            # Workers name themselves in application_name: "tenantmig worker <pid>".
            name = conn.execute(
                sa.text(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                    "ON a.pid = l.pid WHERE NOT l.granted "
                    "AND a.application_name LIKE 'tenantmig%'"
                )
            ).scalar()
        assert name is not None and name.startswith("tenantmig worker ")
        os.kill(int(name.rsplit(" ", 1)[1]), signal.SIGKILL)
        out, err = run.communicate(timeout=60)
        blocker.rollback()
    assert run.returncode == 3, err
    result = json.loads(out)
    t000 = next(t for t in result["tenants"] if t["name"] == "t000")
    assert t000["status"] == "failed" and "worker process died" in t000["error"]
    assert version(engine, "t000") == "001_initial_schema"
    assert all(version(engine, t) == TENANT_HEAD for t in tenants if t != "t000")


def test_second_signal_aborts_in_flight_tenants_which_roll_back(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    tenants = names(6)
    make_tenants(settings, tenants, "001_initial_schema")
    with engine.connect() as blocker:
        blocker.exec_driver_sql(
            'LOCK TABLE "t000".inventory_items, "t001".inventory_items IN ACCESS SHARE MODE'
        )
        run = start_run(database_url, "--jobs", "2", "--lock-timeout", "60", "--json")
        wait_for(lambda: waiting_lock_requests(engine) == 2)
        run.send_signal(signal.SIGINT)
        time.sleep(0.5)
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
        wait_for(lambda: tenantmig_sessions(engine) == 0, timeout=30)
        blocker.rollback()
    assert run.returncode == 130, err
    statuses = {t["name"]: t["status"] for t in json.loads(out)["tenants"]}
    assert statuses["t000"] == statuses["t001"] == "interrupted"
    assert version(engine, "t000") == version(engine, "t001") == "001_initial_schema"
    assert tenantmig_advisory_locks(engine) == 0


def test_tenant_registered_during_a_run_is_left_for_the_next(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    make_tenants(settings, names(3), "001_initial_schema")
    with engine.connect() as blocker:
        blocker.exec_driver_sql('LOCK TABLE "t000".inventory_items IN ACCESS SHARE MODE')
        run = start_run(database_url, "--jobs", "2", "--lock-timeout", "60")
        wait_for(lambda: waiting_lock_requests(engine) == 1)
        api.create_tenants(settings, ["latecomer"], migrate=False)
        blocker.rollback()
        out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert "1 tenant(s) were registered during this run" in out
    assert version(engine, "latecomer") is None
    assert all(version(engine, t) == TENANT_HEAD for t in names(3))


def test_every_process_logs_to_one_file_tagged_with_run_and_tenant(
    settings: Settings, database_url: str, tmp_path: object
) -> None:
    from pathlib import Path

    make_tenants(settings, names(8))
    log = Path(str(tmp_path)) / "run.log"
    done = run_cli(
        "upgrade",
        "--all-tenants",
        "--jobs",
        "2",
        "--log-file",
        str(log),
        "--json",
        url=database_url,
    )
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    lines = log.read_text().splitlines()
    tenant_lines = [line for line in lines if f"run={run_id} tenant=t" in line]
    assert len(tenant_lines) == 8  # one "ok" line per tenant
    assert all(" ok base -> " in line for line in tenant_lines)
    pids = {line.split()[2] for line in tenant_lines}
    assert len(pids) == 2  # written by both worker processes into the same file
