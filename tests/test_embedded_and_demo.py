"""With no URL configured, tenantmig uses the embedded PostgreSQL; the demo runs end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.helpers import TENANT_HEAD, run_cli


def _no_url_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TENANTMIG_DATABASE_URL"}
    env["TENANTMIG_HOME"] = str(home)
    return env


def test_demo_on_the_embedded_server(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = _no_url_env(home)
    done = run_cli("demo", env=env)
    assert done.returncode == 0, done.stderr
    assert "using the embedded PostgreSQL" in done.stderr
    assert (home / "pgdata" / "PG_VERSION").is_file()
    assert "3 ok" in done.stdout
    status = run_cli("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert sorted(t["name"] for t in report["tenants"]) == ["acme", "globex", "initech"]
    assert {t["revision"] for t in report["tenants"]} == {TENANT_HEAD}
    # Running the demo again is a no-op upgrade, not an error.
    again = run_cli("demo", env=env)
    assert again.returncode == 0, again.stderr
    # Nothing to do is said, and not recorded as a run.
    assert "all 3 selected tenants are already at head; no run was recorded" in again.stdout
    # The server is stopped again when the command exits: nothing is left running.
    assert not (home / "pgdata" / "postmaster.pid").exists()
