"""Imported by the worker server only (run.worker_server), as its preload: what every worker
needs, imported once, and the server's own signal rules.

Guarded by PARENT_VARIABLE, which the coordinator sets to its pid for the moment it starts the
server: a process that imports this module for any other reason (the coordinator itself, a
test, documentation tools) changes nothing about its signals.
"""

from __future__ import annotations

import os
import signal

from tenantmig.run.worker_server import PARENT_VARIABLE

if os.environ.get(PARENT_VARIABLE) == str(os.getppid()):
    from tenantmig.backup.children import die_with_parent

    # As workers do: SIGTERM to every process lets the in-flight tenants finish.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # SIGKILLed when the coordinator dies; each worker dies with this server in turn.
    die_with_parent()
    if os.getppid() != int(os.environ[PARENT_VARIABLE]):
        os._exit(1)  # the coordinator died before prctl: the signal would never come
    # The worker's code and everything it imports (SQLAlchemy, Alembic, psycopg2).
    import tenantmig.run.executor  # noqa: F401
