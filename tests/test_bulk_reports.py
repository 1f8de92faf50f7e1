"""Truthful reports of `tenants drop` (and create) across several databases, after any failure.

The tenants live in the control database and in eu and us (two more PostgreSQL servers, the
fixtures of test_databases). A batch is made to fail deterministically: a lock held by the test
on one tenant's table with a short --lock-timeout (the batch fails before anything commits),
or a deferred trigger on the registry that refuses the control database's COMMIT (the other
databases have committed by then). Each report is checked against what each database holds.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa

from tests import test_databases
from tests.helpers import start_cli
from tests.test_databases import Layout
from tests.test_signals import wait_for

# The several-databases fixtures (two PostgreSQL 15 clusters; a control database, eu and us).
clusters = test_databases.clusters
layout = test_databases.layout
pytestmark = test_databases.pytestmark

SHORT = ("--lock-timeout", "0.5")


def make_tenants(layout: Layout, placed: dict[str, Sequence[str]]) -> None:
    """Tenants migrated to head in each database, one users row each."""
    assert layout.cli("upgrade", "--shared").returncode == 0
    for database, names in placed.items():
        done = layout.cli("tenants", "create", *names, "--database", database)
        assert done.returncode == 0, done.stderr
        with layout.engine(database).begin() as conn:
            for name in names:
                conn.exec_driver_sql(f"INSERT INTO {name}.users (email) VALUES ('a@{name}.test')")


def registered(layout: Layout) -> set[str]:
    with layout.engine("control").connect() as conn:
        return set(conn.execute(sa.text("SELECT name FROM public.tenants")).scalars())


def schemas_in(layout: Layout, database: str) -> set[str]:
    with layout.engine(database).connect() as conn:
        return set(conn.execute(sa.text("SELECT nspname FROM pg_namespace")).scalars())


# What each state in a drop's report says is there: (registry row, schema).
THERE = {
    "dropped": (False, False),
    "schema_was_gone": (False, False),
    "already_gone": (False, False),
    "schema_dropped": (True, False),
    "schema_missing": (True, False),
    "row_removed": (False, True),
    "untouched": (True, True),
}


def check_report(layout: Layout, report: dict[str, object]) -> dict[str, dict[str, list[str]]]:
    """The report's per-database lists, after checking every tenant in it against the
    registry and its database."""
    rows = registered(layout)
    tenants = report["tenants"]
    assert isinstance(tenants, list)
    for tenant in tenants:
        found = (tenant["name"] in rows, tenant["schema"] in schemas_in(layout, tenant["database"]))
        assert found == THERE[tenant["state"]], tenant
    databases = report["databases"]
    assert isinstance(databases, dict)
    return databases


def drop(layout: Layout, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    done = layout.cli("tenants", "drop", *args, "--yes", "--json")
    assert done.returncode in (0, 3), done.stderr
    return done, json.loads(done.stdout)


@contextmanager
def lock_held(layout: Layout, database: str, table: str) -> Iterator[None]:
    """An application transaction reading ``table`` until the block ends: DROP SCHEMA waits."""
    with layout.engine(database).connect() as blocker:
        blocker.exec_driver_sql(f"LOCK TABLE {table} IN ACCESS SHARE MODE")
        yield
        blocker.rollback()


def test_a_lock_in_one_database_rolls_the_batch_back_in_all_and_the_report_says_so(
    layout: Layout,
) -> None:
    make_tenants(layout, {"control": ["c01", "c02"], "eu": ["e01", "e02"]})
    names = ["c01", "e01", "c02", "e02"]  # one batch over two databases
    for database, table in (("control", "c01.users"), ("eu", "e02.users")):
        with lock_held(layout, database, table):
            text = layout.cli("tenants", "drop", *names, "--yes", *SHORT)
            done, report = drop(layout, *names, *SHORT)
        # Before: the schemas in eu were dropped and committed before the control database's
        # lock timeout, and the message still said "still registered and untouched" of them.
        assert text.returncode == 3 and done.returncode == 3
        assert f"a batch failed and was rolled back: database {database}" in text.stderr
        assert "lock timeout" in text.stderr
        assert "dropped 0 of 4 tenant(s); still registered and untouched: c01, e01, c02, e02" in (
            text.stderr
        )
        assert "database eu:\n  untouched (registry row and schema as they were): e01, e02" in (
            text.stdout
        )
        assert check_report(layout, report) == {
            "control": {"untouched": ["c01", "c02"]},
            "eu": {"untouched": ["e01", "e02"]},
        }
    with layout.engine("eu").connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM e01.users")).scalar() == 1


REFUSE_DELETE = """
CREATE FUNCTION public.keep_tenant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION USING MESSAGE = 'the application keeps tenant ' || OLD.name; END $$;
CREATE CONSTRAINT TRIGGER keep_c01 AFTER DELETE ON public.tenants
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (OLD.name = 'c01')
    EXECUTE FUNCTION public.keep_tenant();
"""


def test_a_commit_refused_after_other_databases_committed_is_reported_and_a_rerun_finishes(
    layout: Layout,
) -> None:
    make_tenants(layout, {"control": ["c01", "c02"], "eu": ["e01", "e02"], "us": ["u01"]})
    names = ["c01", "e01", "c02", "e02", "u01"]
    # Refused at the control database's COMMIT, after eu and us committed their drops.
    with layout.engine("control").begin() as conn:
        conn.exec_driver_sql(REFUSE_DELETE)
    failed = layout.cli("tenants", "drop", *names, "--yes")
    assert failed.returncode == 3, failed.stderr
    assert (
        "a batch failed and was not rolled back everywhere: database control, at commit: "
        "the application keeps tenant c01" in failed.stderr
    )
    assert "schemas dropped but still registered: e01, e02, u01" in failed.stderr
    assert "still registered and untouched: c01, c02" in failed.stderr
    assert "database us:\n  schema dropped, still registered: u01" in failed.stdout
    assert "the same command again drops what is left" in failed.stdout
    _, report = drop(layout, *names)  # the trigger still refuses: the same state, as JSON
    assert check_report(layout, report) == {
        "control": {"untouched": ["c01", "c02"]},
        "eu": {"schema_missing": ["e01", "e02"]},
        "us": {"schema_missing": ["u01"]},
    }
    status = json.loads(layout.cli("status", "--json").stdout)
    states = {t["name"]: t["state"] for t in status["tenants"]}
    assert states["e01"] == "missing_schema" and states["c01"] != "missing_schema"

    with layout.engine("control").begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER keep_c01 ON public.tenants")
    done, report = drop(layout, *names)
    assert done.returncode == 0, done.stderr
    assert check_report(layout, report) == {
        "control": {"dropped": ["c01", "c02"]},
        "eu": {"schema_was_gone": ["e01", "e02"]},
        "us": {"schema_was_gone": ["u01"]},
    }
    assert registered(layout) == set()

    # Once more: nothing left, every name accounted for by the drop that finished it.
    again = layout.cli("tenants", "drop", *names, "--yes")
    assert again.returncode == 0, again.stderr
    run = report["run_id"]
    assert (
        f"database eu:\n  already gone, nothing left (named by drop run {run}): e01, e02"
        in again.stdout
    )


def test_a_drop_killed_while_it_waits_is_finished_by_the_same_command(layout: Layout) -> None:
    control = [f"c{i:02}" for i in range(1, 16)]
    eu = [f"e{i:02}" for i in range(1, 16)]
    make_tenants(layout, {"control": control, "eu": eu})
    names = [n for pair in zip(control, eu, strict=True) for n in pair]  # c01 e01 c02 e02 ...
    first, second = names[:25], names[25:]  # the second batch: e13 c14 e14 c15 e15
    with lock_held(layout, "eu", "e14.users"):
        runner = start_cli(
            "tenants", "drop", *names, "--yes", "--lock-timeout", "60",
            url=layout.control, env=layout.env,
        )  # fmt: skip
        try:
            wait_for(lambda: waiting_in(layout, "eu") == 1)
        finally:
            runner.send_signal(signal.SIGKILL)
            runner.wait()
    # The killed runner's sessions end (a waiting one polls its socket): nothing of it is left.
    wait_for(lambda: tenantmig_sessions(layout) == 0)
    assert registered(layout) == set(second)
    assert not set(first) & (schemas_in(layout, "control") | schemas_in(layout, "eu"))
    assert set(second) <= schemas_in(layout, "control") | schemas_in(layout, "eu")
    (killed,) = json.loads(layout.cli("runs", "--json").stdout)[:1]
    assert killed["command"] == "drop" and killed["outcome"] == "abandoned"

    # Before: "25 unknown tenant(s)", and nothing dropped.
    done, report = drop(layout, *names)
    assert done.returncode == 0, done.stderr
    gone = check_report(layout, report)
    assert gone == {
        "control": {"already_gone": control[:13], "dropped": control[13:]},
        "eu": {"already_gone": eu[:12], "dropped": eu[12:]},
    }
    tenants = report["tenants"]
    assert isinstance(tenants, list)
    assert {t["earlier_run"] for t in tenants if t["name"] in first} == {killed["run_id"]}
    assert registered(layout) == set()


def waiting_in(layout: Layout, database: str) -> int:
    """tenantmig sessions of this test's database waiting for a lock."""
    with layout.engine(database).connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE NOT l.granted AND a.datname = current_database()"
                    " AND a.application_name LIKE 'tenantmig%'"
                )
            ).scalar_one()
        )


def tenantmig_sessions(layout: Layout) -> int:
    total = 0
    for database in ("control", "eu", "us"):
        with layout.engine(database).connect() as conn:
            total += conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name LIKE 'tenantmig%'"
                )
            ).scalar_one()
    return total


def test_names_that_are_no_leftover_of_a_drop_are_refused_and_nothing_is_dropped(
    layout: Layout,
) -> None:
    make_tenants(layout, {"control": ["c01"], "eu": ["e01"]})
    with layout.engine("us").begin() as conn:  # an application's schema nobody registered
        conn.exec_driver_sql("CREATE SCHEMA stray")
    refused = layout.cli("tenants", "drop", "c01", "e01", "stray", "ghost", "--yes")
    assert refused.returncode == 1
    assert "1 unknown tenant(s): ghost" in refused.stderr
    assert "1 name(s) not registered whose schema exists: stray (in database us)" in refused.stderr
    assert "nothing was dropped" in refused.stderr
    assert registered(layout) == {"c01", "e01"} and "stray" in schemas_in(layout, "us")


REFUSE_INSERT = """
CREATE FUNCTION public.refuse_tenant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION USING MESSAGE = 'the application refuses tenant ' || NEW.name; END $$;
CREATE CONSTRAINT TRIGGER refuse_n02 AFTER INSERT ON public.tenants
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.name = 'n02')
    EXECUTE FUNCTION public.refuse_tenant();
"""


def test_create_in_another_database_says_what_is_there_when_registering_fails(
    layout: Layout,
) -> None:
    assert layout.cli("upgrade", "--shared").returncode == 0
    with layout.engine("control").begin() as conn:
        conn.exec_driver_sql(REFUSE_INSERT)
    failed = layout.cli("tenants", "create", "n01", "n02", "--database", "eu", "--no-migrate")
    # Before: "database error", as if nothing had changed, with the schemas left in eu.
    assert failed.returncode == 5, failed.stderr
    assert "created the schemas of 2 tenant(s) in database eu" in failed.stderr
    assert "the application refuses tenant n02" in failed.stderr
    assert "their schemas exist, empty and unregistered: n01, n02" in failed.stderr
    assert {"n01", "n02"} <= schemas_in(layout, "eu") and registered(layout) == set()

    with layout.engine("control").begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER refuse_n02 ON public.tenants")
    adopted = layout.cli("tenants", "register", "n01", "n02", "--database", "eu")
    assert adopted.returncode == 0, adopted.stderr
    assert "registered 2 tenant(s) (schemas in database eu): n01, n02" in adopted.stdout
    listed = json.loads(layout.cli("tenants", "list", "--json").stdout)
    assert {t["name"]: t["database"] for t in listed} == {"n01": "eu", "n02": "eu"}
