"""`tenantmig plan`: what a run would do to each tenant, and what that costs, before it runs.

For every distinct step the selected tenants need (from revision, to revision): the tenants
that take it, its statements as compiled (the SQL Alembic sends, as a run replays it; for a
step split around revisions that cannot be replayed, as a run splits it, those revisions'
offline SQL; for a step that cannot be compiled, Alembic's offline SQL, said so), each
statement's strongest lock and effect (``risk.classify``), and for each tenant the size of the
tables a rewrite or scan touches, read in bulk, largest first. Nothing is changed: the
compilation runs in scratch schemas, dropped afterwards, as a run's does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tenantmig.chains.scripts import ChainScripts, Direction
from tenantmig.errors import NotRenderable
from tenantmig.risk.classify import assess, shortened
from tenantmig.risk.statements import BLOCKS, Assessment, catalog_of
from tenantmig.run.plan import Selection
from tenantmig.run.replay import CompiledStep, NotReplayable, StepKey, compile_or_explain
from tenantmig.run.segments import Replayed, SegmentedStep, plan_step
from tenantmig.run.walk import walk_step
from tenantmig.schema.registry import Tenant, by_database, select_tenants
from tenantmig.schema.sizes import table_sizes
from tenantmig.schema.versions import SchemaVersion, read_versions
from tenantmig.server.config import Settings
from tenantmig.server.database import Database, DatabaseSet

SHOWN = 10  # tenants listed per step in text; --json has all


@dataclass(frozen=True)
class TenantCost:
    """A tenant taking a step, with the size of the tables the step rewrites or scans."""

    name: str
    schema: str
    database: str
    bytes: int = 0
    rows: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "schema": self.schema,
            "database": self.database,
            "bytes": self.bytes,
            "rows": self.rows,
        }


@dataclass
class StepPlan:
    key: StepKey
    tenants: list[TenantCost]  # largest first
    statements: list[Assessment]
    compiled: bool  # the statements are the compiled step's (replayed); else offline SQL
    note: str | None = None  # why the step is not replayed, when it is not
    # Split as a run splits it: replayed segments (compiled) and revisions run through
    # Alembic (their offline SQL), in order.
    segmented: bool = False

    @property
    def how(self) -> str:
        """How its statements were found, which is how a run sends them."""
        if self.compiled:
            return "compiled, replayed in each tenant"
        if self.segmented:
            return "split: replayed segments, the rest Alembic's offline SQL"
        return "Alembic's offline SQL"

    @property
    def touched(self) -> list[str]:
        """The tables a rewrite or scan of this step touches, in the order first seen."""
        return list(dict.fromkeys(a.table for a in self.statements if a.touches_rows and a.table))

    @property
    def strongest(self) -> Assessment | None:
        from tenantmig.risk.statements import LOCK_MODES

        locked = [a for a in self.statements if a.lock is not None]
        return max(locked, key=lambda a: LOCK_MODES.index(a.lock or "ACCESS SHARE"), default=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.key.from_revision or "base",
            "to": self.key.to_revision or "base",
            "tenants": [t.to_json() for t in self.tenants],
            "compiled": self.compiled,
            "segmented": self.segmented,
            "note": self.note,
            "touched_tables": self.touched,
            "statements": [a.to_json() for a in self.statements],
        }


@dataclass
class PlanReport:
    command: str
    target: str
    steps: list[StepPlan]
    selected: int
    at_target: int
    unreadable: list[str] = field(default_factory=list)  # no schema, or a database down

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "target": self.target,
            "selected": self.selected,
            "at_target": self.at_target,
            "unreadable": self.unreadable,
            "steps": [s.to_json() for s in self.steps],
        }

    def text(self) -> str:
        taking = sum(len(s.tenants) for s in self.steps)
        lines = [
            f"plan: {self.command} {self.target}: {taking} of {self.selected} tenant(s) to "
            f"migrate in {len(self.steps)} step(s); {self.at_target} already there"
            + (f"; not read: {', '.join(self.unreadable[:5])}" if self.unreadable else "")
        ]
        for step in self.steps:
            lines += ["", _step_text(step)]
        return "\n".join(lines)


def size_text(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _step_text(step: StepPlan) -> str:
    lines = [
        f"step {step.key.describe()}: {len(step.tenants)} tenant(s); {step.how}"
        + (f"\n  {step.note}" if step.note else "")
    ]
    for number, a in enumerate(step.statements, 1):
        lock = f"{a.lock} on {a.table}" if a.lock else "no lock on an existing table"
        lines.append(f"  {number:>2}. {shortened(a.sql)}")
        lines.append(f"      {lock}; {a.effect}" + (f": {'; '.join(a.why)}" if a.why else ""))
    strongest = step.strongest
    if strongest is not None and strongest.lock is not None:
        lines.append(
            f"  strongest lock: {strongest.lock} on {strongest.table}, held to the tenant's "
            f"commit; it blocks {BLOCKS[strongest.lock]}"
        )
    touched = step.touched
    if touched:
        lines.append(f"  largest tenants for what it rewrites or scans ({', '.join(touched)}):")
        for tenant in step.tenants[:SHOWN]:
            lines.append(
                f"    {tenant.name:<24} {size_text(tenant.bytes):>10}  {tenant.rows:>12,} row(s)"
            )
        if len(step.tenants) > SHOWN:
            lines.append(f"    ... and {len(step.tenants) - SHOWN} more (--json lists them all)")
    return "\n".join(lines)


# -- building the plan ---------------------------------------------------------------------------
def build(
    settings: Settings,
    database: Database,
    selection: Selection,
    direction: Direction,
    target: str,
) -> PlanReport:
    scripts = ChainScripts(settings, "tenant")
    if not target.startswith(("+", "-")):
        scripts.resolve_target(target)  # an unknown revision: an error before anything is read
    with database.engine.connect() as conn, conn.begin():
        tenants = selection.narrow(select_tenants(conn, settings.tenant_source, selection.tenants))
    databases = DatabaseSet(settings, database)
    try:
        versions, down = versions_where_they_live(databases, tenants)
        groups: dict[StepKey, list[Tenant]] = {}
        at_target, unreadable = 0, [f"{t.name} (database {t.database} unreachable)"
                                    for t in tenants if t.database in down]  # fmt: skip
        for tenant in tenants:
            if tenant.database in down:
                continue
            version = versions.get(tenant.schema)
            if version is None or not version.schema_exists:
                unreadable.append(f"{tenant.name} (no schema)")
                continue
            current = version.revision
            destination = scripts.resolve_target(target, current)
            if scripts.already_there(direction, current, destination):
                at_target += 1
                continue
            key = StepKey(current, destination, version.has_version_table)
            groups.setdefault(key, []).append(tenant)
        steps = [
            _plan_step(settings, database, databases, scripts, direction, key, members)
            for key, members in sorted(
                groups.items(), key=lambda item: (-len(item[1]), item[0].describe())
            )
        ]
    finally:
        databases.close()
    return PlanReport(direction, target, steps, len(tenants), at_target, unreadable)


def versions_where_they_live(
    databases: DatabaseSet, tenants: Sequence[Tenant]
) -> tuple[dict[str, SchemaVersion], set[str]]:
    """Each tenant's version, read in bulk in the database it lives in; and the databases
    that could not be reached (their tenants have no version here)."""
    found: dict[str, SchemaVersion] = {}
    down: set[str] = set()
    for name, group in by_database(tenants).items():
        if databases.unreachable(name) is not None:
            down.add(name)
            continue
        with databases.get(name).engine.connect() as conn:
            found.update(read_versions(conn, [t.schema for t in group]))
    return found, down


def _plan_step(
    settings: Settings,
    control: Database,
    databases: DatabaseSet,
    scripts: ChainScripts,
    direction: Direction,
    key: StepKey,
    tenants: list[Tenant],
) -> StepPlan:
    sample = tenants[0]
    found = _as_a_run_would(settings, control, scripts, direction, key)
    note = None
    if isinstance(found, CompiledStep):
        sql = ";\n".join(found.for_schema(sample.schema))
    else:
        note = found.describe(len(tenants))
        sql, unshown = _step_sql(settings, found, key, sample.schema, direction)
        if unshown:
            # Nothing to weigh without running it: say so, and plan the rest.
            note = f"{note}; statements not shown: {'; '.join(unshown)}"
    member = databases.get(sample.database)
    with member.engine.connect() as conn, catalog_of(conn, sample.schema) as catalog:
        statements = [a for a in assess(sql, catalog) if not a.bookkeeping]
    step = StepPlan(
        key, [], statements, isinstance(found, CompiledStep), note,
        isinstance(found, SegmentedStep),
    )  # fmt: skip
    step.tenants = _costs(databases, tenants, step.touched)
    return step


def _as_a_run_would(
    settings: Settings,
    control: Database,
    scripts: ChainScripts,
    direction: Direction,
    key: StepKey,
) -> CompiledStep | SegmentedStep | NotReplayable:
    """The step as a run compiles it (``run.coordinator``): one walk of its revisions, split
    around those that cannot be replayed; compile by compile where the walk cannot settle it
    or a scratch schema is configured."""
    timeouts, flavour, scratch = settings.timeouts, control.flavour, settings.scratch_schemas
    with control.engine.connect() as conn:
        walked = (
            walk_step(conn, scripts, key, direction, timeouts, flavour) if scratch is None else None
        )
        if walked is not None:
            return walked

        def compile_step(part: StepKey, fingerprint: bool) -> CompiledStep | NotReplayable:
            return compile_or_explain(
                conn, scripts, part, direction, timeouts, flavour, scratch,
                fingerprint_start=fingerprint,
            )  # fmt: skip

        return plan_step(scripts, key, direction, compile_step, {})


def _step_sql(
    settings: Settings,
    found: SegmentedStep | NotReplayable,
    key: StepKey,
    schema: str,
    direction: Direction,
) -> tuple[str, list[str]]:
    """The statements a tenant in ``schema`` would get: replayed segments as compiled, the
    rest as Alembic's offline SQL; and why any part could not be written out."""
    from tenantmig.chains.offline import offline_sql

    parts: list[tuple[str | None, str | None, CompiledStep | None]] = []
    if isinstance(found, NotReplayable):
        parts.append((key.from_revision, key.to_revision, None))
    else:
        state = key.from_revision
        for part in found.parts:
            if isinstance(part, Replayed):
                parts.append((state, part.step.key.to_revision, part.step))
                state = part.step.key.to_revision
            else:
                parts.append((state, part.to_revision, None))
                state = part.to_revision
    sql: list[str] = []
    unshown: list[str] = []
    for start, end, compiled in parts:
        if compiled is not None:
            sql.append(";\n".join(compiled.for_schema(schema)))
            continue
        try:
            sql.append(offline_sql(settings, "tenant", schema, direction, start, end))
        except NotRenderable as exc:
            unshown.append(str(exc))
    return ";\n".join(sql), unshown


def _costs(databases: DatabaseSet, tenants: list[Tenant], tables: list[str]) -> list[TenantCost]:
    """Each tenant with the total size and rows of ``tables`` in its schema, largest first
    (one query per database and 1,000 schemas)."""
    sizes: dict[str, tuple[int, int]] = {}
    if tables:
        for name, group in by_database(tenants).items():
            with databases.get(name).engine.connect() as conn, conn.begin():
                found = table_sizes(conn, [t.schema for t in group], tables)
            for (schema, _table), (size, rows) in found.items():
                total = sizes.get(schema, (0, 0))
                sizes[schema] = (total[0] + size, total[1] + rows)
    costs = [
        TenantCost(t.name, t.schema, t.database, *sizes.get(t.schema, (0, 0))) for t in tenants
    ]
    return sorted(costs, key=lambda c: (-c.bytes, -c.rows, c.name))
