"""A lock table too small for the tenants migrating at once: fewer at once, not failures.

PostgreSQL's lock table is shared by every session and sized by max_locks_per_transaction; a
migration holds a lock on each relation it touches until it commits. Here a server of its own
has a small table (max_locks_per_transaction = 10), each tenant schema holds 800+ tables, and
the test revision locks every table of its schema: one tenant fits, two at once do not.

Deterministic: the revision, once it holds its locks, waits on an advisory lock the test holds,
so the first tenant to lock its tables keeps them while the others try (and fill the table);
the test lets it go only once the run says it went down to one tenant at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tenantmig import api
from tenantmig.run.executor import JobQueue
from tenantmig.run.results import TenantJob
from tenantmig.schema.lockbudget import relations
from tenantmig.schema.registry import create_tenants, register_existing
from tenantmig.server import embedded
from tenantmig.server.config import Settings, load_settings
from tenantmig.server.flavour import PostgreSQL
from tests.helpers import TENANT_HEAD, project_with, run_cli, start_cli, version
from tests.test_engine import make_tenants
from tests.test_signals import wait_for
from tests.test_standby import _as_server_user, _free_port

LOCKS_PER_TRANSACTION = 10
GATE = (53200, 1)  # the advisory lock (two-int form) the test revision waits on

LOCK_ALL = f'''"""Lock every table of the tenant's schema, then wait for the test."""

from alembic import op

revision = "004_lock_all"
down_revision = "{TENANT_HEAD}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "DO $$ DECLARE r regclass; BEGIN FOR r IN SELECT c.oid FROM pg_class c"
        " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'"
        " LOOP EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', r); END LOOP; END $$"
    )
    op.execute("SET LOCAL lock_timeout = '120s'")
    op.execute("SET LOCAL statement_timeout = '120s'")
    op.execute("SELECT pg_advisory_xact_lock_shared{GATE}")


def downgrade() -> None:
    pass
'''


def _add_tables(engine: sa.Engine, schema: str, count: int) -> None:
    """``count`` more empty tables in ``schema``; a few hundred per transaction (each new
    table is locked until its transaction ends)."""
    made = 0
    while made < count:
        step = min(200, count - made)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    f"DO $$ BEGIN FOR i IN {made + 1}..{made + step} LOOP EXECUTE format("
                    f"'CREATE TABLE {schema}.filler%s ()', i); END LOOP; END $$"
                )
            )
        made += step


def _capacity(engine: sa.Engine) -> int:
    """How many table locks one transaction takes before "out of shared memory": the lock
    table's real size (its nominal size, plus the server's background processes' share and
    spare shared memory)."""
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA capacity")
    total = 300 * LOCKS_PER_TRANSACTION
    _add_tables(engine, "capacity", total)
    taken = 0
    with engine.connect() as conn:
        conn.begin()
        try:
            while taken < total:
                conn.exec_driver_sql(
                    f"LOCK TABLE capacity.filler{taken + 1} IN ACCESS EXCLUSIVE MODE"
                )
                taken += 1
        except sa.exc.OperationalError as exc:
            assert getattr(exc.orig, "pgcode", None) == "53200", exc
        conn.rollback()
    assert taken < total, "the lock table held every table: make more"
    return taken  # the schema stays: dropping it would not fit the lock table either


@pytest.fixture(scope="module")
def small_server() -> Iterator[tuple[str, int]]:
    """A server of its own with a small lock table: (superuser URL, its real capacity)."""
    bin_dir = next(iter(embedded.bin_dirs()), None)
    if bin_dir is None or not (bin_dir / "initdb").is_file():
        pytest.skip("no initdb, pg_ctl and postgres here (pip install 'tenantmig[embedded]')")
    work = Path(tempfile.mkdtemp(prefix="tenantmig-locks-"))
    if os.geteuid() == 0:
        shutil.chown(work, "postgres")
    data, port = work / "data", _free_port()
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        made = _run_server_program(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-N"]
        )
        assert made.returncode == 0, made.stderr
        options = (
            f"-p {port} -k {work} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c max_connections=30 -c max_locks_per_transaction={LOCKS_PER_TRANSACTION}"
        )
        started = _run_server_program(
            [*pg_ctl, "-l", str(work / "server.log"), "-w", "-o", options, "start"]
        )
        assert started.returncode == 0, started.stderr
        url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        capacity = _capacity(engine)
        engine.dispose()
        yield url, capacity
    finally:
        _run_server_program([*pg_ctl, "-m", "immediate", "stop"])
        shutil.rmtree(work, ignore_errors=True)


def _run_server_program(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_as_server_user(command), capture_output=True, text=True, cwd="/")


@pytest.fixture()
def small_database(small_server: tuple[str, int]) -> Iterator[str]:
    admin = sa.create_engine(small_server[0], isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    name = f"tm_{os.getpid()}_{_free_port()}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(small_server[0]).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _project(tmp_path: Path, url: str) -> tuple[Path, Settings]:
    config = project_with(tmp_path, {"004_lock_all.py": LOCK_ALL})
    return config, load_settings(config_file=config, database_url=url, home=tmp_path / "home")


def _tenants_of(engine: sa.Engine, names: list[str], tables: int) -> None:
    """Give each tenant ``tables`` tables in all (its own and fillers), 800+ relations."""
    for name in names:
        with engine.connect() as conn:
            own = conn.execute(
                sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = :s"), {"s": name}
            ).scalar_one()
        _add_tables(engine, name, tables - own)
        with engine.connect() as conn:
            assert relations(conn, name) >= 800


def test_tenants_that_fill_the_lock_table_together_are_migrated_fewer_at_a_time(
    small_server: tuple[str, int], small_database: str, tmp_path: Path
) -> None:
    capacity = small_server[1]
    names = ["t1", "t2", "t3", "t4"]
    config, settings = _project(tmp_path, small_database)
    make_tenants(settings, names, TENANT_HEAD)
    engine = sa.create_engine(small_database, poolclass=sa.NullPool)
    # One tenant's locks fit the table with room to spare; two tenants' do not.
    tables = capacity * 6 // 10
    assert tables >= 800
    _tenants_of(engine, names, tables)
    log = tmp_path / "run.log"

    def said(text: str) -> bool:
        return log.exists() and text in log.read_text()

    with engine.connect() as gate:
        gate.exec_driver_sql(f"SELECT pg_advisory_lock{GATE}")
        run = start_cli(
            "--config",
            str(config),
            *("upgrade", "--all-tenants", "--no-replay", "--jobs", "4", "--json"),
            *("--log-file", str(log)),
            url=small_database,
        )
        try:
            wait_for(lambda: said("at most 1 at a time from now on") or run.poll() is not None)
        finally:
            gate.exec_driver_sql(f"SELECT pg_advisory_unlock{GATE}")
        out, err = run.communicate(timeout=120)
    assert run.returncode == 0, (out, err)
    result = json.loads(out)
    statuses = {t["name"]: t["status"] for t in result["tenants"]}
    assert statuses == dict.fromkeys(names, "ok"), result
    assert {version(engine, name) for name in names} == {"004_lock_all"}
    # Some tenant took more than one attempt: it filled the table and was tried again.
    assert max(t["attempts"] for t in result["tenants"]) > 1
    text = log.read_text()
    assert "at most 2 at a time from now on" in text, text
    notice = (
        "the server's lock table was full (out of shared memory, SQLSTATE 53200) with 4 "
        "tenants migrating at once: the run went on with at most 1 at a time and retried "
    )
    assert notice in text, text
    assert f"raise max_locks_per_transaction (currently {LOCKS_PER_TRANSACTION};" in text
    assert any(notice in n for n in result["notices"]), result["notices"]  # in the output too
    engine.dispose()


def test_a_tenant_too_big_for_the_lock_table_even_alone_fails_naming_the_setting(
    small_server: tuple[str, int], small_database: str, tmp_path: Path
) -> None:
    capacity = small_server[1]
    config, settings = _project(tmp_path, small_database)
    make_tenants(settings, ["huge"], TENANT_HEAD)
    engine = sa.create_engine(small_database, poolclass=sa.NullPool)
    _tenants_of(engine, ["huge"], capacity * 13 // 10)
    with engine.connect() as conn:
        count = relations(conn, "huge")
    # Alone: a tenant beside it would be recorded in the ledger while huge fills the lock
    # table, and the ledger's transaction needs a lock-table entry (its transaction id) too.
    done = run_cli(
        "--config",
        str(config),
        *("upgrade", "--all-tenants", "--no-replay", "--json"),
        url=small_database,
    )
    assert done.returncode == 3, (done.stdout, done.stderr)
    (huge,) = json.loads(done.stdout)["tenants"]
    assert huge["status"] == "failed" and huge["to"] == TENANT_HEAD, huge
    error = huge["error"]
    assert error.startswith("out of shared memory (SQLSTATE 53200): the server's lock table")
    assert "the only one of the run migrating" in error, error
    wanted = -(-count * 2 // 30)  # half the table: LOCK_TABLE_SHARE over max_connections 30
    assert (
        f"raise max_locks_per_transaction (currently {LOCKS_PER_TRANSACTION}) to at least "
        f"{wanted} and restart PostgreSQL" in error
    ), error
    assert f"schema huge has {count:,} relations" in error, error
    assert version(engine, "huge") == TENANT_HEAD
    engine.dispose()


def test_register_and_create_take_a_few_locks_however_many_tenants_and_tables(
    small_database: str, tmp_path: Path
) -> None:
    """Neither locks the tenants' relations: no batches needed (pg_locks, fast-path too)."""
    _, settings = _project(tmp_path, small_database)
    assert api.upgrade(settings, api.Selection.shared_only()).succeeded
    engine = sa.create_engine(small_database, poolclass=sa.NullPool)
    names = ["r1", "r2", "r3"]
    for name in names:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {name}")
        _add_tables(engine, name, 300)
    mine = sa.text("SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()")
    with engine.connect() as conn:
        work = conn.begin()
        register_existing(conn, settings.tenant_source, [(n, n) for n in names])
        assert conn.execute(mine).scalar_one() < 20
        work.rollback()
        work = conn.begin()
        new = [f"c{i}" for i in range(500)]
        assert len(create_tenants(conn, settings.tenant_source, new, PostgreSQL())) == 500
        assert conn.execute(mine).scalar_one() < 20
        work.rollback()
    engine.dispose()


def test_the_queue_knows_how_many_ran_beside_each_job_and_keeps_to_a_lowered_limit() -> None:
    jobs = [TenantJob(name, name) for name in ("a", "b", "c")]
    queue = JobQueue(jobs, {})
    a, b = queue.take(), queue.take()
    assert a is not None and b is not None
    assert queue.finished(a) == 2  # b started while a ran
    queue.limit = 1
    assert queue.take() is None  # b still in flight
    assert queue.finished(b) == 2
    queue.again(a)  # back at the front
    assert queue.take() == a and queue.take() is None
    assert queue.finished(a) == 1  # alone this time
    assert queue.take() == jobs[2]
