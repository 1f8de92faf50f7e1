"""The run plan: the user's request, validated once and frozen, before the database is touched.

``build_plan`` is the one place a run's options are checked and combined with the settings; the
coordinator and the workers only read the result. A new run option is added here: to
``RunOptions`` (what the caller asks for), then to ``RunPlan`` (coordinator only) or to
``TenantPolicy`` (it changes how each tenant is migrated, so it travels to the workers).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tenantmig.chains.scripts import ChainScripts, Direction, is_relative
from tenantmig.errors import ConfigError
from tenantmig.run.results import RunScope
from tenantmig.run.waves import DEFAULT_SEED, Rollout, check_rollout, parse_waves
from tenantmig.schema.labels import check_labels
from tenantmig.schema.registry import Tenant, check_tenant_names, narrowed
from tenantmig.server.config import Settings
from tenantmig.server.session import Timeouts

if TYPE_CHECKING:
    from tenantmig.run.drops import Drops

# Asked before a downgrade that drops data changes anything; False (or an error it raises)
# stops the run with nothing changed. The CLI's asks for --yes or a typed "yes".
ConfirmDrops = Callable[["Drops"], bool]


@dataclass(frozen=True)
class Selection:
    """Which schemas a command acts on."""

    shared: bool = False
    tenants: tuple[str, ...] | None = None  # None with include_tenants: every tenant
    include_tenants: bool = False
    # Only tenants living in these databases (directory names; None: wherever they live).
    databases: tuple[str, ...] | None = None
    # Only tenants with one of these labels (None: whatever their labels).
    labels: tuple[str, ...] | None = None

    def in_databases(self, databases: Sequence[str] | None) -> Selection:
        """The same selection, narrowed to tenants living in ``databases`` (None: all)."""
        return replace(self, databases=tuple(databases) if databases else None)

    def with_labels(self, labels: Sequence[str] | None) -> Selection:
        """The same selection, narrowed to tenants with one of ``labels`` (None: all);
        checked here, before anything is read."""
        return replace(self, labels=check_labels(labels) if labels else None)

    def narrow(self, tenants: Sequence[Tenant], *, strict: bool = True) -> list[Tenant]:
        """``tenants`` (all or the named ones) narrowed to the databases and labels asked
        for; ``strict``: a label no tenant has is an error."""
        return narrowed(tenants, self.databases, self.labels, strict=strict)

    @classmethod
    def everything(cls) -> Selection:
        return cls(shared=True, include_tenants=True)

    @classmethod
    def shared_only(cls) -> Selection:
        return cls(shared=True)

    @classmethod
    def all_tenants(cls) -> Selection:
        return cls(include_tenants=True)

    @classmethod
    def named(cls, names: Sequence[str]) -> Selection:
        return cls(tenants=tuple(names), include_tenants=True)

    @property
    def every_tenant(self) -> bool:
        """Every registered tenant (takes the run lock), not a named list."""
        return self.include_tenants and self.tenants is None

    @property
    def scope(self) -> RunScope:
        if self.every_tenant:
            return RunScope.EVERYTHING if self.shared else RunScope.ALL_TENANTS
        if self.include_tenants:
            return RunScope.TENANTS
        return RunScope.SHARED

    @property
    def same_kind_scopes(self) -> tuple[RunScope, ...]:
        """Scopes of earlier runs whose unfinished tenants ``--only-failed`` takes."""
        if self.every_tenant:
            return (RunScope.ALL_TENANTS, RunScope.EVERYTHING)
        return (RunScope.TENANTS,)


@dataclass(frozen=True)
class RunOptions:
    """How a tenant run behaves, as the caller asks for it; defaults are what a careful operator
    would pick. Timeouts and retries come from Settings (flags, environment, alembic.ini)."""

    jobs: int | None = None  # None: min(CPU-based default, what the server can take)
    # At most this many tenants of one database at once (None: what that server can take).
    jobs_per_database: int | None = None
    fail_fast: bool = False
    max_failures: int | None = None
    only_failed: bool = False
    wait_s: float = 0.0  # how long to wait for another run's run lock
    log_file: Path | None = None  # default: <home>/logs/tenantmig.log
    replay: bool = True  # replay compiled steps where provably equivalent (see replay.py)
    backup_dir: Path | None = None  # pg_dump each tenant here before migrating it
    echo_output: bool = False  # also show what migrations print on stderr (always logged)
    # A downgrade that would drop tables or columns, or take a tenant to base, asks this once
    # every tenant's target is resolved (None: go on without asking, as before).
    confirm_drops: ConfirmDrops | None = None
    # A rollout in waves (run/waves.py): the spec, and the rules between waves.
    waves: str | None = None
    wave_seed: str | None = None
    wave_max_failures: int = 0
    pause_after_wave: bool = False
    soak_s: float = 0.0
    # Go on with this paused, stopped or killed rollout instead of starting a run.
    resume_run: int | None = None
    # The queue's order: "size" (largest schema first, the default) or "name".
    order: str = "size"
    # Tenants one worker process migrates at once, each on its own connection (run.executor):
    # --jobs stays the number of tenants in flight; the processes are fewer.
    connections_per_worker: int = 1


@dataclass(frozen=True)
class TenantPolicy:
    """How every tenant of a run is migrated. Picklable: it travels to each worker process."""

    direction: Direction
    target: str  # as the user wrote it: head, base, a revision id, +N / -N
    timeouts: Timeouts
    retries: int  # after a lock timeout, deadlock or serialization failure
    reconnect_timeout_s: float  # how long a tenant keeps reconnecting to a lost server
    echo_output: bool = False  # what migrations print: run log, and stderr too when True

    @property
    def relative(self) -> bool:
        return is_relative(self.target)


@dataclass(frozen=True)
class StopPolicy:
    """When to stop handing out tenants: after the first failure, or after N failures."""

    fail_fast: bool = False
    max_failures: int | None = None

    def should_stop(self, failures: int) -> bool:
        if self.fail_fast and failures > 0:
            return True
        return self.max_failures is not None and failures >= self.max_failures


@dataclass(frozen=True)
class RunPlan:
    """One upgrade or downgrade, validated. Built by ``build_plan``, never changed afterwards.

    What travels to worker processes: ``policy`` and ``settings`` (from which a worker loads
    the tenant chain's scripts once), plus what the coordinator learns at run time (the run id,
    compiled steps, the backup plan; see ``executor.WorkerSpec``). Everything else stays with
    the coordinator: the selection, worker count, stop policy, ``--only-failed``, the run-lock
    wait, and the loaded scripts (which hold imported revision modules and are not pickled).
    """

    settings: Settings
    selection: Selection
    policy: TenantPolicy
    stop: StopPolicy
    jobs: int | None
    jobs_per_database: int | None
    only_failed: bool
    wait_s: float
    replay: bool
    log_file: Path
    backup_dir: Path | None
    confirm_drops: ConfirmDrops | None = field(default=None, compare=False, repr=False)
    rollout: Rollout | None = None  # waves as written (assigned to tenants by the coordinator)
    resume_run: int | None = None
    order: str = "size"  # the queue: largest schema first, or by name
    connections_per_worker: int = 1
    shared_scripts: ChainScripts | None = field(default=None, compare=False, repr=False)
    tenant_scripts: ChainScripts | None = field(default=None, compare=False, repr=False)

    @property
    def direction(self) -> Direction:
        return self.policy.direction

    @property
    def target(self) -> str:
        return self.policy.target


def default_jobs() -> int:
    return max(2, os.cpu_count() or 2)


def log_file(settings: Settings, requested: Path | None = None) -> Path:
    """The run log: the requested file, else ``<home>/logs/tenantmig.log``."""
    return requested if requested is not None else settings.home / "logs" / "tenantmig.log"


def check_options(selection: Selection, options: RunOptions) -> None:
    """Reject options that make no sense, whatever the database holds."""
    if options.jobs is not None and options.jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    if options.jobs_per_database is not None and options.jobs_per_database < 1:
        raise ConfigError("--jobs-per-database must be at least 1")
    if options.connections_per_worker < 1:
        raise ConfigError("--connections-per-worker must be at least 1")
    if options.max_failures is not None and options.max_failures < 1:
        raise ConfigError("--max-failures must be at least 1")
    if options.wait_s < 0:
        raise ConfigError("--wait must be 0 or more seconds")
    check_rollout(options.wave_max_failures, options.soak_s)
    if options.order not in ("size", "name"):
        raise ConfigError(f"--order {options.order}: give size or name")
    rollout_asked = (
        options.wave_max_failures or options.pause_after_wave or options.soak_s or options.wave_seed
    )
    if rollout_asked and options.waves is None and options.resume_run is None:
        raise ConfigError(
            "--wave-max-failures, --pause-after-wave, --soak and --wave-seed go with --waves"
        )
    if options.waves is not None:
        if not selection.every_tenant:
            raise ConfigError("--waves rolls out over all tenants: give --all-tenants")
        if options.only_failed:
            raise ConfigError(
                "a rollout is finished with `tenantmig runs resume RUN_ID`, not --only-failed"
            )
    if options.backup_dir is not None and not selection.include_tenants:
        raise ConfigError(
            "--backup dumps tenant schemas and this run migrates only the shared schema; "
            "back it up with pg_dump -Fc -n SCHEMA instead"
        )


def _rollout(options: RunOptions) -> Rollout | None:
    if options.waves is None:
        return None
    return Rollout(
        waves=parse_waves(options.waves),
        seed=options.wave_seed or DEFAULT_SEED,
        max_failures=options.wave_max_failures,
        pause_after_wave=options.pause_after_wave,
        soak_s=options.soak_s,
    )


def build_plan(
    settings: Settings,
    selection: Selection,
    direction: Direction,
    revision: str,
    options: RunOptions,
) -> RunPlan:
    """Validate the request (names, revision, options) and load the chains' scripts once.

    Raises a ConfigError/InvalidTenantName/UnknownRevision before anything is connected to, so
    bad input changes nothing.
    """
    if selection.shared and selection.include_tenants and revision not in ("head", "base"):
        raise ConfigError(
            f"revision {revision!r} names one chain; choose --shared or --tenant/--all-tenants"
        )
    check_options(selection, options)
    check_tenant_names(selection.tenants or (), settings.tenant_source)
    settings.check_database_names(selection.databases or ())
    shared_scripts = ChainScripts(settings, "shared") if selection.shared else None
    tenant_scripts = ChainScripts(settings, "tenant") if selection.include_tenants else None
    for scripts in (shared_scripts, tenant_scripts):
        if scripts is not None and not is_relative(revision):
            scripts.resolve_target(revision)
    return RunPlan(
        settings=settings,
        selection=selection,
        policy=TenantPolicy(
            direction=direction,
            target=revision,
            timeouts=settings.timeouts,
            retries=settings.retries,
            reconnect_timeout_s=settings.reconnect_timeout_s,
            echo_output=options.echo_output,
        ),
        stop=StopPolicy(options.fail_fast, options.max_failures),
        jobs=options.jobs,
        jobs_per_database=options.jobs_per_database,
        only_failed=options.only_failed,
        wait_s=options.wait_s,
        replay=options.replay,
        log_file=log_file(settings, options.log_file),
        backup_dir=options.backup_dir,
        confirm_drops=options.confirm_drops,
        rollout=_rollout(options),
        resume_run=options.resume_run,
        order=options.order,
        connections_per_worker=options.connections_per_worker,
        shared_scripts=shared_scripts,
        tenant_scripts=tenant_scripts,
    )
