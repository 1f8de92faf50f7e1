"""Commands that destroy data ask first: --yes, or "yes" typed on a terminal; else exit 1."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import sqlalchemy as sa

from tenantmig.server.config import Settings
from tests.helpers import CONFIG, REPO, SHARED_HEAD, TENANT_HEAD, run_cli, version
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
    # A relative or named-revision downgrade of tenants is everyday work: no question.
    assert run_cli("downgrade", "--tenant", "acme", "-1", url=database_url).returncode == 0


def _on_a_terminal(url: str, answer: str, *args: str) -> tuple[int, str]:
    """Run tenantmig in a pseudo-terminal, answer its question, return (exit code, output)."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "tenantmig", "--config", str(CONFIG), *args],
        env={**os.environ, "TENANTMIG_DATABASE_URL": url},
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        cwd=REPO,
    )
    os.close(secondary)
    seen, answered = b"", False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 1)
        if ready:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the terminal closed: the command is done
                break
            if not chunk:
                break
            seen += chunk
        if not answered and b"Type yes to go on:" in seen:
            os.write(primary, answer.encode() + b"\n")
            answered = True
        if process.poll() is not None and not ready:
            break
    code = process.wait(timeout=60)
    os.close(primary)
    return code, seen.decode(errors="replace")


def test_a_terminal_is_asked_and_only_yes_goes_on(
    settings: Settings, database_url: str, engine: sa.Engine
) -> None:
    make_tenants(settings, ["acme"], TENANT_HEAD)
    code, output = _on_a_terminal(database_url, "no", "downgrade", "--tenant", "acme", "base")
    assert code == 1 and "not confirmed; nothing was changed" in output, output
    assert version(engine, "acme") == TENANT_HEAD
    code, output = _on_a_terminal(database_url, "yes", "downgrade", "--tenant", "acme", "base")
    assert code == 0, output
    assert version(engine, "acme") is None
