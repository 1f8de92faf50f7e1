"""Worker processes forked from one preloaded server, started while the coordinator compiles.

A worker started with "spawn" is a new interpreter that imports SQLAlchemy, Alembic, psycopg2
and tenantmig before it migrates anything: about 0.75 s of CPU each, so 16 workers on 2 cores
took seconds to be ready. Here one server process (multiprocessing's "forkserver") imports all
of that once, in the background, as soon as the run knows it will use workers; each worker is
then forked from it, ready in milliseconds. Forked from a process that holds no connection and
no thread of the coordinator's, so none of the reasons spawn was chosen over fork applies.

The server lives for one run and is stopped after it: a long-lived process that calls the API
run after run gets workers with its environment of the moment, as spawn gave them.

Dying together (see run.worker_preload): the server ignores SIGTERM, as workers do, so a
service manager's SIGTERM to every process lets in-flight tenants finish; it is SIGKILLed when
the coordinator dies, and a worker is SIGKILLed when the server dies, so a killed coordinator
still takes its workers, and their open transactions, with it.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.forkserver as forkserver
import os
from multiprocessing.context import ForkServerContext, SpawnContext

# Imported by the server only, guarded by this variable (see that module).
_PRELOAD = ["tenantmig.run.worker_preload"]
PARENT_VARIABLE = "TENANTMIG_WORKER_SERVER_PARENT"


def start() -> None:
    """Start the server if it is not running; returns at once, the server imports on its own
    (the first worker started waits for it)."""
    mp.set_forkserver_preload(_PRELOAD)
    os.environ[PARENT_VARIABLE] = str(os.getpid())
    try:
        forkserver.ensure_running()
    finally:
        os.environ.pop(PARENT_VARIABLE, None)


def context() -> ForkServerContext | SpawnContext:
    """The context to start workers from: the server's while a run has it started, else
    spawn (a pool started outside a run: each worker a new interpreter, as before)."""
    if _running():
        return mp.get_context("forkserver")
    return mp.get_context("spawn")


def stop() -> None:
    """Stop the server (after the run's workers have ended: it waits for them)."""
    stopping = getattr(forkserver._forkserver, "_stop", None)
    if stopping is not None and _running():
        with contextlib.suppress(OSError, ChildProcessError):
            stopping()


def _running() -> bool:
    return getattr(forkserver._forkserver, "_forkserver_pid", None) is not None
