"""Result objects: every tenant outcome is data; renderers turn it into text or JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from tenantmig.server.directory import CONTROL


class TenantStatus(str, Enum):
    OK = "ok"  # migrated and committed
    SKIPPED = "skipped"  # nothing to do: already at the target
    FAILED = "failed"  # rolled back; the schema is exactly at its old revision
    MISSING = "missing"  # registered, but its schema does not exist
    INTERRUPTED = "interrupted"  # stopped mid-migration by a signal; rolled back
    NOT_RUN = "not_run"  # never started: the run stopped scheduling first
    # Moved to another database during the run (``tenants move``), not migrated; the outcome's
    # database and revision are where it is now. The finishing command migrates it there.
    MOVED = "moved"

    @property
    def is_done(self) -> bool:
        """The tenant is where the run wanted it."""
        return self in (TenantStatus.OK, TenantStatus.SKIPPED)

    @property
    def is_failure(self) -> bool:
        """Counts as a failure (exit code, --max-failures); NOT_RUN is unfinished, not failed.

        MOVED counts: the run did not take the tenant where it was asked to (exit 3, and the
        finishing command), though nothing went wrong in it.
        """
        return self in (
            TenantStatus.FAILED,
            TenantStatus.MISSING,
            TenantStatus.INTERRUPTED,
            TenantStatus.MOVED,
        )


class RunScope(str, Enum):
    """What a run covered, as recorded in the ledger (``--only-failed`` matches on it)."""

    SHARED = "shared"
    TENANTS = "tenants"  # named tenants (--tenant, tenants create, restore)
    ALL_TENANTS = "all-tenants"
    EVERYTHING = "shared+all-tenants"


class RunOutcome(str, Enum):
    """How a run ended, as recorded in the ledger. ABANDONED is never written: it is what a
    RUNNING row reads as once its coordinator's live-run lock is gone (it was killed)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    STOPPED = "stopped"  # it lost its run lock: started no tenant after that (reason recorded)
    PAUSED = "paused"  # a rollout that ended after a wave, as asked (`runs resume` goes on)
    CANCELLED = "cancelled"  # a paused or stopped rollout given up (`runs cancel`)
    ABANDONED = "abandoned"


@dataclass(frozen=True)
class Target:
    """Where a run means to take one tenant: a revision id, or None for base. Resolved once,
    at the start of the run (relative targets from the tenant's revision then), and recorded,
    so that finishing the run later moves the tenant exactly there and no further."""

    revision: str | None

    # In the ledger: Alembic reserves "base", so it can never be a revision id.
    def to_ledger(self) -> str:
        return self.revision if self.revision is not None else "base"

    @classmethod
    def from_ledger(cls, text: str) -> Target:
        return cls(None if text == "base" else text)


@dataclass(frozen=True)
class TenantJob:
    name: str
    schema: str
    # What the coordinator's bulk read saw; verified again under the tenant's lock before a
    # compiled step is replayed (None: unknown, always take the ordinary Alembic path).
    seen_revision: str | None = None
    seen_version_table: bool | None = None
    # None: resolve from the run's target under the tenant's lock (its revision was unknown).
    target: Target | None = None
    database: str = CONTROL  # the directory's name of the database holding the schema

    def not_run(self, error: str | None = None) -> TenantOutcome:
        """This tenant, untouched: still where the run found it, at its start and at its end
        (from and to: the revision read), with why it did not start."""
        return TenantOutcome(
            self.name,
            self.schema,
            TenantStatus.NOT_RUN,
            self.seen_revision,
            self.seen_revision,
            error=error,
            database=self.database,
        )


@dataclass(frozen=True)
class TenantOutcome:
    name: str
    schema: str
    status: TenantStatus
    from_revision: str | None = None
    to_revision: str | None = None
    attempts: int = 0
    duration_s: float = 0.0
    error: str | None = None
    # The database stayed unreachable past the reconnect budget: the run stops scheduling.
    lost_connection: bool = False
    backup: str | None = None  # the pg_dump file taken before migrating (--backup)
    replayed: bool = False  # migrated by replaying a compiled step, not by running Alembic
    database: str = CONTROL  # the directory's name of the database holding the schema

    @property
    def reached(self) -> str | None:
        """The revision the tenant is at when the run ended ("base" at base), for the ledger's
        readers: JSON, ``runs show`` and the progress line all say this. None when it is not
        known: no schema, or a tenant failed before anything read it (its database unreachable).

        Every outcome that read the tenant carries its revision in ``to_revision``, also when
        the run did not move it (not run, failed, interrupted: still where it was read), so
        None there means base.
        """
        if self.to_revision is not None:
            return self.to_revision
        if self.status is TenantStatus.MISSING or (
            self.status is TenantStatus.FAILED and self.attempts == 0 and self.from_revision is None
        ):
            return None
        return "base"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "schema": self.schema,
            # "base" where the text says base; "to": where the tenant is when the run ended.
            "from": self.from_revision or "base",
            "to": self.reached,
            "status": self.status.value,
            "attempts": self.attempts,
            "duration_s": round(self.duration_s, 4),
            "error": self.error,
            "backup": self.backup,
            "replayed": self.replayed,
            "database": self.database,
        }


@dataclass
class RunResult:
    """The outcome of one run over the shared schema and/or tenants."""

    run_id: int | None
    command: str  # upgrade, downgrade or stamp
    target: str
    outcomes: list[TenantOutcome] = field(default_factory=list)
    shared: TenantOutcome | None = None
    interrupted: bool = False
    stopped: str | None = None  # why it stopped starting tenants: it lost its run lock
    duration_s: float = 0.0
    notices: list[str] = field(default_factory=list)
    # A rollout: each wave as it went; and why it ended before its last wave (a wave's gate
    # failed: ``halted``; --pause-after-wave: ``paused``).
    waves: list[WaveResult] | None = None
    halted: str | None = None
    paused: str | None = None
    paused_by_signal: bool = False  # Ctrl-C or SIGTERM during a soak: paused, exit 130

    def count(self, status: TenantStatus) -> int:
        return sum(1 for o in self.outcomes if o.status is status)

    @property
    def failed(self) -> list[TenantOutcome]:
        return [o for o in self.outcomes if o.status.is_failure]

    @property
    def succeeded(self) -> bool:
        shared_ok = self.shared is None or self.shared.status.is_done
        return (
            shared_ok
            and not self.failed
            and not self.interrupted
            and self.stopped is None
            and self.halted is None
        )

    @property
    def outcome(self) -> RunOutcome:
        if self.interrupted:
            return RunOutcome.INTERRUPTED
        if self.stopped is not None:
            return RunOutcome.STOPPED
        if self.failed or self.halted is not None:
            return RunOutcome.FAILED
        return RunOutcome.PAUSED if self.paused is not None else RunOutcome.SUCCEEDED

    def totals(self) -> dict[str, int]:
        totals = {status.value: self.count(status) for status in TenantStatus}
        totals["total"] = len(self.outcomes)
        return totals

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "command": self.command,
            "target": self.target,
            "interrupted": self.interrupted,
            "stopped": self.stopped,
            "duration_s": round(self.duration_s, 3),
            "shared": self.shared.to_json() if self.shared else None,
            "tenants": [o.to_json() for o in self.outcomes],
            "totals": self.totals(),
            "notices": self.notices,
            **(
                {
                    "waves": [wave.to_json() for wave in self.waves],
                    "halted": self.halted,
                    "paused": self.paused,
                }
                if self.waves is not None
                else {}
            ),
        }


@dataclass
class WaveResult:
    """One wave of a rollout: its spec, its tenants, and how far it got."""

    index: int  # from 0
    spec: str
    tenants: int
    state: str = "not_started"  # not_started / finished / stopped (its gate failed)
    counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "wave": self.index + 1,
            "spec": self.spec,
            "tenants": self.tenants,
            "state": self.state,
            "counts": self.counts,
        }
