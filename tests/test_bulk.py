"""Bulk work within server limits: dropping hundreds of tenants in bounded, atomic batches."""

from __future__ import annotations

import sqlalchemy as sa

from tenantmig import api
from tenantmig.server.config import Settings
from tests.helpers import run_cli, schemas, tenant_rows
from tests.test_engine import make_tenants, names


def test_dropping_500_migrated_tenants_fits_the_lock_table(
    settings: Settings, database_url: str, engine: sa.Engine
) -> None:
    # 500 schemas of ~60 objects each: ~30,000 locks, far past one transaction's share of the
    # lock table (max_locks_per_transaction x max_connections): one transaction for all of
    # them failed with "out of shared memory".
    tenants = names(500)
    make_tenants(settings, tenants)
    assert api.upgrade(
        settings, api.Selection.all_tenants(), options=api.RunOptions(jobs=2)
    ).succeeded
    done = run_cli("tenants", "drop", *tenants, "--yes", url=database_url)
    assert done.returncode == 0, done.stderr
    # Progress: a line past each 250 tenants (batches are sized to the lock table), and at the end.
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and lines[-1] == "dropped 500/500 tenant(s)", done.stderr
    assert lines[0].startswith("dropped 2") and lines[0].endswith("/500 tenant(s)"), done.stderr
    assert "dropped 500 tenant(s): t000, t001" in done.stdout and "and 475 more" in done.stdout
    assert not set(tenants) & schemas(engine)
    assert tenant_rows(engine) == []


def test_unknown_names_are_counted_not_all_printed_and_nothing_is_dropped(
    settings: Settings, database_url: str, engine: sa.Engine
) -> None:
    make_tenants(settings, ["real"])
    ghosts = names(100, "ghost")
    done = run_cli("tenants", "drop", "real", *ghosts, "--yes", url=database_url)
    assert done.returncode == 1
    assert "100 unknown tenant(s): ghost000, ghost001" in done.stderr
    assert "and 95 more" in done.stderr and "ghost099" not in done.stderr
    assert tenant_rows(engine) == ["real"] and "real" in schemas(engine)


def test_a_batch_that_fails_stops_the_drop_and_says_what_was_done(
    settings: Settings, database_url: str, engine: sa.Engine
) -> None:
    tenants = names(60)
    make_tenants(settings, tenants, "001_initial_schema")
    with engine.connect() as blocker:  # an application transaction on t030 (second batch)
        blocker.exec_driver_sql('LOCK TABLE "t030".users IN ACCESS SHARE MODE')
        done = run_cli("tenants", "drop", *tenants, "--yes", url=database_url)
        blocker.rollback()
    assert done.returncode == 3, done.stderr
    assert "a batch failed and was rolled back" in done.stderr
    assert "dropped 25 of 60 tenant(s)" in done.stderr
    assert "still registered and untouched: t025, t026" in done.stderr
    assert tenant_rows(engine) == tenants[25:]  # the second batch rolled back whole
    assert set(tenants[25:]) <= schemas(engine) and not set(tenants[:25]) & schemas(engine)
