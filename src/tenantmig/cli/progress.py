"""A run's progress as it happens: a live bar on a terminal, one line per tenant otherwise.

On a terminal the bar (``rich``) is redrawn in place and always fits the terminal's width: the
bar itself takes what the counts leave. Failed tenants are printed above it as they happen. The
ETA appears only once it means something (a few tenants done and a couple of seconds gone).
When the run ends, or is interrupted, the bar is replaced by one line with the true counts.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TYPE_CHECKING, TextIO

from tenantmig.run.observers import QuietObserver, RunStart
from tenantmig.run.results import TenantOutcome

if TYPE_CHECKING:
    from rich.progress import Progress as LiveBar

    from tenantmig.run.observers import Execution

# The ETA is shown once this many tenants are done and this many seconds have passed: before
# that, the rate is dominated by worker start-up and says little about the rest.
_ETA_AFTER_TENANTS = 3
_ETA_AFTER_SECONDS = 2.0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _reached(outcome: TenantOutcome) -> str:
    """Where a tenant ended, as its JSON says it (``base`` at base); ``-`` when it is not known
    (no schema, a database that could not be read)."""
    return outcome.reached or "-"


class _Counts:
    """What a person wants to know, counted from the outcomes themselves: tenants a run did not
    get to (reported as not run after an interrupt) are not "done"."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0  # migrated, or already there
        self.failed = 0
        self.seen = 0  # every outcome, the not-run ones too: the plain lines' numbering
        self.started = time.monotonic()

    @property
    def finished(self) -> int:
        return self.done + self.failed

    def add(self, outcome: TenantOutcome) -> None:
        self.seen += 1
        if outcome.status.is_done:
            self.done += 1
        elif outcome.status.is_failure:
            self.failed += 1

    def line(self, *, eta: bool = True) -> str:
        """``120/1000 done · 2 failed · 41.3/s · ETA 21s``."""
        elapsed = max(1e-6, time.monotonic() - self.started)
        rate = self.finished / elapsed
        parts = [f"{self.done}/{self.total} done", f"{self.failed} failed", f"{rate:.1f}/s"]
        meaningful = self.finished >= _ETA_AFTER_TENANTS and elapsed >= _ETA_AFTER_SECONDS
        remaining = self.total - self.finished
        if eta and meaningful and remaining and rate > 0:
            parts.append(f"ETA {_duration(remaining / rate)}")
        return " · ".join(parts)


class Progress(QuietObserver):
    """A live progress bar on a terminal; plain lines (one per migrated tenant) otherwise."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.quiet = quiet
        self._bar: LiveBar | None = None
        self._counts = _Counts()

    def started(self, start: RunStart) -> None:
        if self.quiet:
            return
        pending, workers = start.pending, start.workers
        # The run's counts, from its start: a rollout hands its tenants out a wave at a time,
        # each wave counted from 1 by the executor, while a person wants the whole run's.
        self._counts.total, self._counts.started = pending, time.monotonic()
        if not pending:
            print("all selected tenants are already at the target", file=self.stream)
            return
        in_waves = (
            f" in {len(start.waves)} wave(s): {', '.join(start.waves)}" if start.waves else ""
        )
        print(f"migrating {pending} tenant(s) with {workers} worker(s){in_waves}", file=self.stream)
        if self.live:
            # Three columns short of the terminal: the "^C" the terminal echoes when Ctrl-C is
            # typed must fit on the bar's line, or it wraps and leaves a stale bar behind.
            columns = shutil.get_terminal_size().columns
            # Imported only when a bar is drawn (on a terminal, with tenants to migrate).
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn
            from rich.progress import Progress as LiveBar

            self._bar = LiveBar(
                # Named colours of the 16 every terminal has: rich's defaults (a pink bar that
                # turns green when done) fall back to red and grey on a 16-colour terminal.
                BarColumn(
                    bar_width=None,
                    style="bright_black",
                    complete_style="cyan",
                    finished_style="green",
                ),
                TextColumn("{task.description}"),
                console=Console(file=self.stream, highlight=False, width=max(20, columns - 3)),
                transient=True,  # replaced by one plain line in close()
                expand=True,
                refresh_per_second=8,
            )
            self._bar.start()
            # Counts from the first frame, not only once the first tenant is done.
            self._bar.add_task(f"0/{pending} done · 0 failed", total=pending)

    def outcome(self, outcome: TenantOutcome, execution: Execution) -> None:
        if self.quiet:
            return
        self._counts.add(outcome)
        if self._bar is not None:
            if outcome.status.is_failure:
                self._bar.console.print(
                    f"  {outcome.status.value}  {outcome.name}: {outcome.error}", markup=False
                )
            self._bar.update(
                self._bar.task_ids[0],
                completed=self._counts.finished,
                description=self._counts.line(),
            )
            return
        if self.live:
            return  # on a terminal, before the bar started: nothing to draw yet
        error = f": {outcome.error}" if outcome.error else ""
        print(
            f"[{self._counts.seen}/{self._counts.total}] {outcome.status.value:<11} "
            f"{outcome.name} "
            f"{outcome.from_revision or 'base'} -> {_reached(outcome)} "
            f"({outcome.duration_s:.2f}s){error}",
            file=self.stream,
        )

    def close(self, *, interrupted: bool = False) -> None:
        """Replace the bar with one line of true counts (also after an interrupt)."""
        if self._bar is None:
            return
        bar, self._bar = self._bar, None
        bar.stop()
        line = self._counts.line(eta=False)
        left = self._counts.total - self._counts.finished
        if interrupted:
            line += f" · interrupted, {left} not finished"
        elif left:
            line += f" · {left} not started"
        print(line, file=self.stream, flush=True)
