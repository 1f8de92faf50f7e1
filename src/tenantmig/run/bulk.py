"""Work on many tenants that is not a migration (dropping them), in bounded batches.

One transaction for thousands of tenants does not fit the server's lock table: DROP SCHEMA
CASCADE takes a lock on every object of the schema, and the lock table holds
max_locks_per_transaction x max_connections entries (6,400 by default), shared by all sessions
("out of shared memory"). Batches keep each transaction small: at most BATCH tenants, and no
more of each database's lock table than ``schema.lockbudget`` allows, counted from the objects
each schema holds (a tenant of 800 tables takes thousands of locks, one of five tables a few
dozen). A tenant bigger than the budget is a batch of its own.

A batch spans every database its tenants live in, and nothing commits atomically across
databases (PREPARE TRANSACTION needs max_prepared_transactions, off by default). The order of
work makes whatever a failure or a kill leaves something the report names truthfully and the
same command finishes:

1. Work, nothing committed yet: one transaction in each database. In the control database the
   advisory lock and DROP SCHEMA of each tenant living there, then the registry row (and
   placement) of every tenant of the batch; in each other database the advisory lock and DROP
   SCHEMA of its tenants. A lock timeout or any other error, in any database, rolls the whole
   batch back everywhere: untouched.
2. Commits: the other databases first, the control database last. A failure or kill between
   two commits leaves tenants whose schema is gone while they are still registered (status
   says missing_schema); the same drop again finds them registered without a schema and
   removes their rows. The reverse order would leave schemas that nobody has registered, which
   a later drop cannot tell apart from a schema someone else made, and must not drop.
3. The run is in the ledger (command "drop") with every tenant it selected before the first
   batch starts. A name no longer registered, with a schema in no database, that a drop run
   selected, was dropped by tenantmig: the same command again names it instead of refusing it
   as unknown. An unregistered name whose schema exists somewhere is never dropped: by (2) it
   is not the leftover of a drop.

After a failure the failed batch is read back from its databases (a COMMIT that failed on a
lost connection may or may not have happened), so the report says what is there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from tenantmig.errors import DatabaseUnavailable, TenantBusy, UnknownTenant, some_names
from tenantmig.run.ledger import Ledger
from tenantmig.run.locks import RunLocks
from tenantmig.run.results import RunOutcome, RunScope, TenantOutcome, TenantStatus
from tenantmig.schema.lockbudget import drop_costs, lock_budget
from tenantmig.schema.moves import read_moves
from tenantmig.schema.registry import (
    Tenant,
    by_database,
    drop_schema,
    existing_schemas,
    forget_tenant,
    list_tenants,
)
from tenantmig.server.config import TenantSource
from tenantmig.server.database import Database, DatabaseSet
from tenantmig.server.directory import CONTROL
from tenantmig.server.errorcodes import first_line, lock_table_setting
from tenantmig.server.session import Timeouts

# Tenants per transaction at most, however few objects they hold.
BATCH = 25

COMMAND = "drop"  # the run's command in the ledger

BatchCallback = Callable[[int, int], None]  # (tenants done, tenants in all)


class DropState(str, Enum):
    """Where a named tenant stands after a drop, as its databases say."""

    DROPPED = "dropped"  # schema dropped, registry row removed
    SCHEMA_WAS_GONE = "schema_was_gone"  # registered without a schema: the row removed
    ALREADY_GONE = "already_gone"  # neither row nor schema, and an earlier drop run named it
    SCHEMA_DROPPED = "schema_dropped"  # by this drop, still registered: a re-run removes the row
    SCHEMA_MISSING = "schema_missing"  # untouched: still registered, without a schema as before
    ROW_REMOVED = "row_removed"  # registry row gone, schema still there
    UNTOUCHED = "untouched"  # registry row and schema as they were
    UNKNOWN = "unknown"  # could not be read back: a database went away

    @property
    def is_done(self) -> bool:
        """Neither a registry row nor a schema is left."""
        return self in (DropState.DROPPED, DropState.SCHEMA_WAS_GONE, DropState.ALREADY_GONE)


@dataclass(frozen=True)
class DropOutcome:
    name: str
    schema: str
    database: str
    state: DropState
    earlier_run: int | None = None  # ALREADY_GONE: the latest drop run that named it

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "schema": self.schema,
            "database": self.database,
            "state": self.state.value,
            "earlier_run": self.earlier_run,
        }


@dataclass
class DropResult:
    """Every named tenant's state, by database; why the drop stopped, if it did."""

    run_id: int | None
    outcomes: list[DropOutcome] = field(default_factory=list)
    stopped: str | None = None  # a batch failed: where and why
    interrupted: bool = False

    @property
    def succeeded(self) -> bool:
        return self.stopped is None and not self.interrupted

    def names(self, *states: DropState) -> list[str]:
        return [o.name for o in self.outcomes if o.state in states]

    def by_database(self) -> dict[str, dict[DropState, list[DropOutcome]]]:
        """Databases in the order first named; in each, the states in DropState's order."""
        grouped: dict[str, dict[DropState, list[DropOutcome]]] = {}
        for outcome in self.outcomes:
            grouped.setdefault(outcome.database, {})
        for database, states in grouped.items():
            for state in DropState:
                found = [o for o in self.outcomes if o.database == database and o.state is state]
                if found:
                    states[state] = found
        return grouped

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "succeeded": self.succeeded,
            "stopped": self.stopped,
            "interrupted": self.interrupted,
            "databases": {
                database: {state.value: [o.name for o in found] for state, found in states.items()}
                for database, states in self.by_database().items()
            },
            "tenants": [o.to_json() for o in self.outcomes],
        }


@dataclass(frozen=True)
class DropPlan:
    """What a drop will do, settled before anything changes."""

    tenants: list[Tenant]  # registered: to drop, in the order named
    schemaless: frozenset[str]  # those of them whose schema was already gone
    already: list[DropOutcome]  # gone already, named by an earlier drop run


def plan_drop(
    databases: DatabaseSet, source: TenantSource, ledger: Ledger, names: Sequence[str]
) -> DropPlan:
    """Registered tenants to drop, and names already gone that an earlier drop named. UnknownTenant
    (nothing dropped) for any other name; DatabaseUnavailable (nothing dropped) when a
    tenant's database cannot be reached."""
    wanted = list(dict.fromkeys(names))
    with databases.control.engine.begin() as conn:
        live = {t.name: t for t in list_tenants(conn, source)}
        moving = read_moves(conn, source.shared_schema, wanted)
    if moving:
        # A tenant half way through a move has two copies (or a fenced one): dropping the one
        # the directory names would leave the other behind. The move is finished first.
        raise TenantBusy(
            "; ".join(move.describe() for move in moving.values()) + "; nothing was dropped"
        )
    tenants = [live[name] for name in wanted if name in live]
    _require_reachable(databases, tenants)
    present = _with_schema(databases, tenants)
    already = _already_gone(databases, source, ledger, [n for n in wanted if n not in live])
    schemaless = frozenset(t.name for t in tenants if t.name not in present)
    return DropPlan(tenants, schemaless, already)


def _require_reachable(databases: DatabaseSet, tenants: Sequence[Tenant]) -> None:
    down = {}
    for name in by_database(tenants):
        why = databases.unreachable(name)
        if why is not None:
            down[name] = why
    if down:
        raise DatabaseUnavailable(
            "nothing was dropped: "
            + "; ".join(f"database {name} unreachable: {why}" for name, why in down.items())
        )


def _with_schema(databases: DatabaseSet, tenants: Sequence[Tenant]) -> set[str]:
    """Names of ``tenants`` whose schema exists in their database."""
    found: set[str] = set()
    for name, group in by_database(tenants).items():
        with databases.get(name).engine.begin() as conn:
            there = existing_schemas(conn, [t.schema for t in group])
        found.update(t.name for t in group if t.schema in there)
    return found


def _already_gone(
    databases: DatabaseSet, source: TenantSource, ledger: Ledger, names: Sequence[str]
) -> list[DropOutcome]:
    """Unregistered ``names`` gone from every database that an earlier drop run named;
    UnknownTenant for the others."""
    if not names:
        return []
    selected = ledger.last_selected_by(COMMAND, names)
    schemas = {n: selected[n].schema if n in selected else n for n in names}
    strays = _schemas_anywhere(databases, schemas)
    unknown = [n for n in names if n not in selected and n not in strays]
    if unknown or strays:
        raise UnknownTenant(_refusal(source, unknown, strays))
    return [
        DropOutcome(n, selected[n].schema, selected[n].database, DropState.ALREADY_GONE,
                    selected[n].run_id)
        for n in names
    ]  # fmt: skip


def _schemas_anywhere(databases: DatabaseSet, schemas: Mapping[str, str]) -> dict[str, list[str]]:
    """Name -> the databases of the directory holding its schema. A database that cannot be
    reached is passed over: a name a drop run selected lost its registry row only after its
    schema's drop had committed (2. in the module docstring), so no leftover of a drop is
    there; other names are refused anyway."""
    where: dict[str, list[str]] = {}
    for database in [CONTROL, *(e.name for e in databases.settings.databases)]:
        if databases.unreachable(database) is not None:
            continue
        with databases.get(database).engine.begin() as conn:
            there = existing_schemas(conn, schemas.values())
        for name, schema in schemas.items():
            if schema in there:
                where.setdefault(name, []).append(database)
    return where


def _refusal(source: TenantSource, unknown: Sequence[str], strays: Mapping[str, list[str]]) -> str:
    parts = []
    if unknown:
        hint = (
            "not registered, and no earlier drop selected them; see `tenantmig tenants list`"
            if source.is_registry
            else f"see `tenantmig tenants list` (tenants from {source.describe()})"
        )
        parts.append(f"{len(unknown)} unknown tenant(s): {some_names(unknown)} ({hint})")
    if strays:
        shown = [f"{name} (in database {', '.join(dbs)})" for name, dbs in strays.items()]
        parts.append(
            f"{len(strays)} name(s) not registered whose schema exists: {some_names(shown)}; "
            "tenantmig drops only a registered tenant's schema (a drop removes the registry "
            "row only after the schema, so this is no leftover of one): to drop it, register "
            "it first (`tenantmig tenants register NAME --database DB`), or leave it out"
        )
    return "; ".join(parts) + "; nothing was dropped"


def drop_in_batches(
    databases: DatabaseSet,
    source: TenantSource,
    plan: DropPlan,
    timeouts: Timeouts,
    ledger: Ledger,
    on_batch: BatchCallback | None = None,
) -> DropResult:
    """Drop the planned tenants (schemas and registry rows), BATCH per transaction, in the
    order of the module docstring; a run in the ledger from before the first batch.

    A failed batch stops the drop (``stopped``), and so does an interrupt (``interrupted``);
    either way the result names every tenant's state in each database.
    """
    members = {name: databases.get(name) for name in [CONTROL, *by_database(plan.tenants)]}
    ledger.ensure()
    run_id = ledger.start_run(COMMAND, RunScope.TENANTS, "-", {"tenants": len(plan.tenants)})
    ledger.record(
        run_id,
        [_entry(t.name, t.schema, t.database, TenantStatus.NOT_RUN) for t in plan.tenants]
        + [_entry(o.name, o.schema, o.database, TenantStatus.SKIPPED) for o in plan.already],
    )
    result = DropResult(run_id, list(plan.already))
    locks = RunLocks(databases.control.engine)
    try:
        locks.mark_alive(run_id)
        _batches(result, members, source, plan, timeouts, ledger, on_batch)
    except BaseException as exc:
        result.stopped = result.stopped or f"{type(exc).__name__}: {exc}"
        raise
    finally:
        # The record must not hide what happened: a ledger that cannot be written now (the
        # server went away) leaves the run to read as abandoned.
        with contextlib.suppress(DBAPIError):
            _finish(ledger, run_id, result)
        locks.release()
    return result


def _batches(
    result: DropResult,
    members: Mapping[str, Database],
    source: TenantSource,
    plan: DropPlan,
    timeouts: Timeouts,
    ledger: Ledger,
    on_batch: BatchCallback | None,
) -> None:
    """The batches, in order, until one fails or an interrupt comes; then the batch under way
    is read back and the ones after it are untouched."""
    tenants = plan.tenants
    finished = 0  # tenants of the batches done
    pending: Sequence[Tenant] = ()  # the batch under way: what it changed is not known yet
    failed: str | None = None  # where and why the batch under way failed
    try:
        for batch in _sized_batches(members, tenants):
            pending = batch
            _drop_batch(members, source, pending, timeouts)
            done = [_done(t, plan.schemaless) for t in pending]
            result.outcomes.extend(done)
            finished, pending = finished + len(done), ()
            ledger.record(_run_id(result), [_ledger_entry(o) for o in done])
            if on_batch is not None:
                on_batch(finished, len(tenants))
        return
    except _BatchFailed as exc:
        failed = str(exc)
    except DBAPIError as exc:  # writing the ledger, after the batch committed
        result.stopped = f"the run could not be recorded in the ledger: {first_line(exc)}"
    except KeyboardInterrupt:
        result.interrupted = True
    read = _read_back(members, source, pending, plan.schemaless)
    if failed is not None:
        whole = all(o.state in (DropState.UNTOUCHED, DropState.SCHEMA_MISSING) for o in read)
        how = "and was rolled back" if whole else "and was not rolled back everywhere"
        result.stopped = f"a batch failed {how}: {failed}"
    rest = tenants[finished + len(pending) :]
    result.outcomes.extend(read)
    result.outcomes.extend(_untouched(t, plan.schemaless) for t in rest)
    why = result.stopped or "interrupted"
    with contextlib.suppress(DBAPIError):
        ledger.record(_run_id(result), [_ledger_entry(o, why, result.interrupted) for o in read])


def _sized_batches(
    members: Mapping[str, Database], tenants: Sequence[Tenant]
) -> list[Sequence[Tenant]]:
    """``tenants`` in order, cut into batches that fit each database's lock budget, with the
    budgets and the schemas' costs read once per database."""
    budgets: dict[str, int] = {}
    costs: dict[tuple[str, str], int] = {}
    for name, group in by_database(tenants).items():
        with members[name].engine.connect() as conn, conn.begin():
            budgets[name] = lock_budget(conn)
            found = drop_costs(conn, [t.schema for t in group])
        costs.update({(name, schema): cost for schema, cost in found.items()})
    return plan_batches(tenants, costs, budgets)


def plan_batches(
    tenants: Sequence[Tenant],
    costs: Mapping[tuple[str, str], int],
    budgets: Mapping[str, int],
    most: int = BATCH,
) -> list[Sequence[Tenant]]:
    """Consecutive batches of at most ``most`` tenants whose costs (by database and schema; a
    schema not in ``costs`` costs 1) add up to at most each database's budget; a tenant that
    alone exceeds its budget is a batch of its own."""
    batches: list[Sequence[Tenant]] = []
    current: list[Tenant] = []
    spent: dict[str, int] = {}
    for tenant in tenants:
        cost = costs.get((tenant.database, tenant.schema), 1)
        over = spent.get(tenant.database, 0) + cost > budgets.get(tenant.database, cost)
        if current and (len(current) >= most or over):
            batches.append(current)
            current, spent = [], {}
        current.append(tenant)
        spent[tenant.database] = spent.get(tenant.database, 0) + cost
    if current:
        batches.append(current)
    return batches


def _run_id(result: DropResult) -> int:
    assert result.run_id is not None
    return result.run_id


class _BatchFailed(Exception):
    """A statement or commit of a batch failed (control flow only; the message says where)."""


@contextlib.contextmanager
def _failing_in(where: str) -> Iterator[None]:
    try:
        yield
    except DBAPIError as exc:
        # first_line names the setting to raise when the lock table was full (53200).
        hint = ", or run the drop when fewer transactions hold locks"
        if lock_table_setting(exc) is None:
            hint = ""
        raise _BatchFailed(f"{where}: {first_line(exc)}{hint}") from exc


def _drop_batch(
    members: Mapping[str, Database],
    source: TenantSource,
    batch: Sequence[Tenant],
    timeouts: Timeouts,
) -> None:
    """One batch: the work in every database, then the commits (1. and 2. of the module
    docstring). Leaving the block any other way rolls back whatever is not committed."""
    groups = by_database(batch)
    order = [CONTROL, *(name for name in groups if name != CONTROL)]
    with contextlib.ExitStack() as stack:
        held: list[tuple[str, Connection]] = []
        for name in order:
            with _failing_in(f"database {name}"):
                conn = stack.enter_context(members[name].engine.connect())
                conn.begin()
                _drop_schemas(members[name], conn, groups.get(name, []), timeouts)
                if name == CONTROL:
                    for tenant in batch:
                        forget_tenant(conn, source, tenant)
            held.append((name, conn))
        # The control database (the registry) last: see 2. in the module docstring.
        for name, conn in [*held[1:], held[0]]:
            with _failing_in(f"database {name}, at commit"):
                conn.commit()


def _drop_schemas(
    database: Database, conn: Connection, tenants: Sequence[Tenant], timeouts: Timeouts
) -> None:
    for tenant in tenants:
        # Timeouts, then the tenant's advisory lock: a runner migrating the tenant holds it,
        # so no tenant is dropped under a migration. Each wait (that lock, the schema's table
        # locks for DROP SCHEMA) is bounded by lock_timeout. A transaction here may wait on a
        # session that waits on another database's transaction of this batch, a deadlock no
        # server can see: lock_timeout ends it too.
        database.flavour.prepare_migration(conn, tenant.schema, timeouts, verify=False)
        drop_schema(conn, tenant)


def _read_back(
    members: Mapping[str, Database],
    source: TenantSource,
    batch: Sequence[Tenant],
    schemaless: frozenset[str],
) -> list[DropOutcome]:
    """Each tenant of ``batch`` as its databases now say (each read on a new connection)."""
    if not batch:
        return []
    registered = _registered_now(members[CONTROL], source)
    present = {
        name: _schemas_now(members[name], [t.schema for t in group])
        for name, group in by_database(batch).items()
    }
    outcomes = []
    for tenant in batch:
        there = present[tenant.database]
        state = _state(
            tenant.name not in schemaless,
            None if registered is None else tenant.name in registered,
            None if there is None else tenant.schema in there,
        )
        outcomes.append(DropOutcome(tenant.name, tenant.schema, tenant.database, state))
    return outcomes


def _state(had_schema: bool, registered: bool | None, schema: bool | None) -> DropState:
    if registered is None or schema is None:
        return DropState.UNKNOWN
    if registered and not schema:
        return DropState.SCHEMA_DROPPED if had_schema else DropState.SCHEMA_MISSING
    if registered:
        return DropState.UNTOUCHED
    if schema:
        return DropState.ROW_REMOVED
    return DropState.DROPPED if had_schema else DropState.SCHEMA_WAS_GONE


def _registered_now(control: Database, source: TenantSource) -> set[str] | None:
    try:
        with control.engine.begin() as conn:
            return {t.name for t in list_tenants(conn, source)}
    except DBAPIError:
        return None


def _schemas_now(database: Database, schemas: Sequence[str]) -> set[str] | None:
    try:
        with database.engine.begin() as conn:
            return existing_schemas(conn, schemas)
    except DBAPIError:
        return None


def _done(tenant: Tenant, schemaless: frozenset[str]) -> DropOutcome:
    state = DropState.SCHEMA_WAS_GONE if tenant.name in schemaless else DropState.DROPPED
    return DropOutcome(tenant.name, tenant.schema, tenant.database, state)


def _untouched(tenant: Tenant, schemaless: frozenset[str]) -> DropOutcome:
    state = DropState.SCHEMA_MISSING if tenant.name in schemaless else DropState.UNTOUCHED
    return DropOutcome(tenant.name, tenant.schema, tenant.database, state)


# -- the ledger ---------------------------------------------------------------------------------
# A drop run's tenants in the ledger's vocabulary: ok (dropped), skipped (nothing was left but a
# registry row, or nothing at all), failed or interrupted (the state and why in the error),
# not_run (a later batch).
_LEDGER_STATUS = {
    DropState.DROPPED: TenantStatus.OK,
    DropState.SCHEMA_WAS_GONE: TenantStatus.SKIPPED,
    DropState.ALREADY_GONE: TenantStatus.SKIPPED,
}


def _entry(
    name: str,
    schema: str,
    database: str,
    status: TenantStatus,
    error: str | None = None,
    attempts: int = 0,
) -> TenantOutcome:
    return TenantOutcome(name, schema, status, attempts=attempts, error=error, database=database)


def _ledger_entry(
    outcome: DropOutcome, why: str | None = None, interrupted: bool = False
) -> TenantOutcome:
    failed = TenantStatus.INTERRUPTED if interrupted else TenantStatus.FAILED
    status = _LEDGER_STATUS.get(outcome.state, failed)
    error = None if outcome.state.is_done else f"{outcome.state.value}: {why}"
    return _entry(outcome.name, outcome.schema, outcome.database, status, error, attempts=1)


def _finish(ledger: Ledger, run_id: int, result: DropResult) -> None:
    if result.interrupted:
        outcome = RunOutcome.INTERRUPTED
    else:
        outcome = RunOutcome.SUCCEEDED if result.succeeded else RunOutcome.FAILED
    totals: dict[str, Any] = {"total": len(result.outcomes)}
    for state in DropState:
        totals[state.value] = sum(1 for o in result.outcomes if o.state is state)
    ledger.finish_run(run_id, outcome, totals)
