"""What a new user meets on the command line: psql through tenantmig, base written as base, a
check and a first tenant in a fresh project, runs list, the demo's output in order, drift's
JSON when the shared schema was not checked, and the project's .gitignore."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tenantmig import api
from tenantmig.server.config import Settings, load_settings
from tests.helpers import run_cli, run_in_terminal
from tests.test_engine import make_tenants


def test_db_psql_gives_psql_its_own_options(database_url: str) -> None:
    # -c is psql's command here, not tenantmig's --config.
    done = run_cli("db", "psql", "-X", "-A", "-t", "-c", "select 1", url=database_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    named = run_cli("db", "psql", "-Atc", "select current_database()", url=database_url)
    assert named.stdout.strip() == make_url(database_url).database, named.stderr


def test_a_downgrade_to_base_says_base_in_progress_and_runs_show(
    settings: Settings, database_url: str
) -> None:
    make_tenants(settings, ["acme"], "001_initial_schema")
    down = run_cli("downgrade", "--tenant", "acme", "base", "--yes", url=database_url)
    assert down.returncode == 0, down.stderr
    progress = next(line for line in down.stderr.splitlines() if " acme " in line)
    assert "001_initial_schema -> base" in progress, down.stderr
    run_id = down.stdout.split("run ", 1)[1].split()[0]
    shown = run_cli("runs", "show", run_id, url=database_url)
    lines = shown.stdout.splitlines()
    header = next(line for line in lines if line.startswith("tenant ")).split()
    row = next(line for line in lines if line.startswith("acme ")).split()
    assert header[:5] == ["tenant", "status", "from", "to", "by"], shown.stdout
    assert row[:4] == ["acme", "ok", "001_initial_schema", "base"], shown.stdout
    as_json = json.loads(run_cli("runs", "show", run_id, "--json", url=database_url).stdout)
    assert as_json["tenants"][0]["to"] == "base"


def test_runs_list_is_what_runs_prints(settings: Settings, database_url: str) -> None:
    make_tenants(settings, ["acme"], "001_initial_schema")
    bare = run_cli("runs", "--json", url=database_url)
    listed = run_cli("runs", "list", "--json", url=database_url)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == json.loads(bare.stdout)
    assert len(json.loads(bare.stdout)) == 2  # the shared upgrade and the tenants'
    one = run_cli("runs", "list", "--limit", "1", url=database_url)
    assert one.returncode == 0, one.stderr
    lines = [line for line in one.stdout.splitlines() if line.strip()]
    assert lines[0].split()[:2] == ["run", "command"] and len(lines) == 3, one.stdout


def _fresh_project(tmp_path: Path, database_url: str) -> tuple[Path, Settings]:
    project = api.init_project(tmp_path / "app").directory
    settings = load_settings(config_file=project / "alembic.ini", database_url=database_url)
    return project / "alembic.ini", settings


def test_check_in_a_fresh_project_passes_and_says_why(tmp_path: Path, database_url: str) -> None:
    config, _ = _fresh_project(tmp_path, database_url)
    done = run_cli("--config", str(config), "check", url=database_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "shared: skipped, no models to compare" in done.stdout
    assert "tenant: skipped, no models to compare" in done.stdout
    as_json = run_cli("--config", str(config), "check", "--json", url=database_url)
    assert json.loads(as_json.stdout) == {
        "agree": True,
        "differences": {},
        "skipped": ["shared", "tenant"],
    }


def test_a_tenant_created_on_an_empty_chain_is_not_called_skipped(
    tmp_path: Path, database_url: str
) -> None:
    config, settings = _fresh_project(tmp_path, database_url)
    assert api.upgrade(settings, api.Selection.shared_only()).succeeded
    done = run_cli("--config", str(config), "tenants", "create", "acme", url=database_url)
    assert done.returncode == 0, done.stderr
    shown = done.stdout + done.stderr
    assert "registered 1 tenant(s): acme" in shown
    assert "the tenant chain has no revisions yet: nothing to migrate" in shown
    assert "already at the target" not in shown and "skipped" not in shown, shown
    assert [t.name for t in api.tenants(settings)] == ["acme"]


def test_the_demo_introduces_the_upgrade_before_its_progress(database_url: str) -> None:
    code, seen = run_in_terminal("demo", url=database_url)
    assert code == 0, seen
    registered = seen.index("registered demo tenants: acme, globex, initech")
    command = seen.index("$ tenantmig upgrade --all-tenants")
    progress = seen.index("migrating 3 tenant(s)")
    assert registered < command < progress, seen


def test_drift_of_named_tenants_has_no_shared_head(settings: Settings, database_url: str) -> None:
    make_tenants(settings, ["a3"], "001_initial_schema")
    named = run_cli("drift", "--tenant", "a3", "--json", url=database_url)
    assert named.returncode == 2, named.stderr  # behind head: version drift
    assert json.loads(named.stdout)["shared_head"] is None
    everything = run_cli("drift", "--json", url=database_url)
    assert json.loads(everything.stdout)["shared_head"] == "002_add_tenant_features"


def test_init_writes_a_gitignore_for_tenantmigs_home(tmp_path: Path) -> None:
    fresh = api.init_project(tmp_path / "fresh")
    assert ".gitignore" in {str(p) for p in fresh.files}
    assert ".tenantmig/" in (fresh.directory / ".gitignore").read_text().splitlines()
    # An application's own .gitignore is kept, the line added once.
    own = tmp_path / "own"
    own.mkdir()
    (own / ".gitignore").write_text("*.pyc")
    api.init_project(own)
    assert (own / ".gitignore").read_text() == "*.pyc\n.tenantmig/\n"
    already = tmp_path / "already"
    already.mkdir()
    (already / ".gitignore").write_text("/.tenantmig\n")
    result = api.init_project(already)
    assert ".gitignore" not in {str(p) for p in result.files}
    assert (already / ".gitignore").read_text() == "/.tenantmig\n"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_ignores_the_embedded_database_and_logs(tmp_path: Path) -> None:
    project = api.init_project(tmp_path / "app").directory
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "init", "-q"], cwd=project, check=True, env=env)
    for path in (".tenantmig/embedded/pg/PG_VERSION", ".tenantmig/logs/tenantmig.log"):
        checked = subprocess.run(
            ["git", "check-ignore", "-q", path], cwd=project, env=env, check=False
        )
        assert checked.returncode == 0, path
