"""What every migration transaction sets up first: timeouts, the per-schema lock, search_path.

All settings are transaction-local (``set_config(..., true)`` is ``SET LOCAL``), so a connection
reused for the next tenant starts clean, and nothing leaks if the transaction rolls back.

The exception is a tenant whose revisions need statements outside a transaction (``CREATE INDEX
CONCURRENTLY`` in an autocommit block): there the settings and the advisory lock are
session-level (``local=False``) on a connection used for that one tenant and then closed, which
is what releases them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from tenantmig.errors import SchemaMissing
from tenantmig.server.identifiers import quote_ident

# First key of every tenantmig advisory lock (two-int form), so our locks never collide with an
# application's single-bigint advisory locks. Arbitrary constant: "TMIG" in ASCII.
LOCK_NAMESPACE = 0x544D4947


def lock_key(name: str) -> int:
    """A stable signed 32-bit key for a name (CRC-32). Collisions only serialise two schemas."""
    value = zlib.crc32(name.encode("utf-8"))
    return value - (1 << 32) if value >= (1 << 31) else value


@dataclass(frozen=True)
class Timeouts:
    """How long a migration's statements may wait for a lock, and run, in seconds."""

    lock_timeout_s: float
    statement_timeout_s: float | None = None  # None: no limit

    @property
    def lock_timeout_ms(self) -> int:
        # At least 1 ms: PostgreSQL reads lock_timeout = 0 as "wait forever".
        return max(1, int(self.lock_timeout_s * 1000))

    @property
    def statement_timeout_ms(self) -> int:
        """0 (PostgreSQL's "no limit") when there is none."""
        if self.statement_timeout_s is None:
            return 0
        return max(1, int(self.statement_timeout_s * 1000))


# Sent as one multi-statement string: one round trip per tenant for all of it, in this order.
# 1. Timeouts. lock_timeout is what keeps a migration from sitting in a lock queue: an ALTER
#    TABLE waiting for ACCESS EXCLUSIVE blocks every later reader of that table behind it, so it
#    must give up quickly and be retried rather than wait behind a long transaction. A backend
#    waiting in a lock queue does not notice that its client died: a killed runner would leave
#    it holding this tenant's locks (and its place in the queue) until lock_timeout, so on
#    PostgreSQL 14+ it polls the socket while a statement runs (client_connection_check_interval).
# 2. The per-schema advisory lock. Transaction-level normally: released at COMMIT/ROLLBACK, and
#    with the connection if the runner dies, so nothing is ever left held. Waiting for it is
#    bounded by lock_timeout (set just before), raising lock_not_available (55P03) like any
#    other lock wait.
# 3. search_path: the schema alone, so unqualified DDL lands in it. The caller then checks
#    current_schema(), which is NULL when the schema does not exist: that stops DDL from ever
#    landing in some other schema through a stale or mistaken search_path.
_PREPARE = """
SELECT set_config('lock_timeout', %(lock)s, %(local)s),
       set_config('statement_timeout', %(st)s, %(local)s),
       CASE WHEN current_setting('server_version_num')::int >= 140000
            THEN set_config('client_connection_check_interval', '1000', %(local)s) END;
SELECT {lock_function}(%(ns)s, %(key)s);
SELECT set_config('search_path', %(path)s, %(local)s);
SELECT current_schema() AS cs
"""


def prepare_migration_transaction(
    conn: Connection, schema: str, timeouts: Timeouts, *, verify: bool = True, local: bool = True
) -> None:
    """Timeouts, then the schema's lock, then search_path; call first in the transaction.

    ``local=False`` makes all three session-level (see the module docstring). ``verify=False``
    leaves the current_schema() check to the caller, whose next query reads it anyway.
    """
    lock_function = "pg_advisory_xact_lock" if local else "pg_advisory_lock"
    current = conn.exec_driver_sql(
        _PREPARE.format(lock_function=lock_function),
        {
            "lock": f"{timeouts.lock_timeout_ms}ms",
            "st": f"{timeouts.statement_timeout_ms}ms",
            "local": local,
            "ns": LOCK_NAMESPACE,
            "key": lock_key(schema),
            "path": quote_ident(schema),
        },
    ).scalar()
    if verify and current != schema:
        raise SchemaMissing(f"schema {schema!r} does not exist")


# A transaction tenantmig keeps open on purpose while other work goes on (a move's locks on the
# source while the copy is made, a restore's tenant lock while psql runs) sits idle in
# transaction, often for longer than a production server allows: idle_in_transaction_
# session_timeout (and, from PostgreSQL 17, transaction_timeout) would end it, silently
# releasing the locks it exists to hold. These settings are switched off for that transaction
# alone; its own statements keep their lock_timeout.
# TIMEOUTS_OFF is a select list, so that a held transaction's other first statement (the run
# lock's: who am I, since when does the server run) switches them off in the same round trip.
# transaction_timeout does not exist before PostgreSQL 17 (setting it there is an error): CASE
# evaluates set_config only where it does.
TIMEOUTS_OFF = """
       set_config('idle_in_transaction_session_timeout', '0', true),
       CASE WHEN current_setting('server_version_num')::int >= 170000
            THEN set_config('transaction_timeout', '0', true) END"""
_HOLD_OPEN = f"SELECT set_config('statement_timeout', '0', true),{TIMEOUTS_OFF}"


def hold_open(conn: Connection) -> None:
    """Keep the caller's transaction alive however long it stays idle (see ``_HOLD_OPEN``)."""
    conn.exec_driver_sql(_HOLD_OPEN)


def still_open(conn: Connection) -> bool:
    """Whether a held transaction is still alive on the server (a round trip)."""
    try:
        return conn.exec_driver_sql("SELECT 1").scalar() == 1
    except DBAPIError:
        return False


def reset_session(conn: Connection) -> None:
    """Undo what a migration run outside one transaction left on ``conn``'s session: the
    schema's advisory lock and the settings taken at session level for it, and what its
    revisions could leave (a SET or SET ROLE, a temporary table), so the connection can serve
    another tenant, or be lent on by a pooler. In a transaction of its own (raises what the
    server raises). Not DISCARD ALL, which cannot run inside a transaction block, nor
    DEALLOCATE ALL: behind a pooler in transaction mode the server connection's prepared
    statements may be another client's."""
    with conn.begin():
        conn.exec_driver_sql(
            "SET SESSION AUTHORIZATION DEFAULT; RESET ALL;"
            " SELECT pg_advisory_unlock_all(); DISCARD TEMP"
        )
