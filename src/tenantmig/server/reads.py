"""Transactions for tenantmig's own reads: catalogs, version tables, the registry, the ledger.

Production roles often carry a short ``statement_timeout`` (``ALTER ROLE app SET
statement_timeout = '200ms'``) to stop the application's runaway queries. tenantmig's bulk reads
are not runaway queries: a chunk of catalog fingerprints over hundreds of schemas takes longer
than that on a large fleet, and a read cancelled half way gives no answer at all. So every read
transaction sets its own statement_timeout first: the configured ``--statement-timeout`` when
one is given, else none ('0'), whatever the role or the database sets.

``set_config(..., true)`` is ``SET LOCAL``: it ends with the transaction, so it never leaks into
the next transaction on the connection, nor into a server connection a pooler in transaction
mode (PgBouncer) lends to someone else next.

Migration transactions set their own timeouts (``session.prepare_migration_transaction``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from psycopg2 import errorcodes
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from tenantmig.errors import ReadTimedOut
from tenantmig.server.errorcodes import first_line, sqlstate
from tenantmig.server.session import Timeouts

_SET_STATEMENT_TIMEOUT = sa.text("SELECT set_config('statement_timeout', :value, true)")


def statement_timeout_setting(statement_timeout_s: float | None) -> str:
    """The value for statement_timeout: '0' (PostgreSQL's "no limit") for None, else whole
    milliseconds, at least 1 (a limit under a millisecond must not round to '0', no limit)."""
    if statement_timeout_s is None:
        return "0"
    # The rounding a migration's statement_timeout uses, in one place.
    return f"{Timeouts(0, statement_timeout_s).statement_timeout_ms}ms"


@contextmanager
def own_reads(conn: Connection, statement_timeout_s: float | None) -> Iterator[Connection]:
    """A transaction on ``conn`` whose statements run for at most ``statement_timeout_s``
    seconds each (None: no limit), committed at the end of the block.

    A statement cancelled by that limit raises ReadTimedOut, which names the limit; with no
    limit set, a cancellation came from elsewhere (pg_cancel_backend) and is raised as it is.
    """
    try:
        with conn.begin():
            conn.execute(
                _SET_STATEMENT_TIMEOUT, {"value": statement_timeout_setting(statement_timeout_s)}
            )
            yield conn
    except DBAPIError as exc:
        if statement_timeout_s is None or sqlstate(exc) != errorcodes.QUERY_CANCELED:
            raise
        raise ReadTimedOut(
            f"one of tenantmig's reads ran longer than --statement-timeout "
            f"{statement_timeout_s:g}s allows and was cancelled ({first_line(exc)}); nothing "
            "was changed. Raise --statement-timeout, or leave it out: tenantmig's own reads "
            "then have no limit, whatever the role's statement_timeout"
        ) from exc
