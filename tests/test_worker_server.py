"""Workers are forked from one preloaded server per run, which lives and dies with the run.

What the signal tests prove for workers (SIGKILL of the coordinator rolls their tenants back,
SIGTERM to the whole group lets them finish) must also hold for the server between them; and
the server must not outlive the run that started it.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import sqlalchemy as sa

from tenantmig import api
from tenantmig.run import worker_server
from tenantmig.server.config import Settings
from tests.helpers import TENANT_HEAD, version
from tests.test_engine import make_tenants, names
from tests.test_signals import start_run, tenantmig_sessions, wait_for, waiting_lock_requests


def _server_of(coordinator: psutil.Process) -> psutil.Process:
    (server,) = [
        child
        for child in coordinator.children()
        if "multiprocessing.forkserver" in " ".join(child.cmdline())
    ]
    return server


@contextmanager
def _held_run(
    settings: Settings, engine: sa.Engine, database_url: str, tenants: list[str]
) -> Iterator[tuple[subprocess.Popen[str], sa.Connection]]:
    """A run of two workers over ``tenants``, its first tenant waiting for a lock the
    yielded connection holds (until it rolls back)."""
    make_tenants(settings, tenants, "001_initial_schema")
    with engine.connect() as blocker:
        blocker.exec_driver_sql('LOCK TABLE "t000".inventory_items IN ACCESS SHARE MODE')
        run = start_run(database_url, "--jobs", "2", "--lock-timeout", "60")
        wait_for(lambda: waiting_lock_requests(engine) == 1)
        yield run, blocker


def test_workers_are_forked_from_the_run_s_server_which_dies_with_a_killed_coordinator(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    with _held_run(settings, engine, database_url, names(6)) as (run, blocker):
        coordinator = psutil.Process(run.pid)
        server = _server_of(coordinator)
        workers = server.children()
        # Both workers are the server's children, none is the coordinator's own.
        assert len(workers) == 2, [w.cmdline() for w in workers]
        assert not [
            c for c in coordinator.children() if "multiprocessing.spawn" in " ".join(c.cmdline())
        ]
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        # The server dies with the coordinator, the workers with the server: their
        # connections close and the tenant in flight is rolled back.
        _gone, alive = psutil.wait_procs([server, *workers], timeout=30)
        assert not alive, [p.pid for p in alive]
        wait_for(lambda: tenantmig_sessions(engine) == 0, timeout=30)
        blocker.rollback()
    assert version(engine, "t000") == "001_initial_schema"


def test_the_server_ignores_sigterm_so_in_flight_tenants_finish(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    tenants = names(6)
    with _held_run(settings, engine, database_url, tenants) as (run, blocker):
        server = _server_of(psutil.Process(run.pid))
        server.send_signal(signal.SIGTERM)  # as a service manager's SIGTERM to every process
        wait_for(lambda: sum(version(engine, t) == TENANT_HEAD for t in tenants) == 5)
        assert server.is_running() and server.status() != psutil.STATUS_ZOMBIE
        blocker.rollback()
        _out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert all(version(engine, t) == TENANT_HEAD for t in tenants)


def test_a_run_stops_its_server_when_it_ends(settings: Settings) -> None:
    make_tenants(settings, names(4), "001_initial_schema")
    result = api.upgrade(settings, api.Selection.all_tenants(), options=api.RunOptions(jobs=2))
    assert result.succeeded, result.to_json()
    assert not worker_server._running()
    leftovers = [
        child
        for child in psutil.Process().children()
        if "multiprocessing.forkserver" in " ".join(child.cmdline())
    ]
    assert leftovers == []
