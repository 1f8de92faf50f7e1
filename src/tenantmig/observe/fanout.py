"""Several observers of one run as one: the progress bar, the event stream, telemetry.

Each is called in turn; one that raises is switched off with a warning and the others go on
(an observer never changes a run). The command line tells them how the run ended
(``finished``, with its exit code) or that it ended in an error (``aborted``), then ``close``s
them: each ``shutdown`` waits a bounded time for what they still send.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tenantmig.run.observers import RunObserver, RunStart, TenantHooks, TenantRetry
from tenantmig.run.results import RunResult, TenantJob, TenantOutcome, WaveResult

if TYPE_CHECKING:
    from tenantmig.run.observers import Execution


class HooksInTurn:
    """Several observers' ``TenantHooks`` as one (picklable when each of them is)."""

    def __init__(self, hooks: Sequence[TenantHooks]) -> None:
        self.hooks = tuple(hooks)

    def begin(self, job: TenantJob) -> None:
        for hooks in self.hooks:
            hooks.begin(job)

    def retry(self, retry: TenantRetry) -> None:
        for hooks in self.hooks:
            hooks.retry(retry)

    def end(self, job: TenantJob, outcome: TenantOutcome) -> None:
        for hooks in self.hooks:
            hooks.end(job, outcome)

    def close(self) -> None:
        for hooks in self.hooks:
            hooks.close()


class Observers:
    """``RunObserver`` for several; ``warn`` says which one failed and was switched off."""

    def __init__(self, observers: Sequence[RunObserver], warn: Callable[[str], None]) -> None:
        self.observers: list[RunObserver] = list(observers)
        self.attached = tuple(observers)  # shut down at the end, switched off or not
        self.warn = warn

    def _each(self, name: str, *args: Any, among: Sequence[RunObserver] = ()) -> list[Any]:
        answers = []
        for observer in list(among or self.observers):
            method = getattr(observer, name, None)
            if method is None:
                continue
            try:
                answers.append(method(*args))
            except Exception as exc:  # its bug or its backend's: never the run's
                if observer in self.observers:
                    self.observers.remove(observer)
                self.warn(
                    f"{type(observer).__name__} failed ({type(exc).__name__}: {exc}); "
                    "it is off for the rest of the run"
                )
        return answers

    def started(self, start: RunStart) -> None:
        self._each("started", start)

    def tenant_started(self, job: TenantJob) -> None:
        self._each("tenant_started", job)

    def tenant_retry(self, retry: TenantRetry) -> None:
        self._each("tenant_retry", retry)

    def outcome(self, outcome: TenantOutcome, execution: Execution) -> None:
        self._each("outcome", outcome, execution)

    def wave_finished(self, wave: WaveResult) -> None:
        self._each("wave_finished", wave)

    def tenant_hooks(self) -> TenantHooks | None:
        hooks = [h for h in self._each("tenant_hooks") if h is not None]
        if not hooks:
            return None
        return hooks[0] if len(hooks) == 1 else HooksInTurn(hooks)

    def finished(self, result: RunResult, exit_code: int, finish_command: str | None) -> None:
        self._each("finished", result, exit_code, finish_command)

    def aborted(self, error: str, exit_code: int) -> None:
        self._each("aborted", error, exit_code)

    def close(self) -> None:
        """Each observer that sends somewhere finishes sending (``shutdown``)."""
        self._each("shutdown", self.warn, among=self.attached)
