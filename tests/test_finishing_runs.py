"""Every run can be finished by the command it prints, and nothing moves further than it meant.

A run resolves each tenant's target at its start and records it; the printed finishing command
(the run's own command with --only-failed) moves exactly the tenants it did not finish, to those
targets. Re-running a relative target while such a run is unfinished is refused.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
from pathlib import Path

import sqlalchemy as sa

from tenantmig import api
from tenantmig.server.config import Settings, load_settings
from tests.helpers import TENANT_HEAD, project_with, run_cli, start_cli, version
from tests.test_engine import make_tenants
from tests.test_signals import wait_for, waiting_lock_requests

# 004 adds a flag; its downgrade fails in a tenant holding a user flagged 'keep'.
FLAG = '''"""A flag on users whose removal a tenant can block (a test revision)."""

import sqlalchemy as sa
from alembic import op

revision = "004_flag"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("flag", sa.Text(), nullable=True))


def downgrade() -> None:
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM users WHERE flag = 'keep') THEN "
        "RAISE EXCEPTION 'a user is flagged keep'; END IF; END $$"
    )
    op.drop_column("users", "flag")
'''
# 005's upgrade fails in a tenant holding a user flagged 'hold'.
GATE = '''"""An upgrade a tenant can block (a test revision)."""

from alembic import op

revision = "005_gate"
down_revision = "004_flag"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM users WHERE flag = 'hold') THEN "
        "RAISE EXCEPTION 'a user is flagged hold'; END IF; END $$"
    )
    op.create_table("gated", sa_column())


def downgrade() -> None:
    op.drop_table("gated")


def sa_column():  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

    return sa.Column("id", sa.Integer())
'''


def _project(tmp_path: Path, database_url: str) -> tuple[Path, Settings]:
    config = project_with(tmp_path, {"004_flag.py": FLAG, "005_gate.py": GATE})
    return config, load_settings(config_file=config, database_url=database_url, home=tmp_path)


def _flag(engine: sa.Engine, tenant: str, flag: str | None) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DELETE FROM "{tenant}".users')
        if flag is not None:
            conn.exec_driver_sql(
                f"INSERT INTO \"{tenant}\".users (email, flag) VALUES ('x@example.com', %s)",
                (flag,),
            )


def _cli(config: Path, url: str, *args: str) -> tuple[int, str, str]:
    done = run_cli("--config", str(config), *args, url=url)
    return done.returncode, done.stdout, done.stderr


def _printed_command(output: str) -> list[str]:
    """The finishing command the run printed, as arguments for ``tenantmig``."""
    lines = output.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("to finish this run"))
    words = shlex.split(lines[at + 1])
    assert words[0] == "tenantmig"
    return words[1:]


def test_a_failed_relative_downgrade_is_finished_by_its_printed_command_and_no_further(
    settings: Settings, database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    config, project = _project(tmp_path, database_url)
    tenants = ["a1", "a2", "a3", "a4"]
    make_tenants(project, tenants, "005_gate")
    _flag(engine, "a2", "keep")  # blocks a2's step from 004 down to 003 (the second step)
    first = _cli(config, database_url, "downgrade", "--all-tenants", "-1", "--yes")
    assert first[0] == 0, first  # 005 -> 004 everywhere: nothing to block yet
    code, out, err = _cli(config, database_url, "downgrade", "--all-tenants", "-1", "--yes")
    assert code == 3, err
    assert {t: version(engine, t) for t in tenants} == {
        "a1": TENANT_HEAD,
        "a2": "004_flag",
        "a3": TENANT_HEAD,
        "a4": TENANT_HEAD,
    }
    finish = _printed_command(out)
    assert finish[-1] == "--only-failed" and "-1" in finish and "downgrade" in finish

    # The same command again would take a1, a3, a4 a second step: refused, nothing changes.
    code, _, again_err = _cli(config, database_url, "downgrade", "--all-tenants", "-1", "--yes")
    assert code == 1 and "did not finish for 1 tenant(s)" in again_err, again_err
    assert version(engine, "a1") == TENANT_HEAD
    # The old advice (an upgrade with --only-failed) does nothing here: another kind of run.
    assert _cli(config, database_url, "upgrade", "--all-tenants", "--only-failed")[0] == 0
    assert version(engine, "a2") == "004_flag"

    _flag(engine, "a2", None)  # the cause, fixed
    done = run_cli(*finish, url=database_url)
    assert done.returncode == 0, done.stderr
    # a2 took the step the first run meant for it; nobody else moved.
    assert {version(engine, t) for t in tenants} == {TENANT_HEAD}
    assert "registered during this run" not in done.stdout
    assert "to finish this run" not in done.stdout
    # Finished: the relative command is allowed again, and takes everyone one more step.
    code, _, err = _cli(config, database_url, "downgrade", "--all-tenants", "-1", "--yes")
    assert code == 0, err
    assert {version(engine, t) for t in tenants} == {"001_initial_schema"}


def test_a_failed_relative_upgrade_of_named_tenants_is_finished_to_its_recorded_target(
    settings: Settings, database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    config, project = _project(tmp_path, database_url)
    make_tenants(project, ["n1", "n2", "n3"], "004_flag")
    _flag(engine, "n2", "hold")  # blocks 004 -> 005 in n2
    code, out, err = _cli(
        config, database_url, "upgrade", "--tenant", "n1", "--tenant", "n2", "+1", "--json"
    )
    assert code == 3, err
    document = json.loads(out)
    finish = shlex.split(document["finish_command"])[1:]
    assert version(engine, "n1") == "005_gate" and version(engine, "n2") == "004_flag"
    # Meanwhile n2 is moved down by hand: +1 from there would be 004, but the run meant 005.
    assert _cli(config, database_url, "downgrade", "--tenant", "n2", TENANT_HEAD, "--yes")[0] == 0
    _flag(engine, "n2", None)
    done = run_cli(*finish, url=database_url)
    assert done.returncode == 0, done.stderr
    assert version(engine, "n2") == "005_gate"  # the target recorded for it, not +1 from now
    assert version(engine, "n1") == "005_gate" and version(engine, "n3") == "004_flag"


def test_a_target_past_either_end_is_refused_before_anything_changes(
    settings: Settings, database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    config, project = _project(tmp_path, database_url)
    make_tenants(project, ["e1", "e2"], "004_flag")
    code, _, err = _cli(config, database_url, "upgrade", "--tenant", "e1", "+99")
    assert code == 1 and "past the ends" in err and "e1 (at 004_flag)" in err, err
    code, _, err = _cli(config, database_url, "downgrade", "--all-tenants", "-9")
    assert code == 1 and "for 2 tenant(s)" in err, err
    assert version(engine, "e1") == version(engine, "e2") == "004_flag"
    runs = json.loads(_cli(config, database_url, "runs", "--json")[1])
    assert all(r["target"] not in ("+99", "-9") for r in runs)  # not even recorded


def test_an_interrupted_run_is_finished_by_its_printed_command(
    settings: Settings, database_url: str, engine: sa.Engine
) -> None:
    tenants = [f"i{n}" for n in range(6)]
    make_tenants(settings, tenants, "001_initial_schema")
    with engine.connect() as blocker:
        blocker.exec_driver_sql('LOCK TABLE "i0".inventory_items IN ACCESS SHARE MODE')
        run = start_cli(
            "upgrade",
            "--all-tenants",
            "--jobs",
            "1",
            "--lock-timeout",
            "60",
            url=database_url,
            new_session=True,
        )
        wait_for(lambda: waiting_lock_requests(engine) == 1)
        os.killpg(run.pid, signal.SIGTERM)
        blocker.rollback()
        out, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    finish = _printed_command(out)
    assert finish[-1] == "--only-failed"
    assert version(engine, "i0") == TENANT_HEAD  # in flight: committed
    assert [version(engine, t) for t in tenants[1:]] == ["001_initial_schema"] * 5
    done = run_cli(*finish, url=database_url)
    assert done.returncode == 0, done.stderr
    assert {version(engine, t) for t in tenants} == {TENANT_HEAD}
    shown = json.loads(run_cli("runs", "--json", url=database_url).stdout)
    assert shown[0]["totals"]["ok"] == 5 and shown[0]["totals"]["total"] == 5
    assert api.upgrade(settings, api.Selection.all_tenants()).succeeded
