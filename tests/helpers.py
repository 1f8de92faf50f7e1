"""Small helpers shared by tests: catalog queries that check real database state."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from tenantmig.schema.catalog import read_structures

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "alembic.ini"
TENANT_HEAD = "003_add_inventory_tracking"
SHARED_HEAD = "002_add_tenant_features"


def start_cli(
    *args: str, url: str, new_session: bool = False, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start the real ``tenantmig`` command against ``url`` without waiting for it."""
    return subprocess.Popen(
        [sys.executable, "-m", "tenantmig", "--config", str(CONFIG), *args],
        env={**os.environ, **(env or {}), "TENANTMIG_DATABASE_URL": url},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def run_cli(
    *args: str,
    url: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    """Run the real ``tenantmig`` command in a subprocess, against ``url`` if given."""
    full_env = {**os.environ, **(env or {})}
    if url is not None:
        full_env["TENANTMIG_DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "tenantmig", "--config", str(CONFIG), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


def schemas(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT nspname FROM pg_namespace")).scalars())


def tables(engine: sa.Engine, schema: str) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": schema}
            ).scalars()
        )


def version(engine: sa.Engine, schema: str) -> str | None:
    with engine.connect() as conn:
        exists = conn.execute(
            sa.text("SELECT to_regclass(:t)"), {"t": f'"{schema}".alembic_version'}
        ).scalar()
        if exists is None:
            return None
        return conn.execute(sa.text(f'SELECT version_num FROM "{schema}".alembic_version')).scalar()


def snapshot(engine: sa.Engine, schema: str) -> dict[str, dict[str, str]]:
    with engine.connect() as conn:
        return read_structures(conn, [schema])[schema].objects


def tenant_rows(engine: sa.Engine, shared: str = "public") -> list[str]:
    with engine.connect() as conn:
        if (
            conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": f'"{shared}".tenants'}).scalar()
            is None
        ):
            return []
        return list(
            conn.execute(sa.text(f'SELECT name FROM "{shared}".tenants ORDER BY name')).scalars()
        )


def project_with(tmp_path: Path, tenant_revisions: dict[str, str]) -> Path:
    """A copy of the project with extra tenant revision files; returns its alembic.ini."""
    root = tmp_path / "project"
    shutil.copytree(REPO / "migrations", root / "migrations")
    shutil.copy(REPO / "alembic.ini", root / "alembic.ini")
    for filename, text in tenant_revisions.items():
        (root / "migrations" / "tenant" / "versions" / filename).write_text(text)
    return root / "alembic.ini"


def run_in_terminal(
    *args: str, url: str, config: Path = CONFIG, answer: str | None = None
) -> tuple[int, str]:
    """Run ``tenantmig`` in a pseudo-terminal (stdin, stdout and stderr), type ``answer`` at its
    "Type yes" question if given; return (exit code, everything the terminal showed)."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "tenantmig", "--config", str(config), *args],
        env={**os.environ, "TENANTMIG_DATABASE_URL": url},
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        cwd=REPO,
    )
    os.close(secondary)
    seen, answered = b"", answer is None
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
            os.write(primary, (answer or "").encode() + b"\n")
            answered = True
        if process.poll() is not None and not ready:
            break
    code = process.wait(timeout=60)
    os.close(primary)
    return code, seen.decode(errors="replace")
