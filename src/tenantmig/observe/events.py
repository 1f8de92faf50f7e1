"""A run as a stream of JSON events, one object per line, written as things happen.

``--events FILE`` (appended to) or ``--events -`` (standard output): ``run_started``,
``tenant_started``, ``tenant_retry``, ``tenant_finished``, ``run_finished``. Every event has
``schema_version``, ``ts`` (UTC, RFC 3339), ``run_id`` and ``event``; docs/events.schema.json
describes each one field by field (the tests check every event against it).

Every invocation that reaches the run writes exactly one ``run_started`` and one
``run_finished``, also when there was nothing to do (``run_id`` null: no run was recorded) or
when the run ended in an error (``run_finished`` has the exit code and the error).

Lines are written and flushed by a thread of their own: a reader that does not keep up (a full
pipe, a stalled network file system) slows the stream, never the run. At the end the run waits
a few seconds for the stream to drain, then says how many events were not written and exits.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tenantmig.errors import ConfigError
from tenantmig.run.observers import QuietObserver, RunStart, TenantRetry
from tenantmig.run.results import RunResult, TenantJob, TenantOutcome, TenantStatus, WaveResult

if TYPE_CHECKING:
    from tenantmig.run.observers import Execution
    from tenantmig.run.plan import Selection

SCHEMA_VERSION = 1
STDOUT = "-"
DRAIN_TIMEOUT_S = 5.0


class EventSink:
    """Lines written and flushed in order by a thread of their own."""

    def __init__(self, stream: IO[str], *, owned: bool) -> None:
        self.stream, self.owned = stream, owned
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.failed: str | None = None
        self.written = 0
        self.sent = 0
        self.thread = threading.Thread(target=self._write, name="tenantmig-events", daemon=True)
        self.thread.start()

    @classmethod
    def open(cls, where: str) -> EventSink:
        """``-`` for standard output, else a file appended to (created if missing)."""
        if where == STDOUT:
            return cls(sys.stdout, owned=False)
        path = Path(where)
        if not path.parent.is_dir():
            raise ConfigError(f"--events: no directory {path.parent}")
        try:
            stream = path.open("a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--events: cannot write {path}: {exc.strerror or exc}") from None
        return cls(stream, owned=True)

    def put(self, line: str) -> None:
        self.sent += 1
        self.lines.put(line)

    def _write(self) -> None:
        while (line := self.lines.get()) is not None:
            if self.failed is not None:
                continue  # the stream broke: the rest are counted as not written
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
                self.written += 1
            except (OSError, ValueError) as exc:  # a closed pipe, a full disk
                self.failed = str(getattr(exc, "strerror", None) or exc)

    def shutdown(self, warn: Callable[[str], None]) -> None:
        self.lines.put(None)
        self.thread.join(DRAIN_TIMEOUT_S)
        lost = self.sent - self.written
        if self.failed is not None:
            warn(f"event stream broke ({self.failed}): {lost} event(s) not written")
        elif self.thread.is_alive():
            warn(f"event stream: {lost} event(s) not written within {DRAIN_TIMEOUT_S:.0f}s")
        if self.owned and not self.thread.is_alive():
            self.stream.close()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _selection(selection: Selection, only_failed: bool) -> dict[str, Any]:
    return {
        "shared": selection.shared,
        "all_tenants": selection.every_tenant,
        "tenants": list(selection.tenants) if selection.tenants is not None else None,
        "databases": list(selection.databases) if selection.databases is not None else None,
        "labels": list(selection.labels) if selection.labels is not None else None,
        "only_failed": only_failed,
    }


def _tenant(job: TenantJob | TenantOutcome) -> dict[str, Any]:
    return {"tenant": job.name, "schema": job.schema, "database": job.database}


class EventStream(QuietObserver):
    """Writes a run's events to ``sink``."""

    def __init__(
        self,
        sink: EventSink,
        command: str,
        target: str,
        selection: Selection,
        *,
        only_failed: bool = False,
    ) -> None:
        self.sink = sink
        self.command, self.target = command, target
        self.selection = _selection(selection, only_failed)
        self.run_id: int | None = None
        self.announced = False

    def _emit(self, event: str, **fields: Any) -> None:
        record = {
            "schema_version": SCHEMA_VERSION,
            "ts": _now(),
            "run_id": self.run_id,
            "event": event,
            **fields,
        }
        self.sink.put(json.dumps(record, default=str))

    def _run_started(self, start: RunStart | None) -> None:
        self.announced = True
        self._emit(
            "run_started",
            command=self.command,
            target=self.target,
            selection=self.selection,
            tenants=start.pending if start else 0,
            selected=start.selected if start else None,
            jobs=start.workers if start else 0,
            databases=list(start.databases) if start else [],
        )

    # -- the run, as the coordinator tells it ----------------------------------------------
    def started(self, start: RunStart) -> None:
        self.run_id = start.run_id
        self._run_started(start)
        for outcome in start.settled:
            # Tenants the run recorded without migrating them: failures only (a missing
            # schema, a database it could not reach); those already at the target are in
            # run_finished's counts, not one line each.
            if outcome.status is not TenantStatus.SKIPPED:
                self._finished(outcome)

    def tenant_started(self, job: TenantJob) -> None:
        # What the run read at its start: base when it saw no version, null when unknown.
        seen = job.seen_revision or ("base" if job.seen_version_table is not None else None)
        self._emit("tenant_started", **_tenant(job), **{"from": seen})

    def tenant_retry(self, retry: TenantRetry) -> None:
        self._emit(
            "tenant_retry",
            tenant=retry.tenant,
            schema=retry.schema,
            database=retry.database,
            attempt=retry.attempt,
            reason=retry.reason,
            sqlstate=retry.sqlstate,
            retry_in_s=retry.retry_in_s,
            blocked_by=list(retry.blocked_by),
        )

    def outcome(self, outcome: TenantOutcome, execution: Execution) -> None:
        self._finished(outcome)

    def wave_finished(self, wave: WaveResult) -> None:
        self._emit("wave_finished", **wave.to_json())

    def _finished(self, outcome: TenantOutcome) -> None:
        # The fields and their values as --json and the notifications give them.
        fields = outcome.to_json()
        self._emit(
            "tenant_finished",
            **_tenant(outcome),
            status=fields["status"],
            **{"from": fields["from"], "to": fields["to"]},
            duration_s=round(outcome.duration_s, 3),
            attempts=fields["attempts"],
            replayed=fields["replayed"],
            backup=fields["backup"],
            error=fields["error"],
        )

    # -- the end, as the command line tells it ----------------------------------------------
    def finished(self, result: RunResult, exit_code: int, finish_command: str | None) -> None:
        if not self.announced:
            self.run_id = result.run_id
            self._run_started(None)
        counts = Counter(o.status.value for o in result.outcomes)
        shared = result.shared
        self._emit(
            "run_finished",
            exit_code=exit_code,
            duration_s=round(result.duration_s, 3),
            counts={status.value: counts.get(status.value, 0) for status in TenantStatus},
            shared=(
                {
                    key: value
                    for key, value in shared.to_json().items()
                    if key in ("status", "from", "to", "error")
                }
                if shared is not None
                else None
            ),
            interrupted=result.interrupted,
            stopped=result.stopped,
            finish_command=finish_command,
            notices=list(result.notices),
            error=None,
        )

    def shutdown(self, warn: Callable[[str], None]) -> None:
        self.sink.shutdown(warn)

    def aborted(self, error: str, exit_code: int) -> None:
        """The run ended in an error (``error``, as printed) instead of a result."""
        if not self.announced:
            self._run_started(None)
        self._emit(
            "run_finished",
            exit_code=exit_code,
            duration_s=None,
            counts=None,
            shared=None,
            interrupted=exit_code == 130,
            stopped=None,
            finish_command=None,
            notices=[],
            error=error,
        )
