"""PostgreSQL SQLSTATEs that change what tenantmig does, named once through psycopg2's table.

Two questions are asked of a database error: is it worth retrying the tenant (a lock wait timed
out, a deadlock, a serialization failure: another session was in the way, nothing is wrong with
the migration), and is the connection or the server gone (the statement may be fine; reconnect)?
"""

from __future__ import annotations

from psycopg2 import errorcodes
from sqlalchemy.exc import DBAPIError, OperationalError

# SQLSTATE -> the words a log line and a failure message use for it.
_RETRYABLE = {
    errorcodes.LOCK_NOT_AVAILABLE: "lock timeout",
    errorcodes.DEADLOCK_DETECTED: "deadlock",
    errorcodes.SERIALIZATION_FAILURE: "serialization failure",
}
LOCK_TIMEOUT_REASON = _RETRYABLE[errorcodes.LOCK_NOT_AVAILABLE]

# The server is going away or not accepting connections yet (restart, failover).
_SERVER_GONE = frozenset(
    {errorcodes.ADMIN_SHUTDOWN, errorcodes.CRASH_SHUTDOWN, errorcodes.CANNOT_CONNECT_NOW}
)


def sqlstate(exc: DBAPIError) -> str | None:
    """The five-character SQLSTATE the server sent, or None (a client-side error)."""
    code = getattr(exc.orig, "pgcode", None)
    return code if isinstance(code, str) else None


def retry_reason(exc: DBAPIError) -> str | None:
    """Why the tenant may succeed if retried ("lock timeout", ...), or None."""
    return _RETRYABLE.get(sqlstate(exc) or "")


def is_lock_timeout(exc: DBAPIError) -> bool:
    return sqlstate(exc) == errorcodes.LOCK_NOT_AVAILABLE


def connection_lost(exc: DBAPIError) -> bool:
    """True for errors that mean the connection or the server is gone, not the statement."""
    if exc.connection_invalidated:
        return True
    code = sqlstate(exc) or ""
    if code.startswith(errorcodes.CLASS_CONNECTION_EXCEPTION) or code in _SERVER_GONE:
        return True
    return isinstance(exc, OperationalError) and not code  # e.g. "server closed the connection"


def first_line(exc: BaseException) -> str:
    """The first line of the driver's message (no SQL, no parameters, no traceback)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
