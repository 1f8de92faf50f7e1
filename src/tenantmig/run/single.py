"""A one-tenant operation (restore, move) recorded as a run from its first moment.

The run's row is written, with the tenant as not run, *before* anything changes, and the
coordinator's live-run lock is held while it works (``RunLocks``), exactly like an upgrade's. So
an operation that is killed, however, stays in the ledger: ``tenantmig runs`` shows it
abandoned instead of showing nothing. One that fails or is interrupted records why.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

from sqlalchemy.engine import Engine

from tenantmig.run.ledger import Ledger
from tenantmig.run.locks import RunLocks
from tenantmig.run.results import RunOutcome, RunScope, TenantOutcome, TenantStatus


class SingleRun:
    """``with SingleRun(...) as run: ...; run.finish(outcome)``; leaving the block without
    ``finish`` records the exception as the tenant's failure (or interruption)."""

    def __init__(
        self,
        engine: Engine,
        shared_schema: str,
        command: str,
        target: str,
        options: dict[str, Any],
        tenant: TenantOutcome,
    ) -> None:
        self._engine = engine
        self._shared_schema = shared_schema
        self._command = command
        self._target = target
        self._options = options
        self._tenant = tenant
        self._finished = False
        self.run_id = 0

    def __enter__(self) -> SingleRun:
        self._conn = self._engine.connect()
        self._ledger = Ledger(self._conn, self._shared_schema)
        self._ledger.ensure()
        self.run_id = self._ledger.start_run(
            self._command, RunScope.TENANTS, self._target, self._options
        )
        self._ledger.record(self.run_id, [self._tenant])
        self._locks = RunLocks(self._engine)
        self._locks.mark_alive(self.run_id)
        return self

    def finish(self, outcome: TenantOutcome) -> None:
        self._ledger.record(self.run_id, [outcome])
        ended = RunOutcome.SUCCEEDED if outcome.status.is_done else RunOutcome.FAILED
        if outcome.status is TenantStatus.INTERRUPTED:
            ended = RunOutcome.INTERRUPTED
        self._ledger.finish_run(self.run_id, ended, {outcome.status.value: 1})
        self._finished = True

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        try:
            if exc is not None and not self._finished:
                interrupted = isinstance(exc, KeyboardInterrupt)
                status = TenantStatus.INTERRUPTED if interrupted else TenantStatus.FAILED
                error = "interrupted (SIGINT/SIGTERM)" if interrupted else str(exc)
                # The record must not hide the original error: a ledger that cannot be written
                # now (the server went away) leaves the run to read as abandoned.
                with contextlib.suppress(Exception):
                    self.finish(replace(self._tenant, status=status, attempts=1, error=error))
        finally:
            self._locks.release()
            self._conn.close()
