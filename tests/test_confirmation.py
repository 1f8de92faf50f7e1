"""Commands that destroy data ask first: --yes, or "yes" typed on a terminal; else exit 1."""

from __future__ import annotations

import sqlalchemy as sa

from tenantmig.server.config import Settings
from tests.helpers import SHARED_HEAD, TENANT_HEAD, run_cli, run_in_terminal, version
from tests.test_engine import make_tenants


def test_destructive_commands_without_yes_change_nothing(
    settings: Settings, database_url: str, engine: sa.Engine
) -> None:
    make_tenants(settings, ["acme", "globex"], TENANT_HEAD)
    for command in (
        ["downgrade", "--all-tenants", "base"],
        ["downgrade", "--tenant", "acme", "base"],
        ["downgrade", "--shared", "001_initial_schema"],
        ["restore", "--tenant", "acme", "acme.run1.x.dump"],
        ["tenants", "drop", "acme"],
    ):
        done = run_cli(*command, url=database_url)
        assert done.returncode == 1, (command, done.stderr)
        assert "add --yes to confirm; nothing was changed" in done.stderr, done.stderr
    assert version(engine, "acme") == version(engine, "globex") == TENANT_HEAD
    assert version(engine, "public") == SHARED_HEAD
    # A relative downgrade whose step drops a table asks too (tests/test_downgrade_confirmation).
    assert run_cli("downgrade", "--tenant", "acme", "-1", url=database_url).returncode == 1
    assert run_cli("downgrade", "--tenant", "acme", "-1", "--yes", url=database_url).returncode == 0


def test_a_terminal_is_asked_and_only_yes_goes_on(
    settings: Settings, database_url: str, engine: sa.Engine
) -> None:
    make_tenants(settings, ["acme"], TENANT_HEAD)
    command = ("downgrade", "--tenant", "acme", "base")
    code, output = run_in_terminal(*command, url=database_url, answer="no")
    assert code == 1 and "not confirmed; nothing was changed" in output, output
    assert version(engine, "acme") == TENANT_HEAD
    code, output = run_in_terminal(*command, url=database_url, answer="yes")
    assert code == 0, output
    assert version(engine, "acme") is None
