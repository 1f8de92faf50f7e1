"""Every tenantmig command against a real Citus cluster with schema-based sharding.

A coordinator and two workers (``.ci/run`` starts them with ../shared/vendor/citus/cluster.sh);
each test gets a fresh database on all three nodes. Tenant schemas are distributed schemas: each
tenant's tables live on one worker, and the coordinator forwards DDL to it. Locks are taken on
the workers directly where the promise is about them: a session on a worker holding a shard is
what the coordinator cannot see in its own pg_locks.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url

from tenantmig.server import embedded
from tenantmig.server.config import Settings
from tests.helpers import SHARED_HEAD, TENANT_HEAD, run_cli, snapshot, start_cli, version
from tests.test_engine import make_tenants, names
from tests.test_signals import count, wait_for

pytestmark = pytest.mark.citus

OLD = "001_initial_schema"


def node_of(engine: sa.Engine, table: str) -> tuple[str, str]:
    """(node "host:port", qualified shard name) of a distributed-schema table."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT nodename || ':' || nodeport AS node, shard_name FROM citus_shards"
                " WHERE table_name = CAST(:t AS regclass)"
            ),
            {"t": table},
        ).one()
    return row.node, row.shard_name


def worker_engine(citus_url: str, node: str) -> sa.Engine:
    host, port = node.rsplit(":", 1)
    url = make_url(citus_url).set(host=host, port=int(port))
    return sa.create_engine(
        url, poolclass=sa.NullPool, connect_args={"application_name": "tests on a worker"}
    )


@contextmanager
def holding_shard(citus_url: str, node: str, shard: str) -> Iterator[Connection]:
    """An application session on the worker itself, holding ACCESS SHARE on a shard (as a
    long report reading it would) until the block ends or the connection is rolled back."""
    engine = worker_engine(citus_url, node)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"SELECT count(*) FROM {shard}")
            yield conn
            conn.rollback()
    finally:
        engine.dispose()


def shard_columns(citus_url: str, node: str, shard: str) -> set[str]:
    engine = worker_engine(citus_url, node)
    try:
        with engine.connect() as conn:
            return set(
                conn.execute(
                    sa.text(
                        "SELECT attname FROM pg_attribute WHERE attrelid = CAST(:t AS regclass)"
                        " AND attnum > 0 AND NOT attisdropped"
                    ),
                    {"t": shard},
                ).scalars()
            )
    finally:
        engine.dispose()


def status(citus_url: str) -> dict[str, dict[str, object]]:
    done = run_cli("status", "--json", url=citus_url)
    assert done.returncode == 0, done.stderr
    return {t["name"]: t for t in json.loads(done.stdout)["tenants"]}


def workers(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.text("SELECT nodename || ':' || nodeport FROM pg_dist_node WHERE groupid <> 0")
            ).scalars()
        )


def finishing_command(output: str) -> list[str]:
    """The command a failed run prints for finishing it, as arguments."""
    line = next(line for line in output.splitlines() if "--only-failed" in line)
    return line.split()[1:]  # without "tenantmig"


def test_a_worker_node_is_refused_and_nothing_changes(citus_url: str) -> None:
    with sa.create_engine(citus_url, poolclass=sa.NullPool).connect() as conn:
        node = sorted(workers(conn.engine))[0]
    engine = worker_engine(citus_url, node)
    try:
        url = engine.url.render_as_string(hide_password=False)
        done = run_cli("upgrade", url=url)
        assert done.returncode == 1
        assert "Citus worker node" in done.stderr
        assert "point tenantmig at the coordinator" in done.stderr
        with engine.connect() as conn:
            assert (
                conn.execute(sa.text("SELECT to_regclass('public.alembic_version')")).scalar()
                is None
            )
    finally:
        engine.dispose()


def test_replay_and_alembic_migrate_distributed_tenants_alike_over_both_workers(
    citus_url: str, citus_engine: sa.Engine
) -> None:
    assert run_cli("upgrade", "--shared", url=citus_url).returncode == 0
    tenants = names(6)
    created = run_cli("tenants", "create", *tenants, "--json", url=citus_url)
    assert created.returncode == 0, created.stderr
    outcomes = json.loads(created.stdout)["run"]["tenants"]
    assert {o["status"] for o in outcomes} == {"ok"}
    assert all(o["replayed"] for o in outcomes), outcomes  # compiled once, replayed in each
    nodes = {name: t["node"] for name, t in status(citus_url).items()}
    assert set(nodes.values()) == workers(citus_engine)  # spread over both workers
    node, shard = node_of(citus_engine, "t000.locations")
    assert node == nodes["t000"]
    assert "code" in shard_columns(citus_url, node, shard)  # the table lives on the worker

    down = run_cli("downgrade", "--all-tenants", OLD, "--yes", "--json", url=citus_url)
    assert down.returncode == 0, down.stderr
    assert all(o["replayed"] for o in json.loads(down.stdout)["tenants"])
    assert all(version(citus_engine, t) == OLD for t in tenants)
    # Half the tenants back up by replay, the other half through Alembic for each tenant.
    replayed = run_cli("upgrade", "--tenant", "t000", "--tenant", "t001", "--tenant", "t002",
                       url=citus_url)  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr
    alembic = run_cli("upgrade", "--all-tenants", "--no-replay", "--json", url=citus_url)
    assert alembic.returncode == 0, alembic.stderr
    by_alembic = [o for o in json.loads(alembic.stdout)["tenants"] if o["status"] == "ok"]
    assert {o["name"] for o in by_alembic} == {"t003", "t004", "t005"}
    assert not any(o["replayed"] for o in by_alembic)
    assert all(version(citus_engine, t) == TENANT_HEAD for t in tenants)
    assert snapshot(citus_engine, "t000") == snapshot(citus_engine, "t003")
    for tenant in ("t000", "t003"):
        node, shard = node_of(citus_engine, f"{tenant}.inventory_items")
        assert {"sku", "barcode"} <= shard_columns(citus_url, node, shard)
    drift = run_cli("drift", url=citus_url)
    assert drift.returncode == 0, drift.stdout + drift.stderr


def test_a_failing_tenant_rolls_back_on_its_worker_and_the_rest_finish(
    citus_settings: Settings, citus_url: str, citus_engine: sa.Engine
) -> None:
    tenants = names(4)
    make_tenants(citus_settings, tenants, OLD)
    with citus_engine.begin() as conn:  # what revision 003 creates, made by hand in t001
        conn.exec_driver_sql("CREATE TABLE t001.locations (id int PRIMARY KEY)")
    done = run_cli("upgrade", "--all-tenants", url=citus_url)
    assert done.returncode == 3, done.stderr
    assert version(citus_engine, "t001") == OLD
    assert all(version(citus_engine, t) == TENANT_HEAD for t in tenants if t != "t001")
    # 003's earlier statements (columns added to inventory_items) were rolled back on the
    # worker too: the distributed transaction is one transaction.
    node, shard = node_of(citus_engine, "t001.inventory_items")
    assert "sku" not in shard_columns(citus_url, node, shard)
    with citus_engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE t001.locations")
    again = run_cli(*finishing_command(done.stdout + done.stderr), "--json", url=citus_url)
    assert again.returncode == 0, again.stderr
    assert [o["name"] for o in json.loads(again.stdout)["tenants"]] == ["t001"]
    assert version(citus_engine, "t001") == TENANT_HEAD


def test_a_lock_held_on_a_worker_times_out_names_the_blocker_and_is_retried(
    citus_settings: Settings, citus_url: str, citus_engine: sa.Engine
) -> None:
    make_tenants(citus_settings, ["t000"], OLD)
    node, shard = node_of(citus_engine, "t000.inventory_items")
    with holding_shard(citus_url, node, shard):
        started = time.monotonic()
        done = run_cli(
            "upgrade", "--tenant", "t000", "--lock-timeout", "1", "--retries", "1", url=citus_url
        )
        took = time.monotonic() - started
    assert done.returncode == 3, done.stderr
    # Two attempts of one second each, and a pause between them; without the timeout reaching
    # the worker, the first attempt alone would wait for as long as the reader held its lock.
    assert took < 15, took
    output = done.stdout + done.stderr
    assert "lock timeout" in output
    assert f"on {node}" in output and "holds AccessShareLock on t000.inventory_items_" in output
    assert version(citus_engine, "t000") == OLD

    # The same lock released while the run retries: a later attempt succeeds. Released 1.5 s
    # after the first attempt is seen waiting in the worker's lock queue: by then that attempt
    # (lock_timeout 1 s) has given up, whenever it was seen, and the retries (6, about 1 s
    # each) are far from spent.
    worker = worker_engine(citus_url, node)
    with holding_shard(citus_url, node, shard) as reader:
        run = start_cli(
            "upgrade", "--tenant", "t000", "--lock-timeout", "1", "--retries", "6", "--json",
            url=citus_url,
        )  # fmt: skip
        try:
            waiting = (
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE NOT l.granted AND a.application_name LIKE 'citus_internal%'"
            )
            wait_for(lambda: count(worker, waiting) == 1)
            time.sleep(1.5)
        finally:
            reader.rollback()
            worker.dispose()
        out, err = run.communicate(timeout=120)
    retried = subprocess.CompletedProcess(run.args, run.returncode, out, err)
    assert retried.returncode == 0, retried.stderr
    (outcome,) = json.loads(retried.stdout)["tenants"]
    assert outcome["status"] == "ok" and outcome["attempts"] > 1
    assert version(citus_engine, "t000") == TENANT_HEAD


def test_a_killed_run_leaves_each_tenant_at_its_old_or_new_revision_and_a_second_run_waits(
    citus_settings: Settings, citus_url: str, citus_engine: sa.Engine
) -> None:
    tenants = names(6)
    make_tenants(citus_settings, tenants, OLD)
    node, shard = node_of(citus_engine, "t000.inventory_items")
    worker = worker_engine(citus_url, node)
    waiting_on_worker = (
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE NOT l.granted AND a.application_name LIKE 'citus_internal%'"
    )
    try:
        with holding_shard(citus_url, node, shard):
            run = start_cli(
                "upgrade", "--all-tenants", "--jobs", "2", "--lock-timeout", "60",
                url=citus_url, new_session=True,
            )  # fmt: skip
            # t000's DDL waits in the worker's lock queue, mid-transaction; the others finish.
            wait_for(lambda: count(worker, waiting_on_worker) == 1)
            wait_for(lambda: sum(version(citus_engine, t) == TENANT_HEAD for t in tenants) == 5)
            second = run_cli("upgrade", "--all-tenants", url=citus_url)
            assert second.returncode == 4, second.stderr  # the run lock is held
            run.send_signal(signal.SIGKILL)
            run.wait(timeout=30)
            # The coordinator's backend and the worker's both notice the dead client and roll
            # back: nothing of t000's step stays, and nothing waits in a lock queue.
            wait_for(lambda: count(worker, waiting_on_worker) == 0, timeout=30)
            wait_for(
                lambda: (
                    count(
                        citus_engine,
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
                        "'tenantmig%'",
                    )
                    == 0
                ),
                timeout=30,
            )
        assert version(citus_engine, "t000") == OLD
        assert "sku" not in shard_columns(citus_url, node, shard)
        runs = json.loads(run_cli("runs", "--json", url=citus_url).stdout)
        assert runs[0]["outcome"] == "abandoned"
        again = run_cli("upgrade", "--all-tenants", "--only-failed", url=citus_url)
        assert again.returncode == 0, again.stderr
        assert all(version(citus_engine, t) == TENANT_HEAD for t in tenants)
    finally:
        worker.dispose()


def test_drift_is_clean_and_finds_a_change_to_one_tenants_table(
    citus_settings: Settings, citus_url: str, citus_engine: sa.Engine
) -> None:
    make_tenants(citus_settings, names(4), "head")
    clean = run_cli("drift", url=citus_url)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    with citus_engine.begin() as conn:  # through the coordinator, so on t002's worker too
        conn.exec_driver_sql("ALTER TABLE t002.users ADD COLUMN nickname text")
    found = run_cli("drift", "--json", url=citus_url)
    assert found.returncode == 2, found.stderr
    report = json.loads(found.stdout)
    drifted = {t["name"]: t for t in report["drifted"]}
    assert set(drifted) == {"t002"}
    assert [d["object"] for d in drifted["t002"]["differences"]] == ["users.nickname"]
    assert report["shared"] is None or report["shared"]["differences"] == []


def test_backup_and_restore_bring_a_distributed_tenant_back(
    citus_settings: Settings, citus_url: str, citus_engine: sa.Engine, tmp_path: Path
) -> None:
    make_tenants(citus_settings, ["t000", "t001"], OLD)
    with citus_engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t000.users (email) VALUES ('a@example.com'), ('b@x')")
    backups = tmp_path / "backups"
    done = run_cli("upgrade", "--all-tenants", "--backup", str(backups), url=citus_url)
    assert done.returncode == 0, done.stderr
    with citus_engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t000.users (email) VALUES ('later@example.com')")
    (dump,) = backups.glob("t000.*.dump")
    restored = run_cli("restore", "--tenant", "t000", "--yes", str(dump), url=citus_url)
    assert restored.returncode == 0, restored.stderr
    assert version(citus_engine, "t000") == OLD
    with citus_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM t000.users")).scalar() == 2
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM pg_dist_schema WHERE schemaid = 't000'::regnamespace")
            ).scalar()
            == 1
        )
    node = status(citus_url)["t000"]["node"]
    assert node in workers(citus_engine)  # distributed again: its tables are on a worker
    drift = json.loads(run_cli("drift", "--json", url=citus_url).stdout)
    (t000,) = drift["drifted"]
    assert t000["name"] == "t000" and t000["behind_by"] == 1 and t000["differences"] == []
    assert run_cli("upgrade", "--all-tenants", url=citus_url).returncode == 0
    assert run_cli("drift", url=citus_url).returncode == 0


def test_new_tenant_schemas_are_distributed_or_local_as_configured(
    citus_url: str, citus_engine: sa.Engine
) -> None:
    assert run_cli("upgrade", "--shared", url=citus_url).returncode == 0
    database = make_url(citus_url).database
    with citus_engine.connect() as conn:  # the database's default off: distributed anyway
        conn.exec_driver_sql(
            f'ALTER DATABASE "{database}" SET citus.enable_schema_based_sharding = off'
        )
        conn.commit()
    assert run_cli("tenants", "create", "dist", url=citus_url).returncode == 0
    local = run_cli("tenants", "create", "here", "--citus-schemas", "local", url=citus_url)
    assert local.returncode == 0, local.stderr
    by_env = run_cli(
        "tenants", "create", "here2", url=citus_url, env={"TENANTMIG_CITUS_SCHEMAS": "local"}
    )
    assert by_env.returncode == 0, by_env.stderr
    with citus_engine.connect() as conn:
        distributed = set(
            conn.execute(
                sa.text("SELECT schemaid::regnamespace::text FROM pg_dist_schema")
            ).scalars()
        )
    assert distributed == {"dist"}
    nodes = {name: t["node"] for name, t in status(citus_url).items()}
    assert nodes["here"] == nodes["here2"] == "coordinator"
    assert nodes["dist"] in workers(citus_engine)
    bad = run_cli("tenants", "create", "x1", url=citus_url, env={"TENANTMIG_CITUS_SCHEMAS": "no"})
    assert bad.returncode == 1 and "citus_schemas" in bad.stderr
    assert "x1" not in status(citus_url)


def test_shared_tables_become_reference_tables_when_configured(
    citus_url: str, citus_engine: sa.Engine
) -> None:
    bad = run_cli("upgrade", "--shared", url=citus_url,
                  env={"TENANTMIG_CITUS_REFERENCE_TABLES": "tenants, nosuch"})  # fmt: skip
    assert bad.returncode == 1 and "nosuch" in bad.stderr
    env = {"TENANTMIG_CITUS_REFERENCE_TABLES": "all"}
    done = run_cli("upgrade", "--shared", url=citus_url, env=env)
    assert done.returncode == 0, done.stderr
    assert "made reference tables" in done.stdout + done.stderr
    with citus_engine.connect() as conn:
        reference = set(
            conn.execute(
                sa.text(
                    "SELECT table_name::text FROM citus_tables WHERE citus_table_type = 'reference'"
                )
            ).scalars()
        )
        shared_tables = set(
            conn.execute(
                sa.text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                    " AND tablename NOT IN ('alembic_version', 'tenantmig_runs',"
                    " 'tenantmig_run_tenants')"
                )
            ).scalars()
        )
    assert reference == shared_tables and "tenants" in reference
    assert version(citus_engine, "public") == SHARED_HEAD
    # A tenant table on a worker may now reference a shared table.
    assert run_cli("tenants", "create", "t000", url=citus_url).returncode == 0
    with citus_engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE t000.tenant_link (tenant_id uuid REFERENCES public.tenants (id))"
        )
    again = run_cli("upgrade", "--shared", url=citus_url, env=env)
    assert again.returncode == 0 and "made reference tables" not in again.stdout + again.stderr


def test_sql_for_review_applied_with_psql_migrates_a_distributed_tenant(
    citus_settings: Settings, citus_url: str, citus_engine: sa.Engine, tmp_path: Path
) -> None:
    make_tenants(citus_settings, ["t000"], OLD)
    done = run_cli("upgrade", "--tenant", "t000", "--sql-dir", str(tmp_path / "sql"), url=citus_url)
    assert done.returncode == 0, done.stderr
    script = tmp_path / "sql" / "t000.sql"
    assert "SET LOCAL citus.propagate_set_commands = 'local'" in script.read_text()
    node, shard = node_of(citus_engine, "t000.inventory_items")
    url = make_url(citus_url).set(drivername="postgresql")
    # The SQL's lock_timeout reaches the worker: a lock held there stops psql within it.
    with holding_shard(citus_url, node, shard):
        blocked = psql(url.render_as_string(hide_password=False), "-1", "-f", str(script))
    assert blocked.returncode != 0 and "lock timeout" in blocked.stderr
    applied = psql(url.render_as_string(hide_password=False), "-1", "-f", str(script))
    assert applied.returncode == 0, applied.stderr
    assert version(citus_engine, "t000") == TENANT_HEAD
    assert {"sku", "barcode"} <= shard_columns(citus_url, node, shard)
    assert run_cli("drift", url=citus_url).returncode == 0


def psql(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(embedded.bin_dirs()[0] / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
         "--dbname", url, *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_least_privileged_role_migrates_and_checks_drift_after_grant(
    citus_settings: Settings, citus_url: str, citus_engine: sa.Engine
) -> None:
    role = f"tm_app_{uuid.uuid4().hex[:8]}"
    with citus_engine.begin() as conn:  # Citus creates the role on every node
        conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
    try:
        assert run_cli("upgrade", "--shared", url=citus_url).returncode == 0
        with citus_engine.begin() as conn:
            for name in ("acme", "globex"):
                conn.exec_driver_sql(f'CREATE SCHEMA {name} AUTHORIZATION "{role}"')
        assert run_cli("tenants", "register", "acme", "globex", url=citus_url).returncode == 0
        printed = run_cli("grant", role, "--sql", url=citus_url)
        assert printed.stdout.startswith("SET LOCAL citus.enable_schema_based_sharding = off;")
        done = run_cli("grant", role, url=citus_url)
        assert done.returncode == 0, done.stderr
        with citus_engine.connect() as conn:  # the scratch schemas stay on the coordinator
            assert not conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_dist_schema"
                    " WHERE schemaid::regnamespace::text LIKE 'tenantmig_scratch%'"
                )
            ).scalar()
        app = make_url(citus_url).set(username=role).render_as_string(hide_password=False)
        env = {"TENANTMIG_SCRATCH_SCHEMA": "tenantmig_scratch"}
        upgraded = run_cli("upgrade", "--all-tenants", "--json", url=app, env=env)
        assert upgraded.returncode == 0, upgraded.stderr
        assert all(o["replayed"] for o in json.loads(upgraded.stdout)["tenants"])
        assert version(citus_engine, "acme") == TENANT_HEAD
        placed = status(citus_url)
        assert {placed["acme"]["node"], placed["globex"]["node"]} <= workers(citus_engine)
        drift = run_cli("drift", url=app, env=env)
        assert drift.returncode == 0, drift.stdout + drift.stderr
    finally:
        with citus_engine.begin() as conn:
            conn.exec_driver_sql(f'DROP OWNED BY "{role}" CASCADE')
        with citus_engine.begin() as conn:
            conn.exec_driver_sql(f'DROP ROLE "{role}"')


def test_a_rollout_stopped_by_its_canary_resumes_on_citus(
    citus_settings: Settings, citus_url: str, citus_engine: sa.Engine
) -> None:
    tenants = names(4)
    make_tenants(citus_settings, tenants, OLD)
    run_cli("tenants", "label", "t000", "t001", "--add", "canary", url=citus_url)
    with citus_engine.begin() as conn:  # what revision 003 creates, made by hand in t001
        conn.exec_driver_sql("CREATE TABLE t001.locations (id int PRIMARY KEY)")
    done = run_cli(
        "upgrade", "--all-tenants", "--waves", "label:canary,rest", "--json", url=citus_url
    )
    assert done.returncode == 3, done.stderr
    result = json.loads(done.stdout)
    assert [w["state"] for w in result["waves"]] == ["stopped", "not_started"]
    assert [version(citus_engine, t) for t in tenants] == [TENANT_HEAD, OLD, OLD, OLD]
    with citus_engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE t001.locations")
    resumed = run_cli("runs", "resume", str(result["run_id"]), url=citus_url)
    assert resumed.returncode == 0, resumed.stderr
    assert all(version(citus_engine, t) == TENANT_HEAD for t in tenants)
