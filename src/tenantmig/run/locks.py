"""The run's own locks: one all-tenants run at a time, and "run N is alive".

Both are *session* advisory locks held on the coordinator's own connection: they must outlive the
many short transactions of a run, and die with the runner (a killed runner's connection closes and
the server releases them). Per-tenant locks are transaction-scoped and taken in
``server.session.prepare_migration_transaction``.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantmig.server.session import LOCK_NAMESPACE, lock_key

RUN_LOCK_NAME = "tenantmig all-tenants run"


def try_run_lock(conn: Connection, shared_schema: str) -> bool:
    """Try the run lock: a *session* advisory lock held on the coordinator's own connection.

    Session-level because it must outlive the many short transactions of a run; it is released
    when the run ends or, if the runner is killed, when its connection closes.
    """
    return bool(
        conn.execute(
            sa.text("SELECT pg_try_advisory_lock(:ns, :key)"),
            {"ns": LOCK_NAMESPACE, "key": lock_key(f"{RUN_LOCK_NAME}:{shared_schema}")},
        ).scalar()
    )


def release_run_lock(conn: Connection, shared_schema: str) -> None:
    conn.execute(
        sa.text("SELECT pg_advisory_unlock(:ns, :key)"),
        {"ns": LOCK_NAMESPACE, "key": lock_key(f"{RUN_LOCK_NAME}:{shared_schema}")},
    )


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
        {
            "ns": LOCK_NAMESPACE,
            "key": lock_key(f"{RUN_LOCK_NAME}:{shared_schema}") & 0xFFFFFFFF,
        },
    ).first()
    if row is None:
        return "another session"
    client = row.client_hostname or row.client_addr or "local socket"
    return (
        f"server pid {row.pid} (user {row.usename}, client {client}, "
        f"connected since {row.backend_start:%Y-%m-%d %H:%M:%S %Z})"
    )


# Second key space: "run N is alive", held (session-level) by the coordinator of run N. A run
# recorded as running whose lock nobody holds was killed: the ledger shows it as abandoned.
LIVE_RUN_NAMESPACE = LOCK_NAMESPACE + 1


def hold_live_run_lock(conn: Connection, run_id: int) -> None:
    conn.execute(
        sa.text("SELECT pg_advisory_lock(:ns, :id)"), {"ns": LIVE_RUN_NAMESPACE, "id": run_id}
    )


def release_live_run_lock(conn: Connection, run_id: int) -> None:
    conn.execute(
        sa.text("SELECT pg_advisory_unlock(:ns, :id)"), {"ns": LIVE_RUN_NAMESPACE, "id": run_id}
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
