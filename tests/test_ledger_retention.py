"""`tenantmig runs prune` and ledger_keep_days: old finished runs go; what --only-failed and
status rely on stays; nothing is removed without confirmation."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from tenantmig import api
from tenantmig.run.ledger import Ledger
from tenantmig.run.results import RunOutcome, RunScope, TenantOutcome, TenantStatus
from tenantmig.run.retention import Retention
from tenantmig.server.config import Settings, load_settings
from tests.helpers import CONFIG, TENANT_HEAD, run_cli
from tests.test_engine import make_tenants

OK, FAILED = TenantStatus.OK, TenantStatus.FAILED


def _run(
    engine: sa.Engine,
    command: str,
    scope: RunScope,
    rows: dict[str, TenantStatus],
    *,
    days_ago: float,
    outcome: RunOutcome = RunOutcome.SUCCEEDED,
) -> int:
    with engine.connect() as conn:
        ledger = Ledger(conn, "public")
        ledger.ensure()
        run_id = ledger.start_run(command, scope, "head", {})
        ledger.record(
            run_id, [TenantOutcome(name, name, status, None, None) for name, status in rows.items()]
        )
        if outcome is not RunOutcome.RUNNING:
            ledger.finish_run(run_id, outcome, {})
        with conn.begin():
            conn.execute(
                sa.text(
                    "UPDATE tenantmig_runs SET started_at = now() - make_interval(secs => :s)"
                    " WHERE id = :id"
                ),
                {"s": days_ago * 86400, "id": run_id},
            )
    return run_id


def _runs(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT id FROM tenantmig_runs ORDER BY id")).scalars())


def _rows(engine: sa.Engine, run_id: int) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM tenantmig_run_tenants WHERE run_id = :id"),
                {"id": run_id},
            ).scalar_one()
        )


def _ledger(engine: sa.Engine) -> dict[str, int]:
    old = 100
    return {
        "r1": _run(engine, "upgrade", RunScope.TENANTS, {"a": OK, "b": OK, "c": OK}, days_ago=old),
        # b's latest row says it failed: kept while nothing later says otherwise.
        "r2": _run(engine, "upgrade", RunScope.TENANTS, {"a": OK, "b": FAILED}, days_ago=old),
        "r3": _run(engine, "upgrade", RunScope.SHARED, {}, days_ago=old),  # latest shared
        "r4": _run(engine, "downgrade", RunScope.TENANTS, {"a": OK}, days_ago=old),  # latest
        "r5": _run(engine, "upgrade", RunScope.TENANTS, {"a": OK, "c": OK}, days_ago=old),
        "r6": _run(  # killed: abandoned, --only-failed finishes it
            engine,
            "upgrade",
            RunScope.TENANTS,
            {"c": OK},
            days_ago=old,
            outcome=RunOutcome.RUNNING,
        ),
        "r7": _run(engine, "upgrade", RunScope.TENANTS, {"a": OK}, days_ago=1),  # young
    }


def test_prune_removes_old_finished_runs_and_keeps_what_recovery_needs(
    settings: Settings, engine: sa.Engine
) -> None:
    runs = _ledger(engine)
    before = _runs(engine)
    planned = api.prune_runs(settings, Retention(older_than_days=30), dry_run=True)
    assert planned.dry_run and planned.removed_runs == [runs["r1"], runs["r5"]]
    assert planned.removed_rows == 5
    assert planned.kept == {
        "the latest run of a tenant it left unfinished": 1,
        "the latest run of its kind": 2,
        "running or abandoned": 1,
    }
    assert _runs(engine) == before  # a dry run removes nothing

    done = api.prune_runs(settings, Retention(older_than_days=30))
    assert done.removed_runs == [runs["r1"], runs["r5"]] and done.removed_rows == 5
    assert _runs(engine) == [runs[k] for k in ("r2", "r3", "r4", "r6", "r7")]
    assert _rows(engine, runs["r1"]) == 0 and _rows(engine, runs["r2"]) == 2  # cascaded
    # Once b's failure is followed by a finished row of b, r2 no longer holds anything.
    later = _run(engine, "upgrade", RunScope.TENANTS, {"b": OK}, days_ago=0)
    again = api.prune_runs(settings, Retention(older_than_days=30))
    assert again.removed_runs == [runs["r2"]]
    # --keep-last: the most recent N stay whatever their age; with an age, both must hold.
    kept = api.prune_runs(settings, Retention(older_than_days=30, keep_last=10))
    assert kept.removed_runs == []
    newest = api.prune_runs(settings, Retention(keep_last=1), dry_run=True)
    assert newest.removed_runs == [runs["r7"]]  # later is the last; r3, r4 latest of their kind
    assert later in _runs(engine)


def test_runs_prune_on_the_command_line_asks_first(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    runs = _ledger(engine)
    before = _runs(engine)
    refused = run_cli("runs", "prune", "--older-than", "30d", url=database_url)
    assert refused.returncode == 1, refused.stderr
    assert "remove 2 run(s) older than 30 day(s) and their 5 tenant row(s)" in refused.stderr
    assert "add --yes" in refused.stderr and _runs(engine) == before
    for bad in (["--older-than", "soon"], ["--older-than", "0d"], []):
        done = run_cli("runs", "prune", "--yes", *bad, url=database_url)
        assert done.returncode == 1 and "tenantmig: error:" in done.stderr, done.stderr
        assert _runs(engine) == before
    dry = run_cli("runs", "prune", "--older-than", "4w", "--dry-run", "--json", url=database_url)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["run_ids"] == [runs["r1"], runs["r5"]]
    done = run_cli("runs", "prune", "--older-than", "720h", "--yes", url=database_url)
    assert done.returncode == 0, done.stderr
    assert "removed 2 run(s) older than 30 day(s) and 5 tenant row(s)" in done.stdout
    assert "kept 1 run(s): running or abandoned" in done.stdout
    assert runs["r1"] not in _runs(engine) and runs["r2"] in _runs(engine)


def test_ledger_keep_days_prunes_after_every_all_tenants_run(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, ["a", "b"], "001_initial_schema")
    runs = _ledger(engine)
    config = tmp_path / "alembic.ini"
    text = CONFIG.read_text().replace("[shared]\n", "[shared]\nledger_keep_days = 30\n", 1)
    config.write_text(text.replace("%(here)s", str(CONFIG.parent)))
    project = load_settings(config_file=str(config), database_url=database_url)
    assert project.ledger_keep_days == 30
    result = api.upgrade(project, api.Selection.all_tenants(), TENANT_HEAD)
    assert result.succeeded, result.to_json()
    # r1 and r5, and r2: b's failure there is followed by this run's row for b.
    assert any("pruned 3 run(s) older than 30 day(s)" in n for n in result.notices), result.notices
    left = _runs(engine)
    assert not {runs["r1"], runs["r2"], runs["r5"]} & set(left) and result.run_id in left
    config.write_text(text.replace("ledger_keep_days = 30", "ledger_keep_days = soon"))
    bad = run_cli("--config", str(config), "status", url=database_url)
    assert bad.returncode == 1 and "ledger_keep_days" in bad.stderr, bad.stderr
