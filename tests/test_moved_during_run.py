"""A tenant moved to another database while a run goes is reported as moved, not missing, and
the run's finishing command migrates it where it lives now.

The move is simulated step by step as ``tenants move`` makes it, so that it lands exactly while
a worker waits for the tenant: the test holds the tenant's lock in its old database, copies the
schema to the new one (pg_dump | psql), switches the directory, then drops the old schema in
the transaction holding the lock, whose commit lets the waiting worker in.
"""

from __future__ import annotations

import shlex
import subprocess

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tenantmig.server.session import LOCK_NAMESPACE, lock_key
from tests.helpers import TENANT_HEAD, start_cli, version
from tests.test_databases import OLD, PG15, Layout, clusters, layout, place_tenants  # noqa: F401
from tests.test_engine import ledger_rows
from tests.test_signals import wait_for, waiting_lock_requests


def copy_schema(where: Layout, schema: str, source: str, target: str) -> None:
    """The schema and its rows from database ``source`` to ``target``, in one transaction."""
    dump = subprocess.run(
        [str(PG15 / "pg_dump"), "--schema", schema, "--no-owner", _libpq(getattr(where, source))],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [str(PG15 / "psql"), "--single-transaction", "-v", "ON_ERROR_STOP=1", "-q",
         _libpq(getattr(where, target))],
        input=dump.stdout,
        check=True,
        capture_output=True,
    )  # fmt: skip


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def test_a_tenant_moved_during_a_run_is_reported_moved_and_finished_where_it_lives_now(
    layout: Layout,  # noqa: F811
) -> None:
    placed = place_tenants(layout)
    eu, us, control = layout.engine("eu"), layout.engine("us"), layout.engine("control")
    with eu.connect() as mover:
        mover.execute(
            sa.text("SELECT pg_advisory_xact_lock(:ns, :key)"),
            {"ns": LOCK_NAMESPACE, "key": lock_key("e4")},
        )
        run = start_cli(
            "upgrade", "--all-tenants", "--jobs", "2", "--lock-timeout", "60",
            url=layout.control, env=layout.env,
        )  # fmt: skip
        # A worker waits for e4's lock in eu: the run has e4 in hand, at its old place.
        wait_for(lambda: waiting_lock_requests(eu) == 1)
        copy_schema(layout, "e4", "eu", "us")
        with control.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE public.tenantmig_placements SET database = 'us' WHERE tenant = 'e4'"
            )
        mover.exec_driver_sql('DROP SCHEMA "e4" CASCADE')
        mover.commit()
        out, err = run.communicate(timeout=180)
    assert run.returncode == 3, err  # not every tenant reached the target
    assert "moved to us during this run, not migrated" in out
    assert "missing" not in out and "does not exist" not in out
    assert "rolled back" not in out  # nothing of e4 was rolled back: it was not touched
    finish = shlex.split(out.strip().splitlines()[-1])
    assert finish[0] == "tenantmig" and finish[-1] == "--only-failed", out

    with control.connect() as conn:
        run_id = conn.exec_driver_sql("SELECT max(id) FROM public.tenantmig_runs").scalar_one()
        recorded = conn.execute(
            sa.text(
                "SELECT status, from_revision, database, error FROM public.tenantmig_run_tenants"
                " WHERE run_id = :id AND tenant = 'e4'"
            ),
            {"id": run_id},
        ).one()
    # Its real revision, read where it lives now; the database it lives in now.
    assert tuple(recorded) == ("moved", OLD, "us", "moved to us during this run, not migrated")
    others = [n for names in placed.values() for n in names if n != "e4"]
    rows = ledger_rows(control, run_id)
    assert all(rows[n][0] == "ok" for n in others)
    assert version(us, "e4") == OLD and version(eu, "e4") is None

    done = layout.cli(*finish[1:])
    assert done.returncode == 0, done.stderr
    assert version(us, "e4") == TENANT_HEAD and version(eu, "e4") is None
    with control.connect() as conn:
        finishing = conn.exec_driver_sql("SELECT max(id) FROM public.tenantmig_runs").scalar_one()
    assert ledger_rows(control, finishing) == {"e4": ("ok", None)}
    for engine in (eu, us, control):
        engine.dispose()
