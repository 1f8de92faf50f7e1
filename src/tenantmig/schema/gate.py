"""The deploy gate: is the shared schema and every active tenant at head?

For a deploy pipeline before it sends traffic to new application code, and for an
application's start-up or readiness probe. Only versions are read, in bulk (one catalog query
and one UNION ALL query per chunk of schemas): no catalog snapshot, no ledger, no per-tenant
round trip.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tenantmig.chains.scripts import ChainScripts
from tenantmig.errors import some_names
from tenantmig.schema.registry import Tenant
from tenantmig.schema.state import SchemaState, classify
from tenantmig.schema.versions import SchemaVersion

SHOWN = 20  # tenants named in the report; the counts say how many there are in all


@dataclass(frozen=True)
class Lagging:
    """A tenant that is not at head: where it stands."""

    name: str
    state: str  # a SchemaState value
    revision: str | None
    database: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "revision": self.revision,
            "database": self.database,
        }


@dataclass(frozen=True)
class DeployCheck:
    shared_schema: str
    shared_state: str  # a SchemaState value; "not_checked" when tenants were named
    shared_revision: str | None
    shared_head: str | None
    tenant_head: str | None
    checked: int  # active tenants checked
    counts: Mapping[str, int]  # state -> tenants (current included)
    lagging: Sequence[Lagging]  # the first SHOWN tenants not at head
    allowed_behind: int = 0  # behind, but with a label --allow-behind lets be
    inactive: int = 0  # registered, not active (suspended, ...): not checked
    allowed_labels: tuple[str, ...] = field(default_factory=tuple)

    @property
    def shared_ok(self) -> bool:
        return self.shared_state in (SchemaState.CURRENT.value, "not_checked")

    @property
    def not_at_head(self) -> int:
        return sum(n for state, n in self.counts.items() if state != SchemaState.CURRENT.value)

    @property
    def ok(self) -> bool:
        return self.shared_ok and self.not_at_head == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "shared": {
                "schema": self.shared_schema,
                "state": self.shared_state,
                "revision": self.shared_revision,
                "head": self.shared_head,
            },
            "tenant_head": self.tenant_head,
            "checked": self.checked,
            "not_at_head": self.not_at_head,
            "counts": dict(self.counts),
            "allowed_behind": self.allowed_behind,
            "allowed_labels": list(self.allowed_labels),
            "inactive": self.inactive,
            "lagging": [lag.to_json() for lag in self.lagging],
        }

    def text(self) -> str:
        """One line when all is well; else the counts by state and the first names."""
        allowed = (
            f"; {self.allowed_behind} behind with label {', '.join(self.allowed_labels)} (allowed)"
            if self.allowed_behind
            else ""
        )
        inactive = f"; {self.inactive} inactive not checked" if self.inactive else ""
        shared = {
            SchemaState.CURRENT.value: f"shared schema {self.shared_schema} at head",
            "not_checked": "",
        }.get(
            self.shared_state,
            f"shared schema {self.shared_schema} {self.shared_state.replace('_', ' ')} "
            f"(at {self.shared_revision or 'base'}, head {self.shared_head or 'base'})",
        )
        if self.ok:
            parts = [shared] if shared else []
            parts.append(f"{self.checked} tenant(s) at head {self.tenant_head or 'base'}")
            return "ok: " + ", ".join(parts) + allowed + inactive
        counts = ", ".join(
            f"{n} {state.replace('_', ' ')}"
            for state, n in sorted(self.counts.items())
            if state != SchemaState.CURRENT.value and n
        )
        lines = [
            f"not at head: {shared + '; ' if shared and not self.shared_ok else ''}"
            f"{self.not_at_head} of {self.checked} tenant(s)"
            + (f" ({counts})" if counts else "")
            + f"; head is {self.tenant_head or 'base'}"
            + allowed
            + inactive
        ]
        by_state: dict[str, list[str]] = {}
        for lag in self.lagging:
            where = f" at {lag.revision}" if lag.revision else ""
            by_state.setdefault(lag.state, []).append(f"{lag.name}{where}")
        for state, names in by_state.items():
            total = self.counts.get(state, len(names))
            more = f" (and {total - len(names)} more)" if total > len(names) else ""
            lines.append(f"  {state.replace('_', ' ')}: {some_names(names, SHOWN)}{more}")
        return "\n".join(lines)


def evaluate(
    shared_schema: str,
    shared: SchemaVersion | None,
    shared_scripts: ChainScripts | None,
    tenants: Sequence[Tenant],
    versions: Mapping[str, SchemaVersion],
    unreachable: Sequence[str],
    scripts: ChainScripts,
    allow_behind: Sequence[str] = (),
) -> DeployCheck:
    """Classify each active tenant (and the shared schema, unless ``shared_scripts`` is None)
    against head. ``unreachable``: the databases that could not be read."""
    allowed = set(allow_behind)
    counts: Counter[str] = Counter()
    lagging: list[Lagging] = []
    allowed_behind = inactive = 0
    down = set(unreachable)
    for tenant in tenants:
        if tenant.status != "active":
            inactive += 1
            continue
        version = versions.get(tenant.schema)
        if tenant.database in down:
            state, revision = SchemaState.UNREACHABLE, None
        else:
            state = classify(version, scripts).state
            revision = version.revision if version is not None else None
        if state is SchemaState.BEHIND and allowed.intersection(tenant.labels):
            allowed_behind += 1
            continue
        counts[state.value] += 1
        if state is not SchemaState.CURRENT and len(lagging) < SHOWN:
            lagging.append(Lagging(tenant.name, state.value, revision, tenant.database))
    if shared_scripts is None:
        shared_state, shared_revision, shared_head = "not_checked", None, None
    else:
        shared_state = classify(shared, shared_scripts).state.value
        shared_revision = shared.revision if shared is not None else None
        shared_head = shared_scripts.head
    return DeployCheck(
        shared_schema=shared_schema,
        shared_state=shared_state,
        shared_revision=shared_revision,
        shared_head=shared_head,
        tenant_head=scripts.head,
        checked=sum(counts.values()) + allowed_behind,
        counts=dict(counts),
        lagging=lagging,
        allowed_behind=allowed_behind,
        inactive=inactive,
        allowed_labels=tuple(sorted(allowed)),
    )
