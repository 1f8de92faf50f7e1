"""A drift report as data: each difference, each schema's drift, groups of identical drift.

Renderers (text, JSON, HTML) draw from ``DriftReport.groups()`` so they agree on groups, order and
suggestions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from tenantmig.schema.moves import PendingMove
from tenantmig.server.directory import CONTROL


@dataclass(frozen=True)
class Difference:
    kind: str  # table, column, column nullability, column default, index, constraint, ...
    object: str
    change: str  # missing, extra, changed
    expected: str | None
    actual: str | None
    # The statement that would make the schema what its migrations say, for the simple cases
    # (a missing, extra or changed index or constraint, a missing column, a nullability or
    # default); unqualified, to run with search_path set to the tenant's schema. One per
    # difference, and a schema's differences come in the order their fixes run (drops first,
    # then each object after what it needs). Shown, never executed by tenantmig.
    suggested_sql: str | None = None

    def headline(self) -> str:
        """``missing index ix_orders_status``: what is wrong, in a few words."""
        return f"{self.change} {self.kind} {self.object}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "object": self.object,
            "change": self.change,
            "expected": self.expected,
            "actual": self.actual,
            "suggested_sql": self.suggested_sql,
        }

    def describe(self) -> str:
        if self.change == "missing":
            return f"missing {self.kind} {self.object}: expected {self.expected}"
        if self.change == "extra":
            return f"extra {self.kind} {self.object}: {self.actual}"
        return f"{self.kind} {self.object}: expected {self.expected}, found {self.actual}"


@dataclass(frozen=True)
class SchemaDrift:
    name: str
    schema: str
    revision: str | None
    version_drift: str | None  # None when at head; else behind, unknown_revision, ...
    differences: tuple[Difference, ...] = ()
    detail: str | None = None
    behind_by: int | None = None  # revisions behind head, when behind
    database: str = CONTROL  # the directory's name of the database holding the schema

    def headline(self) -> str:
        """What is wrong with this schema, most serious first, in a few words."""
        parts: list[str] = []
        if self.version_drift == "behind" and self.behind_by:
            parts.append(f"{self.behind_by} revision(s) behind")
        elif self.version_drift is not None:
            parts.append(self.version_drift.replace("_", " "))
        if self.differences:
            ordered = sorted(self.differences, key=difference_rank)
            more = len(ordered) - 1
            parts.append(
                ordered[0].headline() + (f" and {more} more difference(s)" if more else "")
            )
        return "; ".join(parts)

    @property
    def drifted(self) -> bool:
        return self.version_drift is not None or bool(self.differences)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "schema": self.schema,
            "revision": self.revision or "base",
            "version_drift": self.version_drift,
            "behind_by": self.behind_by,
            "detail": self.detail,
            "differences": [d.to_json() for d in self.differences],
            "database": self.database,
        }


def difference_rank(d: Difference) -> tuple[int, str, str]:
    """Missing tables first, then missing parts, then the rest."""
    if d.kind == "table" and d.change == "missing":
        return (0, d.kind, d.object)
    return (1 if d.change == "missing" else 2, d.kind, d.object)


@dataclass(frozen=True)
class DriftGroup:
    """Schemas with identical drift, headed by what is wrong with them."""

    title: str
    severity: int  # 0: version drift, 1: missing tables, 2: any other difference
    tenants: list[SchemaDrift]

    @property
    def example(self) -> SchemaDrift:
        return self.tenants[0]

    def suggested_sql(self) -> list[str]:
        """The fixes, in the order they run (the differences' order)."""
        return [d.suggested_sql for d in self.example.differences if d.suggested_sql]

    def to_json(self) -> dict[str, Any]:
        first = self.example
        return {
            "title": self.title,
            "severity": self.severity,
            "tenants": [t.name for t in self.tenants],
            "version_drift": first.version_drift,
            "behind_by": first.behind_by,
            "detail": first.detail,
            "differences": [d.to_json() for d in first.differences],
            "suggested_sql": self.suggested_sql(),
        }


@dataclass
class DriftReport:
    head: str | None
    shared_head: str | None
    tenants_checked: int
    shared: SchemaDrift | None
    drifted: list[SchemaDrift] = field(default_factory=list)
    database: str = ""  # host/database, password masked
    generated_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    ignored: tuple[str, ...] = ()  # kinds left out (drift_ignore)
    databases: tuple[str, ...] = ()  # the directory's databases checked besides the control one
    # Unfinished `tenants move`s: a fenced or leftover copy outside the directory is drift.
    moves: list[PendingMove] = field(default_factory=list)

    def merge(self, other: DriftReport) -> None:
        """Add the tenants another database's check found (same chains, same ignores)."""
        self.tenants_checked += other.tenants_checked
        self.drifted.extend(other.drifted)

    @property
    def any_drift(self) -> bool:
        shared = self.shared is not None and self.shared.drifted
        return bool(self.drifted) or shared or bool(self.moves)

    def groups(self) -> list[DriftGroup]:
        """Tenants grouped by identical drift, most serious first (version drift, then missing
        tables, then the rest), larger groups first within each."""
        grouped: dict[tuple[str | None, int | None, tuple[Difference, ...]], list[SchemaDrift]]
        grouped = {}
        for item in self.drifted:
            key = (item.version_drift, item.behind_by, item.differences)
            grouped.setdefault(key, []).append(item)
        found = []
        for items in grouped.values():
            first = items[0]
            if first.version_drift is not None:
                severity = 0
            elif any(d.kind == "table" and d.change == "missing" for d in first.differences):
                severity = 1
            else:
                severity = 2
            found.append(DriftGroup(first.headline(), severity, items))
        return sorted(found, key=lambda g: (g.severity, -len(g.tenants), g.example.name))

    def to_json(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "generated_at": self.generated_at.isoformat(timespec="seconds"),
            "head": self.head or "base",
            # null when the shared schema was not checked (--tenant, --database): "base"
            # would claim its chain has no revisions.
            "shared_head": (self.shared_head or "base") if self.shared is not None else None,
            "tenants_checked": self.tenants_checked,
            "ignored": list(self.ignored),
            "databases": list(self.databases),
            "shared": self.shared.to_json() if self.shared else None,
            "groups": [g.to_json() for g in self.groups()],
            "drifted": [d.to_json() for d in self.drifted],
            "unfinished_moves": [m.to_json() for m in self.moves],
        }
