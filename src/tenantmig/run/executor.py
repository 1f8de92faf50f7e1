"""Fanning tenant jobs out over worker processes and collecting their outcomes.

A *slot* migrates one tenant at a time on its own connection. Each worker process drives one
slot (the default) or several (``--connections-per-worker``), each in a thread of its own: a
replayed step is SQL sent over a connection and needs no process of its own, so a run of 200
tenants at once need not be 200 processes. Alembic keeps its migration context in module
globals, so in a process only one tenant at a time runs through Alembic (``run.migrator``'s
Alembic turn); replayed tenants run beside it.

Each slot gets jobs one at a time from the coordinator over its own queue (never pre-split
chunks), so a slow tenant delays only the slot that has it, and the coordinator always knows
which tenant each slot holds: if a worker process dies, exactly the tenants its slots held are
marked failed and a new process with as many slots replaces it.

Signals: workers ignore SIGINT and SIGTERM, so a Ctrl-C on the terminal (sent to the whole
process group) or a service manager's SIGTERM to every process does not kill a tenant
mid-transaction. The coordinator stops handing out work and waits for the in-flight tenants to
commit or roll back. A second signal kills the workers; their connections close and PostgreSQL
rolls their open transactions back. If the coordinator itself dies, the kernel kills the workers
(PR_SET_PDEATHSIG), with the same effect.

Lock table: the server's lock table is shared by every session, and each tenant's transaction
holds a lock on every relation its migration touches until it commits. Tenants of many
relations migrating in parallel can fill it: "out of shared memory" (SQLSTATE 53200). A tenant
that failed so while others were migrating is not a failure of its own: it goes back to the
front of the queue, and the run lets half as many tenants migrate at once from then on (never
fewer than one), saying so in its notices. A tenant that fails so alone is failed with the
setting to raise.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from tenantmig.backup.children import die_with_parent
from tenantmig.backup.dump import BackupPlan
from tenantmig.chains.scripts import ChainScripts
from tenantmig.errors import some_names
from tenantmig.logs import configure_run_log
from tenantmig.run import worker_server
from tenantmig.run.locks import Clearance
from tenantmig.run.migrator import SchemaMigrator
from tenantmig.run.observers import Execution, GuardedHooks, TenantHooks, TenantRetry
from tenantmig.run.plan import StopPolicy, TenantPolicy
from tenantmig.run.replay import CompiledStep
from tenantmig.run.results import TenantJob, TenantOutcome, TenantStatus
from tenantmig.schema.lockbudget import LockTable, read_lock_table, relations, too_big_alone
from tenantmig.server.config import Settings
from tenantmig.server.database import create_engine
from tenantmig.server.errorcodes import OUT_OF_LOCKS_REASON, lock_table_full
from tenantmig.server.flavour import ServerFlavour

if TYPE_CHECKING:
    from tenantmig.run.segments import SegmentedStep

_POLL_S = 0.2
_T = TypeVar("_T")


@dataclass(frozen=True)
class WorkerTarget:
    """One database a run migrates tenants in: where it is and what is replayed there."""

    database: str  # the directory's name (CONTROL for the control database)
    url: str = field(repr=False)
    flavour: ServerFlavour
    # Compiled on a server of the same version: whole steps, and steps split into segments.
    compiled: tuple[CompiledStep | SegmentedStep, ...] = ()
    backup: BackupPlan | None = None
    cap: int = 1 << 30  # at most this many of its tenants in flight at once


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs; pickled to it once at start.

    ``policy`` is the plan's per-tenant part; ``settings`` tells the worker where the tenant
    chain's scripts are (each worker loads them once); the rest is what the coordinator learned
    at run time, for each database the run's tenants live in.
    """

    policy: TenantPolicy
    settings: Settings
    targets: tuple[WorkerTarget, ...]
    log_file: Path | None
    run_id: int | None
    # Run in each process around each tenant it migrates (telemetry's spans); None: nothing.
    hooks: TenantHooks | None = None

    def target(self, database: str) -> WorkerTarget:
        return next(t for t in self.targets if t.database == database)

    def migrator(
        self,
        logger: logging.Logger,
        database: str,
        role: str | None = None,
        on_retry: Callable[[TenantRetry], None] | None = None,
        scripts: ChainScripts | None = None,
    ) -> SchemaMigrator:
        target = self.target(database)
        return SchemaMigrator(
            self.policy,
            scripts or ChainScripts(self.settings, "tenant"),
            target.url,
            target.flavour,
            logger=logger,
            role=role,
            compiled={step.key: step for step in target.compiled},
            backup=target.backup,
            run_id=self.run_id,
            on_retry=on_retry,
        )


class _Migrators:
    """A process's migrator for the database its current tenant lives in.

    One at a time: moving to another database closes the connection to the previous one, so
    a worker never holds a connection to a database it is not migrating in (the per-database
    caps are what each server sees in pg_stat_activity).
    """

    def __init__(
        self,
        spec: WorkerSpec,
        logger: logging.Logger,
        role: str | None,
        on_retry: Callable[[TenantRetry], None],
        scripts: ChainScripts | None = None,
        hooks: GuardedHooks | None = None,
    ) -> None:
        self.spec, self.logger, self.role = spec, logger, role
        self.scripts = scripts  # shared by the slots of one process (read only)
        # Shared by the slots of one process too, and then closed by the process, once.
        self._own_hooks = hooks is None
        self.hooks = hooks if hooks is not None else GuardedHooks(spec.hooks, logger)
        self.on_retry = on_retry
        self.current: tuple[str, SchemaMigrator] | None = None

    def _retrying(self, retry: TenantRetry) -> None:
        self.hooks.retry(retry)
        self.on_retry(retry)

    def migrate(self, job: TenantJob) -> TenantOutcome:
        self.hooks.begin(job)
        if self.current is None or self.current[0] != job.database:
            self.close_connection()
            migrator = self.spec.migrator(
                self.logger, job.database, self.role, self._retrying, self.scripts
            )
            self.current = (job.database, migrator)
        outcome = self.current[1].migrate(job)
        self.hooks.end(job, outcome)
        return outcome

    def close_connection(self) -> None:
        if self.current is not None:
            self.current[1].close()
            self.current = None

    def close(self) -> None:
        self.close_connection()
        if self._own_hooks:
            self.hooks.close()


def _key(job: TenantJob) -> tuple[str, str]:
    return job.database, job.name


class JobQueue:
    """The jobs not started yet, handed out within each database's cap and the run's limit.

    A worker is given a job of the database it worked in last when that database has one and
    room (so it keeps its connection), else one of the database with the fewest in flight.
    A database that became unreachable is closed: its jobs are taken out and reported.
    ``limit`` caps the tenants in flight across databases (lowered when the lock table filled);
    ``finished`` says how many were in flight at most while a job ran (its peak).
    """

    def __init__(self, jobs: Sequence[TenantJob], caps: Mapping[str, int]) -> None:
        self.pending: dict[str, deque[TenantJob]] = {}
        for job in jobs:
            self.pending.setdefault(job.database, deque()).append(job)
        self.caps = dict(caps)
        self.running: dict[str, int] = dict.fromkeys(self.pending, 0)
        self.limit = 1 << 30
        self.peaks: dict[tuple[str, str], int] = {}  # in flight: the most at once meanwhile

    def __bool__(self) -> bool:
        return any(self.pending.values())

    def take(self, prefer: str | None = None) -> TenantJob | None:
        if sum(self.running.values()) >= self.limit:
            return None

        def open_(database: str) -> bool:
            cap = self.caps.get(database, 1 << 30)
            return bool(self.pending.get(database)) and self.running[database] < cap

        if prefer is not None and open_(prefer):
            chosen = prefer
        else:
            candidates = [d for d in self.pending if open_(d)]
            if not candidates:
                return None
            chosen = min(candidates, key=lambda d: self.running[d])
        self.running[chosen] += 1
        job = self.pending[chosen].popleft()
        in_flight = sum(self.running.values())
        self.peaks[_key(job)] = in_flight
        for key, peak in self.peaks.items():
            self.peaks[key] = max(peak, in_flight)
        return job

    def finished(self, job: TenantJob) -> int:
        """The job is no longer in flight; how many were at most while it was."""
        self.running[job.database] -= 1
        return self.peaks.pop(_key(job), 1)

    def again(self, job: TenantJob) -> None:
        """Put a finished job back at the front of its database's queue."""
        self.pending.setdefault(job.database, deque()).appendleft(job)

    def close(self, database: str) -> list[TenantJob]:
        """Take out every job of ``database`` not started yet."""
        left = list(self.pending.get(database, ()))
        self.pending[database] = deque()
        return left

    def remaining(self) -> list[TenantJob]:
        left = [job for jobs in self.pending.values() for job in jobs]
        for jobs in self.pending.values():
            jobs.clear()
        return left


def _worker_main(spec: WorkerSpec, slots: Sequence[tuple[int, Any]], results: Any) -> None:
    """A worker process: each of ``slots`` (slot id, its task queue) migrates one tenant at a
    time on its own connection, the first in this thread, the others in threads of their own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A worker orphaned by a killed coordinator would finish its tenant unobserved and then
    # wait forever; killed with it, its connection closes and its transaction rolls back.
    die_with_parent()
    # stdout belongs to the coordinator (its JSON result): whatever a migration writes to file
    # descriptor 1 from below Python (a subprocess, a C library) goes to stderr instead.
    with contextlib.suppress(OSError):
        os.dup2(2, 1)
    logger = configure_run_log(spec.log_file, spec.run_id)
    parent = os.getppid()
    if len(slots) == 1:
        _slot_main(spec, logger, slots[0], results, parent, f"worker {os.getpid()}")
        return
    # One copy of the chain's scripts (its revision modules) for the process, not per slot,
    # and one set of hooks (telemetry's spans), closed once every slot is done.
    shared = (ChainScripts(spec.settings, "tenant"), GuardedHooks(spec.hooks, logger))
    threads = [
        threading.Thread(
            target=_or_exit,
            args=(
                functools.partial(
                    _slot_main, spec, logger, slot, results, parent, f"worker {os.getpid()}/{n}"
                ),
                shared,
                logger,
            ),
            name=f"tenantmig-slot-{slot[0]}",
            daemon=True,
        )
        for n, slot in enumerate(slots)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    shared[1].close()


def _or_exit(
    slot_main: Callable[[tuple[ChainScripts, GuardedHooks]], None],
    shared: tuple[ChainScripts, GuardedHooks],
    logger: logging.Logger,
) -> None:
    """A slot in a thread. If it breaks (not a tenant's failure, which is an outcome: the
    queue or the process itself), the whole process exits, as a one-slot worker would: the
    coordinator then records every tenant the process held and starts another."""
    try:
        slot_main(shared)
    except BaseException:
        logger.exception("a worker slot stopped")
        os._exit(70)


def _slot_main(
    spec: WorkerSpec,
    logger: logging.Logger,
    slot: tuple[int, Any],
    results: Any,
    parent: int,
    role: str,
    shared: tuple[ChainScripts, GuardedHooks] | None = None,
) -> None:
    slot_id, tasks = slot

    def retrying(retry: TenantRetry) -> None:
        results.put((slot_id, retry))  # for the coordinator's observers; not an outcome

    migrators = _Migrators(spec, logger, role, retrying, *(shared or ()))
    try:
        while True:
            try:
                job = tasks.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:
                    return  # orphaned (platform without PDEATHSIG)
                continue
            if job is None:
                return
            outcome = migrators.migrate(job)
            results.put((slot_id, outcome))
    finally:
        migrators.close()


@dataclass
class _Slot:
    """One tenant at a time, on a connection of its own, in a worker process that may drive
    other slots too."""

    process: BaseProcess
    tasks: Any
    job: TenantJob | None = None
    started: float = 0.0
    last_database: str | None = None


OutcomeCallback = Callable[[TenantOutcome, Execution], None]


class JobWatcher(Protocol):
    """Told in the coordinator's process when a tenant is handed out and when one of its
    attempts failed and will be retried (``observers.RunObserver`` is one)."""

    def tenant_started(self, job: TenantJob) -> None: ...

    def tenant_retry(self, retry: TenantRetry) -> None: ...


class Gate(Protocol):
    """Asked before each tenant is handed out whether the run may start it (the run lock's
    watch, ``locks.RunLockWatch``); it answers cheaply, asking the server only now and then."""

    def clearance(self) -> Clearance: ...


class _SignalState:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1


@contextlib.contextmanager
def _trap_signals() -> Iterator[_SignalState]:
    state = _SignalState()
    previous = {sig: signal.signal(sig, state) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_jobs(
    spec: WorkerSpec,
    jobs: Sequence[TenantJob],
    workers: int,
    *,
    stop: StopPolicy | None = None,
    on_outcome: OutcomeCallback | None = None,
    gate: Gate | None = None,
    notices: list[str] | None = None,
    watcher: JobWatcher | None = None,
    per_process: int = 1,
) -> tuple[list[TenantOutcome], bool]:
    """Run every job, ``workers`` at a time, ``per_process`` of them in one worker process;
    return (outcomes in completion order, interrupted?).

    ``gate`` STOP: no tenant starts any more, those in flight finish, the rest are recorded
    as not run; WAIT: none starts until it says GO again. ``notices``: where to say what the
    run changed on its own (fewer tenants at once after the lock table filled).
    """
    stop = stop or StopPolicy()
    execution = Execution(total=len(jobs))
    caps = {t.database: t.cap for t in spec.targets}
    run = _Run(
        JobQueue(jobs, caps),
        execution,
        on_outcome,
        {j.database for j in jobs},
        gate,
        lock_tables=_LockTables({t.database: t.url for t in spec.targets}),
        log=configure_run_log(spec.log_file, spec.run_id),
        notices=notices if notices is not None else [],
        watcher=watcher,
    )
    with _trap_signals() as signals:
        try:
            if workers <= 1 or len(jobs) <= 1:
                _run_inline(spec, run, stop, signals)
            else:
                _run_pool(spec, run, workers, stop, signals, per_process)
        finally:
            run.say_lowered()
        return run.outcomes, signals.count > 0


class _LockTables:
    """Each database's lock table settings, read the first time a tenant there filled it."""

    def __init__(self, urls: Mapping[str, str]) -> None:
        self.urls = urls
        self.read: dict[str, LockTable | None] = {}

    def _reading(self, database: str, what: Callable[[Connection], _T]) -> _T | None:
        engine = create_engine(self.urls[database], role="coordinator")
        try:
            with engine.connect() as conn:
                return what(conn)
        except DBAPIError:
            return None  # the message goes without the numbers
        finally:
            engine.dispose()

    def table(self, database: str) -> LockTable | None:
        if database not in self.read:
            self.read[database] = self._reading(database, read_lock_table)
        return self.read[database]

    def relations(self, database: str, schema: str) -> int | None:
        return self._reading(database, lambda conn: relations(conn, schema))


@dataclass
class _Run:
    """The state of one run_jobs call: what is left, what came back."""

    queue: JobQueue
    execution: Execution
    on_outcome: OutcomeCallback | None
    databases: set[str]
    gate: Gate | None = None
    lock_tables: _LockTables = field(default_factory=lambda: _LockTables({}))
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("tenantmig.run"))
    notices: list[str] = field(default_factory=list)
    watcher: JobWatcher | None = None
    outcomes: list[TenantOutcome] = field(default_factory=list)
    gate_stopped: bool = False
    # Tenants put back after filling the lock table: (attempts, seconds) spent on them so far.
    spent: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    # Every tenant put back so far, the setting the server named, and the database first seen.
    retried: list[str] = field(default_factory=list)
    full: tuple[str, str, int] | None = None  # (setting, database, tenants in flight then)

    def settle(self, job: TenantJob, outcome: TenantOutcome, peak: int) -> None:
        """A tenant came back with ``outcome`` after running with up to ``peak`` tenants in
        flight: record it, or, if it filled the lock table while others were migrating, put
        it back and lower the limit (the module docstring)."""
        attempts, seconds = self.spent.pop(_key(job), (0, 0.0))
        outcome = replace(
            outcome,
            attempts=outcome.attempts + attempts,
            duration_s=outcome.duration_s + seconds,
        )
        setting = lock_table_full(outcome.error) if outcome.status.is_failure else None
        if setting is None:
            self.record(outcome)
            return
        if peak <= 1:
            self.record(replace(outcome, error=self._alone(job, outcome, setting)))
            return
        self.spent[_key(job)] = (outcome.attempts, outcome.duration_s)
        self.queue.again(job)
        self.retrying(
            TenantRetry(
                job.name,
                job.schema,
                job.database,
                outcome.attempts,
                OUT_OF_LOCKS_REASON,
                "53200",
                0.0,  # back to the front of the queue: it starts when a worker is free
            )
        )
        if job.name not in self.retried:
            self.retried.append(job.name)
        if self.full is None:
            self.full = (setting, job.database, peak)
        lowered = max(1, min(self.queue.limit, peak // 2))
        then = ""
        if lowered < self.queue.limit:
            self.queue.limit = lowered
            then = f"; at most {lowered} at a time from now on"
        self.log.warning(
            "out of shared memory (the lock table is full) with %d tenants migrating: back "
            "to the queue%s",
            peak,
            then,
            extra={"tenant": job.name},
        )

    def say_lowered(self) -> None:
        """The run's notice, if it went on with fewer tenants at once. Written at the end:
        the settings are read then, when this run's tenants no longer fill the lock table
        (a new connection takes a lock too)."""
        if self.full is None:
            return
        setting, database, peak = self.full
        current = ""
        table = self.lock_tables.table(database)
        if setting == "max_locks_per_transaction" and table is not None:
            current = (
                f" (currently {table.per_transaction}; the lock table holds {table.describe()})"
            )
        notice = (
            f"the server's lock table was full (out of shared memory, SQLSTATE 53200) with "
            f"{peak} tenants migrating at once: the run went on with at most "
            f"{self.queue.limit} at a time and retried {some_names(self.retried)}; to migrate "
            f"more at once, raise {setting}{current}"
        )
        self.log.warning("%s", notice)
        self.notices.append(notice)

    def _alone(self, job: TenantJob, outcome: TenantOutcome, setting: str) -> str:
        """The error of a tenant that filled the lock table while migrating alone."""
        what = f"raise {setting} and restart PostgreSQL"
        if setting == "max_locks_per_transaction":
            what = too_big_alone(
                self.lock_tables.table(job.database),
                job.schema,
                self.lock_tables.relations(job.database, job.schema),
            )
        return (
            "out of shared memory (SQLSTATE 53200): the server's lock table was full while "
            f"this tenant was the only one of the run migrating (after {outcome.attempts} "
            f"attempt(s)); {what}"
        )

    def started(self, job: TenantJob) -> None:
        if self.watcher is not None:
            self.watcher.tenant_started(job)

    def retrying(self, retry: TenantRetry) -> None:
        if self.watcher is not None:
            self.watcher.tenant_retry(retry)

    def record(self, outcome: TenantOutcome) -> None:
        execution = self.execution
        self.outcomes.append(outcome)
        execution.done += 1
        if outcome.status.is_failure:
            execution.failures += 1
        if outcome.lost_connection and outcome.database not in execution.unreachable:
            self._unreachable(outcome.database)
        if self.on_outcome is not None:
            self.on_outcome(outcome, execution)

    def _unreachable(self, database: str) -> None:
        """A tenant gave up on its database (unreachable past the reconnect budget).

        With one database that ends the run: nothing else could be migrated. With several,
        the other databases go on, and this one's tenants not started yet are recorded as
        failed, so the printed finishing command takes them when it is back.
        """
        execution = self.execution
        execution.unreachable.add(database)
        if execution.unreachable >= self.databases:
            execution.lost_connection = True
            return
        for job in self.queue.close(database):
            self.record(
                TenantOutcome(
                    job.name,
                    job.schema,
                    TenantStatus.FAILED,
                    job.seen_revision,
                    job.seen_revision,
                    error=f"database {database} unreachable: not started (the run went on "
                    "with the other databases)",
                    database=database,
                )
            )

    def clearance(self, stop: StopPolicy, signals: _SignalState) -> Clearance:
        """May the next tenant start? The gate is asked only while some tenant has not
        started: once every one has, a lost run lock protects nothing more."""
        if (
            signals.count > 0
            or self.execution.lost_connection
            or stop.should_stop(self.execution.failures)
        ):
            return Clearance.STOP
        if self.gate is None or not self.queue:
            return Clearance.GO
        clearance = self.gate.clearance()
        self.gate_stopped = clearance is Clearance.STOP
        return clearance

    def not_run(self) -> None:
        error = "run stopped before it"
        if self.gate_stopped:
            error = "not started: the run lost its run lock"
        for job in self.queue.remaining():
            self.record(job.not_run(error))


def _run_inline(spec: WorkerSpec, run: _Run, stop: StopPolicy, signals: _SignalState) -> None:
    """One tenant at a time in this process (--jobs 1 or a single tenant): no start-up cost.

    A signal lets the current tenant finish (its transaction commits or rolls back as a unit).
    """
    migrators = _Migrators(spec, configure_run_log(spec.log_file, spec.run_id), None, run.retrying)
    try:
        while (clearance := run.clearance(stop, signals)) is not Clearance.STOP:
            if clearance is Clearance.WAIT:
                time.sleep(_POLL_S)
                continue
            job = run.queue.take(migrators.current[0] if migrators.current else None)
            if job is None:
                break
            run.started(job)
            outcome = migrators.migrate(job)
            run.settle(job, outcome, run.queue.finished(job))
    finally:
        migrators.close()
    run.not_run()


def _run_pool(
    spec: WorkerSpec,
    run: _Run,
    workers: int,
    stop: StopPolicy,
    signals: _SignalState,
    per_process: int = 1,
) -> None:
    """``workers`` slots, in worker processes of ``per_process`` slots each (the last may have
    fewer): as many tenants in flight at once as before, in fewer processes."""
    # Forked from the run's preloaded server (run.worker_server), else spawned; never forked
    # from the coordinator: it holds open connections and (in tests) threads, and a forked
    # copy of a libpq connection shared by two processes corrupts the protocol stream.
    ctx = worker_server.context()
    results = ctx.Queue()
    pool: dict[int, _Slot] = {}
    next_id = 0
    log = configure_run_log(spec.log_file, spec.run_id)

    def start_worker(slots: int) -> list[_Slot]:
        nonlocal next_id
        queues = [(next_id + n, ctx.Queue()) for n in range(slots)]
        next_id += slots
        process = ctx.Process(
            target=_worker_main,
            args=(spec, queues, results),
            daemon=True,
            name=f"tenantmig-worker-{queues[0][0]}",
        )
        process.start()
        started = [_Slot(process, tasks) for _, tasks in queues]
        pool.update((slot_id, slot) for (slot_id, _), slot in zip(queues, started, strict=True))
        return started

    def assign(slot: _Slot) -> None:
        go = run.clearance(stop, signals) is Clearance.GO
        slot.job = run.queue.take(slot.last_database) if go else None
        if slot.job is not None:
            slot.started = time.monotonic()
            slot.last_database = slot.job.database
            slot.tasks.put(slot.job)
            run.started(slot.job)

    def assign_idle() -> None:
        # A finished job may have made room in a database an idle slot could not take.
        for slot in pool.values():
            if slot.job is None and slot.process.is_alive():
                assign(slot)

    total = min(workers, run.execution.total)
    per_process = max(1, per_process)
    for first in range(0, total, per_process):
        start_worker(min(per_process, total - first))
    for slot in list(pool.values()):
        assign(slot)

    def waiting() -> bool:
        # Nothing in flight, but the run lock may come back (the server restarting): the
        # run is not over until the gate says go (the idle slots get tenants) or stop.
        return run.clearance(stop, signals) is Clearance.WAIT

    terminated = False
    try:
        while any(s.job is not None for s in pool.values()) or waiting():
            if signals.count >= 2 and not terminated:
                # Second signal: abort in-flight tenants. Killing the worker closes its
                # connections; PostgreSQL rolls the open transactions back.
                terminated = True
                for slot in pool.values():
                    if slot.job is not None and slot.process.is_alive():
                        slot.process.kill()
            try:
                slot_id, message = results.get(timeout=_POLL_S)
            except queue.Empty:
                _reap_dead_workers(pool, run, log, terminated, start_worker, assign)
                # Asked while every slot is busy too: a lost run lock is known (and taken
                # again, see RunLockWatch) within about a second, not only when one finishes.
                assign_idle()
                run.clearance(stop, signals)
                continue
            if isinstance(message, TenantRetry):
                run.retrying(message)
                continue
            outcome: TenantOutcome = message
            owner = pool.get(slot_id)
            if owner is None or owner.job is None:
                continue  # already recorded as died; its late result is stale
            job, owner.job = owner.job, None
            run.settle(job, outcome, run.queue.finished(job))
            assign(owner)
            assign_idle()
    finally:
        processes = list({id(s.process): s.process for s in pool.values()}.values())
        for slot in pool.values():
            if slot.process.is_alive():
                slot.tasks.put(None)
        deadline = time.monotonic() + 10
        for process in processes:
            process.join(timeout=max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
        results.close()
    run.not_run()


def _reap_dead_workers(
    pool: dict[int, _Slot],
    run: _Run,
    log: logging.Logger,
    terminated: bool,
    start_worker: Callable[[int], list[_Slot]],
    assign: Callable[[_Slot], None],
) -> None:
    """A worker process that died holding tenants: record each of them, replace the process
    with one of as many slots."""
    dead: dict[int, list[int]] = {}  # process (by id) -> its slots
    for slot_id, slot in pool.items():
        if not slot.process.is_alive():
            dead.setdefault(id(slot.process), []).append(slot_id)
    for slot_ids in dead.values():
        busy = [pool[s] for s in slot_ids if pool[s].job is not None]
        if not busy:
            continue
        code = busy[0].process.exitcode
        for slot in busy:
            job = slot.job
            assert job is not None
            status = TenantStatus.INTERRUPTED if terminated else TenantStatus.FAILED
            reason = (
                "aborted by a second interrupt"
                if terminated
                else (
                    f"worker process died (exit code {code}) while migrating this tenant; its "
                    "transaction was rolled back by the server"
                )
            )
            log.error("%s", reason, extra={"tenant": job.name})
            outcome = TenantOutcome(
                job.name,
                job.schema,
                status,
                # Its transaction died with the worker: the server rolled it back to where the
                # run found it (the ledger says so, not base).
                job.seen_revision,
                job.seen_revision,
                attempts=1,
                duration_s=time.monotonic() - slot.started,
                error=reason,
                database=job.database,
            )
            run.queue.finished(job)
            run.record(outcome)
        for slot_id in slot_ids:
            del pool[slot_id]
        if not terminated:
            for slot in start_worker(len(slot_ids)):
                assign(slot)
