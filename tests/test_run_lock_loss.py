"""A run that loses its run lock stops: no tenant starts after the loss, the in-flight ones
finish, the ledger says why, the exit code is 4 and the printed command finishes the run.

The loss is real: the test ends the session holding the run lock (pg_terminate_backend), as an
administrator or a tool that ends idle transactions would. The run is held in flight by a lock
the test takes on some tenants' tables, so every step is timed by events, not sleeps. Through
PgBouncer too (.ci/run): the pooler closes the client whose server session ended.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess

import psutil
import pytest
import sqlalchemy as sa

from tenantmig.run.locks import LIVE_RUN_NAMESPACE, RunLocks
from tenantmig.server.config import Settings
from tests.helpers import CONFIG, TENANT_HEAD, run_cli, version
from tests.test_engine import ledger_rows, make_tenants, names
from tests.test_signals import start_run, wait_for, waiting_lock_requests

OLD = "001_initial_schema"
OPTIONS = ["--jobs", "2", "--lock-timeout", "60"]


def latest_run(engine: sa.Engine) -> tuple[int, str, str | None]:
    """(id, outcome, reason) of the newest run in the ledger."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT id, outcome, reason FROM tenantmig_runs ORDER BY id DESC LIMIT 1")
        ).one()
    return row.id, row.outcome, row.reason


def lock_holder(engine: sa.Engine, run_id: int) -> int | None:
    """The server pid holding run ``run_id``'s live-run marker (with the run lock)."""
    with engine.connect() as conn:
        pid = conn.execute(
            sa.text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND classid = CAST(:ns AS oid) AND objid = CAST(:id AS oid) AND objsubid = 2"
            ),
            {"ns": LIVE_RUN_NAMESPACE, "id": run_id},
        ).scalar()
    return None if pid is None else int(pid)


def end_session(engine: sa.Engine, pid: int) -> None:
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    wait_for(lambda: not _exists(engine, pid), timeout=30)


def _exists(engine: sa.Engine, pid: int) -> bool:
    with engine.connect() as conn:
        found = conn.execute(
            sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
        ).scalar()
    return bool(found)


def wait_until_the_runner_can_tell(run: subprocess.Popen[str]) -> None:
    """Wait until the ended session shows on the runner's side of its connection.

    Directly, it already does: the server sends its error before the session leaves
    pg_stat_activity (which ``end_session`` waited for). A pooler closes its client a moment
    after the server session ended: the runner's TCP socket is then in CLOSE_WAIT.
    """
    if os.environ.get("TENANTMIG_TEST_POOLER_URL"):
        wait_for(
            lambda: any(
                c.status == psutil.CONN_CLOSE_WAIT
                for c in psutil.Process(run.pid).net_connections()
            ),
            timeout=30,
        )


def finishing_command(out: str) -> list[str]:
    """The last line the run printed, as arguments for ``tenantmig``."""
    words = shlex.split(out.strip().splitlines()[-1])
    assert words[0] == "tenantmig", out
    return words[1:]


def test_a_run_whose_lock_session_is_ended_starts_no_tenant_and_is_finished_by_its_command(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    tenants = names(8)
    make_tenants(settings, tenants, OLD)
    with engine.connect() as blocker:
        blocker.exec_driver_sql(
            'LOCK TABLE "t000".inventory_items, "t001".inventory_items IN ACCESS SHARE MODE'
        )
        run = start_run(database_url, *OPTIONS)
        # Both workers wait in t000's and t001's lock queues: two tenants in flight, none other.
        wait_for(lambda: waiting_lock_requests(engine) == 2)
        run_id, _, _ = latest_run(engine)
        first = lock_holder(engine, run_id)
        assert first is not None
        end_session(engine, first)
        # Known within about a second, while every worker is still busy: the reason is in the
        # ledger at once, and the run holds its lock again for the rest of its life.
        wait_for(lambda: latest_run(engine)[2] is not None, timeout=30)
        assert lock_holder(engine, run_id) not in (None, first)
        second = run_cli("upgrade", "--all-tenants", url=database_url)
        assert second.returncode == 4, second.stderr
        assert "another all-tenants run holds the run lock" in second.stderr
        blocker.rollback()
        out, err = run.communicate(timeout=120)
    assert run.returncode == 4, err
    finish = finishing_command(out)
    # The run's own command line (start_cli gives --config) with --only-failed.
    assert finish == [
        "--config",
        str(CONFIG),
        "upgrade",
        "--all-tenants",
        *OPTIONS,
        "--only-failed",
    ]
    assert "stopped starting tenants" in out and f"server pid {first}" in out

    assert latest_run(engine)[:2] == (run_id, "stopped")
    reason = latest_run(engine)[2]
    assert reason is not None and f"server pid {first}" in reason and "stayed up" in reason
    rows = ledger_rows(engine, run_id)
    # The in-flight tenants finished; no tenant started after the loss, and the schemas agree.
    assert {t: s for t, (s, _) in rows.items()} == {
        t: "ok" if t in ("t000", "t001") else "not_run" for t in tenants
    }
    assert all(rows[t][1] == "not started: the run lost its run lock" for t in tenants[2:])
    assert {t: version(engine, t) for t in tenants} == {
        t: TENANT_HEAD if t in ("t000", "t001") else OLD for t in tenants
    }
    shown = run_cli("runs", "show", str(run_id), url=database_url)
    assert "stopped before its end: " in shown.stdout, shown.stderr

    done = run_cli(*finish, "--json", url=database_url)
    assert done.returncode == 0, done.stderr
    assert {version(engine, t) for t in tenants} == {TENANT_HEAD}
    finishing_id, outcome, _ = latest_run(engine)
    assert outcome == "succeeded"
    # Exactly the tenants the stopped run did not start, each migrated once.
    assert ledger_rows(engine, finishing_id) == {t: ("ok", None) for t in tenants[2:]}


def test_a_run_of_one_worker_notices_the_loss_before_its_next_tenant(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    """--jobs 1 migrates in the runner's own process: the loss is seen between two tenants."""
    tenants = names(4)
    make_tenants(settings, tenants, OLD)
    with engine.connect() as blocker:
        blocker.exec_driver_sql('LOCK TABLE "t001".inventory_items IN ACCESS SHARE MODE')
        run = start_run(database_url, "--jobs", "1", "--lock-timeout", "60", "--json")
        wait_for(lambda: waiting_lock_requests(engine) == 1)
        run_id, _, _ = latest_run(engine)
        holder = lock_holder(engine, run_id)
        assert holder is not None
        end_session(engine, holder)
        wait_until_the_runner_can_tell(run)
        blocker.rollback()
        out, err = run.communicate(timeout=120)
    assert run.returncode == 4, err
    result = json.loads(out)
    assert result["stopped"] and result["finish_command"].endswith("--only-failed")
    assert latest_run(engine)[:2] == (run_id, "stopped")
    assert {t: version(engine, t) for t in tenants} == {
        "t000": TENANT_HEAD, "t001": TENANT_HEAD, "t002": OLD, "t003": OLD
    }  # fmt: skip
    assert {t: s for t, (s, _) in ledger_rows(engine, run_id).items()} == {
        "t000": "ok", "t001": "ok", "t002": "not_run", "t003": "not_run"
    }  # fmt: skip
    done = run_cli("upgrade", "--all-tenants", "--only-failed", url=database_url)
    assert done.returncode == 0, done.stderr
    assert {version(engine, t) for t in tenants} == {TENANT_HEAD}


def test_the_held_transaction_outlives_the_servers_transaction_timeout(
    engine: sa.Engine, database_url: str
) -> None:
    """transaction_timeout (PostgreSQL 17+) would end the run lock's transaction under a run
    longer than it; it is switched off for that transaction alone."""
    with engine.connect() as conn:
        if int(conn.exec_driver_sql("SHOW server_version_num").scalar_one()) < 170000:
            pytest.skip("transaction_timeout is PostgreSQL 17+")
        name = conn.exec_driver_sql("SELECT current_database()").scalar_one()
        conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET transaction_timeout = 500')
        conn.commit()
    locks = RunLocks(sa.create_engine(database_url))
    try:
        assert locks.try_run_lock("public")
        age = "SELECT extract(epoch FROM now() - xact_start) FROM pg_stat_activity WHERE pid = :pid"

        def past_the_timeout() -> bool:
            """Three times the timeout old, or ended (which the assertion below reports)."""
            with engine.connect() as conn:
                seconds = conn.execute(sa.text(age), {"pid": locks.backend_pid}).scalar()
            return seconds is None or seconds > 1.5

        wait_for(past_the_timeout, timeout=30)
        assert locks.gone() is None
    finally:
        locks.release()
