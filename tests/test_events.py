"""--events: a run as JSON lines, written as it happens, every line valid against
docs/events.schema.json; an observer that fails never changes the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import sqlalchemy as sa

from tenantmig import api
from tenantmig.run.results import TenantOutcome, TenantStatus
from tenantmig.server.config import Settings
from tests.helpers import CONFIG, REPO, run_cli
from tests.test_engine import make_tenants

SCHEMA = json.loads((REPO / "docs" / "events.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)


def _events(text: str) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in text.splitlines()]
    for event in events:
        VALIDATOR.validate(event)
    return events


def _of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == kind]


def test_a_run_as_events(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, ["alpha", "beta", "held", "gone", "bad"], "001_initial_schema")
    with engine.begin() as conn:
        conn.exec_driver_sql('DROP SCHEMA "gone" CASCADE')  # registered, schema missing
        conn.exec_driver_sql('CREATE TABLE "bad".locations (id int)')  # revision 003 fails
    events_file = tmp_path / "events.jsonl"
    events_file.write_text("")  # appended to, not replaced
    with engine.connect() as blocker:
        # ACCESS SHARE conflicts with revision 003's ALTER TABLE: a lock timeout, one retry.
        blocker.exec_driver_sql('LOCK TABLE "held".inventory_items IN ACCESS SHARE MODE')
        blocker_pid = blocker.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        done = run_cli(
            "upgrade", "--all-tenants", "--jobs", "2", "--lock-timeout", "0.3", "--retries", "1",
            "--events", str(events_file), "--json", url=database_url,
        )  # fmt: skip
        blocker.rollback()
    assert done.returncode == 3, done.stderr
    printed = json.loads(done.stdout)
    events = _events(events_file.read_text())

    first, last = events[0], events[-1]
    assert first["event"] == "run_started" and last["event"] == "run_finished"
    assert {e["run_id"] for e in events} == {printed["run_id"]} != {None}
    assert first["command"] == "upgrade" and first["target"] == "head"
    assert first["selection"] == {
        "shared": False, "all_tenants": True, "tenants": None, "databases": None,
        "labels": None, "only_failed": False,
    }  # fmt: skip
    assert first["tenants"] == 4 and first["selected"] == 5 and first["jobs"] == 2
    assert first["databases"] == ["control"]

    started = {e["tenant"] for e in _of(events, "tenant_started")}
    assert started == {"alpha", "beta", "held", "bad"}  # "gone" has no schema to start on
    (retry,) = _of(events, "tenant_retry")
    assert retry["tenant"] == "held" and retry["attempt"] == 1
    assert retry["sqlstate"] == "55P03" and retry["reason"] == "lock timeout"
    assert any(f"pid {blocker_pid}" in holder for holder in retry["blocked_by"]), retry
    assert retry["retry_in_s"] > 0

    finished = {e["tenant"]: e for e in _of(events, "tenant_finished")}
    outcomes = {o["name"]: o for o in printed["tenants"]}
    assert set(finished) == set(outcomes) == {"alpha", "beta", "held", "gone", "bad"}
    for name, event in finished.items():
        outcome = outcomes[name]
        assert event["status"] == outcome["status"], name
        assert (event["from"], event["to"]) == (outcome["from"], outcome["to"]), name
        assert event["attempts"] == outcome["attempts"] and event["error"] == outcome["error"]
    assert finished["held"]["attempts"] == 2 and finished["held"]["status"] == "failed"
    assert finished["gone"]["status"] == "missing" and finished["bad"]["status"] == "failed"
    assert finished["alpha"]["to"] == finished["beta"]["to"] != "001_initial_schema"
    for name in started:  # in order: started, (retried), finished
        kinds = [e["event"] for e in events if e.get("tenant") == name]
        assert kinds[0] == "tenant_started" and kinds[-1] == "tenant_finished", kinds

    assert last["exit_code"] == 3 and last["error"] is None
    assert last["counts"] == {
        "ok": 2, "skipped": 0, "failed": 2, "missing": 1, "not_run": 0, "interrupted": 0,
        "moved": 0,
    }  # fmt: skip
    assert last["finish_command"] == printed["finish_command"]
    assert "--only-failed" in last["finish_command"]

    # Appended: the next run's events follow; one with nothing to do says so too.
    with engine.begin() as conn:
        conn.exec_driver_sql('DROP TABLE "bad".locations')
        conn.exec_driver_sql('CREATE SCHEMA "gone"')
    again = run_cli(
        "upgrade", "--all-tenants", "--only-failed", "--events", str(events_file),
        url=database_url,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr  # "gone" is migrated from base
    idle = run_cli("upgrade", "--tenant", "alpha", "--events", str(events_file), url=database_url)
    assert idle.returncode == 0, idle.stderr
    events = _events(events_file.read_text())
    runs = [e for e in events if e["event"] in ("run_started", "run_finished")]
    assert [e["event"] for e in runs] == ["run_started", "run_finished"] * 3
    assert runs[2]["selection"]["only_failed"] is True and runs[2]["tenants"] == 3
    assert runs[3]["counts"]["ok"] == 3 and runs[3]["exit_code"] == 0
    assert runs[4]["run_id"] is None and runs[4]["tenants"] == 0  # nothing to do: not recorded
    assert runs[5]["exit_code"] == 0 and runs[5]["counts"]["skipped"] == 1


def test_events_on_standard_output_as_they_happen(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, ["one", "two"], "001_initial_schema")
    env = {"TENANTMIG_DATABASE_URL": database_url}
    with engine.connect() as blocker:
        blocker.exec_driver_sql('LOCK TABLE "two".inventory_items IN ACCESS SHARE MODE')
        process = subprocess.Popen(
            [sys.executable, "-m", "tenantmig", "--config", str(CONFIG), "upgrade",
             "--all-tenants", "--jobs", "1", "--lock-timeout", "60", "--events", "-"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            env={**os.environ, **env},
        )  # fmt: skip
        assert process.stdout is not None
        # While "two" waits for the lock, its tenant_started is already out: lines are
        # flushed as they happen, not when the run ends.
        seen = []
        while not any(e["event"] == "tenant_started" and e["tenant"] == "two" for e in seen):
            line = process.stdout.readline()
            assert line, process.stderr.read() if process.stderr else ""
            seen.extend(_events(line))
        assert process.poll() is None  # still running, blocked
        blocker.rollback()
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    events = seen + _events(out)  # standard output holds events only
    assert [e["event"] for e in events][-1] == "run_finished"
    run_id = events[0]["run_id"]
    assert f"run {run_id} (upgrade head): 2 tenant(s): 2 ok" in err  # the summary, on stderr
    assert {e["tenant"] for e in _of(events, "tenant_finished")} == {"one", "two"}


def test_bad_event_destinations_change_nothing(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, ["one"], "001_initial_schema")
    both = run_cli("upgrade", "--tenant", "one", "--events", "-", "--json", url=database_url)
    assert both.returncode == 1 and "--events - and --json" in both.stderr
    nowhere = run_cli(
        "upgrade", "--tenant", "one", "--events", str(tmp_path / "no" / "e.jsonl"),
        url=database_url,
    )  # fmt: skip
    assert nowhere.returncode == 1 and "no directory" in nowhere.stderr, nowhere.stderr
    with engine.connect() as conn:
        assert conn.exec_driver_sql('SELECT version_num FROM "one".alembic_version').scalar() == (
            "001_initial_schema"
        )
    # A destination that breaks mid-run (a full disk): a warning, the run's own exit code.
    full = run_cli("upgrade", "--tenant", "one", "--events", "/dev/full", url=database_url)
    assert full.returncode == 0, full.stderr
    assert "event stream broke" in full.stderr and "not written" in full.stderr


def test_events_in_alembic_ini_relative_to_it(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, ["one"], "001_initial_schema")
    config = tmp_path / "alembic.ini"
    text = CONFIG.read_text().replace("[DEFAULT]\n", "[DEFAULT]\nevents = logs/events.jsonl\n", 1)
    # The chains' script_location is relative to the ini (%(here)s): keep the repository's.
    config.write_text(text.replace("%(here)s", str(CONFIG.parent)))
    (tmp_path / "logs").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "tenantmig", "--config", str(config), "upgrade", "--tenant", "one"],
        capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "TENANTMIG_DATABASE_URL": database_url},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    events = _events((tmp_path / "logs" / "events.jsonl").read_text())
    assert events[0]["event"] == "run_started"
    assert _of(events, "tenant_finished")[0]["status"] == "ok"


class _Broken(api.QuietObserver):
    def __init__(self) -> None:
        self.calls = 0

    def outcome(self, outcome: TenantOutcome, execution: object) -> None:
        self.calls += 1
        raise RuntimeError("the observer's own bug")


def test_an_observer_that_raises_never_changes_the_run(
    settings: Settings, engine: sa.Engine
) -> None:
    make_tenants(settings, ["a", "b", "c"], "001_initial_schema")
    broken = _Broken()
    result = api.upgrade(
        settings, api.Selection.all_tenants(), options=api.RunOptions(jobs=2), observer=broken
    )
    assert result.succeeded and result.count(TenantStatus.OK) == 3
    assert broken.calls == 1  # switched off after its first failure
    with engine.connect() as conn:
        statuses = conn.execute(
            sa.text(
                "SELECT status, count(*) FROM tenantmig_run_tenants WHERE run_id = :id "
                "GROUP BY status"
            ),
            {"id": result.run_id},
        ).all()
    assert dict(statuses) == {"ok": 3}
