"""Tenants across several databases: the directory, placement, one run over all, drift, move.

Three real servers: the test server (the control database) and two PostgreSQL 15 clusters that
this module starts from the machine's /usr/lib/postgresql/15/bin (run as the postgres user when
the tests run as root), on ports of their own. Each test gets a fresh database on each.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tenantmig.errors import ConfigError
from tenantmig.server.config import load_settings
from tests.helpers import CONFIG, TENANT_HEAD, project_with, run_cli, start_cli, version
from tests.test_signals import wait_for

PG15 = Path("/usr/lib/postgresql/15/bin")
OLD = "001_initial_schema"

pytestmark = pytest.mark.skipif(
    not (PG15 / "initdb").exists(), reason="needs the machine's PostgreSQL 15 (initdb, pg_ctl)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(*command: str) -> list[str]:
    # initdb refuses to run as root: the clusters belong to the postgres user then.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


@dataclass
class Cluster:
    """A throwaway PostgreSQL 15 cluster on loopback."""

    directory: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        subprocess.run(
            _as_postgres(
                str(PG15 / "pg_ctl"), "-D", str(self.directory / "data"), "-w", "-l",
                str(self.directory / "log"), "-o",
                f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c max_connections=100",
                "start",
            ),
            check=True, capture_output=True,
        )  # fmt: skip

    def stop(self) -> None:
        subprocess.run(
            _as_postgres(
                str(PG15 / "pg_ctl"), "-D", str(self.directory / "data"), "-m", "fast", "-w",
                "stop",
            ),
            capture_output=True,
        )  # fmt: skip


@pytest.fixture(scope="module")
def clusters() -> Iterator[list[Cluster]]:
    made: list[Cluster] = []
    root = Path(tempfile.mkdtemp(prefix="tenantmig-dbs-"))
    try:
        for name in ("a", "b"):
            directory = root / name
            directory.mkdir()
            if os.geteuid() == 0:
                shutil.chown(root, "postgres")
                shutil.chown(directory, "postgres")
            subprocess.run(
                _as_postgres(
                    str(PG15 / "initdb"), "-D", str(directory / "data"), "-A", "trust",
                    "-U", "postgres",
                ),
                check=True, capture_output=True,
            )  # fmt: skip
            cluster = Cluster(directory, _free_port())
            cluster.start()
            made.append(cluster)
        yield made
    finally:
        for cluster in made:
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Layout:
    """The control database and two others (eu, us), each on its own server."""

    control: str
    eu: str
    us: str
    env: dict[str, str]
    clusters: list[Cluster]

    def engine(self, name: str) -> sa.Engine:
        return sa.create_engine(getattr(self, name), poolclass=sa.NullPool)

    def cli(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        env = {**self.env, **kwargs.pop("env", {})}  # type: ignore[dict-item]
        return run_cli(*args, url=self.control, env=env, **kwargs)  # type: ignore[arg-type]


@pytest.fixture()
def layout(database_url: str, clusters: list[Cluster]) -> Iterator[Layout]:
    name = f"tm_{uuid.uuid4().hex[:12]}"
    urls = []
    for cluster in clusters:
        admin = sa.create_engine(cluster.url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        admin.dispose()
        urls.append(make_url(cluster.url).set(database=name).render_as_string(False))
    env = {"TENANTMIG_DATABASES": f"eu={urls[0]};us={urls[1]}"}
    try:
        yield Layout(database_url, urls[0], urls[1], env, clusters)
    finally:
        for cluster in clusters:
            if not _running(cluster):
                cluster.start()
            admin = sa.create_engine(
                cluster.url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
            )
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()


def _running(cluster: Cluster) -> bool:
    return (cluster.directory / "data" / "postmaster.pid").exists()


def json_of(done: subprocess.CompletedProcess[str]) -> object:
    assert done.returncode in (0, 2, 3), done.stderr
    return json.loads(done.stdout)


def place_tenants(layout: Layout, revision: str | None = OLD) -> dict[str, list[str]]:
    """a1, a2 in control; e1..e4 in eu; u1..u4 in us; migrated to ``revision``."""
    placed = {
        "control": ["a1", "a2"],
        "eu": ["e1", "e2", "e3", "e4"],
        "us": ["u1", "u2", "u3", "u4"],
    }
    assert layout.cli("upgrade", "--shared").returncode == 0
    for database, names in placed.items():
        done = layout.cli("tenants", "create", *names, "--database", database, "--no-migrate")
        assert done.returncode == 0, done.stderr
    if revision is not None:
        done = layout.cli("upgrade", "--all-tenants", revision)
        assert done.returncode == 0, done.stderr
    return placed


def test_the_directory_refuses_bad_names_and_unset_variables(tmp_path: Path) -> None:
    ini = tmp_path / "alembic.ini"
    base = CONFIG.read_text()
    for section, error in (
        ("[databases]\n1eu = postgresql://h/db\n", "not allowed"),
        ('[databases]\neu"x = postgresql://h/db\n', "not allowed"),
        ("[databases]\ncontrol = postgresql://h/db\n", "control database's name"),
        ("[databases]\neu = postgresql://u:${TM_UNSET_VARIABLE}@h/db\n", "TM_UNSET_VARIABLE"),
        ("[databases]\neu =\n", "has no URL"),
    ):
        ini.write_text(base + "\n" + section)
        with pytest.raises(ConfigError, match=error):
            load_settings(config_file=ini, database_url="postgresql://h/db")
    os.environ["TM_TEST_PASSWORD"] = "s3cret"
    try:
        ini.write_text(base + "\n[databases]\neu = postgresql://u:${TM_TEST_PASSWORD}@h/db\n")
        settings = load_settings(config_file=ini, database_url="postgresql://h/db")
    finally:
        del os.environ["TM_TEST_PASSWORD"]
    (entry,) = settings.databases
    assert entry.name == "eu" and "s3cret" in entry.url and "s3cret" not in repr(settings)


def test_hostile_names_on_the_command_line_change_nothing(layout: Layout) -> None:
    assert layout.cli("upgrade", "--shared").returncode == 0
    for bad in ("eu;drop", "nosuch", "Eu"):
        done = layout.cli("tenants", "create", "x1", "--database", bad)
        assert done.returncode == 1 and "database" in done.stderr, done.stderr
        assert layout.cli("upgrade", "--all-tenants", "--database", bad).returncode == 1
    env = {"TENANTMIG_DATABASES": "eu=postgresql://h/db;bad name=postgresql://h/db"}
    done = layout.cli("status", env=env)
    assert done.returncode == 1 and "not allowed" in done.stderr
    assert "postgresql://h/db" not in done.stderr
    listed = json_of(layout.cli("tenants", "list", "--json"))
    assert listed == []


def test_one_run_migrates_every_database_and_each_tenant_shows_where_it_lives(
    layout: Layout,
) -> None:
    placed = place_tenants(layout, revision=None)
    done = layout.cli("upgrade", "--all-tenants", "--json")
    result = json_of(done)
    assert done.returncode == 0
    assert isinstance(result, dict)
    where = {t["name"]: t["database"] for t in result["tenants"]}
    assert where == {n: db for db, names in placed.items() for n in names}
    assert all(t["status"] == "ok" and t["replayed"] for t in result["tenants"])
    # One run: one id, one ledger in the control database, each tenant's database recorded.
    shown = json_of(layout.cli("runs", "show", str(result["run_id"]), "--json"))
    assert isinstance(shown, dict)
    assert {t["name"]: t["database"] for t in shown["tenants"]} == where
    # The schemas are where the directory says, and only there.
    for database, names in placed.items():
        engine = layout.engine(database)
        assert all(version(engine, n) == TENANT_HEAD for n in names)
        others = [n for db, ns in placed.items() if db != database for n in ns]
        assert all(version(engine, n) is None for n in others)
        engine.dispose()
    status = json_of(layout.cli("status", "--json"))
    assert isinstance(status, dict)
    assert {t["name"]: t["database"] for t in status["tenants"]} == where
    listed = json_of(layout.cli("tenants", "list", "--json"))
    assert isinstance(listed, list)
    assert {t["name"]: t["database"] for t in listed} == where
    assert layout.cli("drift").returncode == 0

    # --database selects: a downgrade of eu's tenants only, then status of eu only.
    down = json_of(
        layout.cli("downgrade", "--all-tenants", "--database", "eu", OLD, "--json", "--yes")
    )
    assert isinstance(down, dict)
    assert sorted(t["name"] for t in down["tenants"]) == placed["eu"]
    eu = json_of(layout.cli("status", "--database", "eu", "--json"))
    assert isinstance(eu, dict)
    assert {t["name"]: t["revision"] for t in eu["tenants"]} == dict.fromkeys(placed["eu"], OLD)
    assert (
        layout.cli("downgrade", "--all-tenants", "--database", "us", OLD, "--yes").returncode == 0
    )
    stamped = json_of(layout.cli("stamp", "--all-tenants", "--database", "us", OLD, "--json"))
    assert isinstance(stamped, dict)
    assert {(t["name"], t["database"]) for t in stamped["tenants"]} == {
        (n, "us") for n in placed["us"]
    }
    assert version(layout.engine("us"), "u1") == OLD
    again = json_of(layout.cli("upgrade", "--all-tenants", "--json"))
    assert isinstance(again, dict)
    migrated = sorted(t["name"] for t in again["tenants"] if t["status"] == "ok")
    assert migrated == sorted(placed["eu"] + placed["us"])


SLOW_REVISION = '''"""A revision that takes a while per tenant (to watch how many run at once)."""
from alembic import op

revision = "004_slow"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("SELECT pg_sleep(0.3)")


def downgrade() -> None:
    pass
'''


def test_per_database_caps_hold_in_pg_stat_activity(layout: Layout, tmp_path: Path) -> None:
    config = project_with(tmp_path, {"004_slow.py": SLOW_REVISION})
    placed = place_tenants(layout, revision="head")
    seen = {"eu": 0, "us": 0}
    stop = threading.Event()

    def watch() -> None:
        engines = {name: layout.engine(name) for name in seen}
        while not stop.is_set():
            for name, engine in engines.items():
                with engine.connect() as conn:
                    busy = conn.execute(
                        sa.text(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname ="
                            " current_database() AND application_name LIKE 'tenantmig worker%'"
                        )
                    ).scalar()
                seen[name] = max(seen[name], int(busy or 0))
            time.sleep(0.05)
        for engine in engines.values():
            engine.dispose()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        done = run_cli(
            "--config", str(config), "upgrade", "--all-tenants", "--jobs", "4",
            "--jobs-per-database", "1", "--json",
            url=layout.control, env=layout.env,
        )  # fmt: skip
    finally:
        stop.set()
        watcher.join()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert len([t for t in result["tenants"] if t["status"] == "ok"]) == 10
    # Four workers, but never more than one connection to each database at a time; and both
    # databases were worked on at once (each held one).
    assert seen == {"eu": 1, "us": 1}, seen
    assert all(placed)


def test_a_database_stopped_mid_run_fails_its_tenants_and_the_others_finish(
    layout: Layout,
) -> None:
    placed = place_tenants(layout)
    us = layout.clusters[1]
    blocker_engine = layout.engine("us")
    blocker = blocker_engine.connect()
    # u1 waits in us's lock queue, mid-transaction, when us goes down.
    blocker.exec_driver_sql("LOCK TABLE u1.inventory_items IN ACCESS SHARE MODE")
    try:
        run = start_cli(
            "upgrade", "--all-tenants", "--jobs", "2", "--json", "-q", "--no-replay",
            "--lock-timeout", "60", "--reconnect-timeout", "2", "--jobs-per-database", "1",
            url=layout.control, env=layout.env,
        )  # fmt: skip
        wait_for(
            lambda: (
                blocker.execute(sa.text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar()
                == 1
            )
        )
        us.stop()
        out, err = run.communicate(timeout=120)
    finally:
        blocker.invalidate()
        blocker_engine.dispose()
        us.start()
    assert run.returncode == 3, err
    result = json.loads(out)
    by_database: dict[str, set[str]] = {}
    for tenant in result["tenants"]:
        by_database.setdefault(tenant["database"], set()).add(tenant["status"])
    assert by_database["eu"] == {"ok"} and by_database["control"] == {"ok"}
    assert "failed" in by_database["us"]
    assert any("unreachable" in n for n in result["notices"])
    eu = layout.engine("eu")
    assert all(version(eu, n) == TENANT_HEAD for n in placed["eu"])
    us_engine = layout.engine("us")
    assert {version(us_engine, n) for n in placed["us"]} <= {OLD, TENANT_HEAD}
    # The finishing command, once us is back, completes exactly what is left.
    again = layout.cli("upgrade", "--all-tenants", "--only-failed", "--json")
    assert again.returncode == 0, again.stderr
    assert all(version(us_engine, n) == TENANT_HEAD for n in placed["us"])
    us_engine.dispose()
    eu.dispose()


def test_drift_finds_a_change_in_each_database(layout: Layout) -> None:
    place_tenants(layout, revision="head")
    assert layout.cli("drift").returncode == 0
    for database, tenant in (("control", "a2"), ("eu", "e3"), ("us", "u4")):
        with layout.engine(database).begin() as conn:
            conn.exec_driver_sql(f"ALTER TABLE {tenant}.users ADD COLUMN nickname text")
    found = layout.cli("drift", "--json")
    assert found.returncode == 2, found.stderr
    report = json.loads(found.stdout)
    assert {(d["name"], d["database"]) for d in report["drifted"]} == {
        ("a2", "control"), ("e3", "eu"), ("u4", "us"),
    }  # fmt: skip
    # Identical drift is one group, across databases.
    (group,) = report["groups"]
    assert sorted(group["tenants"]) == ["a2", "e3", "u4"]
    only_eu = json.loads(layout.cli("drift", "--database", "eu", "--json").stdout)
    assert [d["name"] for d in only_eu["drifted"]] == ["e3"]


def test_move_copies_verifies_and_switches_and_a_failed_move_changes_nothing(
    layout: Layout,
) -> None:
    place_tenants(layout, revision="head")
    with layout.engine("eu").begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO e1.users (email) SELECT 'u' || g || '@example.com'"
            " FROM generate_series(1, 300) g"
        )
    moved = layout.cli("tenants", "move", "e1", "--to", "us", "--json")
    assert moved.returncode == 0, moved.stderr
    result = json.loads(moved.stdout)
    # 300 users and the version row.
    assert result["from"] == "eu" and result["to"] == "us" and result["rows"] == 301
    us, eu = layout.engine("us"), layout.engine("eu")
    with us.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM e1.users")).scalar() == 300
    assert version(us, "e1") == TENANT_HEAD and version(eu, "e1") is None
    listed = {t["name"]: t["database"] for t in json_of(layout.cli("tenants", "list", "--json"))}  # type: ignore[union-attr]
    assert listed["e1"] == "us"
    runs = json_of(layout.cli("runs", "--json"))
    assert isinstance(runs, list) and runs[0]["command"] == "move"
    assert layout.cli("drift").returncode == 0

    # A move that fails halfway: a table owned by a role the target server does not have,
    # so the restore there fails. The tenant stays where it was, whole.
    role = f"tm_owner_{uuid.uuid4().hex[:6]}"
    with eu.begin() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{role}"')
        conn.exec_driver_sql(f'ALTER TABLE e2.users OWNER TO "{role}"')
        conn.exec_driver_sql("INSERT INTO e2.users (email) VALUES ('kept@example.com')")
    try:
        failed = layout.cli("tenants", "move", "e2", "--to", "us")
        assert failed.returncode == 3, failed.stderr
        assert "nothing changed" in failed.stderr or "nothing was moved" in failed.stderr
        with us.connect() as conn:
            assert conn.execute(sa.text("SELECT to_regnamespace('e2')")).scalar() is None
        with eu.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM e2.users")).scalar() == 1
        assert version(eu, "e2") == TENANT_HEAD
        listed = {
            t["name"]: t["database"] for t in json_of(layout.cli("tenants", "list", "--json"))
        }  # type: ignore[union-attr]
        assert listed["e2"] == "eu"
        assert json_of(layout.cli("runs", "--json"))[0]["outcome"] == "failed"  # type: ignore[index]
        # Into a database that has the schema already: refused, nothing changed.
        with us.begin() as conn:
            conn.exec_driver_sql("CREATE SCHEMA e3")
        clash = layout.cli("tenants", "move", "e3", "--to", "us")
        assert clash.returncode == 1 and "already has a schema" in clash.stderr
        assert version(eu, "e3") == TENANT_HEAD
    finally:
        with eu.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE e2.users OWNER TO CURRENT_USER")
            conn.exec_driver_sql(f'DROP ROLE "{role}"')
        us.dispose()
        eu.dispose()


def test_a_rollout_resumes_across_databases_and_follows_a_moved_tenant(layout: Layout) -> None:
    """A paused rollout over three databases; a tenant of a later wave is moved to another
    database meanwhile; the resume migrates it where it lives now, and every other tenant in
    its own database, each once."""
    placed = place_tenants(layout)
    assert layout.cli("tenants", "label", "a1", "e1", "u1", "--add", "canary").returncode == 0
    done = layout.cli(
        "upgrade", "--all-tenants", "--waves", "label:canary,rest", "--pause-after-wave", "--json"
    )
    paused = json_of(done)
    assert isinstance(paused, dict) and done.returncode == 0, done.stderr
    assert [w["state"] for w in paused["waves"]] == ["finished", "not_started"]
    moved = layout.cli("tenants", "move", "e2", "--to", "us")
    assert moved.returncode == 0, moved.stderr
    resumed = layout.cli("runs", "resume", str(paused["run_id"]), "--json")
    result = json_of(resumed)
    assert isinstance(result, dict) and resumed.returncode == 0, resumed.stderr
    where = {t["name"]: t["database"] for t in result["tenants"]}
    assert where["e2"] == "us" and where["e3"] == "eu" and where["u2"] == "us"
    placed["eu"].remove("e2")
    placed["us"].append("e2")
    for database, names in placed.items():
        engine = layout.engine(database)
        assert all(version(engine, n) == TENANT_HEAD for n in names), database
        engine.dispose()
    shown = json_of(layout.cli("runs", "show", str(paused["run_id"]), "--json"))
    assert isinstance(shown, dict) and shown["outcome"] == "succeeded"
    assert all(t["status"] == "ok" for t in shown["tenants"])
