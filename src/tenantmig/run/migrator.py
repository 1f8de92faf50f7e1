"""Migrating one schema: its connection, locks, timeouts, search_path and Alembic context.

A SchemaMigrator lives in one process (a worker, or the coordinator for the shared schema or a
single tenant). It gets the chain's scripts loaded once and reuses one connection across tenants,
recycling it after a bounded number of tenants: each backend caches catalog entries for every
schema it has touched, so a connection that visited thousands of schemas holds a lot of memory on
the server.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from tenantmig.backup.dump import BackupPlan
from tenantmig.chains.context import VERSION_TABLE
from tenantmig.chains.runner import raised_by_autocommit_block, run_alembic
from tenantmig.chains.scripts import ChainScripts
from tenantmig.errors import BackupFailed, SchemaMissing, UnknownRevision
from tenantmig.run.observers import TenantRetry
from tenantmig.run.plan import TenantPolicy
from tenantmig.run.replay import CompiledStep, StepKey, replay
from tenantmig.run.results import TenantJob, TenantOutcome, TenantStatus
from tenantmig.run.segments import SegmentedStep, run_segments
from tenantmig.schema.catalog import invalid_indexes
from tenantmig.server.database import create_engine
from tenantmig.server.errorcodes import (
    LOCK_TIMEOUT_REASON,
    connection_lost,
    first_line,
    retry_reason,
    sqlstate,
)
from tenantmig.server.flavour import ServerFlavour
from tenantmig.server.identifiers import qualified
from tenantmig.server.session import reset_session

RECYCLE_CONNECTION_AFTER = 200

# Alembic's ``op`` and ``context`` are module-level proxies, set for the length of one
# invocation: two invocations at once in one process (slots in threads, see run.executor)
# would run each other's operations. A tenant whose step runs through Alembic, even in part,
# takes the process's turn before its transaction begins and keeps it to the end: waiting, it
# holds no lock and no open transaction (an idle_in_transaction_session_timeout cannot end
# it), and holding it, it never waits for the turn again, so the turn and PostgreSQL's locks
# can never wait for each other in a circle. A replayed tenant never takes the turn. With one
# slot per process (the default) nothing ever waits for it.
_ALEMBIC_TURN = threading.RLock()


@contextlib.contextmanager
def _alembic_turn(needed: bool) -> Iterator[None]:
    if not needed:
        yield
        return
    with _ALEMBIC_TURN:
        yield


_BACKOFF_BASE_S = 0.2
_BACKOFF_CAP_S = 5.0

Step = tuple[str | None, str | None]  # (from revision, to revision); None is base


class _Refused(Exception):
    """This tenant cannot be migrated as asked (unknown or diverged revision, a replay that
    did not land where Alembic would have). Recorded as the tenant's failure."""


class _NeedsAttention(_Refused):
    """A migration outside one transaction failed and left something an operator must fix."""


def _reset_session(conn: Connection) -> bool:
    """Leave ``conn`` as a new session (True, ``server.session.reset_session``), or say it
    could not be (False: close it)."""
    try:
        reset_session(conn)
    except DBAPIError:
        return False
    return True


class _NeedsTurn(Exception):
    """The tenant's step turned out to need Alembic (it was not where the run saw it): roll
    back, take the turn, and begin again."""


class _NeedsAutocommit(Exception):
    """The step has an autocommit block: it cannot run inside the tenant's one transaction."""

    def __init__(self, step: Step) -> None:
        super().__init__(f"step {step} needs statements outside a transaction")
        self.step = step


class _Unread:
    """Sentinel: no attempt has read the tenant's revision yet."""


_UNREAD = _Unread()


@dataclass
class _Progress:
    """What the attempts at one tenant have learned so far."""

    seen: str | None = None  # the revision read under the lock by the latest attempt
    first_seen: str | _Unread | None = _UNREAD  # what the first attempt read
    replayed: bool = False  # the latest attempt replayed a compiled step
    backup: tuple[str | None, str] | None = None  # (revision dumped, file)
    reached: str | _Unread | None = _UNREAD  # where a failure outside one transaction stopped

    def read(self, revision: str | None) -> None:
        self.seen = revision
        if isinstance(self.first_seen, _Unread):
            self.first_seen = revision


class SchemaMigrator:
    def __init__(
        self,
        policy: TenantPolicy,
        scripts: ChainScripts,
        url: str,
        flavour: ServerFlavour,
        *,
        logger: logging.Logger | None = None,
        role: str | None = None,
        compiled: Mapping[StepKey, CompiledStep | SegmentedStep] | None = None,
        backup: BackupPlan | None = None,
        run_id: int | None = None,
        on_retry: Callable[[TenantRetry], None] | None = None,
    ) -> None:
        self.policy = policy
        self.on_retry = on_retry
        self.scripts = scripts
        self.flavour = flavour
        self.engine = create_engine(url, role=role)
        self.log = logger or logging.getLogger("tenantmig.run")
        self.compiled: dict[StepKey, CompiledStep | SegmentedStep] = dict(compiled or {})
        self.backup = backup
        self.run_id = run_id
        self._conn: Connection | None = None
        self._uses = 0
        # Steps found to need statements outside a transaction; see _attempt.
        self._autocommit_steps: set[Step] = set()
        # Validate the target once, before any tenant: a typo fails the run with nothing changed.
        if not policy.relative:
            self.scripts.resolve_target(policy.target)

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
        progress = _Progress()
        reconnect_deadline = started + self.policy.reconnect_timeout_s

        def failed(status: TenantStatus, error: str) -> TenantOutcome:
            return self._outcome(job, progress, status, started, attempts, error=error)

        while True:
            attempts += 1
            try:
                before, after = self._attempt(job, progress)
            except SchemaMissing as exc:
                self.log.warning("schema missing: %s", exc, extra=extra)
                return failed(TenantStatus.MISSING, str(exc))
            except (_Refused, UnknownRevision, BackupFailed) as exc:
                self.log.error("refused: %s", exc, extra=extra)
                return failed(TenantStatus.FAILED, str(exc))
            except DBAPIError as exc:
                if connection_lost(exc):
                    # The server went away (restart, failover, network). Whatever this attempt
                    # did was rolled back, or committed just before the loss: the next attempt
                    # re-reads the version under the lock and finds out which.
                    self._drop_connection()
                    if time.monotonic() >= reconnect_deadline:
                        message = (
                            f"database unreachable for {self.policy.reconnect_timeout_s:.0f}s: "
                            f"{first_line(exc)}"
                        )
                        self.log.error("failed: %s", message, extra=extra)
                        return replace(failed(TenantStatus.FAILED, message), lost_connection=True)
                    delay = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** min(attempts, 5))
                    delay *= random.uniform(0.5, 1.0)
                    self.log.warning(
                        "attempt %d: connection lost (%s), reconnecting in %.2fs",
                        attempts,
                        first_line(exc),
                        delay,
                        extra=extra,
                    )
                    self._retrying(job, attempts, "connection lost", exc, delay)
                    time.sleep(delay)
                    continue
                reason = retry_reason(exc)
                if reason and attempts <= self.policy.retries:
                    delay = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** (attempts - 1))
                    delay *= random.uniform(0.5, 1.0)  # jitter: workers do not retry in step
                    self.log.info(
                        "attempt %d: %s, retrying in %.2fs", attempts, reason, delay, extra=extra
                    )
                    self._retrying(job, attempts, reason, exc, delay)
                    time.sleep(delay)
                    continue
                message = first_line(exc)
                if reason == LOCK_TIMEOUT_REASON:
                    message = f"{message}{self._blockers(job.schema)}"
                if reason:
                    message = f"{message} (gave up after {attempts} attempts)"
                self.log.error("failed: %s", message, extra=extra)
                return failed(TenantStatus.FAILED, message)
            except Exception as exc:  # a migration script's own bug: record it, keep going
                self.log.exception("failed", extra=extra)
                return failed(TenantStatus.FAILED, f"{type(exc).__name__}: {exc}")
            first = progress.first_seen
            if before == after and attempts > 1 and not isinstance(first, _Unread):
                # An earlier attempt's commit landed before its connection was lost.
                before = first
            status = TenantStatus.SKIPPED if before == after else TenantStatus.OK
            self.log.info(
                "%s %s -> %s%s",
                status.value,
                before or "base",
                after or "base",
                " (replayed)" if progress.replayed else "",
                extra=extra,
            )
            return self._outcome(job, progress, status, started, attempts, before, after)

    def _outcome(
        self,
        job: TenantJob,
        progress: _Progress,
        status: TenantStatus,
        started: float,
        attempts: int,
        before: str | None = None,
        after: str | None = None,
        error: str | None = None,
    ) -> TenantOutcome:
        if not status.is_done:
            # Rolled back: the tenant stays exactly where it was when we read it, unless a step
            # outside one transaction committed some revisions before failing.
            before = progress.seen
            after = before if isinstance(progress.reached, _Unread) else progress.reached
        return TenantOutcome(
            name=job.name,
            schema=job.schema,
            status=status,
            from_revision=before,
            to_revision=after,
            attempts=attempts,
            duration_s=time.monotonic() - started,
            error=error,
            backup=progress.backup[1] if progress.backup else None,
            replayed=status is TenantStatus.OK and progress.replayed,
            database=job.database,
        )

    def _attempt(self, job: TenantJob, progress: _Progress) -> Step:
        turn = self._may_need_alembic(job)
        while True:
            try:
                with _alembic_turn(turn):
                    return self._attempt_in_transaction(job, progress, turn)
            except _NeedsTurn:
                turn = True  # rolled back before anything ran
            except _NeedsAutocommit as need:
                # Everything the attempt did was rolled back; learn it once for this worker.
                self._autocommit_steps.add(need.step)
                with _alembic_turn(True):
                    return self._attempt_outside_transaction(job, progress)

    def _may_need_alembic(self, job: TenantJob) -> bool:
        """Will the tenant's step, from where the run saw it, run through Alembic (not one
        whole compiled step)? Only a guess: the step is known once the version is read under
        the tenant's lock, and a wrong guess costs one rollback of nothing (``_NeedsTurn``)."""
        seen = job.seen_revision
        try:
            destination = self._destination(job, seen)
        except Exception:
            # Where the run did not look (the shared schema, seen at base) a relative target
            # may not resolve: the guess is the safe one, and the real answer comes under the
            # lock (a refusal included).
            return True
        if isinstance(destination, _Nothing):
            return False
        keys = [StepKey(seen, destination, True)]
        if seen is None:
            keys.append(StepKey(None, destination, False))
        return not any(isinstance(self.compiled.get(key), CompiledStep) for key in keys)

    def _backup_before(self, job: TenantJob, progress: _Progress, before: str | None) -> None:
        if self.backup is not None and (progress.backup is None or progress.backup[0] != before):
            # Dumped while we hold the tenant's lock: no other runner can migrate it
            # between the dump and our migration. A retry at the same revision reuses it.
            path = self.backup.dump(job.name, job.schema, before, self.run_id)
            progress.backup = (before, str(path))

    def _attempt_in_transaction(self, job: TenantJob, progress: _Progress, turn: bool) -> Step:
        """The tenant in one transaction; ``turn``: this thread holds the Alembic turn."""
        conn = self._connection()
        with conn.begin():
            # Lock first, then read the version: a runner that waited for the lock sees what the
            # previous holder committed (READ COMMITTED takes a new snapshot per statement).
            self.flavour.prepare_migration(conn, job.schema, self.policy.timeouts, verify=False)
            before, has_table = self._state(conn, job.schema)
            progress.read(before)
            destination = self._destination(job, before)
            if isinstance(destination, _Nothing):
                return before, before
            if (before, destination) in self._autocommit_steps:
                raise _NeedsAutocommit((before, destination))
            self._backup_before(job, progress, before)
            need: Step = (before, destination)
            step = self.compiled.get(StepKey(before, destination, has_table))
            if isinstance(step, SegmentedStep) and step.outside_transaction:
                raise _NeedsAutocommit(need)  # known before anything ran: nothing to undo
            if not turn and not isinstance(step, CompiledStep):
                raise _NeedsTurn  # nothing ran yet: the rollback undoes only the reads
            progress.replayed = step is not None
            if isinstance(step, SegmentedStep):
                try:
                    progress.replayed = run_segments(
                        conn,
                        self.flavour,
                        step,
                        job.schema,
                        lambda to: self._through_alembic(conn, job.schema, to, need),
                    )
                except ValueError as exc:  # never commit a replay that landed elsewhere
                    raise _Refused(str(exc)) from exc
                after = self._current(conn, job.schema)
                if after != destination:
                    raise _Refused(f"split step ended at {after!r}, expected {destination!r}")
            elif step is not None:
                after = replay(conn, self.flavour, step, job.schema)
                if after != destination:
                    # Never commit a replay that did not land where Alembic would have.
                    raise _Refused(f"replayed step ended at {after!r}, expected {destination!r}")
            else:
                self._through_alembic(conn, job.schema, destination, need)
                after = self._current(conn, job.schema)
        return before, after

    def _through_alembic(
        self, conn: Connection, schema: str, destination: str | None, step: Step
    ) -> None:
        """Run Alembic in the tenant's transaction up or down to ``destination``; an
        autocommit block in the way means the whole ``step`` must run outside one."""
        try:
            run_alembic(
                conn,
                self.scripts,
                schema,
                self.policy.direction,
                destination,
                echo_output=self.policy.echo_output,
            )
        except Exception as exc:
            if raised_by_autocommit_block(exc):
                raise _NeedsAutocommit(step) from exc
            raise

    def _attempt_outside_transaction(self, job: TenantJob, progress: _Progress) -> Step:
        """Migrate a tenant whose step has an autocommit block (CREATE INDEX CONCURRENTLY...).

        Such a block must commit what came before it, so the tenant cannot be one transaction:
        Alembic commits each revision in its own transaction instead (each still atomic with
        its version row). The advisory lock and settings are session-level, on a connection
        used for this tenant alone. When the tenant fails, the connection is closed: closing is
        what releases them, whatever state the failure left it in. When it succeeds, the
        session is reset (``_reset_session``) and the connection kept for the next tenant:
        opening one per tenant (and another for the next tenant) was a fifteenth of a run's
        time on a chain with an autocommit block early in its history.
        """
        conn, uses = self._connection(), self._uses
        self._conn = None  # this tenant's alone until it is reset and handed back
        reusable = False
        try:
            with conn.begin():
                self.flavour.prepare_migration(
                    conn, job.schema, self.policy.timeouts, verify=False, local=False
                )
                before, has_table = self._state(conn, job.schema)
            progress.read(before)
            destination = self._destination(job, before)
            if isinstance(destination, _Nothing):
                return before, before
            self._backup_before(job, progress, before)

            def through_alembic(to: str | None) -> None:
                run_alembic(
                    conn,
                    self.scripts,
                    job.schema,
                    self.policy.direction,
                    to,
                    per_migration=True,
                    echo_output=self.policy.echo_output,
                )

            step = self.compiled.get(StepKey(before, destination, has_table))
            try:
                if isinstance(step, SegmentedStep):
                    # A transaction per part, as Alembic commits a transaction per revision:
                    # the replayed segments between the revisions it runs.
                    progress.replayed = run_segments(
                        conn, self.flavour, step, job.schema, through_alembic, conn.begin
                    )
                else:
                    progress.replayed = False
                    through_alembic(destination)
            except Exception as exc:
                self._after_partial_failure(conn, job.schema, progress, exc)
                raise
            with conn.begin():
                moved: Step = (before, self._current(conn, job.schema))
            reusable = _reset_session(conn)
            return moved
        finally:
            if reusable:
                self._conn, self._uses = conn, uses
            else:
                conn.close()

    def _after_partial_failure(
        self, conn: Connection, schema: str, progress: _Progress, exc: Exception
    ) -> None:
        """After a failure outside one transaction: where did the tenant stop, what is left?

        Revisions before the failing one are committed, so the tenant may now be between its
        old revision and the target. A failed CREATE INDEX CONCURRENTLY leaves an INVALID index
        behind (PostgreSQL cannot roll it back): report it and flag the tenant for attention
        rather than retrying into "already exists".
        """
        try:
            conn.rollback()
            with conn.begin():
                progress.reached = self._state(conn, schema)[0]
                invalid = invalid_indexes(conn, [schema]).get(schema, [])
        except DBAPIError:
            return  # connection gone: the retry loop re-reads everything under the lock
        if invalid:
            raise _NeedsAttention(
                f"{first_line(exc)}; needs attention: INVALID index(es) left in the schema: "
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

    def _destination(self, job: TenantJob, current: str | None) -> str | _Nothing | None:
        """Where this tenant goes from ``current`` (read under its lock), or _NOTHING: the
        target the run resolved for it at its start, else the run's target from here."""
        scripts = self.scripts
        if not scripts.knows(current):
            raise _Refused(
                f"schema is at revision {current!r}, which these migrations do not know "
                "(deployed from newer code?); refusing to touch it"
            )
        if job.target is not None:
            destination = job.target.revision
        else:
            destination = scripts.resolve_target(self.policy.target, current)
        if scripts.already_there(self.policy.direction, current, destination):
            return _NOTHING
        return destination

    def _blockers(self, schema: str) -> str:
        """Who holds locks in this schema, for a lock-timeout message (best effort)."""
        holders = self._holders(schema)
        return f"; blocked by {'; '.join(holders)}" if holders else ""

    def _holders(self, schema: str) -> tuple[str, ...]:
        try:
            conn = self._connection()
            with conn.begin():
                return tuple(h.describe() for h in self.flavour.lock_holders(conn, schema))
        except DBAPIError:
            return ()

    def _retrying(
        self, job: TenantJob, attempt: int, reason: str, exc: DBAPIError, delay: float
    ) -> None:
        """Tell the run's observers that ``attempt`` failed and another follows in ``delay``.
        After a lock timeout, with who held the locks (read now: the attempt has rolled back,
        the holders may still be there)."""
        if self.on_retry is None:
            return
        blocked_by = self._holders(job.schema) if reason == LOCK_TIMEOUT_REASON else ()
        self.on_retry(
            TenantRetry(
                job.name,
                job.schema,
                job.database,
                attempt,
                reason,
                sqlstate(exc),
                round(delay, 3),
                blocked_by,
            )
        )


class _Nothing:
    """Sentinel: the tenant is already where the plan wants it."""


_NOTHING = _Nothing()
