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
  ``idle_in_transaction_session_timeout`` and (PostgreSQL 17+) ``transaction_timeout`` are
  switched off for it alone, so a server setting meant for forgotten sessions does not end it
  under a long run.

The locks can still go while the run goes on: an administrator or a tool ends the session
(``pg_terminate_backend``), the server restarts, the network drops the connection. The run
must notice before it starts another tenant, or a second run could start beside it:
``RunLockWatch`` asks the lock's connection at most once a second and tells the run to go on,
wait (the server is away) or stop.

Per-tenant locks are transaction-scoped too, taken in ``server.session``.
"""

from __future__ import annotations

import contextlib
import select
import time
from datetime import datetime
from enum import Enum

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from tenantmig.errors import RunLocked
from tenantmig.server.database import create_engine
from tenantmig.server.errorcodes import first_line
from tenantmig.server.session import LOCK_NAMESPACE, TIMEOUTS_OFF, lock_key

RUN_LOCK_NAME = "tenantmig all-tenants run"
# Second key space: "run N is alive", held by the coordinator of run N. A run recorded as running
# whose lock nobody holds was killed: the ledger shows it as abandoned.
LIVE_RUN_NAMESPACE = LOCK_NAMESPACE + 1

# At most one round trip a second on the lock's connection: nothing next to a tenant's
# migration, and a lost lock is known before the next tenant starts, or within this long.
CHECK_INTERVAL_S = 1.0

# TCP keepalives on the lock's connection. It sits idle in its transaction for the whole run:
# without them a server host that vanished (or a firewall that dropped the idle connection)
# would be noticed only when a check's query times out in the kernel, many minutes later.
# tcp_user_timeout bounds how long a check's query waits for an answer that never comes.
# libpq ignores all of these on a Unix socket.
_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}

# One round trip when the transaction opens: who we are on the server (a pooler could hand this
# client another server session only if this one ended: the check compares pids), since when the
# server runs (a restart ended every session, not only ours), and the timeouts switched off.
# set_config(..., true) is SET LOCAL: this transaction only (session.TIMEOUTS_OFF).
_HOLD = (
    "SELECT pg_backend_pid() AS pid, pg_postmaster_start_time() AS server_started," + TIMEOUTS_OFF
)


def _run_lock_key(shared_schema: str) -> int:
    return lock_key(f"{RUN_LOCK_NAME}:{shared_schema}")


class RunLocks:
    """The locks of one run, held in an open transaction on a connection of their own.

    The connection is named ``tenantmig run lock`` in pg_stat_activity, so an operator can tell
    it from the workers before ending a session.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = create_engine(engine.url, role="run lock", connect_args=_KEEPALIVES)
        try:
            self._open()
        except BaseException:
            self._engine.dispose()
            raise

    def _open(self) -> None:
        conn = self._engine.connect()
        try:
            conn.begin()
            row = conn.exec_driver_sql(_HOLD).one()
        except BaseException:
            with contextlib.suppress(DBAPIError):
                conn.close()
            raise
        self.conn = conn
        self.backend_pid: int = row.pid
        self.server_started: datetime = row.server_started
        # A driver without a socket to poll leaves quiet() always true: the round trips remain.
        self._socket = select.poll()
        fileno = getattr(conn.connection.dbapi_connection, "fileno", None)
        if callable(fileno):
            self._socket.register(fileno(), select.POLLIN)

    def quiet(self) -> bool:
        """No sign that the held transaction ended, learnt without a round trip.

        While it sits idle the server sends this connection nothing, unless it ends the
        session: a terminated backend, a server shutting down (and a pooler losing the server
        session) send an error and close the socket, which makes it readable at once. Polling
        the socket costs a system call, so it is asked before every tenant; the round trip of
        ``gone()`` is for what leaves no trace on the socket.
        """
        return not self._socket.poll(0)

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

    def gone(self) -> str | None:
        """None while the held transaction is alive on the server; else what ended it.

        The locks live exactly as long as that transaction. A pooler that lost the server
        session closes this client (it was mid-transaction), so the query fails; a different
        pid would mean the transaction, and the locks with it, are gone all the same.
        """
        try:
            pid = self.conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        except SQLAlchemyError as exc:
            return first_line(exc)
        if pid != self.backend_pid:
            return f"the connection now reaches another server session (pid {pid})"
        return None

    def reopen(self) -> None:
        """End what is left of the transaction and open a new one, holding no lock yet
        (``server_started`` then tells whether the server restarted meanwhile). Raises
        DBAPIError while the server cannot be reached."""
        self._close()
        self._open()

    def _close(self) -> None:
        # Also after the connection broke: SQLAlchemy then refuses some calls with errors of
        # its own, not the driver's.
        with contextlib.suppress(SQLAlchemyError):
            self.conn.rollback()
        with contextlib.suppress(SQLAlchemyError):
            self.conn.close()

    def release(self) -> None:
        """End the transaction, and with it every lock (also when the server went away)."""
        self._close()
        self._engine.dispose()


class Clearance(str, Enum):
    """May the run start another tenant?"""

    GO = "go"  # the run lock is held
    WAIT = "wait"  # its connection was lost with the server: start nothing until it is back
    STOP = "stop"  # it is lost: start nothing more (in-flight tenants finish)


class RunLockWatch:
    """Whether an all-tenants run still holds its run lock, asked before each tenant starts.

    Asking costs a look at the socket (``RunLocks.quiet``), and one round trip at most every
    ``interval_s``. When the lock's connection is found gone:

    - the server stayed up (the same start time): the session was ended on purpose (an
      administrator, a tool that ends idle transactions) or the connection dropped, and another
      run may have started since. The run stops: STOP, with the reason. The lock and the
      live-run marker are taken again if free, so that no second run starts while the
      in-flight tenants finish and ``tenantmig runs`` shows the run still running.
    - the server cannot be reached: WAIT until it is back, for at most ``reconnect_timeout_s``
      (then STOP). Workers reconnect on their own meanwhile.
    - the server restarted: every session ended with it, every other run's lock too. The run
      goes on if the lock is free (taken again at once), and stops if another run took it.

    A server that recovered from a crash of one backend keeps its start time: that reads as a
    session ended on purpose, and stops the run (the safe side).
    """

    def __init__(
        self,
        locks: RunLocks,
        shared_schema: str,
        run_id: int,
        reconnect_timeout_s: float,
        interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self.locks = locks
        self.shared_schema = shared_schema
        self.run_id = run_id
        self.reconnect_timeout_s = reconnect_timeout_s
        self.interval_s = interval_s
        self.reason: str | None = None  # why the run stopped (with STOP)
        self.notices: list[str] = []
        self._state = Clearance.GO
        self._next_check = 0.0  # the first question is asked at once
        self._server_started = locks.server_started
        self._lost: tuple[float, str, int] | None = None  # (when, what ended it, server pid)

    def clearance(self) -> Clearance:
        if self._state is Clearance.STOP:
            return Clearance.STOP
        now = time.monotonic()
        due = now >= self._next_check
        if self._state is Clearance.GO:
            if not due and self.locks.quiet():
                return Clearance.GO
            self._next_check = now + self.interval_s
            why = self.locks.gone()
            if why is None:
                return Clearance.GO
            self._lost = (now, why, self.locks.backend_pid)
        elif not due:
            return Clearance.WAIT
        self._next_check = now + self.interval_s
        self._state = self._take_again()
        return self._state

    def _take_again(self) -> Clearance:
        """A new transaction on a new connection: the lock again if it is free, or who has it."""
        assert self._lost is not None
        since, why, old_pid = self._lost
        try:
            self.locks.reopen()
            taken = self.locks.try_run_lock(self.shared_schema)
            if taken:
                self.locks.mark_alive(self.run_id)
            holder = "" if taken else run_lock_holder(self.locks.conn, self.shared_schema)
        except DBAPIError as exc:
            if time.monotonic() - since < self.reconnect_timeout_s:
                return Clearance.WAIT
            return self._stop(
                f"the run lock's connection was lost ({why}) and the server could not be "
                f"reached again within {self.reconnect_timeout_s:.0f}s: {first_line(exc)}"
            )
        restarted = self.locks.server_started != self._server_started
        if taken and restarted:
            self._server_started = self.locks.server_started
            self.notices.append(
                "the server restarted during the run; no other run had taken the run lock, so "
                "this run took it again and went on"
            )
            return Clearance.GO
        if taken:
            return self._stop(
                f"the session holding the run lock (server pid {old_pid}) ended while the "
                f"server stayed up ({why}); another run could have started meanwhile"
            )
        cause = "the server restarted" if restarted else f"server pid {old_pid} ended: {why}"
        return self._stop(f"the run lock was lost ({cause}) and another run holds it: {holder}")

    def _stop(self, reason: str) -> Clearance:
        self.reason = reason
        return Clearance.STOP


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
