"""What a run tells the things that watch it: the progress bar, the event stream, telemetry.

The coordinator calls one ``RunObserver`` (the CLI attaches a fan-out of several); it does not
know which are attached. Two places tell it things:

- the coordinator's process: the run started (with its id, once recorded), a tenant was handed
  to a worker, a tenant's attempt failed and will be retried, a tenant's outcome arrived;
- the process that migrates a tenant (a worker, or the coordinator itself for one tenant at a
  time): ``TenantHooks``, picklable, sent to each worker in the ``WorkerSpec``. Telemetry uses
  them so that a tenant's span is opened and closed where the tenant is migrated.

An observer must never change a run: what a hook raises is logged and the hook is switched off
for the rest of the run (``GuardedHooks``); the CLI's fan-out does the same for observers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from tenantmig.run.results import TenantJob, TenantOutcome, WaveResult


@dataclass
class Execution:
    """Live counters for progress rendering."""

    total: int
    done: int = 0
    failures: int = 0
    lost_connection: bool = False  # every database the run migrates in stayed unreachable
    started: float = field(default_factory=time.monotonic)
    unreachable: set[str] = field(default_factory=set)  # databases given up on


@dataclass(frozen=True)
class RunStart:
    """A run that will migrate tenants, as recorded: told before the first tenant starts."""

    run_id: int | None
    command: str  # upgrade / downgrade
    target: str
    pending: int  # tenants the run will migrate
    workers: int
    databases: tuple[str, ...]  # where the pending tenants live
    selected: int  # tenants selected, those already at their target included
    # Tenants the run recorded without migrating them: already at the target, schema missing,
    # database unreachable.
    settled: tuple[TenantOutcome, ...] = ()
    waves: tuple[str, ...] = ()  # a rollout's waves with their sizes: "label:canary (2)"


@dataclass(frozen=True)
class TenantRetry:
    """One attempt at a tenant failed in a way that may pass, and it will be tried again."""

    tenant: str
    schema: str
    database: str
    attempt: int  # the attempt that failed (the first is 1)
    reason: str  # lock timeout, deadlock, connection lost, ...
    sqlstate: str | None
    retry_in_s: float
    # Who held the locks it waited for (lock timeouts; best effort), as `describe()` says.
    blocked_by: tuple[str, ...] = field(default_factory=tuple)


class TenantHooks(Protocol):
    """Called in the process that migrates each tenant. Picklable: a worker gets a copy."""

    def begin(self, job: TenantJob) -> None: ...

    def retry(self, retry: TenantRetry) -> None: ...

    def end(self, job: TenantJob, outcome: TenantOutcome) -> None: ...

    def close(self) -> None:
        """The process migrates no more tenants for this run (flush what is buffered)."""


class RunObserver(Protocol):
    """Told about a run's progress in the coordinator's process."""

    def started(self, start: RunStart) -> None: ...

    def tenant_started(self, job: TenantJob) -> None: ...

    def tenant_retry(self, retry: TenantRetry) -> None: ...

    def outcome(self, outcome: TenantOutcome, execution: Execution) -> None: ...

    def wave_finished(self, wave: WaveResult) -> None:
        """A rollout's wave is over: finished, or stopped by its gate."""

    def tenant_hooks(self) -> TenantHooks | None:
        """Hooks to run where each tenant is migrated, or None."""


class QuietObserver:
    """An observer that ignores everything: subclass it and override what you watch."""

    def started(self, start: RunStart) -> None:
        pass

    def tenant_started(self, job: TenantJob) -> None:
        pass

    def tenant_retry(self, retry: TenantRetry) -> None:
        pass

    def outcome(self, outcome: TenantOutcome, execution: Execution) -> None:
        pass

    def wave_finished(self, wave: WaveResult) -> None:
        pass

    def tenant_hooks(self) -> TenantHooks | None:
        return None


class GuardedHooks:
    """``hooks`` that cannot fail a tenant: the first exception is logged and switches them off."""

    def __init__(self, hooks: TenantHooks | None, log: logging.Logger) -> None:
        self.hooks, self.log = hooks, log

    def _call(self, name: str, *args: object) -> None:
        if self.hooks is None:
            return
        try:
            getattr(self.hooks, name)(*args)
        except Exception:  # an observer's bug or its unreachable backend: never the run's
            self.log.warning("run observer failed in %s; switched off", name, exc_info=True)
            self.hooks = None

    def begin(self, job: TenantJob) -> None:
        self._call("begin", job)

    def retry(self, retry: TenantRetry) -> None:
        self._call("retry", retry)

    def end(self, job: TenantJob, outcome: TenantOutcome) -> None:
        self._call("end", job, outcome)

    def close(self) -> None:
        self._call("close")


class GuardedObserver:
    """``observer`` that cannot change a run: the first exception it raises is logged and
    switches it off for the rest of the run (the run's outcome and ledger stay the same)."""

    def __init__(self, observer: RunObserver | None, log: logging.Logger) -> None:
        self.observer, self.log = observer, log

    def _call(self, name: str, *args: object) -> object:
        if self.observer is None:
            return None
        try:
            return getattr(self.observer, name)(*args)
        except Exception:
            self.log.warning(
                "run observer %s failed in %s; switched off",
                type(self.observer).__name__,
                name,
                exc_info=True,
            )
            self.observer = None
            return None

    def started(self, start: RunStart) -> None:
        self._call("started", start)

    def tenant_started(self, job: TenantJob) -> None:
        self._call("tenant_started", job)

    def tenant_retry(self, retry: TenantRetry) -> None:
        self._call("tenant_retry", retry)

    def outcome(self, outcome: TenantOutcome, execution: Execution) -> None:
        self._call("outcome", outcome, execution)

    def wave_finished(self, wave: WaveResult) -> None:
        self._call("wave_finished", wave)

    def tenant_hooks(self) -> TenantHooks | None:
        hooks = self._call("tenant_hooks")
        return hooks  # type: ignore[return-value]  # what the observer's tenant_hooks returned
