"""Several tenants in flight in one worker process (``--connections-per-worker``).

Each slot is one tenant at a time on one connection, in one transaction, exactly as a
one-slot worker; only the process is shared. Every test holds the tenants' migrations in the
lock queue (an open transaction holding a lock their DDL needs) to look at the run while its
tenants are in flight: which processes hold them, what a killed process, a lost connection
and a statement timeout do to the tenants beside them. Through PgBouncer in transaction mode
too (``.ci/run``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import sqlalchemy as sa

from tenantmig.server.config import Settings
from tests.helpers import TENANT_HEAD, run_cli, version
from tests.test_engine import make_tenants, names
from tests.test_signals import count, start_run, wait_for, waiting_lock_requests
from tests.test_worker_server import _server_of

START = "001_initial_schema"


def _slot_sessions(engine: sa.Engine) -> dict[str, int]:
    """Worker process id -> its slots' sessions (application_name "tenantmig worker PID/N")."""
    with engine.connect() as conn:
        applications = conn.execute(
            sa.text(
                "SELECT application_name FROM pg_stat_activity "
                "WHERE application_name LIKE 'tenantmig worker %/%'"
            )
        ).scalars()
        found: dict[str, int] = {}
        for name in applications:
            pid = name.split()[-1].split("/")[0]
            found[pid] = found.get(pid, 0) + 1
        return found


@contextmanager
def _held(
    settings: Settings,
    engine: sa.Engine,
    database_url: str,
    count: int,
    jobs: int,
    *extra: str,
    held: int | None = None,
) -> Iterator[tuple[subprocess.Popen[str], sa.Connection, list[str]]]:
    """``count`` tenants at START and a run over them of ``jobs`` slots, two per worker
    process; the first ``held`` tenants' (default: every tenant's) migrations wait for a lock
    the yielded connection holds, until it rolls back."""
    tenants = names(count)
    make_tenants(settings, tenants, START)
    with engine.connect() as blocker:
        for tenant in tenants[:held]:
            blocker.exec_driver_sql(f'LOCK TABLE "{tenant}".inventory_items IN ACCESS SHARE MODE')
        args = ("--jobs", str(jobs), "--connections-per-worker", "2", *extra)
        run = start_run(database_url, "--lock-timeout", "60", "--json", *args)
        try:
            yield run, blocker, tenants
        finally:
            if run.poll() is None and blocker.in_transaction():
                blocker.rollback()


def _finish(run: subprocess.Popen[str]) -> dict[str, dict[str, object]]:
    out, err = run.communicate(timeout=180)
    assert out, err
    return {o["name"]: o for o in json.loads(out)["tenants"]}


def test_replayed_tenants_run_side_by_side_in_fewer_processes(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    with _held(settings, engine, database_url, 8, 4) as (run, blocker, tenants):
        # Four tenants in flight, each in the lock queue on its own connection, in two processes.
        wait_for(lambda: waiting_lock_requests(engine) == 4)
        workers = _server_of(psutil.Process(run.pid)).children()
        assert len(workers) == 2
        assert sorted(_slot_sessions(engine).values()) == [2, 2]
        assert set(_slot_sessions(engine)) == {str(w.pid) for w in workers}
        blocker.rollback()
        outcomes = _finish(run)
    assert run.returncode == 0
    assert sorted(outcomes) == tenants
    assert all(o["status"] == "ok" and o["replayed"] for o in outcomes.values())
    assert all(version(engine, t) == TENANT_HEAD for t in tenants)
    recorded = count(  # the run's ledger: each tenant once, as it came out
        engine,
        "SELECT count(*) FROM public.tenantmig_run_tenants WHERE status = 'ok' "
        "AND run_id = (SELECT max(id) FROM public.tenantmig_runs)",
    )
    assert recorded == len(tenants)


def test_tenants_through_alembic_take_turns_in_a_process(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    with _held(settings, engine, database_url, 6, 4, "--no-replay") as (run, blocker, tenants):
        # One tenant per process runs through Alembic; the slot beside it waits for its turn
        # before its transaction begins: no second waiting lock request, no open transaction.
        wait_for(lambda: waiting_lock_requests(engine) == 2)
        wait_for(lambda: len(_server_of(psutil.Process(run.pid)).children()) == 2)
        for _ in range(10):
            assert waiting_lock_requests(engine) == 2
            assert sum(_slot_sessions(engine).values()) == 2
        blocker.rollback()
        outcomes = _finish(run)
    assert run.returncode == 0
    assert all(o["status"] == "ok" and not o["replayed"] for o in outcomes.values())
    assert all(version(engine, t) == TENANT_HEAD for t in tenants)


def test_sigterm_to_every_process_lets_every_slot_s_tenant_finish(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    with _held(settings, engine, database_url, 8, 4) as (run, blocker, tenants):
        wait_for(lambda: waiting_lock_requests(engine) == 4)
        # A service manager's SIGTERM goes to every process of the group: the slots' threads
        # never see it, their processes ignore it, the coordinator starts no new tenant.
        os.killpg(run.pid, signal.SIGTERM)
        time.sleep(1.0)
        assert run.poll() is None and waiting_lock_requests(engine) == 4
        blocker.rollback()
        outcomes = _finish(run)
    assert run.returncode == 130
    finished = sorted(n for n, o in outcomes.items() if o["status"] == "ok")
    assert len(finished) == 4  # the four in flight committed
    assert all(version(engine, t) == TENANT_HEAD for t in finished)
    assert all(version(engine, t) == START for t in tenants if t not in finished)


def test_a_killed_worker_process_fails_exactly_the_tenants_it_held(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    with _held(settings, engine, database_url, 8, 4) as (run, blocker, tenants):
        wait_for(lambda: waiting_lock_requests(engine) == 4)
        victim = _server_of(psutil.Process(run.pid)).children()[0]
        victim.send_signal(signal.SIGKILL)
        # Its two tenants' transactions roll back with its connections; a new process with two
        # slots takes their place and the next tenants.
        wait_for(lambda: str(victim.pid) not in _slot_sessions(engine))
        wait_for(lambda: waiting_lock_requests(engine) == 4)
        blocker.rollback()
        outcomes = _finish(run)
    assert run.returncode == 3
    died = sorted(n for n, o in outcomes.items() if o["status"] == "failed")
    assert len(died) == 2
    assert all("worker process died" in str(outcomes[n]["error"]) for n in died)
    assert all(version(engine, n) == START for n in died)
    assert all(version(engine, t) == TENANT_HEAD for t in tenants if t not in died)
    again = run_cli("upgrade", "--all-tenants", "--only-failed", "--json", url=database_url)
    assert again.returncode == 0, again.stderr
    assert sorted(o["name"] for o in json.loads(again.stdout)["tenants"]) == died
    assert all(version(engine, t) == TENANT_HEAD for t in tenants)


def test_a_lost_connection_in_one_slot_is_reconnected_and_finished(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    with _held(settings, engine, database_url, 4, 2) as (run, blocker, tenants):
        wait_for(lambda: waiting_lock_requests(engine) == 2)
        with engine.connect() as conn:  # one slot's session ends, as in a failover
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name LIKE 'tenantmig worker %/0'"
                )
            )
        wait_for(lambda: waiting_lock_requests(engine) == 2)  # reconnected, waiting again
        blocker.rollback()
        outcomes = _finish(run)
    assert run.returncode == 0
    assert all(o["status"] == "ok" for o in outcomes.values())
    assert max(int(str(o["attempts"])) for o in outcomes.values()) == 2
    assert all(version(engine, t) == TENANT_HEAD for t in tenants)


def test_a_statement_timeout_in_one_slot_fails_only_its_tenant(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    args = ("--statement-timeout", "2")
    # Only t000 is held: its statement is cancelled after 2 s; the slot beside it, in the same
    # process, migrates the four others meanwhile.
    with _held(settings, engine, database_url, 5, 2, *args, held=1) as (run, _, tenants):
        outcomes = _finish(run)
    assert run.returncode == 3
    assert outcomes["t000"]["status"] == "failed"
    assert "statement timeout" in str(outcomes["t000"]["error"])
    assert version(engine, "t000") == START
    assert all(outcomes[t]["status"] == "ok" for t in tenants[1:])
    assert all(version(engine, t) == TENANT_HEAD for t in tenants[1:])
