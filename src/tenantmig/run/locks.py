"""The run's own locks: one all-tenants run at a time, and "run N is alive".

Both must last the whole run, across the many short transactions of the ledger, and die with the
runner. They are *transaction* advisory locks taken in one transaction that a connection of their
own keeps open for the run (``RunLocks``), not session locks:

- A connection pooler in transaction mode (PgBouncer) hands a server connection to the next
  client when a transaction ends. A session lock would stay on that server connection after the
  run, blocking later runs, and be re-entrant for whichever client gets it next, letting two runs
  proceed. A lock that lives in an open transaction keeps its server connection pinned to this
  client, and ends with the transaction.
- A killed runner's connection closes; the server (or the pooler, which closes a server
  connection whose client left mid-transaction) rolls the transaction back and the locks go.
- The held transaction takes no snapshot and writes nothing, so it does not hold back vacuum;
  ``idle_in_transaction_session_timeout`` is switched off for it alone, so a server setting
  meant for forgotten sessions does not end it under a long run.

Per-tenant locks are transaction-scoped too, taken in ``server.session``.
"""

from __future__ import annotations

import contextlib
import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from tenantmig.errors import RunLocked
from tenantmig.server.session import LOCK_NAMESPACE, lock_key

RUN_LOCK_NAME = "tenantmig all-tenants run"
# Second key space: "run N is alive", held by the coordinator of run N. A run recorded as running
# whose lock nobody holds was killed: the ledger shows it as abandoned.
LIVE_RUN_NAMESPACE = LOCK_NAMESPACE + 1


def _run_lock_key(shared_schema: str) -> int:
    return lock_key(f"{RUN_LOCK_NAME}:{shared_schema}")


class RunLocks:
    """The locks of one run, held in an open transaction on a connection of their own."""

    def __init__(self, engine: Engine) -> None:
        self.conn = engine.connect()
        self.conn.begin()
        self.conn.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = 0")

    def try_run_lock(self, shared_schema: str) -> bool:
        """Take the all-tenants run lock if free; False if another run holds it."""
        return bool(
            self.conn.execute(
                sa.text("SELECT pg_try_advisory_xact_lock(:ns, :key)"),
                {"ns": LOCK_NAMESPACE, "key": _run_lock_key(shared_schema)},
            ).scalar()
        )

    def mark_alive(self, run_id: int) -> None:
        self.conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(:ns, :id)"),
            {"ns": LIVE_RUN_NAMESPACE, "id": run_id},
        )

    def release(self) -> None:
        """End the transaction, and with it every lock (also when the server went away)."""
        with contextlib.suppress(DBAPIError):
            self.conn.rollback()
        with contextlib.suppress(DBAPIError):
            self.conn.close()


def run_lock_holder(conn: Connection, shared_schema: str) -> str:
    """Describe the session holding the run lock (pid, user, client, since when)."""
    row = conn.execute(
        sa.text(
            "SELECT a.pid, a.usename, a.client_addr, a.client_hostname, a.backend_start"
            " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted"
            " AND l.classid = CAST(:ns AS oid) AND l.objid = CAST(:key AS oid)"
            " AND l.objsubid = 2"
        ),
        {"ns": LOCK_NAMESPACE, "key": _run_lock_key(shared_schema) & 0xFFFFFFFF},
    ).first()
    if row is None:
        return "another session"
    client = row.client_hostname or row.client_addr or "local socket"
    return (
        f"server pid {row.pid} (user {row.usename}, client {client}, "
        f"connected since {row.backend_start:%Y-%m-%d %H:%M:%S %Z})"
    )


def live_runs(conn: Connection) -> set[int]:
    """Ids of runs whose coordinator is still connected."""
    return set(
        conn.execute(
            sa.text(
                "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND classid = CAST(:ns AS oid) AND objsubid = 2"
            ),
            {"ns": LIVE_RUN_NAMESPACE},
        ).scalars()
    )


def acquire_run_lock(locks: RunLocks, conn: Connection, shared_schema: str, wait_s: float) -> None:
    """Take the run lock, waiting up to ``wait_s``; RunLocked (exit 4) names who holds it."""
    deadline = time.monotonic() + wait_s
    while not locks.try_run_lock(shared_schema):
        if time.monotonic() >= deadline:
            with conn.begin():
                holder = run_lock_holder(conn, shared_schema)
            raise RunLocked(
                f"another all-tenants run holds the run lock: {holder}; wait for it, or pass "
                "--wait SECONDS to queue behind it"
            )
        time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
