"""PostgreSQL SQLSTATEs that change what tenantmig does, named once through psycopg2's table.

Two questions are asked of a database error: is it worth retrying the tenant (a lock wait timed
out, a deadlock, a serialization failure: another session was in the way, nothing is wrong with
the migration; or the server's lock table was full: other transactions held the room), and is
the connection or the server gone (the statement may be fine; reconnect)?
"""

from __future__ import annotations

import re

from psycopg2 import errorcodes
from sqlalchemy.exc import DBAPIError, OperationalError

# SQLSTATE -> the words a log line and a failure message use for it.
_RETRYABLE = {
    errorcodes.LOCK_NOT_AVAILABLE: "lock timeout",
    errorcodes.DEADLOCK_DETECTED: "deadlock",
    errorcodes.SERIALIZATION_FAILURE: "serialization failure",
}
LOCK_TIMEOUT_REASON = _RETRYABLE[errorcodes.LOCK_NOT_AVAILABLE]

# 53200 is "out_of_memory"; the server raises it as "out of shared memory" when its lock table
# is full, with a hint naming the setting that sizes the table (max_locks_per_transaction, or
# max_pred_locks_per_transaction for SERIALIZABLE's predicate locks). The table is shared by
# every session: the same transaction may fit once fewer run at once. Any other 53200 (a
# backend's own memory) is not retried.
OUT_OF_LOCKS_REASON = "out of shared memory"
_LOCK_SETTING = re.compile(r"max_(?:pred_)?locks_per_transaction")
# How first_line marks that error. A tenant's outcome crosses from its worker process as text:
# the coordinator recognises the error by this mark, never by the server's (translatable) words.
_MARK = "(SQLSTATE 53200: the lock table is full; raise {setting})"
_MARKED = re.compile(r"\(SQLSTATE 53200: the lock table is full; raise (max_\w+)\)")

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
    if lock_table_setting(exc) is not None:
        return OUT_OF_LOCKS_REASON
    return _RETRYABLE.get(sqlstate(exc) or "")


def lock_table_setting(exc: BaseException) -> str | None:
    """For "out of shared memory" because the lock table is full: the setting to raise
    (from the server's hint); else None."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "pgcode", None) != errorcodes.OUT_OF_MEMORY:
        return None
    hint = getattr(getattr(orig, "diag", None), "message_hint", None)
    found = _LOCK_SETTING.search(hint) if isinstance(hint, str) else None
    return found.group(0) if found else None


def lock_table_full(error: str | None) -> str | None:
    """The setting to raise if ``error`` (a message built with first_line) says the server's
    lock table was full; else None."""
    found = _MARKED.search(error or "")
    return found.group(1) if found else None


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
    line = text.splitlines()[0] if text else type(exc).__name__
    setting = lock_table_setting(exc)
    if setting is not None:
        line = f"{line} {_MARK.format(setting=setting)}"
    return line
