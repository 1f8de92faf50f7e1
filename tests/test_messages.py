"""What an operator reads: blocked-by messages that name real blockers, backups in the summary."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from tenantmig import api
from tenantmig.run.results import TenantStatus
from tenantmig.server.config import Settings
from tests.helpers import run_cli
from tests.test_engine import make_tenants, names


def test_under_serializable_the_blocked_by_message_names_only_real_blockers(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    tenants = names(4)
    make_tenants(settings, tenants, "001_initial_schema")
    database = engine.url.database
    with engine.connect() as conn:
        conn.exec_driver_sql(
            f'ALTER DATABASE "{database}" SET default_transaction_isolation = serializable'
        )
        conn.commit()
    fast = settings.with_options(lock_timeout_s=0.3, retries=0)
    with engine.connect() as blocker:
        # The blocker's serializable snapshot keeps the predicate (SIRead) locks of tenantmig's
        # own committed reads (the version tables) alive; they block nobody.
        blocker_pid = blocker.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        blocker.exec_driver_sql('LOCK TABLE "t002".inventory_items IN ACCESS SHARE MODE')
        result = api.upgrade(fast, api.Selection.all_tenants(), options=api.RunOptions(jobs=2))
        blocker.rollback()
    failed = {o.name: o for o in result.outcomes}["t002"]
    assert failed.status is TenantStatus.FAILED
    error = failed.error or ""
    assert f"pid {blocker_pid}" in error, error
    assert "SIReadLock" not in error and "None" not in error, error


def test_backups_are_shown_in_the_summary_and_in_runs_show(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, ["acme", "globex"], "001_initial_schema")
    backups = tmp_path / "backups"
    done = run_cli("upgrade", "--all-tenants", "--backup", str(backups), url=database_url)
    assert done.returncode == 0, done.stderr
    assert f"backups: 2 pg_dump file(s) in {backups}" in done.stdout, done.stdout
    run_id = done.stdout.split("run ", 1)[1].split()[0]
    shown = run_cli("runs", "show", run_id, url=database_url)
    header = next(line for line in shown.stdout.splitlines() if line.startswith("tenant "))
    assert "backup" in header.split()
    assert str(backups / f"acme.run{run_id}.001_initial_schema.dump") in shown.stdout
