"""Turning result objects into text: tables and summaries."""

from __future__ import annotations

import io
import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tenantmig.chains.scripts import Direction, RevisionInfo
from tenantmig.run.ledger import RunRecord
from tenantmig.run.results import RunResult, TenantOutcome, TenantStatus, WaveResult
from tenantmig.schema.registry import Tenant
from tenantmig.server.directory import CONTROL

if TYPE_CHECKING:
    from tenantmig.run.sqlscript import SchemaSQL
    from tenantmig.schema.status import StatusReport


def output_width() -> int:
    """The width tables fit: the terminal's when stdout is one ($COLUMNS wins, as everywhere).
    Piped and redirected output is never folded: a file path or an error stays on one line for
    grep and copy-paste."""
    if sys.stdout.isatty() or "COLUMNS" in os.environ:
        return max(40, shutil.get_terminal_size().columns)
    return 100_000


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], keep: Sequence[str] = ()
) -> str:
    """A table that fits ``output_width()``: when the width is short, cells wrap inside their
    column (long errors first: rich narrows the widest columns most); the first column, what
    the row is about, and the ``keep`` columns (revisions, states) are never wrapped or cut."""
    cells = [["" if c is None else str(c) for c in row] for row in rows]
    # A column with nothing in it (no errors) only takes width from the others.
    shown = [i for i in range(len(headers)) if i == 0 or any(row[i] for row in cells)]
    headers = [headers[i] for i in shown]
    cells = [[row[i] for i in shown] for row in cells]
    unwrapped = _unwrapped(headers, cells, output_width())
    if unwrapped is not None:
        return unwrapped
    if _too_narrow(headers, cells, keep, output_width()):
        return _expanded(headers, cells, output_width())
    # rich is imported when a table must wrap: a run with nothing to show does not load it.
    from rich import box
    from rich.console import Console
    from rich.table import Table

    grid = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        header_style="bold",
        collapse_padding=True,
    )
    for index, header in enumerate(headers):
        if index == 0 or header in keep:
            longest = max([len(header), *(len(row[index]) for row in cells)])
            grid.add_column(header, no_wrap=True, min_width=longest)
        else:
            grid.add_column(header, overflow="fold")
    for row in cells:
        grid.add_row(*row)
    buffer = io.StringIO()
    Console(
        file=buffer, width=output_width(), color_system=None, highlight=False, soft_wrap=False
    ).print(grid)
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip().splitlines())


def _unwrapped(headers: Sequence[str], cells: list[list[str]], width: int) -> str | None:
    """The table as rich draws it when every cell fits on its line (always, for piped output),
    or None when something must wrap or a cell holds characters only rich lays out.

    Laying out a table of 100,000 rows (``status`` or ``runs show`` of a whole fleet) through
    rich took half a minute and 300 MB for its per-cell objects; this costs the cells' own
    strings. A multi-line cell (an error with its DETAIL) takes as many lines as rich gives it.
    """
    from rich.cells import cell_len  # a small module: the width of wide characters

    widths = [cell_len(h) for h in headers]
    for row in cells:
        for index, cell in enumerate(row):
            if not cell.isascii() or not cell.isprintable():
                if not cell.replace("\n", "").isprintable():
                    return None  # tabs, escapes: rich's own handling
                size = max(cell_len(line) for line in cell.split("\n"))
            else:
                size = len(cell)
            if size > widths[index]:
                widths[index] = size
    total = sum(widths) + 2 * (len(widths) - 1)
    if total > width:
        return None

    def lines(row: Sequence[str]) -> list[str]:
        if not any("\n" in cell for cell in row):
            return [_line(row, widths)]
        parts = [cell.split("\n") for cell in row]
        height = max(len(part) for part in parts)
        return [
            _line([part[k] if k < len(part) else "" for part in parts], widths)
            for k in range(height)
        ]

    out = [*lines(headers), "─" * total]
    for row in cells:
        out.extend(lines(row))
    return "\n".join(out)


# Below this many cells a wrapped column breaks its words apart: a tenant's error, a file path.
_NARROWEST_WRAPPED = 16


def _too_narrow(
    headers: Sequence[str], cells: list[list[str]], keep: Sequence[str], width: int
) -> bool:
    """Whether the columns that may wrap would be left too little room to wrap between words:
    the columns kept whole (the first, ``keep``) take their full width first."""
    from rich.cells import cell_len

    def natural(index: int) -> int:
        return max(
            cell_len(headers[index]),
            *(cell_len(line) for row in cells for line in row[index].split("\n")),
        )

    kept = [i for i, header in enumerate(headers) if i == 0 or header in keep]
    room = width - sum(natural(i) for i in kept) - 2 * (len(headers) - 1)
    needed = sum(min(natural(i), _NARROWEST_WRAPPED) for i in range(len(headers)) if i not in kept)
    return room < needed


def _expanded(headers: Sequence[str], cells: list[list[str]], width: int) -> str:
    """Each row as a block, for a terminal too narrow for the table: the first cell (what the
    row is about) on a line of its own, then each other non-empty cell under its header's
    name, wrapped between words. As psql's expanded display does for wide rows."""
    label = max(len(header) for header in headers[1:]) if len(headers) > 1 else 0
    text = max(20, width - label - 4)
    out: list[str] = []
    for row in cells:
        if out:
            out.append("")
        out.append(row[0] or "-")
        for header, cell in zip(headers[1:], row[1:], strict=True):
            if not cell:
                continue
            lines = [
                wrapped
                for paragraph in cell.split("\n")
                for wrapped in textwrap.wrap(paragraph, text, break_on_hyphens=False) or [""]
            ]
            out.append(f"  {header.ljust(label)}  {lines[0]}".rstrip())
            out.extend(f"  {'':{label}}  {line}".rstrip() for line in lines[1:])
    return "\n".join(out)


def _line(row: Sequence[str], widths: Sequence[int]) -> str:
    from rich.cells import cell_len

    padded = [
        cell + " " * (width - (len(cell) if cell.isascii() else cell_len(cell)))
        for cell, width in zip(row, widths, strict=True)
    ]
    return "  ".join(padded).rstrip()


def run_summary(result: RunResult, finish: str | None = None) -> str:
    """The run's totals, its failures and notes; ``finish``: the command that finishes it."""
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
                    keep=("status", "revision"),
                )
            )
            moved = sum(1 for o in result.failed if o.status is TenantStatus.MOVED)
            if moved < len(result.failed):
                lines.append("the failed tenants were rolled back to their previous revision")
            if moved:
                lines.append(
                    "the moved tenants were left as they are, in their new database, where the "
                    "finishing command below migrates them"
                )
    if result.waves is not None:
        lines.append(waves_text(result.waves))
        if result.halted is not None:
            lines.append(f"rollout stopped: {result.halted}")
        if result.paused is not None:
            lines.append(f"rollout {result.paused}")
    backups = [o.backup for o in result.outcomes if o.backup]
    if backups:
        folder = os.path.dirname(backups[0])
        lines.append(f"backups: {len(backups)} pg_dump file(s) in {folder} (tenantmig restore)")
    lines.extend(
        textwrap.fill(n, output_width(), initial_indent="note: ", subsequent_indent="      ")
        for n in result.notices
    )
    if finish is not None and result.waves is not None:
        if result.paused is not None and result.halted is None and not result.failed:
            lines.append("to go on with the next wave, or to give the rollout up:")
        else:
            lines.append(
                "to go on with this rollout (once the cause is fixed: the stopped wave's "
                "failed tenants first, then the later waves), or to give it up:"
            )
        lines.append(f"  {finish}")
        lines.append(f"  {finish.replace(' runs resume ', ' runs cancel ')}")
    elif finish is not None:
        lines.append(
            "to finish this run once the cause is fixed (it moves only the tenants this run did "
            "not finish, to the revisions this run meant for them):"
        )
        lines.append(f"  {finish}")
    return "\n".join(lines)


def _fitted(line: str) -> str:
    """A line of text folded between words to ``output_width()`` (never inside a word: a
    revision id stays whole), continued indented."""
    return textwrap.fill(
        line,
        output_width(),
        subsequent_indent="  ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def status_text(report: StatusReport) -> str:
    lines = [
        _fitted(
            f"shared ({report.shared_schema}): {report.shared_revision or 'base'} "
            f"[head {report.shared_head or 'base'}] {report.shared_state.value}"
        ),
    ]
    if not report.tenants:
        lines.append("no tenants registered")
        return "\n".join(lines)
    # One head for every tenant: said once, above the table, not in a column of its own.
    lines.append(f"tenants: head {report.tenants[0].head or 'base'}")
    lines.append(
        table(
            ["tenant", "schema", "database", "node", "revision", "state", "last run", "last error"],
            [
                (
                    t.name,
                    t.schema,
                    "" if t.database == CONTROL else t.database,
                    t.node or "",
                    t.revision or "base",
                    t.state.value,
                    f"{t.last_run_id}:{t.last_status}" if t.last_run_id else "",
                    t.last_error or "",
                )
                for t in report.tenants
            ],
            keep=("revision", "state"),
        )
    )
    counts: dict[str, int] = {}
    for t in report.tenants:
        counts[t.state.value] = counts.get(t.state.value, 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    lines.extend(f"unfinished move: {move.describe()}" for move in report.moves)
    return "\n".join(lines)


def tenants_text(rows: Sequence[Tenant]) -> str:
    if not rows:
        return "no tenants registered"
    return table(
        ["tenant", "schema", "database", "status", "labels", "created"],
        [
            (
                t.name,
                t.schema,
                "" if t.database == CONTROL else t.database,
                t.status,
                ",".join(t.labels),
                t.created_at.strftime("%Y-%m-%d %H:%M") if t.created_at else "",
            )
            for t in rows
        ],
        keep=("schema",),
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


def revisions_text(chain: str, revisions: Sequence[RevisionInfo]) -> str:
    """heads / branches: one line per revision (and where a branch goes)."""
    if not revisions:
        return f"{chain} chain: none"
    lines = [f"{chain} chain:"]
    for info in revisions:
        head = " (head)" if info.is_head else ""
        first = info.message.splitlines()[0] if info.message else ""
        lines.append(f"  {info.revision}{head}, {first}")
        if len(info.next_revisions) > 1:
            lines.append(f"      branches to: {', '.join(info.next_revisions)}")
    return "\n".join(lines)


def revision_detail(chain: str, info: RevisionInfo) -> str:
    """show: everything about one revision."""
    return "\n".join(
        [
            f"{chain} revision {info.revision}{' (head)' if info.is_head else ''}",
            f"  parent: {info.down_revision or 'base'}",
            f"  next:   {', '.join(info.next_revisions) or '-'}",
            f"  path:   {info.path}",
            "",
            *(f"  {line}".rstrip() for line in info.message.splitlines()),
        ]
    )


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
        keep=("command", "outcome"),
    )


def waves_text(waves: Sequence[WaveResult]) -> str:
    """A rollout's waves, one row each: its spec, tenants, state and statuses."""
    return table(
        ["wave", "spec", "tenants", "state", "statuses"],
        [
            (
                w.index + 1,
                w.spec,
                w.tenants,
                w.state.replace("_", " "),
                ", ".join(f"{n} {status}" for status, n in sorted(w.counts.items())),
            )
            for w in waves
        ],
        keep=("spec", "state"),
    )


def run_text(record: RunRecord, outcomes: Sequence[TenantOutcome]) -> str:
    head = runs_text([record])
    if record.reason:
        head += f"\nstopped before its end: {record.reason}"
    if record.waves is not None:
        head += "\n\n" + waves_text(record.waves)
    if not outcomes:
        return head
    headers = [
        "tenant", "database", "status", "from", "to", "by", "attempts", "duration", "error"
    ]  # fmt: skip
    with_backups = any(o.backup for o in outcomes)
    if with_backups:
        headers.insert(-1, "backup")
    rows = []
    for o in outcomes:
        row: list[object] = [
            o.name,
            "" if o.database == CONTROL else o.database,
            o.status.value,
            o.from_revision or "base",
            _reached(o),
            _how(o) if record.command in ("upgrade", "downgrade") else "",
            o.attempts,
            f"{o.duration_s:.2f}s",
        ]
        if with_backups:
            row.append(o.backup or "")
        row.append(o.error or "")
        rows.append(row)
    return head + "\n\n" + table(headers, rows, keep=("status",))


def _reached(outcome: TenantOutcome) -> str:
    """The revision a tenant ended at, as its JSON says it (``base`` at base); nothing when it
    is not known (no schema, a database that could not be read)."""
    return outcome.reached or ""


def _how(outcome: TenantOutcome) -> str:
    """How a migrated tenant got there: a replayed compiled step, or Alembic."""
    if outcome.status is not TenantStatus.OK:
        return ""
    return "replay" if outcome.replayed else "alembic"


def sql_stream(scripts: Sequence[SchemaSQL], direction: Direction) -> str:
    """One stream with a header per schema (for one file per schema: ``--sql-dir``)."""
    if all(item.one_transaction for item in scripts):
        how = "Apply with `psql -1 -f FILE` (one transaction: every schema or none)"
    else:
        how = (
            "Apply with `psql -v ON_ERROR_STOP=1 -f FILE`, not -1: a schema's range has "
            "statements outside a transaction (its first lines say so), so each revision "
            "commits on its own"
        )
    parts = [
        f"-- tenantmig {direction} --sql: {len(scripts)} schema(s). {how}; --sql-dir writes "
        "one file per schema."
    ]
    for item in scripts:
        parts.append("-- " + "=" * 76)
        parts.append(item.header(direction))
        parts.append(item.sql if item.sql is not None else "-- already at the target: no SQL\n")
    return "\n".join(parts)
