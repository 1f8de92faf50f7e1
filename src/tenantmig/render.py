"""Turning result objects into text: tables, summaries and a live progress line."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO

from tenantmig.api import StatusReport
from tenantmig.executor import Execution
from tenantmig.ledger import RunRecord
from tenantmig.registry import Tenant
from tenantmig.results import RunResult, TenantOutcome, TenantStatus
from tenantmig.scripts import RevisionInfo


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


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

    def start(self, pending: int, workers: int) -> None:
        if self.quiet:
            return
        if pending:
            print(f"migrating {pending} tenant(s) with {workers} worker(s)", file=self.stream)
        else:
            print("all selected tenants are already at the target", file=self.stream)

    def __call__(self, outcome: TenantOutcome, execution: Execution) -> None:
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


def run_summary(result: RunResult) -> str:
    lines: list[str] = []
    if result.shared is not None:
        s = result.shared
        lines.append(
            f"shared schema {s.schema}: {s.status.value} "
            f"({s.from_revision or 'base'} -> {s.to_revision or 'base'})"
            + (f": {s.error}" if s.error else "")
        )
    if result.run_id is not None:
        totals = result.totals()
        parts = [f"{totals[st.value]} {st.value}" for st in TenantStatus if totals[st.value]]
        lines.append(
            f"run {result.run_id} ({result.command} {result.target}): {totals['total']} "
            f"tenant(s): {', '.join(parts) or 'none'} in {result.duration_s:.1f}s"
        )
        if result.failed:
            lines.append(
                table(
                    ["tenant", "status", "revision", "attempts", "error"],
                    [
                        (o.name, o.status.value, o.from_revision or "base", o.attempts, o.error)
                        for o in result.failed
                    ],
                )
            )
            lines.append(
                "the failed tenants were rolled back to their previous revision; fix the cause "
                "and run `tenantmig upgrade --all-tenants --only-failed` (or the same command "
                "again) to finish"
            )
    lines.extend(f"note: {n}" for n in result.notices)
    return "\n".join(lines)


def status_text(report: StatusReport) -> str:
    lines = [
        f"shared ({report.shared_schema}): {report.shared_revision or 'base'} "
        f"[head {report.shared_head}] {report.shared_state}",
    ]
    if not report.tenants:
        lines.append("no tenants registered")
        return "\n".join(lines)
    lines.append(
        table(
            ["tenant", "schema", "revision", "head", "state", "last run", "last error"],
            [
                (
                    t.name,
                    t.schema,
                    t.revision or "base",
                    t.head,
                    t.state,
                    f"{t.last_run_id}:{t.last_status}" if t.last_run_id else "",
                    t.last_error or "",
                )
                for t in report.tenants
            ],
        )
    )
    counts: dict[str, int] = {}
    for t in report.tenants:
        counts[t.state] = counts.get(t.state, 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    return "\n".join(lines)


def tenants_text(rows: Sequence[Tenant]) -> str:
    if not rows:
        return "no tenants registered"
    return table(
        ["tenant", "schema", "status", "created"],
        [
            (
                t.name,
                t.schema,
                t.status,
                t.created_at.strftime("%Y-%m-%d %H:%M") if t.created_at else "",
            )
            for t in rows
        ],
    )


def history_text(chain: str, revisions: Sequence[RevisionInfo], verbose: bool) -> str:
    lines = [f"{chain} chain:"]
    for info in revisions:
        head = " (head)" if info.is_head else ""
        first = info.message.splitlines()[0] if info.message else ""
        lines.append(f"  {info.down_revision or '<base>'} -> {info.revision}{head}, {first}")
        if verbose:
            lines.append(f"      path: {info.path}")
            for extra in info.message.splitlines()[1:]:
                lines.append(f"      {extra}".rstrip())
    return "\n".join(lines)


def runs_text(records: Sequence[RunRecord]) -> str:
    if not records:
        return "no runs recorded yet"
    return table(
        ["run", "command", "scope", "target", "started", "outcome", "totals", "by"],
        [
            (
                r.id,
                r.command,
                r.scope,
                r.target,
                f"{r.started_at:%Y-%m-%d %H:%M:%S}",
                r.outcome,
                " ".join(f"{k}={v}" for k, v in r.totals.items() if v and k != "total"),
                f"{r.db_user}@{r.host}:{r.pid}",
            )
            for r in records
        ],
    )


def run_text(record: RunRecord, outcomes: Sequence[TenantOutcome]) -> str:
    head = runs_text([record])
    if not outcomes:
        return head
    return (
        head
        + "\n\n"
        + table(
            ["tenant", "status", "from", "to", "attempts", "duration", "error"],
            [
                (
                    o.name,
                    o.status.value,
                    o.from_revision or "base",
                    o.to_revision or "",
                    o.attempts,
                    f"{o.duration_s:.2f}s",
                    o.error or "",
                )
                for o in outcomes
            ],
        )
    )
