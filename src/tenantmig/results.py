"""Result objects: every tenant outcome is data; renderers turn it into text or JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

Direction = Literal["upgrade", "downgrade"]


class TenantStatus(str, Enum):
    OK = "ok"  # migrated and committed
    SKIPPED = "skipped"  # nothing to do: already at the target
    FAILED = "failed"  # rolled back; the schema is exactly at its old revision
    MISSING = "missing"  # registered, but its schema does not exist
    INTERRUPTED = "interrupted"  # stopped mid-migration by a signal; rolled back
    NOT_RUN = "not_run"  # never started: the run stopped scheduling first


@dataclass(frozen=True)
class TenantJob:
    name: str
    schema: str
    # What the coordinator's bulk read saw; verified again under the tenant's lock before a
    # compiled step is replayed (None: unknown, always take the ordinary Alembic path).
    seen_revision: str | None = None
    seen_version_table: bool | None = None


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

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "schema": self.schema,
            "from": self.from_revision,
            "to": self.to_revision,
            "status": self.status.value,
            "attempts": self.attempts,
            "duration_s": round(self.duration_s, 4),
            "error": self.error,
            "backup": self.backup,
        }


@dataclass
class RunResult:
    """The outcome of one run over the shared schema and/or tenants."""

    run_id: int | None
    command: Direction
    target: str
    outcomes: list[TenantOutcome] = field(default_factory=list)
    shared: TenantOutcome | None = None
    interrupted: bool = False
    duration_s: float = 0.0
    notices: list[str] = field(default_factory=list)

    def count(self, status: TenantStatus) -> int:
        return sum(1 for o in self.outcomes if o.status is status)

    @property
    def failed(self) -> list[TenantOutcome]:
        bad = (TenantStatus.FAILED, TenantStatus.MISSING, TenantStatus.INTERRUPTED)
        return [o for o in self.outcomes if o.status in bad]

    @property
    def succeeded(self) -> bool:
        shared_ok = self.shared is None or self.shared.status in (
            TenantStatus.OK,
            TenantStatus.SKIPPED,
        )
        return shared_ok and not self.failed and not self.interrupted

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
            "duration_s": round(self.duration_s, 3),
            "shared": self.shared.to_json() if self.shared else None,
            "tenants": [o.to_json() for o in self.outcomes],
            "totals": self.totals(),
            "notices": self.notices,
        }
