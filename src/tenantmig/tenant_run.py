"""Migrating one tenant: its connection, locks, timeouts, search_path and Alembic context.

A SchemaMigrator lives in one process (a worker, or the coordinator for a single tenant). It
loads the tenant chain's scripts once and reuses one connection across tenants, recycling it
after a bounded number of tenants: each backend caches catalog entries for every schema it has
touched, so a connection that visited thousands of schemas holds a lot of memory on the server.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError

from tenantmig.alembic_env import VERSION_TABLE, context_options
from tenantmig.backup import BackupFailed, BackupPlan
from tenantmig.catalog import invalid_indexes
from tenantmig.config import Settings
from tenantmig.database import create_engine
from tenantmig.errors import SchemaMissing, TenantmigError, UnknownRevision
from tenantmig.identifiers import qualified
from tenantmig.replay import CompiledStep, StepKey, replay
from tenantmig.results import Direction, TenantJob, TenantOutcome, TenantStatus
from tenantmig.scripts import ChainScripts, is_relative
from tenantmig.session import Timeouts, prepare_migration_transaction

RECYCLE_CONNECTION_AFTER = 200
_RETRYABLE_SQLSTATES = {
    "55P03": "lock timeout",  # lock_not_available
    "40P01": "deadlock",  # deadlock_detected
    "40001": "serialization failure",
}
_BACKOFF_BASE_S = 0.2
_BACKOFF_CAP_S = 5.0


@dataclass(frozen=True)
class Plan:
    """What a run asks of every tenant: a direction and a target (head, -1, a revision...)."""

    direction: Direction
    target: str


class _Refused(TenantmigError):
    """This tenant cannot be migrated as asked (unknown or diverged revision)."""


def sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "pgcode", None)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class SchemaMigrator:
    def __init__(
        self,
        settings: Settings,
        url: str,
        plan: Plan,
        *,
        logger: logging.Logger | None = None,
        scripts: ChainScripts | None = None,
        role: str | None = None,
        compiled: Mapping[StepKey, CompiledStep] | None = None,
        backup: BackupPlan | None = None,
        run_id: int | None = None,
    ) -> None:
        self.settings = settings
        self.plan = plan
        self.scripts = scripts or ChainScripts(settings, "tenant")
        self.timeouts = Timeouts(settings.lock_timeout_s, settings.statement_timeout_s)
        self.engine = create_engine(url, role=role)
        self.log = logger or logging.getLogger("tenantmig.run")
        self._conn: Connection | None = None
        self._uses = 0
        self._seen_revision: str | None = None
        self.compiled: dict[StepKey, CompiledStep] = dict(compiled or {})
        self._replayed_last = False
        self.replayed = 0  # tenants migrated by replaying a compiled step
        self.backup = backup
        self.run_id = run_id
        self._backup: tuple[str | None, str] | None = None  # (revision dumped, file) this tenant
        # Steps (from, to) found to need statements outside a transaction; see _attempt.
        self._autocommit_steps: set[tuple[str | None, str | None]] = set()
        self._reached: str | _Unread | None = _UNREAD  # where a partial failure stopped
        # Validate the target once, before any tenant: a typo fails the run with nothing changed.
        if not is_relative(plan.target):
            self.scripts.resolve_target(plan.target)

    # -- connection -----------------------------------------------------------------------
    def _connection(self) -> Connection:
        if self._conn is not None and (
            self._conn.invalidated or self._uses >= RECYCLE_CONNECTION_AFTER
        ):
            self._drop_connection()
        if self._conn is None:
            self._conn = self.engine.connect()
            self._uses = 0
        self._uses += 1
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except DBAPIError:
                pass
            self._conn = None

    def close(self) -> None:
        self._drop_connection()
        self.engine.dispose()

    # -- one tenant -----------------------------------------------------------------------
    def migrate(self, job: TenantJob) -> TenantOutcome:
        """Migrate one tenant in one transaction, retrying lock timeouts with backoff."""
        started = time.monotonic()
        attempts = 0
        extra = {"tenant": job.name}
        self._seen_revision = None  # read under the lock; reported on failure
        self._first_seen: str | _Unread | None = _UNREAD  # what the first attempt saw
        self._replayed_last = False
        self._backup = None
        self._reached = _UNREAD
        reconnect_deadline = started + self.settings.reconnect_timeout_s
        while True:
            attempts += 1
            try:
                before, after = self._attempt(job)
            except SchemaMissing as exc:
                self.log.warning("schema missing: %s", exc, extra=extra)
                return self._outcome(job, TenantStatus.MISSING, started, attempts, error=str(exc))
            except (_Refused, UnknownRevision, BackupFailed, NeedsAttention) as exc:
                self.log.error("refused: %s", exc, extra=extra)
                return self._outcome(job, TenantStatus.FAILED, started, attempts, error=str(exc))
            except DBAPIError as exc:
                if exc.connection_invalidated or connection_lost(exc):
                    # The server went away (restart, failover, network). Whatever this attempt
                    # did was rolled back, or committed just before the loss: the next attempt
                    # re-reads the version under the lock and finds out which.
                    self._drop_connection()
                    if time.monotonic() >= reconnect_deadline:
                        message = (
                            f"database unreachable for {self.settings.reconnect_timeout_s:.0f}s: "
                            f"{_first_line(exc)}"
                        )
                        self.log.error("failed: %s", message, extra=extra)
                        outcome = self._outcome(
                            job, TenantStatus.FAILED, started, attempts, error=message
                        )
                        return replace(outcome, lost_connection=True)
                    else:
                        delay = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** min(attempts, 5))
                        self.log.warning(
                            "attempt %d: connection lost (%s), reconnecting in %.2fs",
                            attempts,
                            _first_line(exc),
                            delay,
                            extra=extra,
                        )
                        time.sleep(delay * random.uniform(0.5, 1.0))
                        continue
                reason = _RETRYABLE_SQLSTATES.get(sqlstate(exc) or "")
                if reason and attempts <= self.settings.retries:
                    delay = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** (attempts - 1))
                    delay *= random.uniform(0.5, 1.0)  # jitter: workers do not retry in step
                    self.log.info(
                        "attempt %d: %s, retrying in %.2fs", attempts, reason, delay, extra=extra
                    )
                    time.sleep(delay)
                    continue
                message = _first_line(exc)
                if reason == "lock timeout":
                    message = f"{message}{self._blockers(job.schema)}"
                if reason:
                    message = f"{message} (gave up after {attempts} attempts)"
                self.log.error("failed: %s", message, extra=extra)
                return self._outcome(job, TenantStatus.FAILED, started, attempts, error=message)
            except Exception as exc:  # a migration script's own bug: record it, keep going
                self.log.exception("failed", extra=extra)
                return self._outcome(
                    job,
                    TenantStatus.FAILED,
                    started,
                    attempts,
                    error=f"{type(exc).__name__}: {exc}",
                )
            if before == after and attempts > 1 and self._first_seen not in (_UNREAD, after):
                # An earlier attempt's commit landed before its connection was lost.
                before = self._first_seen  # type: ignore[assignment]
            status = TenantStatus.SKIPPED if before == after else TenantStatus.OK
            self.log.info(
                "%s %s -> %s%s",
                status.value,
                before or "base",
                after or "base",
                " (replayed)" if self._replayed_last else "",
                extra=extra,
            )
            return self._outcome(job, status, started, attempts, before, after)

    def _outcome(
        self,
        job: TenantJob,
        status: TenantStatus,
        started: float,
        attempts: int,
        before: str | None = None,
        after: str | None = None,
        error: str | None = None,
    ) -> TenantOutcome:
        if status is not TenantStatus.OK and status is not TenantStatus.SKIPPED:
            # Rolled back: the tenant stays exactly where it was when we read it, unless a step
            # outside one transaction committed some revisions before failing.
            before = self._seen_revision
            after = before if isinstance(self._reached, _Unread) else self._reached
        return TenantOutcome(
            name=job.name,
            schema=job.schema,
            status=status,
            from_revision=before,
            to_revision=after,
            attempts=attempts,
            duration_s=time.monotonic() - started,
            error=error,
            backup=self._backup[1] if self._backup else None,
        )

    def _attempt(self, job: TenantJob) -> tuple[str | None, str | None]:
        try:
            return self._attempt_in_transaction(job)
        except _NeedsAutocommit as need:
            # Everything the attempt did was rolled back; learn it once for this worker.
            self._autocommit_steps.add(need.step)
            return self._attempt_outside_transaction(job)

    def _backup_before(self, job: TenantJob, before: str | None) -> None:
        if self.backup is not None and (self._backup is None or self._backup[0] != before):
            # Dumped while we hold the tenant's lock: no other runner can migrate it
            # between the dump and our migration. A retry at the same revision reuses it.
            path = self.backup.dump(job.name, job.schema, before, self.run_id)
            self._backup = (before, str(path))

    def _attempt_in_transaction(self, job: TenantJob) -> tuple[str | None, str | None]:
        conn = self._connection()
        with conn.begin():
            # Lock first, then read the version: a runner that waited for the lock sees what the
            # previous holder committed (READ COMMITTED takes a new snapshot per statement).
            prepare_migration_transaction(conn, job.schema, self.timeouts, verify=False)
            before, has_table = self._state(conn, job.schema)
            destination = self._destination(before)
            if isinstance(destination, _Nothing):
                return before, before
            if (before, destination) in self._autocommit_steps:
                raise _NeedsAutocommit((before, destination))
            self._backup_before(job, before)
            step = self.compiled.get(StepKey(before, destination, has_table))
            self._replayed_last = step is not None
            if step is not None:
                after = replay(conn, step, job.schema)
                self.replayed += 1
                if after != destination:
                    # Never commit a replay that did not land where Alembic would have.
                    raise _Refused(f"replayed step ended at {after!r}, expected {destination!r}")
            else:
                try:
                    run_alembic(conn, self.scripts, job.schema, self.plan.direction, destination)
                except Exception as exc:
                    if raised_by_autocommit_block(exc):
                        raise _NeedsAutocommit((before, destination)) from exc
                    raise
                after = self._current(conn, job.schema)
        return before, after

    def _attempt_outside_transaction(self, job: TenantJob) -> tuple[str | None, str | None]:
        """Migrate a tenant whose step has an autocommit block (CREATE INDEX CONCURRENTLY...).

        Such a block must commit what came before it, so the tenant cannot be one transaction:
        Alembic commits each revision in its own transaction instead (each still atomic with
        its version row). The advisory lock and settings are session-level, on a connection
        used for this tenant alone and closed afterwards: closing is what releases them, even
        when the migration fails halfway.
        """
        self._drop_connection()
        conn = self.engine.connect()
        try:
            with conn.begin():
                prepare_migration_transaction(
                    conn, job.schema, self.timeouts, verify=False, local=False
                )
                before, _ = self._state(conn, job.schema)
            destination = self._destination(before)
            if isinstance(destination, _Nothing):
                return before, before
            self._backup_before(job, before)
            try:
                run_alembic(
                    conn,
                    self.scripts,
                    job.schema,
                    self.plan.direction,
                    destination,
                    per_migration=True,
                )
            except Exception as exc:
                self._after_partial_failure(conn, job.schema, exc)
                raise
            with conn.begin():
                return before, self._current(conn, job.schema)
        finally:
            conn.close()

    def _after_partial_failure(self, conn: Connection, schema: str, exc: Exception) -> None:
        """After a failure outside one transaction: where did the tenant stop, what is left?

        Revisions before the failing one are committed, so the tenant may now be between its
        old revision and the target. A failed CREATE INDEX CONCURRENTLY leaves an INVALID index
        behind (PostgreSQL cannot roll it back): report it and flag the tenant for attention
        rather than retrying into "already exists".
        """
        try:
            conn.rollback()
            with conn.begin():
                self._reached = self._state(conn, schema)[0]
                invalid = invalid_indexes(conn, [schema]).get(schema, [])
        except DBAPIError:
            return  # connection gone: the retry loop re-reads everything under the lock
        if invalid:
            raise NeedsAttention(
                f"{_first_line(exc)}; needs attention: INVALID index(es) left in the schema: "
                f"{', '.join(invalid)}. Drop them (DROP INDEX CONCURRENTLY) before re-running, "
                "or build indexes with tenantmig.ops.create_index_concurrently, which replaces "
                "its own INVALID leftovers"
            ) from exc

    def _state(self, conn: Connection, schema: str) -> tuple[str | None, bool]:
        """(revision, version table exists), read under the lock; also verifies search_path.

        current_schema() is NULL when the schema does not exist: checking it here stops DDL
        from ever landing in another schema through a stale or mistaken search_path.
        """
        row = conn.execute(
            sa.text("SELECT current_schema() AS cs, to_regclass(:t) IS NOT NULL AS has_table"),
            {"t": qualified(schema, VERSION_TABLE)},
        ).one()
        if row.cs != schema:
            raise SchemaMissing(f"schema {schema!r} does not exist")
        if not row.has_table:
            return None, False
        versions = (
            conn.execute(sa.text(f"SELECT version_num FROM {qualified(schema, VERSION_TABLE)}"))
            .scalars()
            .all()
        )
        if len(versions) > 1:
            raise _Refused(f"schema has diverged revisions {', '.join(sorted(versions))}")
        return (versions[0] if versions else None), True

    def _current(self, conn: Connection, schema: str) -> str | None:
        context = MigrationContext.configure(conn, opts={"version_table_schema": schema})
        heads = context.get_current_heads()
        if len(heads) > 1:
            raise _Refused(f"schema has diverged revisions {', '.join(sorted(heads))}")
        return heads[0] if heads else None

    def _destination(self, current: str | None) -> str | _Nothing | None:
        """Where this tenant goes from ``current`` (read under its lock), or _NOTHING."""
        self._seen_revision = current
        if self._first_seen is _UNREAD:
            self._first_seen = current
        scripts = self.scripts
        if not scripts.knows(current):
            raise _Refused(
                f"schema is at revision {current!r}, which these migrations do not know "
                "(deployed from newer code?); refusing to touch it"
            )
        destination = scripts.resolve_target(self.plan.target, current)
        here, there = scripts.position(current), scripts.position(destination)
        if self.plan.direction == "upgrade" and there <= here:
            return _NOTHING
        if self.plan.direction == "downgrade" and there >= here:
            return _NOTHING
        return destination

    def _blockers(self, schema: str) -> str:
        """Who holds locks in this schema, for a lock-timeout message (best effort)."""
        try:
            conn = self._connection()
            with conn.begin():
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
                        " AND a.pid <> pg_backend_pid() ORDER BY a.pid LIMIT 3"
                    ),
                    {"schema": schema},
                ).all()
        except DBAPIError:
            return ""
        return _describe_blockers(rows)


def run_alembic(
    conn: Connection,
    scripts: ChainScripts,
    schema: str,
    direction: Direction,
    destination: str | None,
    *,
    per_migration: bool = False,
) -> None:
    """Run the chain's revisions in ``schema`` up or down to ``destination`` (None: base).

    Runs inside the caller's open transaction (Alembic sees an external transaction and does not
    commit), with search_path already pointing at ``schema``. With ``per_migration`` the caller
    has no transaction open and Alembic commits each revision in its own.
    """
    script = scripts.script
    target = destination or "base"

    def step(revision: Any, _context: MigrationContext) -> Any:
        if direction == "upgrade":
            return script._upgrade_revs(target, revision)
        return script._downgrade_revs(target, revision)

    environment = EnvironmentContext(scripts.config, script, fn=step, destination_rev=target)
    with environment:
        environment.configure(
            connection=conn, **context_options(schema, per_migration=per_migration)
        )
        environment.run_migrations()


def _describe_blockers(rows: Iterable[Any]) -> str:
    parts = [
        f"pid {r.pid} ({r.usename}, {r.application_name or 'no application_name'}, {r.state},"
        f" transaction open {r.xact_age_s}s) holds {r.mode} on {r.relname}"
        for r in rows
    ]
    return f"; blocked by {'; '.join(parts)}" if parts else ""


def connection_lost(exc: DBAPIError) -> bool:
    """True for errors that mean the connection or the server is gone, not the statement."""
    code = sqlstate(exc) or ""
    if code.startswith("08") or code in ("57P01", "57P02", "57P03"):
        return True  # connection exception, admin/crash shutdown, cannot connect now
    return isinstance(exc, OperationalError) and not code  # e.g. "server closed the connection"


class _NeedsAutocommit(Exception):
    """The step has an autocommit block: it cannot run inside the tenant's one transaction."""

    def __init__(self, step: tuple[str | None, str | None]) -> None:
        super().__init__(f"step {step} needs statements outside a transaction")
        self.step = step


class NeedsAttention(TenantmigError):
    """A migration outside one transaction failed and left something an operator must fix."""


def raised_by_autocommit_block(exc: BaseException) -> bool:
    """True when Alembic's autocommit_block() refused to run inside our transaction.

    Inside an external transaction the block fails before running anything (it cannot commit
    a transaction it does not own), so its frame in the traceback identifies this case.
    """
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "autocommit_block" and "alembic" in code.co_filename:
            return True
        tb = tb.tb_next
    return False


class _Unread:
    """Sentinel: no attempt has read the tenant's revision yet."""


_UNREAD = _Unread()


class _Nothing:
    """Sentinel: the tenant is already where the plan wants it."""


_NOTHING = _Nothing()
