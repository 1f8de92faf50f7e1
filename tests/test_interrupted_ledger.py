"""The record of an interrupted run says where every tenant really is: `from` is the revision the
run read, `to` the one the tenant has when the run ended, for tenants it migrated, skipped, did
not reach, lost a worker on or found without a schema. JSON, `runs show` and the progress line
say the same."""

from __future__ import annotations

import json
import os
import re
import signal

import sqlalchemy as sa

from tenantmig import api
from tenantmig.server.config import Settings
from tests.helpers import TENANT_HEAD, run_cli, version
from tests.test_engine import make_tenants, names
from tests.test_signals import start_run, tenantmig_sessions, wait_for, waiting_lock_requests

FIRST = "001_initial_schema"
PROGRESS = re.compile(r"^\[\d+/\d+\] (\w+)\s+(\S+) (\S+) -> (\S+) ")


def _blocked_worker_pid(engine: sa.Engine, schema: str) -> int:
    """The worker waiting for a lock on ``schema``'s table (it names itself by pid)."""
    with engine.connect() as conn:
        name = conn.execute(
            sa.text(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                "ON a.pid = l.pid JOIN pg_class c ON c.oid = l.relation "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE NOT l.granted AND n.nspname = :schema "
                "AND a.application_name LIKE 'tenantmig worker %'"
            ),
            {"schema": schema},
        ).scalar()
    assert name is not None
    return int(name.rsplit(" ", 1)[1])


def test_an_interrupted_run_records_where_every_tenant_is(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    tenants = names(8)
    make_tenants(settings, [*tenants, "done", "gone"], FIRST)
    assert api.upgrade(settings, api.Selection.named(["done"])).succeeded  # will be skipped
    with engine.begin() as conn:
        conn.exec_driver_sql('DROP SCHEMA "gone" CASCADE')  # will be missing
    before = {t: version(engine, t) for t in [*tenants, "done"]}

    with engine.connect() as blocker:
        # Both workers wait on these tables, mid-transaction, while the run is interrupted.
        blocker.exec_driver_sql(
            'LOCK TABLE "t000".inventory_items, "t001".inventory_items IN ACCESS SHARE MODE'
        )
        run = start_run(database_url, "--jobs", "2", "--lock-timeout", "60")
        wait_for(lambda: waiting_lock_requests(engine) == 2)
        # t000's worker dies (its transaction rolls back); then Ctrl-C: no tenant starts
        # after it, t001 finishes once its lock is free, the others are not run.
        os.kill(_blocked_worker_pid(engine, "t000"), signal.SIGKILL)
        run.send_signal(signal.SIGINT)
        wait_for(lambda: waiting_lock_requests(engine) == 1)  # t000's wait is gone
        blocker.rollback()
        _, err = run.communicate(timeout=120)
        wait_for(lambda: tenantmig_sessions(engine) == 0, timeout=30)
    assert run.returncode == 130, err

    runs = json.loads(run_cli("runs", "--json", url=database_url).stdout)
    run_id = runs[0]["run_id"]
    shown = run_cli("runs", "show", str(run_id), "--json", url=database_url)
    recorded = {t["name"]: t for t in json.loads(shown.stdout)["tenants"]}
    statuses = {name: t["status"] for name, t in recorded.items()}
    assert statuses["t000"] == "failed" and statuses["t001"] == "ok", statuses
    assert statuses["done"] == "skipped" and statuses["gone"] == "missing", statuses
    assert "not_run" in statuses.values(), statuses

    # The ledger against each schema's alembic_version.
    for name, before_revision in before.items():
        now = version(engine, name)
        assert recorded[name]["from"] == (before_revision or "base"), recorded[name]
        assert recorded[name]["to"] == (now or "base"), recorded[name]
    assert version(engine, "t000") == FIRST and version(engine, "t001") == TENANT_HEAD
    assert recorded["gone"]["to"] is None

    # The run's own JSON-free output: each progress line says the same.
    lines = {m.group(2): m.groups() for m in map(PROGRESS.match, err.splitlines()) if m}
    for name, (status, _, start, end) in lines.items():
        assert (status, start, end) == (
            recorded[name]["status"],
            recorded[name]["from"],
            recorded[name]["to"] or "-",
        ), (name, lines[name])
    assert {"t000", "t001"} <= set(lines), err

    # And `runs show` (text): each tenant's row names its from and to revisions.
    text = run_cli("runs", "show", str(run_id), url=database_url, env={"COLUMNS": "250"})
    rows = {line.split()[0]: line.split() for line in text.stdout.splitlines() if line.strip()}
    for name in before:
        row = rows[name]
        assert recorded[name]["status"] in row, row
        assert row.count(recorded[name]["to"]) >= 1 and recorded[name]["from"] in row, row
