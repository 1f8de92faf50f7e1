"""Pure logic, no database: plan validation, triage, classify, status predicates, exit codes.

These run in a second (`pytest tests/unit`); everything that touches PostgreSQL is tested
against a real server in the rest of tests/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg2 import errorcodes
from sqlalchemy.exc import DBAPIError, OperationalError

from tenantmig.chains.scripts import ChainScripts
from tenantmig.cli import exit_code_for, main
from tenantmig.errors import (
    BackupFailed,
    ConfigError,
    ExitCode,
    InvalidTenantName,
    RunAborted,
    RunLocked,
    UnknownRevision,
)
from tenantmig.run.plan import RunOptions, Selection, build_plan
from tenantmig.run.results import RunResult, RunScope, Target, TenantOutcome, TenantStatus
from tenantmig.run.triage import triage
from tenantmig.schema.registry import Tenant
from tenantmig.schema.state import SchemaState, classify
from tenantmig.schema.versions import SchemaVersion
from tenantmig.server.config import Settings, load_settings
from tenantmig.server.errorcodes import connection_lost, retry_reason
from tenantmig.server.session import Timeouts
from tests.helpers import CONFIG, SHARED_HEAD, TENANT_HEAD

FIRST = "001_initial_schema"


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # Never connected to: plan building and the scripts need only the configuration.
    return load_settings(
        config_file=CONFIG,
        database_url="postgresql://nobody@127.0.0.1:1/none",
        home=tmp_path_factory.mktemp("home"),
    )


@pytest.fixture(scope="module")
def scripts(settings: Settings) -> ChainScripts:
    return ChainScripts(settings, "tenant")


# -- the run plan ------------------------------------------------------------------------------
def test_plan_is_built_from_settings_and_options(settings: Settings) -> None:
    plan = build_plan(
        settings,
        Selection.all_tenants(),
        "upgrade",
        "head",
        RunOptions(jobs=3, max_failures=2, wait_s=1.5),
    )
    assert plan.policy.timeouts == Timeouts(settings.lock_timeout_s, None)
    assert plan.policy.retries == settings.retries
    assert (plan.jobs, plan.stop.max_failures, plan.wait_s) == (3, 2, 1.5)
    assert plan.log_file == settings.home / "logs" / "tenantmig.log"
    assert plan.tenant_scripts is not None and plan.shared_scripts is None
    assert plan.selection.scope is RunScope.ALL_TENANTS


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (RunOptions(jobs=0), "--jobs must be at least 1"),
        (RunOptions(max_failures=0), "--max-failures must be at least 1"),
        (RunOptions(wait_s=-1), "--wait must be 0 or more"),
        (RunOptions(connections_per_worker=0), "--connections-per-worker must be at least 1"),
    ],
)
def test_plan_refuses_impossible_options(
    settings: Settings, options: RunOptions, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_plan(settings, Selection.all_tenants(), "upgrade", "head", options)


def test_plan_refuses_a_backup_of_a_shared_only_run(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--backup dumps tenant schemas"):
        build_plan(
            settings, Selection.shared_only(), "upgrade", "head", RunOptions(backup_dir=tmp_path)
        )
    assert list(tmp_path.iterdir()) == []


def test_plan_refuses_one_chains_revision_for_both_chains(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="names one chain"):
        build_plan(settings, Selection.everything(), "upgrade", FIRST, RunOptions())


def test_plan_refuses_bad_names_and_revisions(settings: Settings) -> None:
    with pytest.raises(InvalidTenantName):
        build_plan(settings, Selection.named(["pg_evil"]), "upgrade", "head", RunOptions())
    with pytest.raises(UnknownRevision):
        build_plan(settings, Selection.all_tenants(), "upgrade", "nope", RunOptions())
    # Relative targets are resolved per tenant, later, under each tenant's lock.
    plan = build_plan(settings, Selection.all_tenants(), "downgrade", "-1", RunOptions())
    assert plan.policy.relative


def test_selection_scopes() -> None:
    assert Selection.everything().scope is RunScope.EVERYTHING
    assert Selection.shared_only().scope is RunScope.SHARED
    assert Selection.named(["acme"]).scope is RunScope.TENANTS
    assert Selection.all_tenants().same_kind_scopes == (
        RunScope.ALL_TENANTS,
        RunScope.EVERYTHING,
    )
    assert Selection.named(["acme"]).same_kind_scopes == (RunScope.TENANTS,)


# -- triage ----------------------------------------------------------------------------------
def _version(
    schema: str, *revisions: str, exists: bool = True, table: bool = True
) -> SchemaVersion:
    return SchemaVersion(schema, exists, table and exists, tuple(revisions))


def test_triage_settles_missing_and_finished_tenants_and_sends_the_rest(
    scripts: ChainScripts,
) -> None:
    names = ["gone", "done", "behind", "fresh", "alien", "split"]
    tenants = [Tenant(n, n, "active") for n in names]
    versions = {
        "gone": _version("gone", exists=False),
        "done": _version("done", TENANT_HEAD),
        "behind": _version("behind", FIRST),
        "fresh": _version("fresh", table=False),
        "alien": _version("alien", "999_from_the_future"),
        "split": _version("split", FIRST, TENANT_HEAD),
    }
    result = triage(tenants, versions, scripts, "upgrade", TENANT_HEAD)
    settled = {o.name: o.status for o in result.settled}
    assert settled == {"gone": TenantStatus.MISSING, "done": TenantStatus.SKIPPED}
    jobs = {j.name: (j.seen_revision, j.seen_version_table) for j in result.jobs}
    # Unknown and diverged revisions go to a worker, which refuses them under the lock.
    assert jobs == {
        "behind": (FIRST, True),
        "fresh": (None, False),
        "alien": ("999_from_the_future", True),
        "split": (FIRST, True),
    }


def test_triage_uses_one_rule_for_both_directions(scripts: ChainScripts) -> None:
    tenants = [Tenant("low", "low", "active"), Tenant("high", "high", "active")]
    versions = {"low": _version("low", FIRST), "high": _version("high", TENANT_HEAD)}
    down = triage(tenants, versions, scripts, "downgrade", FIRST)
    assert [o.name for o in down.settled] == ["low"] and [j.name for j in down.jobs] == ["high"]
    # An upgrade never moves a tenant that is past its target down.
    up = triage(tenants, versions, scripts, "upgrade", FIRST)
    assert {o.name for o in up.settled} == {"low", "high"} and up.jobs == []
    # A relative target is resolved per tenant, from where each one is now.
    relative = triage(tenants, versions, scripts, "downgrade", "-1")
    assert relative.settled == []
    assert {j.name: j.target for j in relative.jobs} == {
        "low": Target(None),
        "high": Target(FIRST),
    }


def test_a_relative_target_past_either_end_is_refused_naming_the_tenants(
    scripts: ChainScripts,
) -> None:
    tenants = [Tenant(f"t{i}", f"t{i}", "active") for i in range(8)]
    versions = {t.schema: _version(t.schema, TENANT_HEAD) for t in tenants}
    with pytest.raises(UnknownRevision, match=r"for 8 tenant\(s\): t0 \(at 003.*and 3 more"):
        triage(tenants, versions, scripts, "upgrade", "+1")
    with pytest.raises(UnknownRevision, match="past the ends"):
        triage(tenants, versions, scripts, "downgrade", "-3")


def test_recorded_targets_win_over_the_runs_own(scripts: ChainScripts) -> None:
    """Finishing a run: each tenant goes where that run meant, even for a relative target."""
    tenants = [Tenant("late", "late", "active")]
    versions = {"late": _version("late", TENANT_HEAD)}
    recorded = {"late": Target(FIRST)}  # the earlier run meant one step down from head
    done = triage(tenants, versions, scripts, "downgrade", "-1", recorded=recorded)
    assert [(j.name, j.target) for j in done.jobs] == [("late", Target(FIRST))]
    moved = {"late": _version("late", FIRST)}  # already there: settled, not moved again
    again = triage(tenants, moved, scripts, "downgrade", "-1", recorded=recorded)
    assert [o.status for o in again.settled] == [TenantStatus.SKIPPED] and again.jobs == []


# -- one vocabulary of schema state -----------------------------------------------------------
@pytest.mark.parametrize(
    ("version", "state"),
    [
        (None, SchemaState.MISSING_SCHEMA),
        (_version("s", exists=False), SchemaState.MISSING_SCHEMA),
        (_version("s", FIRST, TENANT_HEAD), SchemaState.DIVERGED),
        (_version("s", table=False), SchemaState.UNINITIALIZED),
        (_version("s"), SchemaState.BEHIND),
        (_version("s", "999_from_the_future"), SchemaState.UNKNOWN_REVISION),
        (_version("s", FIRST), SchemaState.BEHIND),
        (_version("s", TENANT_HEAD), SchemaState.CURRENT),
    ],
)
def test_classify(version: SchemaVersion | None, state: SchemaState, scripts: ChainScripts) -> None:
    found = classify(version, scripts)
    assert found.state is state
    assert found.detail


def test_classify_says_how_far_behind(scripts: ChainScripts) -> None:
    assert "1 revision(s) behind head" in classify(_version("s", FIRST), scripts).detail


def test_shared_chain_head_is_its_own(settings: Settings) -> None:
    assert ChainScripts(settings, "shared").head == SHARED_HEAD


# -- statuses and results -----------------------------------------------------------------------
def test_status_predicates() -> None:
    assert {s for s in TenantStatus if s.is_done} == {TenantStatus.OK, TenantStatus.SKIPPED}
    assert {s for s in TenantStatus if s.is_failure} == {
        TenantStatus.FAILED,
        TenantStatus.MISSING,
        TenantStatus.INTERRUPTED,
        TenantStatus.MOVED,  # not taken where the run was asked to: exit 3, --only-failed
    }
    # not_run is neither: unfinished (``--only-failed`` takes it) but not counted as a failure.
    assert not TenantStatus.NOT_RUN.is_done and not TenantStatus.NOT_RUN.is_failure


def test_run_result_outcome_and_exit_relevant_properties() -> None:
    result = RunResult(run_id=1, command="upgrade", target="head")
    result.outcomes.append(TenantOutcome("a", "a", TenantStatus.OK, None, TENANT_HEAD))
    result.outcomes.append(TenantOutcome("b", "b", TenantStatus.NOT_RUN))
    assert result.succeeded and result.outcome.value == "succeeded"
    result.outcomes.append(TenantOutcome("c", "c", TenantStatus.MISSING))
    assert not result.succeeded and result.outcome.value == "failed"
    assert [o.name for o in result.failed] == ["c"]
    result.stopped = "the run lock was lost"
    assert not result.succeeded and result.outcome.value == "stopped"
    result.interrupted = True  # a signal as well: that is what the exit code says
    assert result.outcome.value == "interrupted"
    assert result.totals()["total"] == 3 and result.totals()["not_run"] == 1


def test_timeouts_in_milliseconds() -> None:
    assert Timeouts(5).lock_timeout_ms == 5000
    assert Timeouts(5).statement_timeout_ms == 0  # no limit
    assert Timeouts(0.0001, 0.25).lock_timeout_ms == 1  # 0 would mean "wait forever"
    assert Timeouts(1, 0.25).statement_timeout_ms == 250


# -- errors and exit codes ----------------------------------------------------------------------
class _DriverError(Exception):
    """Stands in for a psycopg2 error: only its SQLSTATE is read."""

    def __init__(self, pgcode: str | None) -> None:
        super().__init__("driver says no")
        self.pgcode = pgcode


def _dbapi_error(pgcode: str | None, cls: type[DBAPIError] = DBAPIError) -> DBAPIError:
    return cls("SELECT 1", None, _DriverError(pgcode))


def test_sqlstates_decide_retry_and_reconnect() -> None:
    assert retry_reason(_dbapi_error(errorcodes.LOCK_NOT_AVAILABLE)) == "lock timeout"
    assert retry_reason(_dbapi_error(errorcodes.DEADLOCK_DETECTED)) == "deadlock"
    assert retry_reason(_dbapi_error(errorcodes.UNIQUE_VIOLATION)) is None
    assert connection_lost(_dbapi_error(errorcodes.ADMIN_SHUTDOWN))
    assert connection_lost(_dbapi_error("08006"))
    assert connection_lost(_dbapi_error(None, OperationalError))  # "server closed the connection"
    assert not connection_lost(_dbapi_error(errorcodes.LOCK_NOT_AVAILABLE))


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("x"), 1),
        (InvalidTenantName("x"), 1),
        (UnknownRevision("x"), 1),
        (RunLocked("x"), 4),
        (RunAborted("x"), 5),
        (BackupFailed("x"), 3),
        (KeyboardInterrupt(), 130),
        (_dbapi_error(errorcodes.UNDEFINED_TABLE), 1),
    ],
)
def test_exit_codes(error: BaseException, code: int) -> None:
    assert exit_code_for(error) == code
    assert code in {c.value for c in ExitCode}


def test_usage_errors_exit_1_not_argparses_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Exit code 2 means "drift found": a mistyped option must not look like drift to CI."""
    for argv in (["drift", "--tenent", "acme"], ["tenants", "frob"], ["upgrade", "--jobs", "x"]):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 1, argv
    assert "error:" in capsys.readouterr().err
