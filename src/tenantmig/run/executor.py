"""Fanning tenant jobs out over worker processes and collecting their outcomes.

Processes, not threads: Alembic keeps its migration context in module globals. Each worker gets
jobs one at a time from the coordinator over its own queue (never pre-split chunks), so a slow
tenant delays only the worker that has it, and the coordinator always knows which tenant each
worker holds: if a worker dies, exactly that tenant is marked failed and a new worker replaces it.

Signals: workers ignore SIGINT and SIGTERM, so a Ctrl-C on the terminal (sent to the whole
process group) or a service manager's SIGTERM to every process does not kill a tenant
mid-transaction. The coordinator stops handing out work and waits for the in-flight tenants to
commit or roll back. A second signal kills the workers; their connections close and PostgreSQL
rolls their open transactions back. If the coordinator itself dies, the kernel kills the workers
(PR_SET_PDEATHSIG), with the same effect.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import queue
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from tenantmig.backup.dump import BackupPlan
from tenantmig.chains.scripts import ChainScripts
from tenantmig.logs import configure_run_log
from tenantmig.run.migrator import SchemaMigrator
from tenantmig.run.plan import StopPolicy, TenantPolicy
from tenantmig.run.replay import CompiledStep
from tenantmig.run.results import TenantJob, TenantOutcome, TenantStatus
from tenantmig.server.config import Settings
from tenantmig.server.flavour import ServerFlavour

_PR_SET_PDEATHSIG = 1
_POLL_S = 0.2


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs; pickled to it once at start.

    ``policy`` is the plan's per-tenant part; ``settings`` tells the worker where the tenant
    chain's scripts are (each worker loads them once); the rest is what the coordinator learned
    at run time.
    """

    policy: TenantPolicy
    settings: Settings
    url: str
    flavour: ServerFlavour
    log_file: Path | None
    run_id: int | None
    compiled: tuple[CompiledStep, ...] = ()
    backup: BackupPlan | None = None

    def migrator(self, logger: logging.Logger, role: str | None = None) -> SchemaMigrator:
        return SchemaMigrator(
            self.policy,
            ChainScripts(self.settings, "tenant"),
            self.url,
            self.flavour,
            logger=logger,
            role=role,
            compiled={step.key: step for step in self.compiled},
            backup=self.backup,
            run_id=self.run_id,
        )


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker if the coordinator dies (e.g. it is SIGKILLed).

    Otherwise an orphaned worker would finish its tenant unobserved and then wait forever. Its
    connection closes with it, so an open transaction rolls back and its locks are released.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _worker_main(spec: WorkerSpec, tasks: Any, results: Any, worker_id: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    # stdout belongs to the coordinator (its JSON result): whatever a migration writes to file
    # descriptor 1 from below Python (a subprocess, a C library) goes to stderr instead.
    with contextlib.suppress(OSError):
        os.dup2(2, 1)
    logger = configure_run_log(spec.log_file, spec.run_id)
    migrator = spec.migrator(logger, role=f"worker {os.getpid()}")
    parent = os.getppid()
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
            outcome = migrator.migrate(job)
            results.put((worker_id, outcome))
    finally:
        migrator.close()


@dataclass
class _Worker:
    process: BaseProcess
    tasks: Any
    job: TenantJob | None = None
    started: float = 0.0


@dataclass
class Execution:
    """Live counters for progress rendering."""

    total: int
    done: int = 0
    failures: int = 0
    lost_connection: bool = False
    started: float = field(default_factory=time.monotonic)


OutcomeCallback = Callable[[TenantOutcome, Execution], None]


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
) -> tuple[list[TenantOutcome], bool]:
    """Run every job; return (outcomes in completion order, interrupted?)."""
    stop = stop or StopPolicy()
    execution = Execution(total=len(jobs))
    with _trap_signals() as signals:
        if workers <= 1 or len(jobs) <= 1:
            outcomes = _run_inline(spec, jobs, stop, execution, on_outcome, signals)
        else:
            outcomes = _run_pool(spec, jobs, workers, stop, execution, on_outcome, signals)
        return outcomes, signals.count > 0


def _record(
    outcome: TenantOutcome,
    outcomes: list[TenantOutcome],
    execution: Execution,
    on_outcome: OutcomeCallback | None,
) -> None:
    outcomes.append(outcome)
    execution.done += 1
    if outcome.status.is_failure:
        execution.failures += 1
    execution.lost_connection = execution.lost_connection or outcome.lost_connection
    if on_outcome is not None:
        on_outcome(outcome, execution)


def _not_run(jobs: Iterator[TenantJob] | deque[TenantJob]) -> list[TenantOutcome]:
    return [
        TenantOutcome(job.name, job.schema, TenantStatus.NOT_RUN, error="run stopped before it")
        for job in jobs
    ]


def _run_inline(
    spec: WorkerSpec,
    jobs: Sequence[TenantJob],
    stop: StopPolicy,
    execution: Execution,
    on_outcome: OutcomeCallback | None,
    signals: _SignalState,
) -> list[TenantOutcome]:
    """One tenant at a time in this process (--jobs 1 or a single tenant): no start-up cost.

    A signal lets the current tenant finish (its transaction commits or rolls back as a unit).
    """
    outcomes: list[TenantOutcome] = []
    logger = configure_run_log(spec.log_file, spec.run_id)
    migrator = spec.migrator(logger)
    pending = deque(jobs)
    try:
        while (
            pending
            and not signals.count
            and not execution.lost_connection
            and not stop.should_stop(execution.failures)
        ):
            _record(migrator.migrate(pending.popleft()), outcomes, execution, on_outcome)
    finally:
        migrator.close()
    for outcome in _not_run(pending):
        _record(outcome, outcomes, execution, on_outcome)
    return outcomes


def _run_pool(
    spec: WorkerSpec,
    jobs: Sequence[TenantJob],
    workers: int,
    stop: StopPolicy,
    execution: Execution,
    on_outcome: OutcomeCallback | None,
    signals: _SignalState,
) -> list[TenantOutcome]:
    # spawn, not fork: the coordinator holds open connections and (in tests) threads; a forked
    # copy of a libpq connection shared by two processes corrupts the protocol stream.
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    pending = deque(jobs)
    outcomes: list[TenantOutcome] = []
    pool: dict[int, _Worker] = {}
    next_id = 0
    log = configure_run_log(spec.log_file, spec.run_id)

    def start_worker() -> None:
        nonlocal next_id
        tasks = ctx.Queue()
        process = ctx.Process(
            target=_worker_main,
            args=(spec, tasks, results, next_id),
            daemon=True,
            name=f"tenantmig-worker-{next_id}",
        )
        process.start()
        pool[next_id] = _Worker(process, tasks)
        next_id += 1

    def stopping() -> bool:
        return (
            signals.count > 0 or execution.lost_connection or stop.should_stop(execution.failures)
        )

    def assign(worker: _Worker) -> None:
        if pending and not stopping():
            worker.job = pending.popleft()
            worker.started = time.monotonic()
            worker.tasks.put(worker.job)
        else:
            worker.job = None

    for _ in range(min(workers, len(jobs))):
        start_worker()
    for worker in pool.values():
        assign(worker)

    terminated = False
    try:
        while any(w.job is not None for w in pool.values()):
            if signals.count >= 2 and not terminated:
                # Second signal: abort in-flight tenants. Killing the worker closes its
                # connection; PostgreSQL rolls the open transaction back.
                terminated = True
                for worker in pool.values():
                    if worker.job is not None and worker.process.is_alive():
                        worker.process.kill()
            try:
                worker_id, outcome = results.get(timeout=_POLL_S)
            except queue.Empty:
                _reap_dead_workers(
                    pool, outcomes, execution, on_outcome, log, terminated, start_worker, assign
                )
                continue
            owner = pool.get(worker_id)
            if owner is None:
                continue  # already recorded as died; its late result is stale
            owner.job = None
            _record(outcome, outcomes, execution, on_outcome)
            assign(owner)
    finally:
        for worker in pool.values():
            if worker.process.is_alive():
                worker.tasks.put(None)
        deadline = time.monotonic() + 10
        for worker in pool.values():
            worker.process.join(timeout=max(0.1, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
        results.close()
    for outcome in _not_run(pending):
        _record(outcome, outcomes, execution, on_outcome)
    return outcomes


def _reap_dead_workers(
    pool: dict[int, _Worker],
    outcomes: list[TenantOutcome],
    execution: Execution,
    on_outcome: OutcomeCallback | None,
    log: logging.Logger,
    terminated: bool,
    start_worker: Callable[[], None],
    assign: Callable[[_Worker], None],
) -> None:
    """A worker that died holding a tenant: record that tenant, replace the worker."""
    for worker_id, worker in list(pool.items()):
        if worker.job is None or worker.process.is_alive():
            continue
        job = worker.job
        code = worker.process.exitcode
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
            attempts=1,
            duration_s=time.monotonic() - worker.started,
            error=reason,
        )
        del pool[worker_id]
        _record(outcome, outcomes, execution, on_outcome)
        if not terminated:
            start_worker()
            assign(pool[max(pool)])
