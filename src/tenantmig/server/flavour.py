"""The seam between tenantmig and the kind of server it talks to.

A few things depend on what sits behind the connection rather than on PostgreSQL's SQL: how a
migration transaction sets its timeouts, lock and search_path; how a compiled step's statements
are sent; where the session blocking a tenant's tables is found; how a tenant's schema is created
and where it lives. They live behind this one small interface, so that a Citus coordinator (whose
DDL runs on worker nodes, ``server.citus``) changes nothing above it. ``PostgreSQL`` is the plain
server; ``server.citus.detect`` says which one a connection has.

A flavour holds no connection or state: it is picklable and travels to worker processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantmig.server.identifiers import quote_ident
from tenantmig.server.session import (
    LOCK_NAMESPACE,
    Timeouts,
    lock_key,
    prepare_migration_transaction,
)


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
    node: str | None = None  # the node the session runs on, in a cluster
    global_pid: int | None = None  # its cluster-wide id (Citus), for pg_cancel_backend()

    def describe(self) -> str:
        open_for = (
            "no open transaction"
            if self.transaction_age_s is None
            else f"transaction open {self.transaction_age_s}s"
        )
        where = f" on {self.node}" if self.node else ""
        if self.global_pid is not None:
            where += f" (global pid {self.global_pid})"
        return (
            f"pid {self.pid}{where} ({self.user}, {self.application or 'no application_name'}, "
            f"{self.state}, {open_for}) holds {self.mode} on {self.relation}"
        )


@dataclass(frozen=True)
class RestoreScript:
    """SQL that surrounds a pg_dump script when a tenant's schema is replaced from a backup,
    all of it in one transaction (psql --single-transaction sends statement by statement)."""

    before: str
    after: str = ""


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

    def begin_scratch(self, conn: Connection) -> None: ...

    def create_schema(self, conn: Connection, schema: str, *, distribute: bool) -> None: ...

    def placements(self, conn: Connection, schemas: Iterable[str]) -> dict[str, str]: ...

    def is_distributed(self, conn: Connection, schema: str) -> bool: ...

    def make_reference_tables(
        self,
        conn: Connection,
        schema: str,
        wanted: Sequence[str] | None,
        leave_out: Iterable[str],
        timeouts: Timeouts,
    ) -> list[str]: ...

    def restore_script(
        self, schema: str, timeouts: Timeouts, *, distribute: bool, lock: bool = True
    ) -> RestoreScript: ...


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

    def begin_scratch(self, conn: Connection) -> None:
        """Called first in a transaction that creates a scratch schema; nothing to do here."""

    def create_schema(self, conn: Connection, schema: str, *, distribute: bool) -> None:
        """A new tenant's schema (``distribute`` means something on a cluster only)."""
        conn.exec_driver_sql(f"CREATE SCHEMA {quote_ident(schema)}")

    def placements(self, conn: Connection, schemas: Iterable[str]) -> dict[str, str]:
        """Which node holds each schema: one server holds them all, so nothing to say."""
        return {}

    def is_distributed(self, conn: Connection, schema: str) -> bool:
        return False

    def make_reference_tables(
        self,
        conn: Connection,
        schema: str,
        wanted: Sequence[str] | None,
        leave_out: Iterable[str],
        timeouts: Timeouts,
    ) -> list[str]:
        """Reference tables are a cluster's; a single server has nothing to do."""
        return []

    def restore_script(
        self, schema: str, timeouts: Timeouts, *, distribute: bool, lock: bool = True
    ) -> RestoreScript:
        # lock_timeout bounds both waits: for a tenantmig runner migrating this tenant (the
        # advisory lock) and for the application's transactions on its tables (DROP needs
        # ACCESS EXCLUSIVE). The dump's own "SET lock_timeout = 0" comes after both.
        # lock=False: the caller holds the tenant's lock in a session of its own already (the
        # script's session would wait for it forever).
        # client_connection_check_interval (PostgreSQL 14+): a psql killed with tenantmig
        # while its statement waits in a lock queue ends that wait at once, not at lock_timeout.
        take_lock = f"SELECT pg_advisory_xact_lock({LOCK_NAMESPACE}, {lock_key(schema)});\n"
        return RestoreScript(
            f"SET LOCAL lock_timeout = '{timeouts.lock_timeout_ms}ms';\n"
            "SELECT CASE WHEN current_setting('server_version_num')::int >= 140000 THEN"
            " set_config('client_connection_check_interval', '1000', true) END;\n"
            + (take_lock if lock else "")
            + f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE;\n"
        )
