"""Running a rollout wave by wave, with the gates between waves; resuming one.

The coordinator resolves the waves (``waves.assign``) and records them with the run; this
module runs them. A wave finishes completely (every tenant committed or rolled back) before
the next starts. Then, in order:

- more failures in the wave than ``--wave-max-failures``: the rollout stops (halted); later
  waves are recorded as not started; ``tenantmig runs resume RUN_ID`` goes on once the cause is
  fixed, the stopped wave's failed tenants first;
- ``--pause-after-wave``: the process ends with the run paused (exit 0);
- ``--soak SECONDS``: wait, then check the finished waves' tenants with drift; drift found is
  a failed wave. Ctrl-C or SIGTERM during the wait leaves the run paused.

While a rollout is paused, stopped or was killed with tenants left, another all-tenants run
of the same command is refused (exit 4) naming it: one rollout at a time.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

from tenantmig.errors import ConfigError, RunLocked, some_names
from tenantmig.run.ledger import OPEN_ROLLOUT, Ledger, RolloutState
from tenantmig.run.observers import RunObserver
from tenantmig.run.results import (
    RunResult,
    Target,
    TenantJob,
    TenantOutcome,
    TenantStatus,
    WaveResult,
)
from tenantmig.run.waves import Rollout
from tenantmig.schema.registry import Tenant

# Runs the jobs of one wave: (their outcomes, interrupted?).
Batch = Callable[[Sequence[TenantJob]], tuple[list[TenantOutcome], bool]]
# The names of those tenants (finished, ok) whose structure differs from their migrations.
DriftCheck = Callable[[Sequence[str]], list[str]]

_SOAK_POLL_S = 0.2


def refuse_beside_open_rollout(ledger: Ledger, command: str) -> None:
    """Another all-tenants run of ``command`` while a rollout of it is open: exit 4."""
    state = ledger.open_rollout(command)
    if state is None:
        return
    left = len(state.unfinished)
    raise RunLocked(
        f"rollout run {state.run_id} ({state.command} {state.target}) is {state.outcome} with "
        f"{left} tenant(s) not finished; one rollout at a time: continue it with `tenantmig "
        f"runs resume {state.run_id}` or end it with `tenantmig runs cancel {state.run_id}`"
    )


def resumable(ledger: Ledger, run_id: int, command: str | None = None) -> RolloutState:
    """The rollout ``run_id``, if it can be resumed (or cancelled); else a clear error."""
    state = ledger.rollout(run_id)
    if state is None:
        raise ConfigError(f"run {run_id} is not a rollout (a run with --waves) in the ledger")
    if command is not None and state.command != command:
        raise ConfigError(f"run {run_id} is a {state.command}, not a {command}")
    if state.outcome not in OPEN_ROLLOUT:
        raise ConfigError(
            f"run {run_id} is {state.outcome}: only a paused, stopped, failed, interrupted or "
            "abandoned rollout can be resumed or cancelled"
        )
    return state


@dataclass
class Resumed:
    """What a resumed rollout takes: its unfinished tenants, as they are now."""

    tenants: list[Tenant]
    gone: list[TenantOutcome]  # no longer registered: recorded missing, not resumed
    targets: dict[str, Target]
    waves: dict[str, int]
    failed_before: frozenset[str] = field(default_factory=frozenset)


def resume_selection(state: RolloutState, current: Sequence[Tenant]) -> Resumed:
    """The rollout's unfinished tenants, found in today's tenant list: each where it lives now
    (a tenant moved to another database since the rollout started is migrated there, to the
    target recorded for it). One no longer registered is recorded ``missing``, not resumed.
    A tenant migrated meanwhile by a run of its own is found at its target under its lock and
    skipped, as any tenant already there."""
    now = {t.name: t for t in current}
    chosen: list[Tenant] = []
    gone: list[TenantOutcome] = []
    for row in state.unfinished:
        tenant = now.get(row.tenant)
        if tenant is None:
            gone.append(
                TenantOutcome(
                    row.tenant,
                    row.schema,
                    TenantStatus.MISSING,
                    row.from_revision,
                    row.to_revision,
                    error="no longer registered: not resumed",
                    database=row.database,
                )
            )
            continue
        chosen.append(tenant)
    return Resumed(
        tenants=chosen,
        gone=gone,
        targets={r.tenant: r.target for r in state.unfinished if r.target is not None},
        waves={r.tenant: r.wave for r in state.rows},
        failed_before=frozenset(r.tenant for r in state.rows if r.status.is_failure),
    )


class _Soak:
    """Waits ``seconds``; a SIGINT or SIGTERM meanwhile ends the wait early (then: paused)."""

    def __init__(self) -> None:
        self.signalled = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signalled = True

    @contextlib.contextmanager
    def trapped(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def wait(self, seconds: float) -> bool:
        """True if the whole wait passed, False if a signal ended it."""
        deadline = time.monotonic() + seconds
        with self.trapped():
            while not self.signalled and time.monotonic() < deadline:
                time.sleep(min(_SOAK_POLL_S, max(0.0, deadline - time.monotonic())))
        return not self.signalled


class WaveRunner:
    """Runs a rollout's waves over ``jobs`` with ``batch``, filling ``result``."""

    def __init__(
        self,
        rollout: Rollout,
        wave_of: Mapping[str, int],
        result: RunResult,
        observer: RunObserver,
        record: Callable[[TenantOutcome], None],
        drift: DriftCheck,
        failed_before: frozenset[str] = frozenset(),
        done_before: Mapping[str, TenantStatus] | None = None,
    ) -> None:
        self.rollout, self.wave_of, self.result = rollout, wave_of, result
        self.observer, self.record, self.drift = observer, record, drift
        self.failed_before = failed_before
        self.done_before = dict(done_before or {})

    def run(
        self, jobs: Sequence[TenantJob], batch: Batch, stopped: Callable[[], bool]
    ) -> tuple[list[TenantOutcome], bool]:
        """(every outcome, interrupted?). ``stopped``: the run lost its run lock."""
        rollout, result = self.rollout, self.result
        sizes = Counter(self.wave_of.values())
        result.waves = [
            WaveResult(i, str(wave), sizes.get(i, 0)) for i, wave in enumerate(rollout.waves)
        ]
        for name, status in self.done_before.items():  # a resumed rollout's finished tenants
            counts = result.waves[self.wave_of.get(name, 0)].counts
            counts[status.value] = counts.get(status.value, 0) + 1
        outcomes: list[TenantOutcome] = []
        interrupted = False
        last = len(rollout.waves) - 1
        for index, wave in enumerate(result.waves):
            # The stopped wave's failed tenants first (a resume), then the rest of it.
            wave_jobs = sorted(
                (j for j in jobs if self.wave_of.get(j.name) == index),
                key=lambda j: j.name not in self.failed_before,
            )
            if not wave_jobs:
                # Nothing of it left to do (a resumed rollout's earlier waves): no gate, no
                # pause and no soak after it.
                wave.state = "finished"
                continue
            done, interrupted = batch(wave_jobs)
            outcomes.extend(done)
            for outcome in done:
                wave.counts[outcome.status.value] = wave.counts.get(outcome.status.value, 0) + 1
            failures = sum(1 for o in done if o.status.is_failure)
            if interrupted or stopped():
                wave.state = "stopped"
                self._not_started(
                    jobs, index + 1, "the run stopped (interrupted, or it lost its run lock)"
                )
                break
            if failures > rollout.max_failures:
                wave.state = "stopped"
                result.halted = (
                    f"{rollout.describe(index)} had {failures} failure(s), more than "
                    f"--wave-max-failures {rollout.max_failures}: the rollout stopped"
                )
                self._not_started(jobs, index + 1, f"the rollout stopped at wave {index + 1}")
                self.observer.wave_finished(wave)
                break
            wave.state = "finished"
            self.observer.wave_finished(wave)
            if index == last:
                break
            if rollout.pause_after_wave:
                result.paused = (
                    f"paused after {rollout.describe(index)}; next: {rollout.describe(index + 1)}"
                )
                self._not_started(jobs, index + 1, f"the rollout paused after wave {index + 1}")
                break
            if rollout.soak_s > 0 and not self._soaked(jobs, index, outcomes):
                break
        return outcomes, interrupted

    def _soaked(self, jobs: Sequence[TenantJob], index: int, outcomes: list[TenantOutcome]) -> bool:
        """Wait, then check the finished waves' migrated tenants with drift. False: the
        rollout ends here (drift found: halted; a signal: paused)."""
        rollout, result = self.rollout, self.result
        if not _Soak().wait(rollout.soak_s):
            result.paused_by_signal = True
            result.paused = (
                f"interrupted during the {rollout.soak_s:g}s soak after "
                f"{rollout.describe(index)}; next: {rollout.describe(index + 1)}"
            )
            self._not_started(jobs, index + 1, f"the rollout paused after wave {index + 1}")
            return False
        finished = [o.name for o in outcomes if o.status is TenantStatus.OK]
        drifted = self.drift(finished) if finished else []
        if drifted:
            wave = result.waves[index] if result.waves else None
            if wave is not None:
                wave.state = "stopped"
            result.halted = (
                f"drift found after the {rollout.soak_s:g}s soak after {rollout.describe(index)}"
                f" in {len(drifted)} tenant(s): {some_names(drifted)}; see `tenantmig drift`"
            )
            self._not_started(jobs, index + 1, f"the rollout stopped at wave {index + 1}")
            return False
        return True

    def _not_started(self, jobs: Sequence[TenantJob], first: int, why: str) -> None:
        """The jobs of wave ``first`` and later: not started, and why in a few words (each
        tenant's row says it; the run's reason says it in full)."""
        for job in jobs:
            wave = self.wave_of.get(job.name, 0)
            if wave >= first:
                self.record(job.not_run(f"wave {wave + 1} not started: {why}"))
