"""tenantmig's own reads outlast a role's statement_timeout; --statement-timeout bounds them.

Production roles often carry ``ALTER ROLE app SET statement_timeout = '200ms'``, and tenantmig's
reads (catalog fingerprints, version tables, the registry, the ledger) used to run under it:
`tenantmig drift` over 1,000 tenants was cancelled in its catalog read. Here the commands run as a
role with that setting, and each read is made to take longer than 200 ms deterministically: a
transaction of the test holds an ACCESS EXCLUSIVE lock on what the read reads (a registry or
ledger table, a tenant's version table, or pg_catalog.pg_policy, which the catalog fingerprint
query reads) until the command has waited for it three times the role's limit. Time spent
waiting for a lock counts toward statement_timeout like any other.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from psycopg2 import errorcodes
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from tenantmig import api
from tenantmig.errors import ReadTimedOut
from tenantmig.server.config import Settings, load_settings
from tenantmig.server.reads import own_reads, statement_timeout_setting

from .helpers import CONFIG, run_cli

TENANTS = ["t1", "t2", "t3"]
ROLE_LIMIT = "200ms"
WAITED_S = 0.6  # how long the commands are made to wait: three times the role's limit
BOUND_S = 0.3  # an explicit --statement-timeout, shorter than that wait


@dataclass(frozen=True)
class Fleet:
    """A database owned by a role (no superuser) with the role-level statement_timeout."""

    role: str
    url: str  # the role's URL
    settings: Settings  # as the role
    admin_url: str  # a superuser's, in the same database


def _engine(url: str, **kwargs: Any) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.NullPool, **kwargs)


@pytest.fixture(scope="module")
def fleet(admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Shared tables, three tenants at head and two runs in the ledger, all made by the role,
    which owns the database; then the role gets its statement_timeout. The tests only read,
    so they share it."""
    name = f"tm_{uuid.uuid4().hex[:12]}"
    role = f"tm_reader_{uuid.uuid4().hex[:8]}"
    server = make_url(admin_url).set(drivername="postgresql+psycopg2")
    admin = _engine(server.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" OWNER "{role}"')
    try:
        url = server.set(database=name, username=role, password=None)
        role_url = url.render_as_string(hide_password=False)
        home = Path(tmp_path_factory.mktemp("home"))
        settings = load_settings(config_file=CONFIG, database_url=role_url, home=home)
        assert api.upgrade(settings, api.Selection.shared_only()).succeeded
        _, result = api.create_tenants(settings, TENANTS)
        assert result is not None and result.succeeded
        with admin.connect() as conn:
            conn.exec_driver_sql(f"ALTER ROLE \"{role}\" SET statement_timeout = '{ROLE_LIMIT}'")
        in_database = server.set(database=name).render_as_string(hide_password=False)
        yield Fleet(role, role_url, settings, in_database)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        admin.dispose()


@dataclass
class Hold:
    """What the lock holder saw: whether a session waited for the lock, and for how long at
    most."""

    seen: bool = False
    longest_wait_s: float = 0.0
    release: threading.Event = field(default_factory=threading.Event)


def _hold(
    url: str, table: str, hold: Hold, until_waited_s: float | None, ready: threading.Event
) -> None:
    engine = _engine(url)
    try:
        with engine.connect() as conn, conn.begin():
            conn.exec_driver_sql(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            ready.set()
            waiting_since: float | None = None
            deadline = time.monotonic() + 60  # a command that never gives up is let through
            while not hold.release.is_set() and time.monotonic() < deadline:
                # pg_locks is read afresh by every statement, even inside this transaction.
                waiting = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'relation'"
                        " AND relation = CAST(:table AS regclass)"
                        " AND database = (SELECT oid FROM pg_database"
                        "                 WHERE datname = current_database())"
                    ),
                    {"table": table},
                ).scalar()
                now = time.monotonic()
                if not waiting:
                    waiting_since = None  # the waiter gave up (cancelled), or none yet
                else:
                    waiting_since = waiting_since or now
                    hold.seen = True
                    hold.longest_wait_s = max(hold.longest_wait_s, now - waiting_since)
                    if until_waited_s is not None and hold.longest_wait_s >= until_waited_s:
                        return  # committing releases the lock
                hold.release.wait(0.02)
    finally:
        engine.dispose()


@contextmanager
def holding(fleet: Fleet, table: str, *, until_waited_s: float | None = None) -> Iterator[Hold]:
    """ACCESS EXCLUSIVE on ``table`` in a superuser's transaction: released once a session
    has waited for it ``until_waited_s`` seconds (None: at the end of the block)."""
    hold = Hold()
    ready = threading.Event()
    thread = threading.Thread(
        target=_hold, args=(fleet.admin_url, table, hold, until_waited_s, ready), daemon=True
    )
    thread.start()
    assert ready.wait(30), f"could not lock {table}"
    try:
        yield hold
    finally:
        hold.release.set()
        thread.join(30)


# (what is read, the command, what to lock so that read waits)
CASES = [
    ("tenants list: the registry", ["tenants", "list", "--json"], "public.tenants"),
    ("status: version tables", ["status", "--json"], "t2.alembic_version"),
    ("status: the ledger", ["status", "--json"], "public.tenantmig_run_tenants"),
    ("drift: version tables", ["drift", "--json"], "t2.alembic_version"),
    # With named tenants drift leaves out the shared schema: the fingerprint query over the
    # tenants' catalogs is the first statement to read pg_policy.
    (
        "drift: catalog fingerprints",
        ["drift", "--json", *(f"--tenant={t}" for t in TENANTS)],
        "pg_catalog.pg_policy",
    ),
    ("runs: the ledger", ["runs", "--json"], "public.tenantmig_runs"),
    ("runs show: the ledger", ["runs", "show", "1", "--json"], "public.tenantmig_run_tenants"),
]
IDS = [case[0] for case in CASES]


def test_the_roles_limit_cancels_a_read_without_a_setting_of_its_own(fleet: Fleet) -> None:
    """The failure the rest guards against, reproduced: a plain read by the role that waits
    longer than 200 ms is cancelled by the role's setting."""
    engine = _engine(fleet.url)
    try:
        with holding(fleet, "public.tenants"), engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == ROLE_LIMIT
            with pytest.raises(DBAPIError) as cancelled:
                conn.exec_driver_sql("SELECT count(*) FROM public.tenants")
        assert getattr(cancelled.value.orig, "pgcode", None) == errorcodes.QUERY_CANCELED
    finally:
        engine.dispose()


@pytest.mark.parametrize(("what", "command", "table"), CASES, ids=IDS)
def test_reads_outlast_the_roles_statement_timeout(
    fleet: Fleet, what: str, command: Sequence[str], table: str
) -> None:
    with holding(fleet, table, until_waited_s=WAITED_S) as hold:
        done = run_cli(*command, url=fleet.url)
    assert done.returncode == 0, f"{what}: {done.stderr}"
    assert hold.longest_wait_s >= WAITED_S, f"{what}: the command never waited on {table}"


@pytest.mark.parametrize(("what", "command", "table"), CASES, ids=IDS)
def test_an_explicit_statement_timeout_bounds_the_reads(
    fleet: Fleet, what: str, command: Sequence[str], table: str
) -> None:
    with holding(fleet, table) as hold:
        done = run_cli(*command, "--statement-timeout", str(BOUND_S), url=fleet.url)
    assert done.returncode == 1, f"{what}: {done.stdout} {done.stderr}"
    assert hold.seen, f"{what}: the command never waited on {table}"
    assert f"--statement-timeout {BOUND_S:g}s" in done.stderr, done.stderr
    assert "statement timeout" in done.stderr and "nothing was changed" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_api_reads_past_the_role_and_stops_at_its_own_limit(fleet: Fleet) -> None:
    """The Python API as the CLI: Settings.statement_timeout_s None is no limit, a number is
    the limit, whatever the role sets."""
    with holding(fleet, "t1.alembic_version", until_waited_s=WAITED_S) as hold:
        report = api.status(fleet.settings)
    assert hold.longest_wait_s >= WAITED_S
    assert [t.name for t in report.tenants] == TENANTS
    assert all(t.revision is not None for t in report.tenants)

    bounded = fleet.settings.with_options(statement_timeout_s=BOUND_S)
    with holding(fleet, "pg_catalog.pg_policy") as hold, pytest.raises(ReadTimedOut) as timed_out:
        api.drift(bounded, TENANTS)
    assert hold.seen and isinstance(timed_out.value.__cause__, DBAPIError)
    with holding(fleet, "public.tenants") as hold, pytest.raises(ReadTimedOut):
        api.tenants(bounded)
    assert hold.seen


def test_own_reads_set_the_limit_for_their_transaction_only(fleet: Fleet) -> None:
    """SET LOCAL: the next transaction on the connection (or on a server connection a pooler
    lends to someone else) is back at the role's setting."""
    engine = _engine(fleet.url)
    try:
        with engine.connect() as conn:
            with own_reads(conn, None):
                assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "0"
            with conn.begin():
                assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == ROLE_LIMIT
            with own_reads(conn, 2.5):
                assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "2500ms"
            with conn.begin():
                assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == ROLE_LIMIT
    finally:
        engine.dispose()
    # A limit under a millisecond is still a limit: '0' would mean none.
    assert statement_timeout_setting(0.0001) == "1ms"
    assert statement_timeout_setting(None) == "0"
