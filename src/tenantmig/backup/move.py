"""``tenantmig tenants move NAME --to DB``: a tenant's schema to another database of the directory.

The invariant: once a move starts, every application write to the tenant either lands in the
copy the directory finally names, or fails. None commits into a copy that ends up outside the
directory. In order:

1. The move is recorded in the control database (``schema.moves``, committed) before anything
   else, so a move killed at any later point is seen by ``status``, ``drift`` and ``restore``,
   and finished by running it again.
2. On the source, one transaction (T) takes the tenant's advisory lock (no tenantmig run or
   restore touches it meanwhile) and ``EXCLUSIVE`` locks on every table of the schema: the
   application's writes to the tenant wait (reads go on; ``pg_dump``'s ``ACCESS SHARE`` is
   compatible). Both waits are bounded by ``--lock-timeout``. T then switches off the server's
   idle-in-transaction, statement and transaction timeouts for itself: it sits idle while the
   copy is made, and a server ending it would silently release the writers.
3. ``pg_dump`` copies the schema (a consistent snapshot: nothing can write to it now) and
   ``psql --single-transaction`` restores it in the target: all of it or nothing. Both die
   with tenantmig.
4. Verification: every table's row count, and the structure (as drift reads it), are the same on
   both sides. A difference drops the copy in the target and stops: nothing moved.
5. The fence: T checks it is still alive, renames the source schema to ``tenantmig_moved_r<run>``
   and commits. The waiting writers wake up to a name that no longer exists (PostgreSQL looks a
   name up again once it gets the lock) and fail; so does every later write to the old copy.
6. The directory (the control database) names the target, in one transaction with the move's
   record: from now on writers that follow the directory reach the copy.
7. The fenced source is dropped and the move's record deleted.

Killed or failed before 5, the tenant is where it was (a copy already in the target is dropped,
now or by the re-run); after 5, the re-run finishes the switch and the clean-up. A failure at 6
renames the fence back: nothing moved.
"""

from __future__ import annotations

import contextlib
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from tenantmig.backup.dump import BackupPlan, LibpqConnection, find_pg_tools
from tenantmig.backup.restore import lock_tenant, run_restore, schema_revision
from tenantmig.errors import BackupFailed, ConfigError, TenantBusy, TenantExists
from tenantmig.schema.catalog import read_structures
from tenantmig.schema.compare import compare
from tenantmig.schema.moves import PendingMove, begin_move, end_move, read_moves, set_phase
from tenantmig.schema.placement import place, read_placements
from tenantmig.schema.registry import Tenant, existing_schemas
from tenantmig.server.config import Settings
from tenantmig.server.database import Database
from tenantmig.server.directory import CONTROL
from tenantmig.server.errorcodes import first_line
from tenantmig.server.identifiers import qualified, quote_ident
from tenantmig.server.session import Timeouts, still_open


@dataclass(frozen=True)
class MoveResult:
    tenant: str
    schema: str
    from_database: str
    to_database: str
    revision: str | None
    tables: int
    rows: int
    duration_s: float
    run_id: int | None = None
    finished_run: int | None = None  # the earlier, unfinished move this one finished

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.tenant,
            "schema": self.schema,
            "from": self.from_database,
            "to": self.to_database,
            "revision": self.revision or "base",
            "tables": self.tables,
            "rows": self.rows,
            "duration_s": round(self.duration_s, 3),
            "run_id": self.run_id,
            "finished_run": self.finished_run,
        }


@dataclass(frozen=True)
class _Copied:
    revision: str | None
    tables: int
    rows: int


def _tables(conn: Connection, schema: str) -> list[str]:
    return list(
        conn.execute(
            sa.text(
                "SELECT relname FROM pg_class WHERE relnamespace = to_regnamespace(:s)"
                " AND relkind IN ('r', 'p') ORDER BY relname"
            ),
            {"s": quote_ident(schema)},
        ).scalars()
    )


def _row_counts(conn: Connection, schema: str, tables: list[str]) -> dict[str, int]:
    return {
        table: int(
            conn.execute(sa.text(f"SELECT count(*) FROM {qualified(schema, table)}")).scalar() or 0
        )
        for table in tables
    }


def _bounded(conn: Connection, timeouts: Timeouts) -> None:
    """tenantmig's own short writes (the directory, the clean-up) wait at most lock_timeout:
    a queued ACCESS EXCLUSIVE or a row lock must not keep the application's writers waiting."""
    conn.execute(
        sa.text("SELECT set_config('lock_timeout', :lock, true)"),
        {"lock": f"{timeouts.lock_timeout_ms}ms"},
    )


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM are held back while the block runs, then delivered."""
    deferred = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, deferred)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _schema_exists(database: Database, schema: str) -> bool:
    with database.engine.connect() as conn, conn.begin():
        return bool(existing_schemas(conn, [schema]))


def _drop_schema(database: Database, schema: str, timeouts: Timeouts) -> None:
    with database.engine.begin() as conn:
        _bounded(conn, timeouts)
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")


class _Move:
    """One move's steps, sharing what every step needs."""

    def __init__(
        self,
        settings: Settings,
        control: Database,
        tenant: Tenant,
        source: Database,
        target: Database,
        move: PendingMove,
    ) -> None:
        self.settings = settings
        self.timeouts = settings.timeouts
        self.shared = settings.shared_schema
        self.control = control
        self.tenant = tenant
        self.source = source
        self.target = target
        self.move = move
        self.schema = tenant.schema

    # -- the record --------------------------------------------------------------------------
    def record(self) -> None:
        with self.control.engine.begin() as conn:
            _bounded(conn, self.timeouts)
            begin_move(conn, self.shared, self.move)

    def forget(self) -> None:
        with self.control.engine.begin() as conn:
            _bounded(conn, self.timeouts)
            end_move(conn, self.shared, self.tenant.name)

    # -- 2 to 5: copy under the tenant's locks, verify, fence --------------------------------
    def copy_and_fence(self) -> _Copied:
        """Steps 2 to 5. Any failure before the fence commits drops the copy: nothing moved."""
        try:
            return self._copy_and_fence()
        except BaseException:
            if self._fenced():
                raise  # the fence committed (the error came after): the re-run finishes
            with contextlib.suppress(Exception):
                _drop_schema(self.target, self.schema, self.timeouts)
                self.forget()
            raise

    def _copy_and_fence(self) -> _Copied:
        tools = find_pg_tools(self.target.server_major)
        with self.source.engine.connect() as held:
            held.begin()
            try:
                lock_tenant(held, self.source, self.tenant, self.timeouts)
                if not existing_schemas(held, [self.schema]):
                    raise BackupFailed(
                        f"tenant {self.tenant.name} has no schema {self.schema!r} in database "
                        f"{self.tenant.database}; nothing was moved"
                    )
                # The writers' lock (EXCLUSIVE blocks INSERT/UPDATE/DELETE and DDL, not
                # SELECT), bounded by the lock_timeout lock_tenant set.
                tables = _tables(held, self.schema)
                for table in tables:
                    held.exec_driver_sql(
                        f"LOCK TABLE {qualified(self.schema, table)} IN EXCLUSIVE MODE"
                    )
                counts = _row_counts(held, self.schema, tables)
                revision = schema_revision(held, self.schema)
                expected = read_structures(held, [self.schema])[self.schema]
                with tempfile.TemporaryDirectory(prefix="tenantmig-move-") as scratch:
                    plan = BackupPlan(
                        Path(scratch), tools, LibpqConnection.from_url(self.source.url),
                        self.timeouts,
                    )  # fmt: skip
                    archive = plan.dump(self.tenant.name, self.schema, revision, self.move.run_id)
                    script = self.target.flavour.restore_script(
                        self.schema,
                        self.timeouts,
                        distribute=self.settings.citus_schemas == "distributed",
                    )
                    run_restore(tools, LibpqConnection.from_url(self.target.url), archive, script)
                self._verify(tables, counts, expected)
                self._fence(held)
            except BaseException:
                with contextlib.suppress(DBAPIError):
                    held.rollback()
                raise
        return _Copied(revision, len(tables), sum(counts.values()))

    def _fence(self, held: Connection) -> None:
        """Step 5, in the transaction that holds the writers' locks."""
        if not still_open(held):
            raise BackupFailed(
                f"the transaction holding tenant {self.tenant.name}'s locks in database "
                f"{self.tenant.database} ended before the switch (the server closed it); "
                "writes may have gone on meanwhile, so the copy was dropped and nothing was moved"
            )
        held.exec_driver_sql(
            f"ALTER SCHEMA {quote_ident(self.schema)} RENAME TO {quote_ident(self.move.fence)}"
        )
        held.commit()

    def _fenced(self) -> bool:
        """Whether the fence committed (asked again after an error, e.g. during COMMIT)."""
        try:
            return _schema_exists(self.source, self.move.fence)
        except DBAPIError:
            return True  # unknown: leave everything for the re-run, which looks again

    def _verify(self, tables: list[str], counts: dict[str, int], expected: Any) -> None:
        """Rows and structure in the target as in the source; else drop the copy and stop."""
        with self.target.engine.connect() as conn, conn.begin():
            found_tables = _tables(conn, self.schema)
            found_counts = _row_counts(conn, self.schema, found_tables)
            differences = compare(
                expected,
                read_structures(conn, [self.schema])[self.schema],
                self.settings.drift_ignore,
            )
        problem = None
        if found_tables != tables or found_counts != counts:
            wrong = [t for t in tables if found_counts.get(t) != counts[t]]
            problem = f"row counts differ in {', '.join(wrong) or 'the table list'}"
        elif differences:
            problem = f"structure differs: {differences[0].describe()}"
        if problem is not None:
            raise BackupFailed(
                f"the copy in database {self.move.target} did not match ({problem}); it was "
                "dropped and the tenant stays where it was: nothing was moved"
            )

    # -- 6 and 7: the directory, then the clean-up ---------------------------------------------
    def switch(self) -> None:
        """Step 6; on failure the fence is renamed back and the copy dropped: nothing moved.

        Ctrl-C and SIGTERM wait until it is done (one short transaction): between the fence
        and the switch the tenant accepts no writes anywhere, so an interrupt there would leave
        the application failing until someone re-runs the move.
        """
        with _signals_deferred():
            self._switch()

    def _switch(self) -> None:
        try:
            with self.control.engine.begin() as conn:
                _bounded(conn, self.timeouts)
                place(conn, self.shared, [self.tenant.name], self.move.target)
                set_phase(conn, self.shared, self.tenant.name, "switched")
        except DBAPIError as exc:
            reason = first_line(exc)
            try:
                self._unfence()
            except DBAPIError as again:
                raise BackupFailed(
                    f"tenant {self.tenant.name}: the directory could not be switched to database "
                    f"{self.move.target} ({reason}) and its fenced schema could not be renamed "
                    f"back ({first_line(again)}): it accepts no writes until you run "
                    f"`{self.move.finish_command()}` again"
                ) from exc
            raise BackupFailed(
                f"tenant {self.tenant.name}: the directory could not be switched to database "
                f"{self.move.target} ({reason}); the tenant stays where it was: nothing was moved"
            ) from exc

    def _unfence(self) -> None:
        with self.source.engine.begin() as conn:
            _bounded(conn, self.timeouts)
            conn.exec_driver_sql(
                f"ALTER SCHEMA {quote_ident(self.move.fence)} RENAME TO {quote_ident(self.schema)}"
            )
        _drop_schema(self.target, self.schema, self.timeouts)
        self.forget()

    def clean_up(self) -> None:
        """Step 7: drop the fenced source, then forget the move."""
        try:
            _drop_schema(self.source, self.move.fence, self.timeouts)
        except DBAPIError as exc:
            raise BackupFailed(
                f"tenant {self.tenant.name} now lives in database {self.move.target}, but its old, "
                f"fenced copy in database {self.move.source} ({self.move.fence}) could not be "
                f"dropped: {first_line(exc)}; finish with `{self.move.finish_command()}`"
            ) from exc
        self.forget()

    def target_copy(self) -> _Copied:
        """What the target holds (a finished move's figures, for a re-run that finishes it)."""
        with self.target.engine.connect() as conn, conn.begin():
            tables = _tables(conn, self.schema)
            counts = _row_counts(conn, self.schema, tables)
            revision = schema_revision(conn, self.schema)
        return _Copied(revision, len(tables), sum(counts.values()))


def move_tenant(
    settings: Settings,
    control: Database,
    tenant: Tenant,
    source: Database,
    target: Database,
    target_name: str,
    run_id: int,
) -> MoveResult:
    """Move ``tenant`` from ``source`` to ``target``, or finish its unfinished move there
    (see the module docstring). ``tenant.database`` is where the directory says it lives."""
    started = time.monotonic()
    with control.engine.connect() as conn, conn.begin():
        pending = read_moves(conn, settings.shared_schema, [tenant.name]).get(tenant.name)
    if pending is not None and pending.target != target_name:
        raise TenantBusy(f"{pending.describe()}; finish it before moving the tenant elsewhere")
    fresh = PendingMove(tenant.name, tenant.schema, tenant.database, target_name, run_id, "copying")
    if pending is None:
        if tenant.database == target_name:
            raise ConfigError(
                f"tenant {tenant.name} already lives in database {target_name}; nothing moved"
            )
        _check_target(settings, tenant, source, target, target_name)
        move = _Move(settings, control, tenant, source, target, fresh)
        move.record()
        copied = move.copy_and_fence()
        move.switch()
        move.clean_up()
        finished = None
    else:
        copied = _finish(settings, control, tenant, source, target, pending, fresh)
        finished = pending.run_id
    return MoveResult(
        tenant=tenant.name,
        schema=tenant.schema,
        from_database=pending.source if pending else tenant.database,
        to_database=target_name,
        revision=copied.revision,
        tables=copied.tables,
        rows=copied.rows,
        duration_s=time.monotonic() - started,
        finished_run=finished,
    )


def _check_target(
    settings: Settings, tenant: Tenant, source: Database, target: Database, target_name: str
) -> None:
    if _schema_exists(target, tenant.schema):
        raise TenantExists(
            f"database {target_name} already has a schema {tenant.schema!r}, and no move of "
            f"tenant {tenant.name} is under way that made it; nothing was moved"
        )
    if target.server_major < source.server_major:
        raise ConfigError(
            f"database {target_name} runs PostgreSQL {target.server_major}, older than the "
            f"tenant's ({source.server_major}): a dump of a newer server may not load into an "
            "older one; nothing was moved"
        )


def _finish(
    settings: Settings,
    control: Database,
    tenant: Tenant,
    source: Database,
    target: Database,
    pending: PendingMove,
    fresh: PendingMove,
) -> _Copied:
    """Finish an unfinished move from wherever it stopped. ``source`` is the database the move
    started from (the directory may name the target already)."""
    with control.engine.connect() as conn, conn.begin():
        placed = read_placements(conn, settings.shared_schema).get(tenant.name, CONTROL)
    taken_over = PendingMove(
        pending.tenant, pending.schema, pending.source, pending.target, fresh.run_id, pending.phase
    )
    # The fence keeps the name of the run that made it.
    old = _Move(settings, control, tenant, source, target, pending)
    if placed == pending.target:
        old.clean_up()  # switched: only the fenced source may be left
        return old.target_copy()
    if _schema_exists(source, pending.fence):
        if not _schema_exists(target, tenant.schema):
            raise BackupFailed(
                f"{pending.describe()}, but the copy in database {pending.target} is gone; "
                f"rename {pending.fence} back to {tenant.schema} in database {pending.source} "
                "by hand and run the move again"
            )
        old.switch()
        old.clean_up()
        return old.target_copy()
    # Still copying when it stopped: the source is live, a copy in the target is a leftover.
    _drop_schema(target, tenant.schema, settings.timeouts)
    move = _Move(settings, control, tenant, source, target, taken_over)
    move.record()
    copied = move.copy_and_fence()
    move.switch()
    move.clean_up()
    return copied
