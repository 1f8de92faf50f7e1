"""A run's progress as it happens: a live line on a terminal, one line per tenant otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tenantmig.run.executor import Execution
from tenantmig.run.results import TenantOutcome, TenantStatus


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """A live progress line on a terminal; plain lines (one per migrated tenant) otherwise."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.quiet = quiet
        self._last_draw = 0.0
        self._drawn = False

    def started(self, pending: int, workers: int) -> None:
        if self.quiet:
            return
        if pending:
            print(f"migrating {pending} tenant(s) with {workers} worker(s)", file=self.stream)
        else:
            print("all selected tenants are already at the target", file=self.stream)

    def outcome(self, outcome: TenantOutcome, execution: Execution) -> None:
        if self.quiet:
            return
        if self.live:
            now = time.monotonic()
            if outcome.status is TenantStatus.FAILED:
                self._clear()
                print(f"  failed  {outcome.name}: {outcome.error}", file=self.stream)
            if now - self._last_draw > 0.1 or execution.done == execution.total:
                self._draw(execution)
                self._last_draw = now
            return
        error = f": {outcome.error}" if outcome.error else ""
        print(
            f"[{execution.done}/{execution.total}] {outcome.status.value:<11} {outcome.name} "
            f"{outcome.from_revision or 'base'} -> {outcome.to_revision or '-'} "
            f"({outcome.duration_s:.2f}s){error}",
            file=self.stream,
        )

    def _draw(self, execution: Execution) -> None:
        elapsed = max(1e-6, time.monotonic() - execution.started)
        rate = execution.done / elapsed
        remaining = execution.total - execution.done
        eta = _eta(remaining / rate) if rate > 0 else "?"
        width = 28
        filled = int(width * execution.done / max(1, execution.total))
        bar = "#" * filled + "." * (width - filled)
        line = (
            f"\r[{bar}] {execution.done}/{execution.total} done, {execution.failures} failed, "
            f"{remaining} left, {rate:.1f}/s, ETA {eta} "
        )
        self.stream.write(line)
        self.stream.flush()
        self._drawn = True
        if execution.done == execution.total:
            self.stream.write("\n")
            self._drawn = False

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self._drawn = False
