"""The seam between tenantmig and the kind of server it talks to.

A few things depend on what sits behind the connection rather than on PostgreSQL's SQL: how a
migration transaction sets its timeouts, lock and search_path; how a compiled step's statements
are sent; where the session blocking a tenant's tables is found. They live behind this one small
interface so that a second implementation (a Citus coordinator, whose DDL runs on worker nodes)
changes nothing above it. ``PostgreSQL`` is the plain server.

A flavour holds no connection or state: it is picklable and travels to worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantmig.server.session import Timeouts, prepare_migration_transaction


@dataclass(frozen=True)
class LockHolder:
    """A session holding a lock on one of a schema's tables, for a lock-timeout message."""

    pid: int
    user: str
    application: str | None
    state: str | None
    relation: str
    mode: str
    transaction_age_s: int | None

    def describe(self) -> str:
        open_for = (
            "no open transaction"
            if self.transaction_age_s is None
            else f"transaction open {self.transaction_age_s}s"
        )
        return (
            f"pid {self.pid} ({self.user}, {self.application or 'no application_name'}, "
            f"{self.state}, {open_for}) holds {self.mode} on {self.relation}"
        )


class ServerFlavour(Protocol):
    """What differs between kinds of server; see the module docstring."""

    name: str

    def prepare_migration(
        self,
        conn: Connection,
        schema: str,
        timeouts: Timeouts,
        *,
        verify: bool = True,
        local: bool = True,
    ) -> None: ...

    def send_statements(self, conn: Connection, statements: Sequence[str]) -> Sequence[Any]: ...

    def lock_holders(self, conn: Connection, schema: str, limit: int = 3) -> list[LockHolder]: ...


class PostgreSQL:
    """A single PostgreSQL server: everything happens in the session tenantmig talks to."""

    name = "postgresql"

    def prepare_migration(
        self,
        conn: Connection,
        schema: str,
        timeouts: Timeouts,
        *,
        verify: bool = True,
        local: bool = True,
    ) -> None:
        """Timeouts, the schema's advisory lock, search_path: first thing in the transaction."""
        prepare_migration_transaction(conn, schema, timeouts, verify=verify, local=local)

    def send_statements(self, conn: Connection, statements: Sequence[str]) -> Sequence[Any]:
        """Send a compiled step's statements (the last one a SELECT) and return its rows.

        In one round trip: one string, statements separated by a newline and a semicolon (the
        newline ends a trailing ``--`` comment; a complete statement cannot leave a string,
        quoted name or ``$$`` body open). Sent without parameters, so the driver leaves every
        ``%`` alone.

        Through SQLAlchemy, not the raw cursor: its error wrapping and connection invalidation
        make a lock timeout or a lost server look the same as on the Alembic path.
        """
        script = "\n;\n".join(statements)
        return conn.exec_driver_sql(script, execution_options={"no_parameters": True}).all()

    def lock_holders(self, conn: Connection, schema: str, limit: int = 3) -> list[LockHolder]:
        """Other sessions holding granted locks on tables of ``schema``."""
        rows = conn.execute(
            sa.text(
                "SELECT DISTINCT a.pid, a.usename, a.application_name, a.state,"
                " c.relname, l.mode,"
                " extract(epoch FROM now() - a.xact_start)::int AS xact_age_s"
                " FROM pg_locks l"
                " JOIN pg_class c ON c.oid = l.relation"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE n.nspname = :schema AND l.granted"
                # Predicate locks of serializable transactions never block anyone.
                " AND l.mode <> 'SIReadLock'"
                " AND a.pid <> pg_backend_pid() ORDER BY a.pid LIMIT :limit"
            ),
            {"schema": schema, "limit": limit},
        ).all()
        return [
            LockHolder(
                r.pid, r.usename, r.application_name, r.state, r.relname, r.mode, r.xact_age_s
            )
            for r in rows
        ]
