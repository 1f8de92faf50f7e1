"""Status: every schema's revision against head, with each tenant's last recorded outcome."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tenantmig.chains.scripts import ChainScripts
from tenantmig.schema.moves import PendingMove
from tenantmig.schema.registry import Tenant
from tenantmig.schema.state import SchemaState, classify
from tenantmig.schema.versions import SchemaVersion
from tenantmig.server.directory import CONTROL


@dataclass(frozen=True)
class LastOutcome:
    """A tenant's most recent outcome, as the run ledger recorded it."""

    tenant: str
    run_id: int
    status: str
    error: str | None
    finished_at: datetime | None
    failed: bool  # not ok or skipped: the error is worth showing


@dataclass(frozen=True)
class TenantState:
    name: str
    schema: str
    revision: str | None
    head: str | None
    state: SchemaState
    last_status: str | None = None
    last_error: str | None = None
    last_run_id: int | None = None
    invalid_indexes: tuple[str, ...] = ()
    # The node holding the schema on a Citus cluster (host:port, or "coordinator"); None on
    # a single server, and for a distributed schema that has no table yet.
    node: str | None = None
    database: str = CONTROL  # the directory's name of the database holding the schema

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "schema": self.schema,
            "revision": self.revision or "base",
            "head": self.head or "base",
            "state": self.state.value,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "last_run_id": self.last_run_id,
            "invalid_indexes": list(self.invalid_indexes),
            "node": self.node,
            "database": self.database,
        }


@dataclass(frozen=True)
class StatusReport:
    shared_schema: str
    shared_revision: str | None
    shared_head: str | None
    shared_state: SchemaState
    tenants: list[TenantState] = field(default_factory=list)
    moves: list[PendingMove] = field(default_factory=list)  # unfinished `tenants move`s

    def to_json(self) -> dict[str, Any]:
        return {
            "unfinished_moves": [m.to_json() for m in self.moves],
            "shared": {
                "schema": self.shared_schema,
                "revision": self.shared_revision or "base",
                "head": self.shared_head or "base",
                "state": self.shared_state.value,
            },
            "tenants": [t.to_json() for t in self.tenants],
        }


def tenant_states(
    tenants: Sequence[Tenant],
    versions: Mapping[str, SchemaVersion],
    scripts: ChainScripts,
    invalid: Mapping[str, Sequence[str]],
    last: Mapping[str, LastOutcome],
    nodes: Mapping[str, str] | None = None,
    down: Mapping[str, str] | None = None,
) -> list[TenantState]:
    """``down``: databases that could not be reached, with why; their tenants' revisions
    are unknown."""
    """One TenantState per tenant, from what the bulk reads and the ledger returned."""
    states = []
    for tenant in tenants:
        version = versions.get(tenant.schema)
        previous = last.get(tenant.name)
        broken = tuple(invalid.get(tenant.schema, ()))
        unreachable = (down or {}).get(tenant.database)
        if unreachable is not None:
            states.append(
                TenantState(
                    name=tenant.name,
                    schema=tenant.schema,
                    revision=None,
                    head=scripts.head,
                    state=SchemaState.UNREACHABLE,
                    last_status=previous.status if previous else None,
                    last_error=unreachable,
                    last_run_id=previous.run_id if previous else None,
                    database=tenant.database,
                )
            )
            continue
        states.append(
            TenantState(
                name=tenant.name,
                schema=tenant.schema,
                revision=version.revision if version else None,
                head=scripts.head,
                state=SchemaState.NEEDS_ATTENTION if broken else classify(version, scripts).state,
                last_status=previous.status if previous else None,
                last_error=previous.error if previous and previous.failed else None,
                last_run_id=previous.run_id if previous else None,
                invalid_indexes=broken,
                node=(nodes or {}).get(tenant.schema),
                database=tenant.database,
            )
        )
    return states
