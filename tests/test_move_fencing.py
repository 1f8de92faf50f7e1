"""Moves and restores never lose a committed write (issue: "never lose a committed write").

An application writer runs throughout each test: it reads the directory (the placements table in
the control database), connects to the database it names, and inserts a numbered row into the
tenant's audit_logs; a write it saw commit is *acknowledged*. Whatever happens to tenantmig (a
server ending its idle transaction, SIGKILL before, during or after the copy, SIGTERM), every
acknowledged write must be in the copy the directory names at the end.

Timing comes from locks the test holds (the tenant's advisory lock, a reader's ACCESS SHARE) and
from waiting for what pg_stat_activity shows, never from sleeps. Uses the three servers of
tests/test_databases.py: the control database and two PostgreSQL 15 clusters (eu, us).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from tenantmig.server.session import LOCK_NAMESPACE, lock_key
from tests import test_databases
from tests.helpers import TENANT_HEAD, start_cli, version
from tests.test_databases import PG15, Layout, place_tenants
from tests.test_signals import wait_for

TENANT = "e1"  # lives in eu; moved to us

# The several-databases fixtures (three servers), shared with tests/test_databases.py.
clusters = test_databases.clusters
layout = test_databases.layout


# The tenant's schema or a fenced copy of it, left in the source.
_LEFTOVERS = (
    "SELECT count(*) FROM pg_namespace WHERE nspname = 'e1' OR nspname LIKE 'tenantmig_moved_%'"
)


class Writer(threading.Thread):
    """The application: one committed INSERT at a time, into the copy the directory names."""

    def __init__(self, dbs: Layout, tenant: str = TENANT) -> None:
        super().__init__(daemon=True)
        self.tenant = tenant
        self.engines = {
            "control": sa.create_engine(dbs.control, poolclass=sa.NullPool),
            "eu": dbs.engine("eu"),
            "us": dbs.engine("us"),
        }
        self.acknowledged: list[tuple[str, str]] = []  # (database, marker)
        self.failures = 0
        self.stopping = threading.Event()

    def where(self) -> str:
        with self.engines["control"].connect() as conn:
            if not conn.execute(
                sa.text("SELECT to_regclass('public.tenantmig_placements')")
            ).scalar():
                return "control"
            found = conn.execute(
                sa.text("SELECT database FROM public.tenantmig_placements WHERE tenant = :t"),
                {"t": self.tenant},
            ).scalar()
        return str(found or "control")

    def run(self) -> None:
        number = 0
        while not self.stopping.is_set():
            number += 1
            marker = f"write-{number}"
            try:
                database = self.where()
                with self.engines[database].begin() as conn:
                    conn.execute(
                        sa.text(
                            f'INSERT INTO "{self.tenant}".audit_logs'
                            " (action, entity_type, entity_id) VALUES ('write', 'test', :m)"
                        ),
                        {"m": marker},
                    )
                self.acknowledged.append((database, marker))
            except DBAPIError:
                self.failures += 1
                self.stopping.wait(0.02)  # pacing only: the application retries

    def acknowledged_in(self, database: str) -> int:
        return sum(1 for where, _ in self.acknowledged if where == database)

    def finish(self) -> None:
        self.stopping.set()
        self.join(timeout=60)
        for engine in self.engines.values():
            engine.dispose()


def _markers(engine: sa.Engine, schema: str = TENANT) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.text(f"SELECT entity_id FROM \"{schema}\".audit_logs WHERE action = 'write'")
            ).scalars()
        )


def _every_acknowledged_write_is_live(dbs: Layout, writer: Writer) -> None:
    live = _directory(dbs)[TENANT]
    found = _markers(dbs.engine(live))
    lost = [marker for _, marker in writer.acknowledged if marker not in found]
    assert writer.acknowledged, "the writer never committed"
    assert not lost, f"acknowledged writes missing from the live copy in {live}: {lost[:5]}"


def _directory(dbs: Layout) -> dict[str, str]:
    listed = json.loads(dbs.cli("tenants", "list", "--json").stdout)
    return {t["name"]: t["database"] for t in listed}


def _sessions(engine: sa.Engine, where: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity"
                    f" WHERE pid <> pg_backend_pid() AND {where}"
                )
            ).scalar()
            or 0
        )


def _waiting(engine: sa.Engine, query_like: str) -> bool:
    return _sessions(engine, f"wait_event_type = 'Lock' AND query ILIKE '{query_like}'") > 0


@contextmanager
def _holding_tenant_lock(url: str, schema: str = TENANT) -> Iterator[None]:
    """The tenant's tenantmig advisory lock, held by the test in that database."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        conn.execute(
            sa.text("SELECT pg_advisory_lock(:ns, :key)"),
            {"ns": LOCK_NAMESPACE, "key": lock_key(schema)},
        )
        try:
            yield
        finally:
            conn.execute(
                sa.text("SELECT pg_advisory_unlock(:ns, :key)"),
                {"ns": LOCK_NAMESPACE, "key": lock_key(schema)},
            )
    engine.dispose()


@contextmanager
def _reading(url: str, table: str) -> Iterator[None]:
    """A reader's open transaction: ACCESS SHARE on ``table`` until the block ends."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn, conn.begin():
        conn.execute(sa.text(f"SELECT count(*) FROM {table}"))
        yield
    engine.dispose()


def _move(dbs: Layout, *extra: str) -> subprocess.Popen[str]:
    return start_cli(
        "tenants", "move", TENANT, "--to", "us", "--lock-timeout", "60", *extra,
        url=dbs.control, env=dbs.env,
    )  # fmt: skip


def _last_run(dbs: Layout) -> dict[str, object]:
    runs = json.loads(dbs.cli("runs", "--json").stdout)
    assert isinstance(runs, list)
    return dict(runs[0])


def _kill(process: subprocess.Popen[str], sig: int = signal.SIGKILL) -> tuple[int, str]:
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    return process.returncode, err


@pytest.fixture()
def tenants(layout: Layout) -> Layout:
    place_tenants(layout, revision="head")
    return layout


def test_a_server_ending_idle_transactions_does_not_let_a_write_through(tenants: Layout) -> None:
    dbs = tenants
    eu = dbs.engine("eu")
    database = sa.engine.make_url(dbs.eu).database
    with eu.begin() as conn:
        conn.execute(
            sa.text(f"ALTER DATABASE \"{database}\" SET idle_in_transaction_session_timeout = '1s'")
        )
    writer = Writer(dbs)
    writer.start()
    try:
        wait_for(lambda: writer.acknowledged_in("eu") > 0)
        # The copy waits for the tenant's lock in the target, held by the test: meanwhile the
        # source transaction holding the writers' locks sits idle, past the server's 1 s.
        with _holding_tenant_lock(dbs.us):
            move = _move(dbs)
            wait_for(lambda: _waiting(dbs.engine("us"), "%pg_advisory_xact_lock%"))
            # The application's write waits; still waiting 2 s in, so the move's transaction
            # was not ended by the server after 1 s.
            wait_for(
                lambda: (
                    _sessions(
                        eu,
                        "wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO%'"
                        " AND now() - query_start > interval '2 seconds'",
                    )
                    > 0
                )
            )
        _, err = move.communicate(timeout=120)
        assert move.returncode == 0, err
        wait_for(lambda: writer.acknowledged_in("us") > 0)
    finally:
        writer.finish()
    _every_acknowledged_write_is_live(dbs, writer)
    assert _directory(dbs)[TENANT] == "us"
    with eu.connect() as conn:
        left = conn.execute(sa.text(_LEFTOVERS)).scalar()
    assert left == 0


@pytest.mark.parametrize("moment", ["before the copy", "during the copy", "after the switch"])
def test_a_move_killed_at_any_moment_loses_no_write_and_its_rerun_finishes(
    tenants: Layout, moment: str
) -> None:
    dbs = tenants
    eu, us = dbs.engine("eu"), dbs.engine("us")
    writer = Writer(dbs)
    writer.start()
    try:
        wait_for(lambda: writer.acknowledged_in("eu") > 0)
        if moment == "before the copy":
            with _holding_tenant_lock(dbs.eu):
                move = _move(dbs)
                wait_for(lambda: _waiting(eu, "%pg_advisory_xact_lock%"))
                _kill(move)
            expected_phase = "copying"
        elif moment == "during the copy":
            with _holding_tenant_lock(dbs.us):
                move = _move(dbs)
                wait_for(lambda: _waiting(us, "%pg_advisory_xact_lock%"))
                _kill(move)
                # psql died with tenantmig: its restore never commits.
                wait_for(lambda: _sessions(us, "application_name = 'tenantmig backup'") == 0)
            with us.connect() as conn:
                assert conn.execute(sa.text("SELECT to_regnamespace('e1')")).scalar() is None
            expected_phase = "copying"
        else:
            with _reading(dbs.eu, "e1.users"):
                move = _move(dbs)
                # The fenced source's DROP waits for the reader: the directory names us now.
                wait_for(lambda: _waiting(eu, "DROP SCHEMA%"))
                wait_for(lambda: writer.acknowledged_in("us") > 0)
                _kill(move)
            expected_phase = "switched"
        # Killed: the ledger shows the move's run, and status and drift show the move unfinished.
        last = _last_run(dbs)
        assert last["command"] == "move" and last["outcome"] == "abandoned", last
        status = json.loads(dbs.cli("status", "--json").stdout)
        (pending,) = status["unfinished_moves"]
        assert pending["tenant"] == TENANT and pending["phase"] == expected_phase
        assert pending["finish"] == f"tenantmig tenants move {TENANT} --to us"
        drift = dbs.cli("drift")
        assert drift.returncode == 2 and "unfinished move: tenant e1" in drift.stdout, drift.stdout
        # The printed command finishes it.
        acknowledged = len(writer.acknowledged)
        finished = dbs.cli("tenants", "move", TENANT, "--to", "us", "--json")
        assert finished.returncode == 0, finished.stderr
        assert json.loads(finished.stdout)["finished_run"] == last["run_id"]
        wait_for(
            lambda: writer.acknowledged_in("us") > 0 and len(writer.acknowledged) > acknowledged + 3
        )
    finally:
        writer.finish()
    _every_acknowledged_write_is_live(dbs, writer)
    assert _directory(dbs)[TENANT] == "us" and version(us, "e1") == TENANT_HEAD
    with eu.connect() as conn:
        left = conn.execute(sa.text(_LEFTOVERS)).scalar()
    assert left == 0
    status = json.loads(dbs.cli("status", "--json").stdout)
    assert status["unfinished_moves"] == []
    assert dbs.cli("drift").returncode == 0


def _dump(dbs: Layout, tmp_path: Path, schema: str = TENANT) -> Path:
    archive = tmp_path / f"{schema}.dump"
    url = sa.engine.make_url(dbs.eu)
    subprocess.run(
        [str(PG15 / "pg_dump"), "-Fc", "-n", schema, "-f", str(archive), "-h", str(url.host),
         "-p", str(url.port), "-U", str(url.username), str(url.database)],
        check=True, capture_output=True,
    )  # fmt: skip
    return archive


def _restore(dbs: Layout, archive: Path, *extra: str) -> subprocess.Popen[str]:
    return start_cli(
        "restore", "--tenant", TENANT, str(archive), "--yes", *extra,
        url=dbs.control, env=dbs.env,
    )  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_a_restore_stopped_mid_way_restores_nothing_and_is_in_the_ledger(
    tenants: Layout, tmp_path: Path, sig: int
) -> None:
    dbs = tenants
    eu = dbs.engine("eu")
    archive = _dump(dbs, tmp_path)
    writer = Writer(dbs)
    writer.start()
    try:
        wait_for(lambda: writer.acknowledged_in("eu") > 2)  # rows the dump does not have
        with _reading(dbs.eu, "e1.users"):
            restore = _restore(dbs, archive, "--lock-timeout", "60")
            wait_for(lambda: _waiting(eu, "DROP SCHEMA%"))
            code, err = _kill(restore, sig)
            # pg_restore and psql died with it, before their transaction could commit.
            wait_for(lambda: _sessions(eu, "application_name = 'tenantmig backup'") == 0)
        wait_for(lambda: len(writer.acknowledged) > 5)
    finally:
        writer.finish()
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        assert _last_run(dbs)["outcome"] == "abandoned"
    else:
        assert code == 130, err
        assert _last_run(dbs)["outcome"] == "interrupted"
    assert _last_run(dbs)["command"] == "restore"
    _every_acknowledged_write_is_live(dbs, writer)


def test_a_restore_racing_a_move_refuses_and_changes_nothing(
    tenants: Layout, tmp_path: Path
) -> None:
    dbs = tenants
    archive = _dump(dbs, tmp_path)
    us = dbs.engine("us")
    with _holding_tenant_lock(dbs.us):
        move = _move(dbs)
        wait_for(lambda: _waiting(us, "%pg_advisory_xact_lock%"))
        # The move holds the tenant in eu: the restore gives up after its lock timeout.
        refused = dbs.cli(
            "restore", "--tenant", TENANT, str(archive), "--yes", "--lock-timeout", "1"
        )
        assert refused.returncode == 4, refused.stderr
        assert "held by another tenantmig operation" in refused.stderr
    _, err = move.communicate(timeout=120)
    assert move.returncode == 0, err
    # A move recorded as under way (killed between its fence and the switch, say): refused too.
    with sa.create_engine(dbs.control, poolclass=sa.NullPool).begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO public.tenantmig_moves"
                " (tenant, schema_name, source, target, run_id, phase)"
                " VALUES ('e2', 'e2', 'eu', 'us', 999, 'fenced')"
            )
        )
    refused = dbs.cli("restore", "--tenant", "e2", str(_dump(dbs, tmp_path, "e2")), "--yes")
    assert refused.returncode == 4 and "did not finish" in refused.stderr, refused.stderr
    # Nor is a tenant dropped half way through its move.
    dropped = dbs.cli("tenants", "drop", "e2", "--yes")
    assert dropped.returncode == 4 and "did not finish" in dropped.stderr, dropped.stderr
    runs = json.loads(dbs.cli("runs", "--json").stdout)
    assert [r["outcome"] for r in runs[:2]] == ["failed", "failed"]
    assert all(r["command"] == "restore" for r in runs[:2])
    assert version(dbs.engine("eu"), "e2") == TENANT_HEAD
    assert os.path.exists(archive)


@contextmanager
def _holding_run_row(url: str, run_id: object) -> Iterator[None]:
    """The run's ledger row locked against updates: the restore's last write (finishing the
    run) waits; recording the tenant's outcome does not (FOR NO KEY UPDATE lets the foreign
    key's FOR KEY SHARE through)."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn, conn.begin():
        conn.execute(
            sa.text("SELECT 1 FROM public.tenantmig_runs WHERE id = :id FOR NO KEY UPDATE"),
            {"id": run_id},
        )
        yield
    engine.dispose()


def test_a_restore_killed_before_it_starts_or_after_it_committed_is_whole_and_in_the_ledger(
    tenants: Layout, tmp_path: Path
) -> None:
    dbs = tenants
    eu = dbs.engine("eu")
    archive = _dump(dbs, tmp_path)
    with eu.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO e1.audit_logs (action, entity_type, entity_id)"
            " VALUES ('write', 'test', 'after-the-dump')"
        )
    # Before: waiting for the tenant's lock (a run or a move holds it). Killed there, nothing
    # was restored: the row written after the dump is still there.
    with _holding_tenant_lock(dbs.eu):
        restore = _restore(dbs, archive, "--lock-timeout", "60")
        wait_for(lambda: _waiting(eu, "%pg_advisory_xact_lock%"))
        code, _ = _kill(restore)
    assert code == -signal.SIGKILL
    assert _last_run(dbs)["outcome"] == "abandoned"
    assert "after-the-dump" in _markers(eu)
    # After: psql committed, the ledger's last record waits. Killed there, the restore is whole
    # (the dump's rows, the row written after it gone) and the run reads abandoned.
    control = sa.create_engine(dbs.control, poolclass=sa.NullPool)
    held = ExitStack()
    with _holding_tenant_lock(dbs.eu):
        restore = _restore(dbs, archive, "--lock-timeout", "60")
        wait_for(lambda: _waiting(eu, "%pg_advisory_xact_lock%"))
        held.enter_context(_holding_run_row(dbs.control, _last_run(dbs)["run_id"]))
    # The tenant's lock released: the restore runs, commits, records the tenant, then waits.
    with held:
        wait_for(lambda: _waiting(control, "UPDATE%tenantmig_runs%"))
        assert "after-the-dump" not in _markers(eu)
        code, _ = _kill(restore)
    control.dispose()
    assert code == -signal.SIGKILL
    last = _last_run(dbs)
    assert last["command"] == "restore" and last["outcome"] == "abandoned"
    assert version(eu, "e1") == TENANT_HEAD
    with eu.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM e1.users")).scalar() == 0


def test_a_move_interrupted_during_the_copy_exits_130_and_moves_nothing(tenants: Layout) -> None:
    dbs = tenants
    eu, us = dbs.engine("eu"), dbs.engine("us")
    writer = Writer(dbs)
    writer.start()
    try:
        wait_for(lambda: writer.acknowledged_in("eu") > 0)
        with _holding_tenant_lock(dbs.us):
            move = _move(dbs)
            wait_for(lambda: _waiting(us, "%pg_advisory_xact_lock%"))
            code, err = _kill(move, signal.SIGTERM)
        acknowledged = writer.acknowledged_in("eu")
        wait_for(lambda: writer.acknowledged_in("eu") > acknowledged + 3)
    finally:
        writer.finish()
    assert code == 130, err
    last = _last_run(dbs)
    assert last["command"] == "move" and last["outcome"] == "interrupted"
    # Nothing half-done: no copy in us, no move left unfinished, the tenant where it was.
    with us.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regnamespace('e1')")).scalar() is None
    assert json.loads(dbs.cli("status", "--json").stdout)["unfinished_moves"] == []
    assert _directory(dbs)[TENANT] == "eu" and version(eu, "e1") == TENANT_HEAD
    _every_acknowledged_write_is_live(dbs, writer)
