"""The public Python API: one short function per verb, each returning a result object.

    from tenantmig import api
    from tenantmig.server.config import load_settings
    result = api.upgrade(load_settings(), api.Selection.all_tenants())

Each verb validates its input, opens the database and hands on to the layer that does the work
(``run.coordinator`` for upgrade/downgrade, ``schema`` for status and drift, ``backup`` for
restore), in the manner of Alembic's ``command`` module. The CLI is a thin front on these.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tenantmig.chains.scripts import ChainScripts, Direction, RevisionInfo
from tenantmig.errors import (
    ConfigError,
    NoTargetMetadata,
    SharedSchemaNotReady,
)
from tenantmig.run import coordinator
from tenantmig.run.ledger import Ledger, RunRecord
from tenantmig.run.observers import QuietObserver, RunObserver, RunStart, TenantRetry
from tenantmig.run.plan import RunOptions, Selection, build_plan
from tenantmig.run.preflight import Needs, check_privileges
from tenantmig.run.results import RunResult, TenantOutcome, TenantStatus
from tenantmig.schema import registry
from tenantmig.schema.labels import check_labels
from tenantmig.schema.registry import Tenant, list_tenants
from tenantmig.schema.registry import select_tenants as _select_tenants
from tenantmig.schema.versions import SchemaVersion, read_versions, read_versions_parallel
from tenantmig.server.config import Chain, Settings
from tenantmig.server.database import (
    Database,
    DatabaseSet,
    client_url,
    connect_database,
    open_database,
)
from tenantmig.server.directory import CONTROL
from tenantmig.server.identifiers import validate_schema_name
from tenantmig.server.reads import own_reads

if TYPE_CHECKING:
    from alembic.script import Script
    from sqlalchemy.engine import Connection

    from tenantmig.backup.move import MoveResult
    from tenantmig.backup.restore import RestoreResult
    from tenantmig.chains.autogen import CheckResult
    from tenantmig.chains.project import InitResult
    from tenantmig.risk.lint import LintReport
    from tenantmig.risk.plan import PlanReport
    from tenantmig.run.bulk import BatchCallback, DropResult
    from tenantmig.run.drops import Drops
    from tenantmig.run.grants import GrantResult
    from tenantmig.run.retention import PrunePlan, PruneResult, Retention
    from tenantmig.run.sqlscript import SchemaSQL
    from tenantmig.schema.catalog import SchemaStructure
    from tenantmig.schema.drift_report import DriftReport
    from tenantmig.schema.gate import DeployCheck
    from tenantmig.schema.status import StatusReport

# Start-up: what only some verbs need (drops, stamps, grants, status, drift, restore, moves,
# autogenerate, offline SQL, projects) is imported inside them, so that a run
# (`tenantmig upgrade`) loads only what runs need.

__all__ = [
    "DEMO_TENANTS",
    "DemoResult",
    "Drops",
    "LabelChange",
    "QuietObserver",
    "RevisionInfo",
    "RunObserver",
    "RunOptions",
    "RunStart",
    "Selection",
    "TenantRetry",
    "branches",
    "cancel_run",
    "check",
    "create_tenants",
    "database_url",
    "demo",
    "deploy_check",
    "downgrade",
    "drift",
    "drop_tenants",
    "grant",
    "heads",
    "history",
    "init_project",
    "label_tenants",
    "lint",
    "merge",
    "move_tenant",
    "plan",
    "prune_runs",
    "register_tenants",
    "restore",
    "resume_run",
    "revision",
    "run_details",
    "run_psql",
    "runs",
    "serve",
    "show",
    "sql",
    "stamp",
    "status",
    "tenants",
    "upgrade",
]

DEMO_TENANTS = ("acme", "globex", "initech")


def __getattr__(name: str) -> object:
    # ``api.Drops`` is public but only a downgrade needs it: loaded when first asked for.
    if name == "Drops":
        from tenantmig.run.drops import Drops

        return Drops
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def demo_config() -> Path:
    """The demo project shipped in the package: `tenantmig demo` outside a project runs it."""
    from tenantmig.chains.project import packaged_config

    return packaged_config()


# -- upgrade / downgrade -------------------------------------------------------------------------
def upgrade(
    settings: Settings,
    selection: Selection,
    revision: str = "head",
    options: RunOptions | None = None,
    observer: RunObserver | None = None,
) -> RunResult:
    return _migrate(settings, selection, "upgrade", revision, options, observer)


def downgrade(
    settings: Settings,
    selection: Selection,
    revision: str,
    options: RunOptions | None = None,
    observer: RunObserver | None = None,
) -> RunResult:
    return _migrate(settings, selection, "downgrade", revision, options, observer)


def _migrate(
    settings: Settings,
    selection: Selection,
    direction: Direction,
    revision: str,
    options: RunOptions | None,
    observer: RunObserver | None,
) -> RunResult:
    plan = build_plan(settings, selection, direction, revision, options or RunOptions())
    with open_database(settings) as database:
        return coordinator.migrate(plan, database, observer)


def plan(
    settings: Settings, selection: Selection, direction: Direction, revision: str
) -> PlanReport:
    """What ``upgrade``/``downgrade`` to ``revision`` would do to the selected tenants: each
    distinct step with its tenants (largest first, by the size of the tables it rewrites or
    scans), its statements, and each statement's lock and effect. Nothing is changed."""
    from tenantmig.risk.plan import build
    from tenantmig.risk.statements import require_parser

    require_parser()
    if not selection.include_tenants:
        raise ConfigError("plan reviews tenant migrations: give --all-tenants or --tenant NAME")
    registry.check_tenant_names(selection.tenants or (), settings.tenant_source)
    settings.check_database_names(selection.databases or ())
    with open_database(settings) as database:
        return build(settings, database, selection, direction, revision)


def lint(
    settings: Settings, revisions: Sequence[str] = (), allow: Sequence[str] = ()
) -> LintReport:
    """Lint tenant revisions (default: those some tenant has not got yet) with tenantmig's
    fleet rules and squawk (when installed); ``allow``: rules allowed for this lint."""
    from tenantmig.risk.lint import lint as run_lint
    from tenantmig.risk.statements import require_parser

    require_parser()
    with open_database(settings) as database:
        return run_lint(settings, database, revisions, allow)


def resume_run(
    settings: Settings,
    run_id: int,
    options: RunOptions | None = None,
    observer: RunObserver | None = None,
) -> RunResult:
    """Go on with the rollout ``run_id`` (paused, stopped by a wave's gate, interrupted or
    killed) as the same run: its unfinished tenants, each to the target and in the wave it
    recorded, the stopped wave's failed tenants first; its own rules between waves."""
    from tenantmig.run.rollout import resumable

    with open_database(settings, notice=False) as database, database.engine.connect() as conn:
        state = resumable(Ledger(conn, settings.shared_schema), run_id)
    asked = replace(options or RunOptions(), resume_run=run_id, waves=None)
    direction: Direction = "downgrade" if state.command == "downgrade" else "upgrade"
    return _migrate(settings, Selection.all_tenants(), direction, state.target, asked, observer)


def cancel_run(settings: Settings, run_id: int) -> RunRecord:
    """Give up the rollout ``run_id`` (paused, stopped, interrupted or killed): its tenants
    stay where they are, and another all-tenants run may start. Returns the run as recorded."""
    import getpass
    import socket

    from tenantmig.run.rollout import resumable

    with open_database(settings, notice=False) as database, database.engine.connect() as conn:
        ledger = Ledger(conn, settings.shared_schema)
        state = resumable(ledger, run_id)
        ledger.cancel(
            run_id,
            f"cancelled by {getpass.getuser()}@{socket.gethostname()} with "
            f"{len(state.unfinished)} tenant(s) not finished",
        )
        found = ledger.run(run_id)
    assert found is not None
    return found[0]


def sql(
    settings: Settings, selection: Selection, direction: Direction, revision: str
) -> list[SchemaSQL]:
    """The SQL ``upgrade``/``downgrade`` would run in each selected schema, for review (Alembic's
    offline mode); ``revision`` may be a ``FROM:TO`` range. Nothing is changed."""
    from tenantmig.run.sqlscript import schema_sql

    registry.check_tenant_names(selection.tenants or (), settings.tenant_source)
    with open_database(settings, notice=False) as database:
        return schema_sql(settings, database, selection, direction, revision)


def stamp(
    settings: Settings, selection: Selection, revision: str, *, wait_s: float = 0.0
) -> RunResult:
    """Record ``revision`` in the selected schemas without running migrations (``alembic
    stamp``), each under its lock, as one run in the ledger. Check with ``drift`` afterwards."""
    from tenantmig.run.stamp import stamp as stamp_schemas

    if selection.shared == selection.include_tenants:
        raise ConfigError("stamp one chain: --shared, or --tenant NAME / --all-tenants")
    registry.check_tenant_names(selection.tenants or (), settings.tenant_source)
    with open_database(settings) as database:
        return stamp_schemas(settings, database, selection, revision, wait_s=wait_s)


def grant(settings: Settings, role: str, *, apply: bool = True) -> GrantResult:
    """An administrator's one-time set-up for a least-privileged ``role``: the ledger tables,
    its grants and its scratch schemas (``apply=False``: only the statements)."""
    from tenantmig.run.grants import grant as grant_role

    if not role or "\x00" in role:
        raise ConfigError("give the name of the role that will run tenantmig")
    with open_database(settings) as database, database.engine.connect() as conn:
        return grant_role(
            conn, settings, role, apply=apply, for_citus=database.flavour.name == "citus"
        )


# -- projects ------------------------------------------------------------------------------------
def init_project(
    directory: Path, *, demo: bool = False, registry: bool = True, shared_schema: str | None = None
) -> InitResult:
    """Write a new project (alembic.ini, both chains' env.py and templates, the tenant registry
    revision; the demo chains with ``demo``) into ``directory``. No database is needed."""
    from tenantmig.chains.project import write_project

    if shared_schema is not None:
        validate_schema_name(shared_schema)
    return write_project(directory, demo=demo, registry=registry, shared_schema=shared_schema)


# -- tenants -----------------------------------------------------------------------------------
def create_tenants(
    settings: Settings,
    names: Sequence[str],
    *,
    migrate: bool = True,
    options: RunOptions | None = None,
    observer: RunObserver | None = None,
    database: str = CONTROL,
) -> tuple[list[Tenant], RunResult | None]:
    """Register tenants and create their schemas (all or nothing), then migrate them to head.
    ``database``: the directory's database to create them in (default: the control one).
    The run is None when there was nothing to migrate: ``migrate=False``, or a tenant chain
    with no revisions yet."""
    source = settings.tenant_source
    registry.require_registry(source, "create tenants")
    registry.check_tenant_names(names, source)
    settings.check_database_names([database])
    with open_database(settings) as control, _member(settings, control, database) as where:
        with control.engine.connect() as conn, where.engine.connect() as schema_conn:
            conn.begin()
            schemas = schema_conn.begin()
            if database == CONTROL:  # one message naming everything the role lacks
                needs = Needs(ledger=migrate, write_registry=True, create_schemas=True)
                check_privileges(conn, settings, needs)
            else:
                check_privileges(conn, settings, Needs(ledger=migrate, write_registry=True))
                check_privileges(schema_conn, settings, Needs(create_schemas=True))
            created = registry.create_tenants(
                conn,
                source,
                names,
                where.flavour,
                distribute=settings.citus_schemas == "distributed",
                database=database,
                schema_conn=schema_conn if database != CONTROL else None,
            )
            # The schemas commit first, then the registry: a failure in between leaves
            # unregistered empty schemas (`tenants register` adopts them), never registered
            # tenants without a schema, and the error says so.
            schemas.commit()
            registry.commit_created(conn, control.engine, source, created, database)
    if not migrate or ChainScripts(settings, "tenant").head is None:
        # An empty chain (a new project) has no head to migrate to: a run would record every
        # new tenant as "skipped, already at the target", which says nothing true.
        return created, None
    selection = Selection.named([t.name for t in created])
    return created, upgrade(settings, selection, "head", options, observer)


def tenants(settings: Settings, labels: Sequence[str] | None = None) -> list[Tenant]:
    """The tenants of the configured source, with their labels (``labels``: only tenants with
    one of them)."""
    wanted = check_labels(labels or ())
    with open_database(settings, notice=False) as database, database.engine.connect() as conn:
        with own_reads(conn, settings.statement_timeout_s):
            return registry.narrowed(list_tenants(conn, settings.tenant_source), labels=wanted)


@dataclass(frozen=True)
class LabelChange:
    """What ``label_tenants`` did: the labels added and removed, over these tenants."""

    tenants: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    pairs_added: int  # (tenant, label) pairs that were not there before
    pairs_removed: int

    def to_json(self) -> dict[str, object]:
        return {
            "tenants": list(self.tenants),
            "added": list(self.added),
            "removed": list(self.removed),
            "pairs_added": self.pairs_added,
            "pairs_removed": self.pairs_removed,
        }


def label_tenants(
    settings: Settings, names: Sequence[str], add: Sequence[str], remove: Sequence[str]
) -> LabelChange:
    """Add ``add`` to and remove ``remove`` from each of the tenants ``names``, in one
    transaction; every name and label is checked first (nothing changes on a bad one)."""
    from tenantmig.schema.labels import add_labels, remove_labels

    added, removed = check_labels(add), check_labels(remove)
    if not added and not removed:
        raise ConfigError("nothing to do: give --add LABEL and/or --remove LABEL")
    both = sorted(set(added) & set(removed))
    if both:
        raise ConfigError(f"both added and removed: {', '.join(both)}")
    source = settings.tenant_source
    registry.check_tenant_names(names, source)
    with open_database(settings, notice=False) as database, database.engine.begin() as conn:
        chosen = _select_tenants(conn, source, names)  # unknown names: an error, nothing done
        if registry.labels_from_query(list_tenants(conn, source), source):
            raise ConfigError(
                "the labels come from the tenants_from query (its labels column): change them "
                "where the query reads them"
            )
        tenant_names = [t.name for t in chosen]
        shared = settings.shared_schema
        new = add_labels(conn, shared, tenant_names, added) if added else 0
        gone = remove_labels(conn, shared, tenant_names, removed) if removed else 0
    return LabelChange(tuple(tenant_names), added, removed, new, gone)


def register_tenants(
    settings: Settings, names: Sequence[str], schema: str | None = None, database: str = CONTROL
) -> list[Tenant]:
    """Register existing schemas as tenants without changing them (all or nothing). Each
    tenant's schema is named after it, or ``schema`` for a single tenant; the schemas are in
    ``database`` (the directory's name; default the control database)."""
    source = settings.tenant_source
    registry.require_registry(source, "register tenants")
    if schema is not None and len(names) != 1:
        raise ConfigError("--schema names the schema of one tenant: give exactly one NAME")
    settings.check_database_names([database])
    pairs = [(name, schema or name) for name in names]
    with open_database(settings) as control, _member(settings, control, database) as where:
        with control.engine.begin() as conn, where.engine.connect() as schema_conn:
            check_privileges(conn, settings, Needs(write_registry=True))
            return registry.register_existing(
                conn, source, pairs, database=database, schema_conn=schema_conn
            )


@dataclass
class _Places:
    """The databases some tenants live in, opened: (name, database, its tenants) for each
    reachable one, and why each other one cannot be reached."""

    reachable: list[tuple[str, Database, list[Tenant]]]
    down: dict[str, str]


@contextmanager
def _by_database(
    settings: Settings, control: Database, tenants: Sequence[Tenant]
) -> Iterator[_Places]:
    """The databases ``tenants`` live in, opened for the block, then closed."""
    groups = registry.by_database(tenants)
    opened = DatabaseSet(settings, control)
    try:
        places = _Places([], {})
        for name, group in groups.items():
            why = opened.unreachable(name)
            if why is None:
                places.reachable.append((name, opened.get(name), group))
            else:
                places.down[name] = f"database {name} unreachable: {why}"
        yield places
    finally:
        opened.close()


@contextmanager
def _member(settings: Settings, control: Database, name: str) -> Iterator[Database]:
    """The database ``name`` of the directory (the control one itself for CONTROL)."""
    if name == CONTROL:
        yield control
        return
    member = connect_database(settings.database_entry(name).url)
    try:
        yield member
    finally:
        member.engine.dispose()


def drop_tenants(
    settings: Settings, names: Sequence[str], on_batch: BatchCallback | None = None
) -> DropResult:
    """Drop tenant schemas and their registry rows in bounded batches, and say where each
    named tenant stands in each database, also after a failure (``run.bulk`` orders the work
    so that a failed or killed drop is finished by the same command). Every name is checked
    first: one that is not registered drops nothing, unless it is gone from every database
    and an earlier drop named it; then it is reported as already gone."""
    from tenantmig.run.bulk import drop_in_batches, plan_drop

    source = settings.tenant_source
    registry.require_registry(source, "drop tenants")
    registry.check_tenant_names(names, source)
    with open_database(settings) as control, control.engine.connect() as conn:
        databases = DatabaseSet(settings, control)
        try:
            ledger = Ledger(conn, settings.shared_schema)
            plan = plan_drop(databases, source, ledger, names)
            groups = registry.by_database(plan.tenants)
            for name in dict.fromkeys([CONTROL, *groups]):
                needs = Needs(schemas=[t.schema for t in groups.get(name, [])])
                if name == CONTROL:  # the registry, and the run's record in the ledger
                    needs = replace(needs, ledger=True, write_registry=True)
                with databases.get(name).engine.begin() as member_conn:
                    check_privileges(member_conn, settings, needs)
            return drop_in_batches(databases, source, plan, settings.timeouts, ledger, on_batch)
        finally:
            databases.close()


# -- status / history / revision ----------------------------------------------------------------
def status(
    settings: Settings,
    names: Sequence[str] | None = None,
    databases: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
) -> StatusReport:
    """Every schema's revision against head, with each tenant's last recorded outcome;
    ``databases``: only tenants living there."""
    from tenantmig.schema.catalog import invalid_indexes
    from tenantmig.schema.moves import read_moves
    from tenantmig.schema.state import classify
    from tenantmig.schema.status import StatusReport, tenant_states

    shared_scripts = ChainScripts(settings, "shared")
    tenant_scripts = ChainScripts(settings, "tenant")
    shared_schema = settings.shared_schema
    settings.check_database_names(databases or ())
    limit = settings.statement_timeout_s  # bounds every read below (None: no limit)
    with open_database(settings, notice=False) as database, database.engine.connect() as conn:
        shared_version, selected = _shared_and_selected(
            conn, settings, names, databases, check_labels(labels or ())
        )
        versions: dict[str, SchemaVersion] = {}
        invalid: dict[str, list[str]] = {}
        nodes: dict[str, str] = {}
        with _by_database(settings, database, selected) as places:
            for _name, member, group in places.reachable:
                schemas = [t.schema for t in group]
                with member.engine.connect() as member_conn:
                    versions.update(
                        read_versions_parallel(
                            member.engine, schemas, statement_timeout_s=limit, conn=member_conn
                        )
                    )
                    with own_reads(member_conn, limit):
                        invalid.update(invalid_indexes(member_conn, schemas))
                        nodes.update(member.flavour.placements(member_conn, schemas))
        down = places.down
        ledger = Ledger(conn, shared_schema, statement_timeout_s=limit)
        last = ledger.last_outcomes([t.name for t in selected])
        with own_reads(conn, limit):
            moves = read_moves(conn, shared_schema, [t.name for t in selected])
    return StatusReport(
        shared_schema=shared_schema,
        shared_revision=shared_version.revision,
        shared_head=shared_scripts.head,
        shared_state=classify(shared_version, shared_scripts).state,
        tenants=tenant_states(selected, versions, tenant_scripts, invalid, last, nodes, down),
        moves=list(moves.values()),
    )


def _shared_and_selected(
    conn: Connection,
    settings: Settings,
    names: Sequence[str] | None,
    databases: Sequence[str] | None,
    labels: Sequence[str],
) -> tuple[SchemaVersion, list[Tenant]]:
    """The shared schema's version and the selected tenants (none when there is no registry
    yet and none were named: the shared schema's state says why), each read within the
    statement timeout."""
    limit = settings.statement_timeout_s
    shared = read_versions(conn, [settings.shared_schema], statement_timeout_s=limit)
    try:
        with own_reads(conn, limit):
            selected = _select_tenants(conn, settings.tenant_source, names)
    except SharedSchemaNotReady:
        if names:
            raise
        selected = []
    return shared[settings.shared_schema], registry.narrowed(selected, databases, labels)


def deploy_check(
    settings: Settings,
    names: Sequence[str] | None = None,
    databases: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    allow_behind: Sequence[str] = (),
) -> DeployCheck:
    """Is the shared schema and every active tenant (of the selection) at head? The deploy
    gate (``tenantmig status --check``) and an application's readiness probe: versions only,
    read in bulk. Tenants with a label in ``allow_behind`` may be behind. The shared schema
    is checked unless tenants are named."""
    from tenantmig.schema.gate import evaluate

    wanted, allowed = check_labels(labels or ()), check_labels(allow_behind)
    registry.check_tenant_names(names or (), settings.tenant_source)
    settings.check_database_names(databases or ())
    tenant_scripts = ChainScripts(settings, "tenant")
    shared_scripts = None if names else ChainScripts(settings, "shared")
    shared_schema = settings.shared_schema
    limit = settings.statement_timeout_s
    with open_database(settings, notice=False) as database, database.engine.connect() as conn:
        shared, selected = _shared_and_selected(conn, settings, names, databases, wanted)
        versions: dict[str, SchemaVersion] = {}
        with _by_database(settings, database, selected) as places:
            for name, member, group in places.reachable:
                schemas = [t.schema for t in group if t.status == "active"]
                versions.update(
                    read_versions_parallel(
                        member.engine,
                        schemas,
                        statement_timeout_s=limit,
                        conn=conn if name == CONTROL else None,
                    )
                )
            down = list(places.down)
    return evaluate(
        shared_schema, shared, shared_scripts, selected, versions, down, tenant_scripts, allowed
    )


def history(settings: Settings, chain: Chain) -> list[RevisionInfo]:
    """Revisions of one chain, newest first (no database needed)."""
    return ChainScripts(settings, chain).revisions()


def revision(
    settings: Settings,
    chain: Chain,
    message: str,
    rev_id: str | None = None,
    *,
    autogenerate: bool = False,
) -> RevisionInfo | None:
    """Create a new revision file in one chain, as ``alembic revision`` does. With
    ``autogenerate``, holding the operations that bring the chain's head to its models (see
    ``chains.autogen``); None, and nothing written, when they agree."""
    from alembic import command as alembic_command
    from alembic.script import Script

    from tenantmig.chains.autogen import autogenerate_revision

    created: Script | None
    if autogenerate:
        scripts = ChainScripts(settings, chain)
        _ = scripts.head  # diverged heads are refused before anything runs
        with open_database(settings) as database, database.engine.connect() as conn:
            created = autogenerate_revision(
                settings, conn, database.flavour, scripts, message, rev_id
            )
        if created is None:
            return None
    else:
        made = alembic_command.revision(
            settings.alembic_config(chain), message=message, rev_id=rev_id
        )
        created = made if isinstance(made, Script) else None
    if created is None:
        raise ConfigError(f"alembic did not create one {chain} revision")
    down = created.down_revision
    return RevisionInfo(
        revision=created.revision,
        down_revision=down if isinstance(down, str) or down is None else ",".join(down),
        message=message,
        path=created.path,
        is_head=True,
    )


def heads(settings: Settings, chain: Chain) -> list[RevisionInfo]:
    return ChainScripts(settings, chain).heads()


def show(settings: Settings, chain: Chain, revision: str) -> RevisionInfo:
    return ChainScripts(settings, chain).show(revision)


def branches(settings: Settings, chain: Chain) -> list[RevisionInfo]:
    """Revisions with more than one next revision (each lists them in next_revisions)."""
    return ChainScripts(settings, chain).branch_points()


def merge(
    settings: Settings,
    chain: Chain,
    revisions: Sequence[str],
    message: str,
    rev_id: str | None = None,
) -> RevisionInfo:
    """A merge revision joining ``revisions`` (``heads``: every head), as ``alembic merge``."""
    from alembic import command as alembic_command

    scripts = ChainScripts(settings, chain)
    if list(revisions) == ["heads"] and len(scripts.script.get_heads()) < 2:
        raise ConfigError(f"the {chain} chain has one head: there is nothing to merge")
    for revision in revisions:
        if revision != "heads":
            scripts.show(revision)  # UnknownRevision before anything is written
    made = alembic_command.merge(scripts.config, list(revisions), message=message, rev_id=rev_id)
    if made is None:
        raise ConfigError(f"alembic did not create a {chain} merge revision")
    return RevisionInfo.of(made, [made.revision])


def check(settings: Settings, chains: Sequence[Chain] = ("shared", "tenant")) -> CheckResult:
    """Whether each chain's models (target_metadata) and migrations agree, as ``alembic check``
    does, against a reference schema rolled back afterwards. Chains without models are
    skipped (listed in ``skipped``) when both are checked: a new project has none yet, and a
    CI gate set up on its first day must pass; asked of one chain, they are an error."""
    from tenantmig.chains.autogen import CheckResult, check_chain

    result = CheckResult()
    with open_database(settings) as database, database.engine.connect() as conn:
        for chain in chains:
            scripts = ChainScripts(settings, chain)
            _ = scripts.head
            try:
                result.differences[chain] = check_chain(settings, conn, database.flavour, scripts)
            except NoTargetMetadata:
                if len(chains) == 1:
                    raise
                result.skipped.append(chain)
    return result


# -- drift ---------------------------------------------------------------------------------------
def drift(
    settings: Settings,
    names: Sequence[str] | None = None,
    databases: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
) -> DriftReport:
    """Version and structural drift of the shared schema and the (named) tenants, in every
    database they live in (``databases``: only those). Expected structures are built once per
    server version and kind; a database that cannot be reached lists its tenants as
    unreachable, which counts as drift (they could not be checked)."""
    from tenantmig.schema.drift_report import DriftReport, SchemaDrift
    from tenantmig.schema.moves import read_moves

    registry.check_tenant_names(names or (), settings.tenant_source)
    settings.check_database_names(databases or ())
    with open_database(settings, notice=False) as database, database.engine.connect() as conn:
        with own_reads(conn, settings.statement_timeout_s):
            # Everything the control database lacks, in one message: the registry, and the
            # scratch schemas the shared schema's and its tenants' references are built in.
            check_privileges(conn, settings, Needs(read_registry=True, scratch=True))
            selected = registry.narrowed(
                _select_tenants(conn, settings.tenant_source, names),
                databases,
                check_labels(labels or ()),
            )
        include_shared = not names and not labels and (databases is None or CONTROL in databases)
        caches: dict[tuple[int, str], dict[str | None, SchemaStructure]] = {}
        report: DriftReport | None = None
        if include_shared or any(t.database == CONTROL for t in selected):
            # The control database first: the shared schema is there.
            cache = caches.setdefault((database.server_version_num, database.flavour.name), {})
            report = _drift_in(settings, database, CONTROL, selected, include_shared, cache)
        others = [t for t in selected if t.database != CONTROL]
        with _by_database(settings, database, others) as places:
            for name, member, _group in places.reachable:
                cache = caches.setdefault((member.server_version_num, member.flavour.name), {})
                found = _drift_in(settings, member, name, others, False, cache)
                if report is None:
                    report = found
                else:
                    report.merge(found)
        down = places.down
        if report is None:  # only tenants of unreachable databases were selected
            report = DriftReport(
                head=ChainScripts(settings, "tenant").head,
                shared_head=None,
                tenants_checked=0,
                shared=None,
                database=client_url(database.url, show_password=False),
                ignored=tuple(sorted(settings.drift_ignore)),
            )
        report.databases = tuple(
            dict.fromkeys(t.database for t in selected if t.database != CONTROL)
        )
        for tenant in others:
            if tenant.database in down:
                report.tenants_checked += 1
                report.drifted.append(
                    SchemaDrift(
                        name=tenant.name,
                        schema=tenant.schema,
                        revision=None,
                        version_drift="unreachable",
                        detail=down[tenant.database],
                        database=tenant.database,
                    )
                )
        with own_reads(conn, settings.statement_timeout_s):
            moves = read_moves(conn, settings.shared_schema, [t.name for t in selected])
        report.moves = list(moves.values())
        return report


def _drift_in(
    settings: Settings,
    database: Database,
    name: str,
    tenants: Sequence[Tenant],
    include_shared: bool,
    cache: dict[str | None, SchemaStructure],
) -> DriftReport:
    """Drift of the tenants of one database, on a connection of its own."""
    from tenantmig.schema.drift import check as check_drift

    here = [t for t in tenants if t.database == name]
    with database.engine.connect() as conn:
        with own_reads(conn, settings.statement_timeout_s):
            check_privileges(conn, settings, Needs(scratch=True))
            check_privileges(
                conn, settings, Needs(schemas=[t.schema for t in here], change_schemas=False)
            )
        return check_drift(
            settings,
            conn,
            database.flavour,
            here,
            include_shared=include_shared,
            database=client_url(database.url, show_password=False),
            database_name=name,
            reference_cache=cache,
        )


# -- restore, move and the ledger ---------------------------------------------------------------
def restore(settings: Settings, tenant: str, archive: Path) -> RestoreResult:
    """Replace one tenant's schema with a ``--backup`` dump, atomically, in the database the
    directory names (read again under the tenant's lock). A run in the ledger from its start:
    a killed restore reads as abandoned there, a failed or interrupted one says why."""
    from tenantmig.backup.restore import check_archive, restore_tenant
    from tenantmig.run.single import SingleRun

    registry.check_tenant_names([tenant], settings.tenant_source)
    if not archive.is_file():
        raise ConfigError(f"backup file {str(archive)!r} does not exist or is not a file")
    with open_database(settings) as control:
        with control.engine.begin() as conn:
            (target,) = _select_tenants(conn, settings.tenant_source, [tenant])
        started = TenantOutcome(
            tenant, target.schema, TenantStatus.NOT_RUN, backup=str(archive),
            database=target.database,
        )  # fmt: skip
        options = {"file": str(archive), "database": target.database}
        with _member(settings, control, target.database) as where:
            tools = check_archive(where, target, archive)  # refused before the run starts
            with SingleRun(
                control.engine, settings.shared_schema, "restore", str(archive), options, started
            ) as run:
                result = restore_tenant(settings, control, where, target, archive, tools)
                run.finish(
                    replace(
                        started,
                        status=TenantStatus.OK,
                        from_revision=result.from_revision,
                        to_revision=result.to_revision,
                        attempts=1,
                        duration_s=result.duration_s,
                    )
                )
    return replace(result, run_id=run.run_id)


def move_tenant(settings: Settings, tenant: str, to: str) -> MoveResult:
    """Move ``tenant``'s schema to database ``to`` of the directory, or finish its unfinished
    move there: copied under its lock with writes to it blocked, verified (rows and structure),
    the source fenced, the directory switched, the fenced source dropped. Every application
    write lands in the copy the directory finally names, or fails (see ``backup.move``). A run
    in the ledger from its start."""
    from tenantmig.backup.move import move_tenant as move_schema
    from tenantmig.run.single import SingleRun
    from tenantmig.schema.moves import read_moves

    source = settings.tenant_source
    registry.require_registry(source, "move tenants")
    registry.check_tenant_names([tenant], source)
    settings.check_database_names([to])
    with open_database(settings) as control:
        with control.engine.begin() as conn:
            (found,) = _select_tenants(conn, source, [tenant])
            check_privileges(conn, settings, Needs(ledger=True, write_registry=True))
            pending = read_moves(conn, settings.shared_schema, [tenant]).get(tenant)
        # An unfinished move is finished from where it started, wherever the directory points.
        origin_name = pending.source if pending else found.database
        if pending is None and found.database == to:
            raise ConfigError(f"tenant {tenant} already lives in database {to}; nothing moved")
        with (
            _member(settings, control, origin_name) as origin,
            _member(settings, control, to) as target,
        ):
            with origin.engine.begin() as conn:
                schemas = [] if pending else [found.schema]
                check_privileges(conn, settings, Needs(schemas=schemas))
            with target.engine.begin() as conn:
                check_privileges(conn, settings, Needs(create_schemas=True))
            options = {"from": origin_name, "to": to}
            started = TenantOutcome(
                tenant, found.schema, TenantStatus.NOT_RUN, database=origin_name
            )
            with SingleRun(
                control.engine, settings.shared_schema, "move", to, options, started
            ) as run:
                result = move_schema(
                    settings, control, replace(found, database=origin_name), origin, target, to,
                    run.run_id,
                )  # fmt: skip
                run.finish(
                    replace(
                        started,
                        status=TenantStatus.OK,
                        from_revision=result.revision,
                        to_revision=result.revision,
                        attempts=1,
                        duration_s=result.duration_s,
                        database=to,
                    )
                )
    return replace(result, run_id=run.run_id)


def runs(settings: Settings, limit: int = 20) -> list[RunRecord]:
    with open_database(settings, notice=False) as database, database.engine.connect() as conn:
        ledger = Ledger(
            conn, settings.shared_schema, statement_timeout_s=settings.statement_timeout_s
        )
        return ledger.runs_list(limit)


def prune_runs(
    settings: Settings,
    retention: Retention,
    *,
    dry_run: bool = False,
    confirm: Callable[[PrunePlan], bool] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> PruneResult:
    """Remove finished runs from the ledger as ``retention`` says, never what recovery and
    status rely on (see ``run.retention``). ``confirm`` is asked with the plan before anything
    is removed; a refusal is a ConfigError with nothing changed."""
    from tenantmig.run.retention import PruneResult, plan_prune, prune

    with open_database(settings, notice=False) as database, database.engine.connect() as conn:
        with conn.begin():
            check_privileges(conn, settings, Needs(ledger=True))
            plan = plan_prune(conn, settings.shared_schema, retention)
        if dry_run or not plan.runs:
            return PruneResult(retention, plan.runs, plan.tenant_rows, plan.kept, dry_run)
        if confirm is not None and not confirm(plan):
            raise ConfigError(f"{plan.question()}: not confirmed; nothing was changed")
        return prune(
            conn,
            settings.shared_schema,
            plan,
            lock_timeout_s=settings.lock_timeout_s,
            on_batch=on_batch,
        )


def run_details(settings: Settings, run_id: int) -> tuple[RunRecord, list[TenantOutcome]]:
    with open_database(settings, notice=False) as database, database.engine.connect() as conn:
        ledger = Ledger(
            conn, settings.shared_schema, statement_timeout_s=settings.statement_timeout_s
        )
        found = ledger.run(run_id)
    if found is None:
        raise ConfigError(f"no run {run_id} in the ledger; see `tenantmig runs`")
    return found


# -- the database for other tools ---------------------------------------------------------------
def database_url(settings: Settings, *, show_password: bool = False) -> str:
    """The configured database's URL as libpq clients take it (the embedded one is started to
    learn its socket directory, then stopped again unless another process uses it)."""
    with open_database(settings, notice=False) as database:
        return client_url(database.url, show_password=show_password)


def run_psql(settings: Settings, arguments: Sequence[str]) -> int:
    """psql on the configured database, the embedded server kept running while it runs; the
    password travels in the environment, never on the command line. Returns psql's exit code."""
    from tenantmig.backup.dump import LibpqConnection, find_pg_tools

    with open_database(settings, notice=False) as database:
        psql = find_pg_tools(database.server_major).tool("psql")
        connection = LibpqConnection.from_url(database.url, application_name="tenantmig psql")
        return subprocess.call(
            [psql, "--dbname", connection.dsn, *arguments], env=connection.environment()
        )


def serve(settings: Settings, ready: Callable[[str], None]) -> None:
    """Keep the configured (embedded) database running until interrupted; ``ready`` gets its
    URL (password masked) once it accepts connections."""
    if settings.database_url:
        raise ConfigError(
            "db serve keeps the embedded server running; a database URL is configured, and that "
            "server runs on its own"
        )
    with open_database(settings, notice=False) as database:
        ready(client_url(database.url, show_password=False))
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return


# -- demo ----------------------------------------------------------------------------------------
@dataclass
class DemoResult:
    created: list[str]
    shared: RunResult
    tenants: RunResult
    status: StatusReport


def demo(
    settings: Settings,
    observer: RunObserver | None = None,
    prepared: Callable[[list[str], RunResult], None] | None = None,
) -> DemoResult:
    """Shared upgrade, register the demo tenants (if new), then upgrade --all-tenants.
    ``prepared`` is told (new tenants, shared run) before the tenants' upgrade starts, so that
    what introduces that upgrade is shown before its progress."""
    shared = upgrade(settings, Selection.shared_only(), "head")
    existing = {t.name for t in tenants(settings)}
    new = [n for n in DEMO_TENANTS if n not in existing]
    if new:
        create_tenants(settings, new, migrate=False)
    if prepared is not None:
        prepared(new, shared)
    result = upgrade(settings, Selection.all_tenants(), "head", observer=observer)
    return DemoResult(created=new, shared=shared, tenants=result, status=status(settings))
