"""Faults and hostile conditions, injected for real against a real server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tenantmig import api
from tenantmig.run.results import TenantStatus
from tenantmig.server import embedded
from tenantmig.server.config import Settings
from tests.helpers import TENANT_HEAD, project_with, run_cli, start_cli, version
from tests.test_engine import make_tenants, names
from tests.test_signals import wait_for, waiting_lock_requests


def _data_directory(engine: sa.Engine) -> Path:
    with engine.connect() as conn:
        data_dir = Path(str(conn.exec_driver_sql("SHOW data_directory").scalar()))
    engine.dispose()
    return data_dir


def _stop_server(data_dir: Path) -> None:
    """Fast shutdown of the embedded test server: aborts transactions, drops every client."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGINT)
    while (data_dir / "postmaster.pid").exists():
        time.sleep(0.1)


def _start_server(data_dir: Path) -> None:
    # The session's server handle (cached per data directory) starts it again.
    embedded.start(data_dir, cleanup_mode=None)[1].ensure_postgres_running()


def test_ddl_never_blocks_readers_longer_than_lock_timeout(
    settings: Settings, engine: sa.Engine
) -> None:
    """A queued ALTER TABLE blocks every later reader of the table. With a long transaction
    holding a lock, tenantmig's DDL must leave the queue within lock_timeout each attempt."""
    make_tenants(settings, ["busy"], "001_initial_schema")
    quick = settings.with_options(lock_timeout_s=0.5, retries=1)
    waits: list[float] = []
    stop = threading.Event()

    def reader() -> None:
        with engine.connect() as conn:
            while not stop.is_set():
                started = time.monotonic()
                conn.exec_driver_sql('SELECT count(*) FROM "busy".inventory_items').scalar()
                conn.rollback()
                waits.append(time.monotonic() - started)
                time.sleep(0.02)

    with engine.connect() as long_transaction:
        long_transaction.exec_driver_sql('SELECT * FROM "busy".inventory_items').all()
        thread = threading.Thread(target=reader)
        thread.start()
        result = api.upgrade(quick, api.Selection.named(["busy"]))
        stop.set()
        thread.join()
        long_transaction.rollback()
    assert result.outcomes[0].status is TenantStatus.FAILED
    assert result.outcomes[0].attempts == 2
    assert len(waits) > 5
    # Readers did queue behind the ALTER (so the test measures something), but never for much
    # longer than lock_timeout.
    assert max(waits) > 0.2
    assert max(waits) < 0.5 + 0.6, waits


def test_ten_runners_at_once_migrate_each_tenant_exactly_once(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    tenants = names(20)
    make_tenants(settings, tenants)
    procs = [
        start_cli(
            "upgrade",
            "--all-tenants",
            "--jobs",
            "2",
            "--wait",
            "120",
            "--json",
            "-q",
            url=database_url,
        )
        for _ in range(10)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 10, [err for _, err in outputs]
    migrated: dict[str, int] = {}
    for out, _ in outputs:
        for tenant in json.loads(out)["tenants"]:
            if tenant["status"] == "ok":
                migrated[tenant["name"]] = migrated.get(tenant["name"], 0) + 1
    assert migrated == dict.fromkeys(tenants, 1)
    assert all(version(engine, t) == TENANT_HEAD for t in tenants)


def test_jobs_are_capped_by_the_servers_free_connections(
    settings: Settings, engine: sa.Engine, admin_url: str
) -> None:
    make_tenants(settings, names(6))
    with engine.connect() as conn:
        limit = int(conn.exec_driver_sql("SHOW max_connections").scalar() or 0)
        reserved = int(conn.exec_driver_sql("SHOW superuser_reserved_connections").scalar() or 0)
        used = int(
            conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            ).scalar()
            or 0
        )
    hogs = sa.create_engine(engine.url, poolclass=sa.NullPool)
    held = []
    try:
        # Leave about five free connections on the server.
        for _ in range(max(0, limit - reserved - used - 5)):
            held.append(hogs.connect())
        result = api.upgrade(settings, api.Selection.all_tenants(), options=api.RunOptions(jobs=8))
    finally:
        for conn in held:
            conn.close()
        hogs.dispose()
    assert result.succeeded, result.to_json()
    assert any("reduced" in notice for notice in result.notices), result.notices


def test_unknown_revision_in_a_tenant_is_refused_and_reported(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    make_tenants(settings, names(3), "001_initial_schema")
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE \"t001\".alembic_version SET version_num = '999_future'")
    result = api.upgrade(settings, api.Selection.all_tenants())
    outcome = {o.name: o for o in result.outcomes}
    assert outcome["t001"].status is TenantStatus.FAILED
    assert "999_future" in (outcome["t001"].error or "")
    assert "do not know" in (outcome["t001"].error or "")
    assert version(engine, "t001") == "999_future"  # untouched
    assert {outcome["t000"].status, outcome["t002"].status} == {TenantStatus.OK}
    status = json.loads(run_cli("status", "--json", url=database_url).stdout)
    assert {t["name"]: t["state"] for t in status["tenants"]}["t001"] == "unknown_revision"


def test_empty_tenant_list_is_a_clean_no_op(settings: Settings, database_url: str) -> None:
    assert run_cli("upgrade", "--shared", url=database_url).returncode == 0
    done = run_cli("upgrade", "--all-tenants", url=database_url)
    assert done.returncode == 0, done.stderr
    assert "nothing to do: no tenants; no run was recorded" in done.stdout


def test_a_run_with_nothing_to_do_is_not_recorded(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    make_tenants(settings, ["acme", "globex"], TENANT_HEAD)

    def runs() -> int:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM tenantmig_runs").scalar_one())

    before = runs()
    for argv in (["upgrade", "--all-tenants"], ["upgrade", "--tenant", "acme"], ["upgrade"]):
        done = run_cli(*argv, "--json", url=database_url)
        assert done.returncode == 0, done.stderr
        document = json.loads(done.stdout)
        assert document["run_id"] is None, document
        assert {t["status"] for t in document["tenants"]} == {"skipped"}
        assert any("no run was recorded" in n for n in document["notices"]), document
    assert runs() == before
    # A tenant whose schema is missing is not "nothing to do": that run is recorded.
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA globex CASCADE")
    done = run_cli("upgrade", "--all-tenants", "--json", url=database_url)
    assert done.returncode == 3 and json.loads(done.stdout)["run_id"] is not None
    assert runs() == before + 1


def test_passwords_never_reach_logs_ledger_or_output(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    # The test servers trust local connections, so any password in the URL is accepted.
    url = sa.engine.make_url(database_url).set(password="Sup3rSecret!")
    secret_url = url.render_as_string(hide_password=False)
    log = tmp_path / "run.log"
    make_tenants(settings, ["acme"], "001_initial_schema")
    with engine.begin() as conn:
        conn.exec_driver_sql('CREATE TABLE "acme".locations (id int)')  # make it fail
    done = run_cli("upgrade", "--all-tenants", "--log-file", str(log), "--debug", url=secret_url)
    assert done.returncode == 3
    runs = run_cli("runs", "--json", url=secret_url)
    with engine.connect() as conn:
        ledger = json.dumps(
            [list(map(str, r)) for r in conn.exec_driver_sql("SELECT * FROM tenantmig_runs").all()]
        )
        ledger += json.dumps(
            [
                list(map(str, r))
                for r in conn.exec_driver_sql("SELECT * FROM tenantmig_run_tenants").all()
            ]
        )
    unreachable = run_cli("status", url="postgresql://u:Sup3rSecret!@127.0.0.1:9/x")
    for text in (
        done.stdout,
        done.stderr,
        runs.stdout,
        log.read_text(),
        ledger,
        unreachable.stderr,
    ):
        assert "Sup3rSecret" not in text


@pytest.mark.skipif(
    bool(os.environ.get("TENANTMIG_TEST_DATABASE_URL")),
    reason="restarts the server: needs the embedded test server",
)
def test_database_restart_mid_run_is_survived(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    tenants = names(40)
    make_tenants(settings, tenants, "001_initial_schema")
    data_dir = _data_directory(engine)
    run = _stop_the_server_mid_run(engine, database_url, data_dir)
    _start_server(data_dir)
    out, err = run.communicate(timeout=180)
    assert run.returncode == 0, err
    result = json.loads(out)
    assert all(t["status"] == "ok" for t in result["tenants"]), result["tenants"]
    assert all(version(engine, t) == TENANT_HEAD for t in tenants)
    assert any(t["attempts"] > 1 for t in result["tenants"])  # the restart was felt


def _stop_the_server_mid_run(
    engine: sa.Engine, database_url: str, data_dir: Path, *options: str
) -> subprocess.Popen[str]:
    """Start `upgrade --all-tenants` and stop the server while it is certainly in flight.

    Timed by events, not sleeps: a session of ours holds t000's table, so t000 waits in the
    lock queue (mid-transaction) when the server goes down, taking that session with it.
    """
    blocker = engine.connect()
    blocker.exec_driver_sql('LOCK TABLE "t000".inventory_items IN ACCESS SHARE MODE')
    run = start_cli(
        *("upgrade", "--all-tenants", "--jobs", "2", "--json", "-q", "--no-replay"),
        *("--lock-timeout", "60", *options),
        url=database_url,
    )
    wait_for(lambda: waiting_lock_requests(engine) == 1)
    _stop_server(data_dir)
    blocker.invalidate()  # its connection died with the server
    return run


@pytest.mark.skipif(
    bool(os.environ.get("TENANTMIG_TEST_DATABASE_URL")),
    reason="stops the server: needs the embedded test server",
)
def test_server_down_past_the_reconnect_bound_stops_the_run(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    tenants = names(30)
    make_tenants(settings, tenants, "001_initial_schema")
    data_dir = _data_directory(engine)
    run = _stop_the_server_mid_run(engine, database_url, data_dir, "--reconnect-timeout", "2")
    try:
        _out, err = run.communicate(timeout=60)  # bounded: it gives up instead of hanging
    finally:
        _start_server(data_dir)
    assert run.returncode != 0
    assert "Traceback" not in err
    # Every tenant is at its old or its new revision, and a re-run finishes the job.
    assert {version(engine, t) for t in tenants} <= {"001_initial_schema", TENANT_HEAD}
    assert api.upgrade(settings, api.Selection.all_tenants()).succeeded
    assert all(version(engine, t) == TENANT_HEAD for t in tenants)


# Drops the ledger's per-tenant table from inside a tenant migration: the coordinator's next
# ledger write then fails with a database error after this tenant has committed.
LEDGER_BREAKING_REVISION = '''"""Breaks the run ledger (a test of what the runner says then)."""

from alembic import op

revision = "004_break_the_ledger"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP TABLE IF EXISTS public.tenantmig_run_tenants")


def downgrade() -> None:
    pass
'''


def test_database_error_after_tenants_committed_is_not_reported_as_nothing_changed(
    settings: Settings, database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    make_tenants(settings, ["first", "second"], "head")
    config = project_with(tmp_path, {"004_break_the_ledger.py": LEDGER_BREAKING_REVISION})
    run = run_cli(
        "upgrade", "--all-tenants", "--config", str(config), "--jobs", "1", url=database_url
    )
    assert run.returncode == 5, run.stderr
    assert "had started migrating" in run.stderr and "tenantmig status" in run.stderr
    assert "nothing was changed" not in run.stderr
    # The error is honest: the tenants did commit.
    assert {version(engine, "first"), version(engine, "second")} == {"004_break_the_ledger"}
