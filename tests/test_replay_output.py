"""What a run says about replay, and whose stdout it is: tenantmig's, even when migrations print."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from tenantmig import api
from tenantmig.server.config import Settings
from tests.helpers import REPO, TENANT_HEAD, project_with, run_cli, run_in_terminal, version
from tests.test_engine import make_tenants

PRINTING = (REPO / "tests" / "corpus" / "c27_prints.py").read_text()

READING = '''"""Reads data to decide (not replayable)."""

import sqlalchemy as sa
from alembic import op

revision = "004_reads"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().execute(sa.text("SELECT count(*) FROM users")).scalar():
        op.create_index("ix_users_full_name", "users", ["full_name"])


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_users_full_name")
'''


def _mixed_tenants(settings: Settings) -> None:
    """Tenants at head, at the first revision and fresh: three different steps to compile."""
    make_tenants(settings, ["h1", "h2", "o1", "o2", "f1", "f2"])
    for names, revision in ((["h1", "h2"], TENANT_HEAD), (["o1", "o2"], "001_initial_schema")):
        assert api.upgrade(settings, api.Selection.named(names), revision).succeeded


def test_json_is_one_document_when_migrations_print(
    settings: Settings, database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    _mixed_tenants(settings)
    config = project_with(tmp_path, {"c27_prints.py": PRINTING})
    log = tmp_path / "run.log"
    for extra in (["--jobs", "2"], ["--jobs", "1"], ["--no-replay", "--jobs", "2"]):
        if extra[0] == "--no-replay":  # back down, to print again
            down = run_cli(
                "downgrade",
                "--all-tenants",
                TENANT_HEAD,
                "--config",
                str(config),
                "--json",
                "--yes",
                url=database_url,
            )
            assert down.returncode == 0, down.stderr
            json.loads(down.stdout)
        run = run_cli(
            "upgrade",
            "--all-tenants",
            "--config",
            str(config),
            "--json",
            "--log-file",
            str(log),
            *extra,
            url=database_url,
        )
        assert run.returncode == 0, run.stderr
        document = json.loads(run.stdout)  # nothing but the JSON document on stdout
        assert document["totals"]["total"] == 6
        assert "c27:" not in run.stdout and "c27:" not in run.stderr
        if extra == ["--jobs", "2"]:
            replayed = {
                t["name"]: t["replayed"] for t in document["tenants"] if t["status"] == "ok"
            }
            assert set(replayed.values()) == {True}, document
    assert version(engine, "o1") == "c27_prints"
    text = log.read_text()
    assert "migration output: c27: creating the archive table" in text
    assert "tenant=h1" in text


def test_migration_output_is_shown_on_a_terminal(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, ["t1"], TENANT_HEAD)
    config = project_with(tmp_path, {"c27_prints.py": PRINTING})
    code, seen = run_in_terminal("upgrade", "--all-tenants", url=database_url, config=config)
    assert code == 0, seen
    assert "t1: c27: creating the archive table" in seen, seen


def test_a_step_that_cannot_be_replayed_is_reported_once_and_not_compiled_again(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    _mixed_tenants(settings)
    config = project_with(tmp_path, {"004_reads.py": READING})
    run = run_cli("upgrade", "--all-tenants", "--config", str(config), "--json", url=database_url)
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert {t["status"] for t in document["tenants"]} == {"ok"}
    # The steps from base and from 001 are split around the revision that reads: what comes
    # before it is replayed. The step that is only that revision runs through Alembic.
    replayed = {t["name"]: t["replayed"] for t in document["tenants"]}
    assert replayed == {"h1": False, "h2": False, "o1": True, "o2": True, "f1": True, "f2": True}
    split = [n for n in document["notices"] if "is split" in n]
    alembic = [n for n in document["notices"] if "runs through Alembic" in n]
    assert len(split) == 2 and len(alembic) == 1, document["notices"]  # one per step
    # The revision by id and title, the statement that read, and what its author can do.
    named = 'revision 004_reads "Reads data to decide (not replayable)."'
    assert alembic[0].startswith(named) and all(named in n for n in split), document["notices"]
    notices = [*split, *alembic]
    assert all("reads from the database (SELECT count(*) FROM users)" in n for n in notices)
    assert all("do the work in SQL alone" in n for n in notices), notices
    assert "not compiled again" in alembic[0]
    shown = run_cli(
        "runs", "show", str(document["run_id"]), "--config", str(config), url=database_url
    )
    assert " alembic " in shown.stdout and " replay " in shown.stdout
