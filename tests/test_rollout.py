"""Rollouts in waves against a real PostgreSQL: gates, pause, resume, cancel, one rollout at a
time, a soak's drift check, Ctrl-C during a soak and SIGKILL of the coordinator mid-wave."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tenantmig.server.config import Settings
from tests.helpers import CONFIG, REPO, run_cli, run_in_terminal
from tests.test_engine import make_tenants
from tests.test_events import _events
from tests.test_notifications import _Receiver, _receiver

HEAD = "003_add_inventory_tracking"
OLD = "001_initial_schema"


def _versions(engine: sa.Engine, names: list[str]) -> dict[str, str | None]:
    with engine.connect() as conn:
        return {
            n: conn.exec_driver_sql(f'SELECT version_num FROM "{n}".alembic_version').scalar()
            for n in names
        }


def _show(database_url: str, run_id: int) -> dict[str, Any]:
    done = run_cli("runs", "show", str(run_id), "--json", url=database_url)
    assert done.returncode == 0, done.stderr
    shown: dict[str, Any] = json.loads(done.stdout)
    return shown


def _ok_rows(engine: sa.Engine, run_id: int) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT tenant, count(*) FILTER (WHERE status = 'ok') AS ok "
                "FROM tenantmig_run_tenants WHERE run_id = :id GROUP BY tenant"
            ),
            {"id": run_id},
        ).all()
    return {r.tenant: r.ok for r in rows}


def test_a_failing_canary_stops_the_rollout_and_resume_finishes_it(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    tenants = ["c1", "c2", *(f"t{i}" for i in range(6))]
    make_tenants(settings, tenants, OLD)
    run_cli("tenants", "label", "c1", "c2", "--add", "canary", url=database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql('CREATE TABLE "c2".locations (id int)')  # 003 fails there
    # Bad specs change nothing.
    for spec, message in (("110%", "between 0% and 100%"), ("label:nobody", "would be empty")):
        done = run_cli("upgrade", "--all-tenants", "--waves", spec, url=database_url)
        assert done.returncode == 1 and message in done.stderr, done.stderr
    assert run_cli("runs", "--json", url=database_url).stdout.strip() != "[]"  # make_tenants'

    done = run_cli(
        "upgrade", "--all-tenants", "--waves", "label:canary,50%,rest", "--jobs", "1", "--json",
        url=database_url,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    result = json.loads(done.stdout)
    run_id = result["run_id"]
    assert [(w["spec"], w["tenants"], w["state"]) for w in result["waves"]] == [
        ("label:canary", 2, "stopped"), ("50%", 4, "not_started"), ("rest", 2, "not_started"),
    ]  # fmt: skip
    assert "wave 1 of 3 (label:canary) had 1 failure(s)" in result["halted"]
    assert result["finish_command"].endswith(f"runs resume {run_id}")
    statuses = {t["name"]: t["status"] for t in result["tenants"]}
    assert statuses["c1"] == "ok" and statuses["c2"] == "failed"
    assert all(statuses[t] == "not_run" for t in tenants[2:])
    assert _versions(engine, tenants[2:]) == dict.fromkeys(tenants[2:], OLD)  # untouched
    shown = _show(database_url, run_id)
    assert shown["outcome"] == "failed" and "the rollout stopped" in shown["reason"]
    assert [w["state"] for w in shown["waves"]] == ["unfinished", "not_started", "not_started"]
    text = run_cli("runs", "show", str(run_id), url=database_url).stdout
    assert "label:canary" in text and "1 failed, 1 ok" in text

    # One rollout at a time: another all-tenants run is refused, a one-tenant run is not.
    for args in (["--waves", "rest"], []):
        refused = run_cli("upgrade", "--all-tenants", *args, url=database_url)
        assert refused.returncode == 4, refused.stderr
        assert f"rollout run {run_id} (upgrade head) is failed" in refused.stderr
        assert (
            f"runs resume {run_id}" in refused.stderr and f"runs cancel {run_id}" in refused.stderr
        )
    single = run_cli("upgrade", "--tenant", "t0", url=database_url)
    assert single.returncode == 0, single.stderr

    with engine.begin() as conn:
        conn.exec_driver_sql('DROP TABLE "c2".locations')  # the cause, fixed
    events = tmp_path / "events.jsonl"
    resumed = run_cli(
        "runs", "resume", str(run_id), "--json", "--events", str(events), url=database_url
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    again = json.loads(resumed.stdout)
    streamed = _events(events.read_text())  # a resume reports like the run it is
    assert streamed[0]["event"] == "run_started" and streamed[0]["run_id"] == run_id
    assert [e["wave"] for e in streamed if e["event"] == "wave_finished"] == [1, 2, 3]
    assert again["run_id"] == run_id and again["finish_command"] is None
    assert [w["state"] for w in again["waves"]] == ["finished"] * 3
    assert _versions(engine, tenants) == dict.fromkeys(tenants, HEAD)
    shown = _show(database_url, run_id)
    assert shown["outcome"] == "succeeded"
    assert [w["state"] for w in shown["waves"]] == ["finished"] * 3
    rows = _ok_rows(engine, run_id)
    assert rows["t0"] == 0  # migrated by the one-tenant run meanwhile: skipped, not moved twice
    assert all(rows[t] == 1 for t in tenants if t != "t0")
    assert run_cli("upgrade", "--all-tenants", url=database_url).returncode == 0  # allowed again


def test_pause_after_each_wave_resume_across_processes_and_cancel(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    tenants = [f"p{i}" for i in range(4)]
    make_tenants(settings, tenants, OLD)
    config = tmp_path / "alembic.ini"
    config.write_text(
        CONFIG.read_text().replace("%(here)s", str(CONFIG.parent))
        + "\n[rollout]\nwaves = 1,1\npause_after_wave = true\n"
    )
    events = tmp_path / "events.jsonl"
    done = run_cli(
        "--config", str(config), "upgrade", "--all-tenants", "--jobs", "1",
        "--events", str(events), url=database_url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "rollout paused after wave 1 of 3 (1); next: wave 2 of 3 (1)" in done.stdout
    run_id = int(done.stdout.split("run ", 1)[1].split(" ", 1)[0])
    assert f"runs resume {run_id}" in done.stdout and f"runs cancel {run_id}" in done.stdout
    waves = _events(events.read_text())  # each checked against docs/events.schema.json
    assert [e["wave"] for e in waves if e["event"] == "wave_finished"] == [1]
    assert _show(database_url, run_id)["outcome"] == "paused"
    assert sorted(_versions(engine, tenants).values()).count(HEAD) == 1

    second = run_cli("runs", "resume", str(run_id), url=database_url)  # another process
    assert second.returncode == 0, second.stderr
    assert "paused after wave 2 of 3" in second.stdout
    assert sorted(_versions(engine, tenants).values()).count(HEAD) == 2

    cancelled = run_cli("runs", "cancel", str(run_id), url=database_url)
    assert cancelled.returncode == 0 and "cancelled by" in cancelled.stdout, cancelled.stderr
    assert _show(database_url, run_id)["outcome"] == "cancelled"
    assert run_cli("runs", "resume", str(run_id), url=database_url).returncode == 1
    # Cancelled: its tenants stay where they are, and a new run may start (--no-waves: the
    # file's [rollout] is for every all-tenants run otherwise).
    assert sorted(_versions(engine, tenants).values()).count(HEAD) == 2
    done = run_cli("--config", str(config), "upgrade", "--all-tenants", "--no-waves",
                   url=database_url)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _versions(engine, tenants) == dict.fromkeys(tenants, HEAD)


def test_a_soak_finds_drift_and_stops_the_rollout(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    make_tenants(settings, ["s1", "s2", "s3"], OLD)
    run_cli("tenants", "label", "s1", "--add", "canary", url=database_url)
    with engine.begin() as conn:  # not made by any migration: drift once s1 is at head
        conn.exec_driver_sql('CREATE TABLE "s1".hand_made (id int)')
    with _receiver("ok") as hook:
        done = run_cli(
            "upgrade", "--all-tenants", "--waves", "label:canary,rest", "--soak", "0.2",
            "--jobs", "1", "--json", "--notify", hook, "--notify-format", "slack",
            url=database_url,
        )  # fmt: skip
    assert done.returncode == 3, done.stderr
    (sent,) = _Receiver.bodies  # the notification says the rollout stopped, and how to go on
    assert "rollout stopped: drift found" in str(sent["text"]) and "runs resume" in str(
        sent["text"]
    )
    result = json.loads(done.stdout)
    assert "drift found after the 0.2s soak after wave 1 of 2" in result["halted"]
    assert "s1" in result["halted"]
    assert _versions(engine, ["s1", "s2", "s3"]) == {"s1": HEAD, "s2": OLD, "s3": OLD}


def test_ctrl_c_during_a_soak_leaves_a_paused_run(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, ["k1", "k2"], OLD)
    events = tmp_path / "events.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "tenantmig", "--config", str(CONFIG), "upgrade", "--all-tenants",
         "--waves", "1,rest", "--soak", "120", "--jobs", "1", "--events", str(events)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "TENANTMIG_DATABASE_URL": database_url},
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while '"wave_finished"' not in (events.read_text() if events.exists() else ""):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted during the 120s soak after wave 1 of 2" in out
    run_id = int(out.split("run ", 1)[1].split(" ", 1)[0])
    assert _show(database_url, run_id)["outcome"] == "paused"
    resumed = run_cli("runs", "resume", str(run_id), url=database_url)
    assert resumed.returncode == 0, resumed.stderr
    assert _versions(engine, ["k1", "k2"]) == {"k1": HEAD, "k2": HEAD}


def test_sigkill_of_the_coordinator_mid_wave_then_resume(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    tenants = [f"w{i}" for i in range(5)]
    make_tenants(settings, tenants, OLD)
    events = tmp_path / "events.jsonl"
    with engine.connect() as blocker:
        # The first tenant to start waits for this lock: the coordinator is killed meanwhile.
        blocker.exec_driver_sql(
            "LOCK TABLE "
            + ", ".join(f'"{t}".inventory_items' for t in tenants)
            + " IN ACCESS SHARE MODE"
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "tenantmig", "--config", str(CONFIG), "upgrade",
             "--all-tenants", "--waves", "2,rest", "--jobs", "1", "--lock-timeout", "60",
             "--events", str(events)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            env={**os.environ, "TENANTMIG_DATABASE_URL": database_url},
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while '"tenant_started"' not in (events.read_text() if events.exists() else ""):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.1)
        process.kill()  # SIGKILL: nothing of the coordinator runs after this
        process.communicate(timeout=30)
        blocker.rollback()
    started = [json.loads(line) for line in events.read_text().splitlines()]
    run_id = started[0]["run_id"]
    assert _show(database_url, run_id)["outcome"] == "abandoned"
    assert _versions(engine, tenants) == dict.fromkeys(tenants, OLD)  # rolled back with it
    refused = run_cli("upgrade", "--all-tenants", url=database_url)
    assert refused.returncode == 4 and "is abandoned" in refused.stderr, refused.stderr
    resumed = run_cli("runs", "resume", str(run_id), "--json", url=database_url)
    assert resumed.returncode == 0, resumed.stderr
    assert _versions(engine, tenants) == dict.fromkeys(tenants, HEAD)
    assert _ok_rows(engine, run_id) == dict.fromkeys(tenants, 1)  # each once, none forgotten


def test_the_terminal_counts_the_whole_rollout(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    """On a terminal the bar and its last line count the run's tenants, not one wave's."""
    make_tenants(settings, ["v1", "v2", "v3", "v4"], OLD)
    code, seen = run_in_terminal(
        "upgrade", "--all-tenants", "--waves", "1,rest", "--jobs", "1", url=database_url
    )
    assert code == 0, seen
    assert "in 2 wave(s): 1 (1), rest (3)" in seen
    assert "4/4 done · 0 failed" in seen, seen
    assert "not started" not in seen and "/1 done" not in seen and "/3 done" not in seen
