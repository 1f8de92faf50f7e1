"""Tenant revisions with statements outside a transaction (CREATE INDEX CONCURRENTLY)."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from tenantmig.server.config import Settings
from tests.helpers import TENANT_HEAD, project_with, run_cli, version
from tests.test_engine import make_tenants

ADD_NICKNAME = '''"""users.nickname (an ordinary, transactional revision)."""
import sqlalchemy as sa
from alembic import op

revision = "004_nickname"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("nickname", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("users", "nickname")
'''

UNIQUE_FULL_NAME = '''"""A unique index on users.full_name, built without blocking writes."""
from tenantmig import ops

revision = "005_unique_full_name"
down_revision = "004_nickname"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ops.create_index_concurrently(
        "ix_users_full_name_unique", "users", ["full_name"], unique=True
    )


def downgrade() -> None:
    ops.drop_index_concurrently("ix_users_full_name_unique")
'''


def _index_state(engine: sa.Engine, schema: str) -> bool | None:
    """True valid, False INVALID, None absent."""
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"),
            {"name": f"{schema}.ix_users_full_name_unique"},
        ).scalar()


def test_concurrent_index_is_built_and_a_failed_build_is_flagged_then_repaired(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, ["clean1", "clean2", "dupes"], TENANT_HEAD)
    with engine.begin() as conn:
        for schema in ("clean1", "clean2", "dupes"):
            conn.execute(
                sa.text(
                    f"INSERT INTO {schema}.users (email, full_name) VALUES (:a, 'Ann'), (:b, :n)"
                ),
                {"a": "a@x", "b": "b@x", "n": "Ann" if schema == "dupes" else "Bob"},
            )
    revisions = {"004_nickname.py": ADD_NICKNAME, "005_unique.py": UNIQUE_FULL_NAME}
    config = str(project_with(tmp_path, revisions))

    done = run_cli("-c", config, "upgrade", "--all-tenants", "--json", url=database_url)
    assert done.returncode == 3, done.stderr
    outcomes = {o["name"]: o for o in json.loads(done.stdout)["tenants"]}
    for clean in ("clean1", "clean2"):
        assert outcomes[clean]["status"] == "ok", outcomes[clean]
        assert version(engine, clean) == "005_unique_full_name"
        assert _index_state(engine, clean) is True
    # dupes: 004 committed in its own transaction; the concurrent build of 005 failed on the
    # duplicate names and left an INVALID index, which PostgreSQL cannot roll back.
    dupes = outcomes["dupes"]
    assert dupes["status"] == "failed"
    assert (dupes["from"], dupes["to"]) == (TENANT_HEAD, "004_nickname")
    assert "needs attention" in dupes["error"] and "ix_users_full_name_unique" in dupes["error"]
    assert version(engine, "dupes") == "004_nickname"
    assert _index_state(engine, "dupes") is False

    status = json.loads(run_cli("-c", config, "status", "--json", url=database_url).stdout)
    states = {t["name"]: t for t in status["tenants"]}
    assert states["dupes"]["state"] == "needs_attention"
    assert states["dupes"]["invalid_indexes"] == ["ix_users_full_name_unique"]
    assert states["clean1"]["state"] == "current" and states["clean1"]["invalid_indexes"] == []
    drift = run_cli("-c", config, "drift", "--json", url=database_url)
    assert drift.returncode == 2
    drifted = {d["name"]: d for d in json.loads(drift.stdout)["drifted"]}
    assert set(drifted) == {"dupes"}
    invalid = drifted["dupes"]["differences"][-1]
    assert (invalid["kind"], invalid["object"], invalid["change"]) == (
        "index",
        "ix_users_full_name_unique",
        "invalid",
    )

    # Fix the data; the re-run replaces the INVALID leftover and builds a valid index.
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE dupes.users SET full_name = 'Bea' WHERE email = 'b@x'"))
    again = run_cli("-c", config, "upgrade", "--all-tenants", "--json", url=database_url)
    assert again.returncode == 0, again.stdout + again.stderr
    assert version(engine, "dupes") == "005_unique_full_name"
    assert _index_state(engine, "dupes") is True
    assert run_cli("-c", config, "drift", url=database_url).returncode == 0

    # Downgrades go through the autocommit path too.
    down = run_cli(
        "-c", config, "downgrade", "--all-tenants", TENANT_HEAD, "--yes", url=database_url
    )
    assert down.returncode == 0, down.stderr
    assert all(version(engine, t) == TENANT_HEAD for t in ("clean1", "clean2", "dupes"))
    assert all(_index_state(engine, t) is None for t in ("clean1", "clean2", "dupes"))


def test_concurrent_index_build_blocked_by_a_writer_gives_up_after_lock_timeout(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    """CREATE INDEX CONCURRENTLY waits for every transaction writing to the table; a long one
    must not hang the run. The wait is bounded by lock_timeout, the INVALID index the build
    leaves is reported, and a re-run replaces it."""
    make_tenants(settings, ["busy"], TENANT_HEAD)
    revisions = {"004_nickname.py": ADD_NICKNAME, "005_unique.py": UNIQUE_FULL_NAME}
    config = str(project_with(tmp_path, revisions))
    first = run_cli("-c", config, "upgrade", "--all-tenants", "004_nickname", url=database_url)
    assert first.returncode == 0, first.stderr
    with engine.connect() as writer:
        writer.execute(sa.text("UPDATE busy.users SET full_name = full_name"))  # open writer
        done = run_cli(
            *("-c", config, "upgrade", "--all-tenants", "--lock-timeout", "0.5", "--json"),
            url=database_url,
        )
        writer.rollback()
    assert done.returncode == 3, done.stderr
    outcome = json.loads(done.stdout)["tenants"][0]
    assert "lock timeout" in outcome["error"] and "needs attention" in outcome["error"]
    assert version(engine, "busy") == "004_nickname"
    assert _index_state(engine, "busy") is False
    again = run_cli("-c", config, "upgrade", "--all-tenants", url=database_url)
    assert again.returncode == 0, again.stdout + again.stderr
    assert version(engine, "busy") == "005_unique_full_name"
    assert _index_state(engine, "busy") is True


LEAVES_SESSION_STATE = '''"""Autocommit: checks no session state was left, then leaves some."""
from alembic import op

revision = "004_session_state"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        bind = op.get_bind()
        left = bind.exec_driver_sql(
            "SELECT current_setting('work_mem') = '7MB', current_user <> session_user,"
            " to_regclass('pg_temp.leftover') IS NOT NULL,"
            " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            "  AND pid = pg_backend_pid() AND objid = 4242) > 0"
        ).one()
        if any(left):
            raise RuntimeError(f"an earlier tenant left session state: {tuple(left)}")
        bind.exec_driver_sql(
            "INSERT INTO public.session_pids (schema, pid)"
            " VALUES (current_schema(), pg_backend_pid())"
        )
        bind.exec_driver_sql("SET work_mem = '7MB'")
        bind.exec_driver_sql("SET ROLE session_state_role")
        bind.exec_driver_sql("CREATE TEMP TABLE leftover (x int)")
        bind.exec_driver_sql("SELECT pg_advisory_lock(4242)")


def downgrade() -> None:
    pass
'''


def test_a_connection_kept_after_an_autocommit_tenant_carries_nothing_to_the_next(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    """After a tenant migrated a transaction per revision succeeds, its worker keeps the
    connection for the next tenant: the session lock, session-level settings, a SET ROLE and a
    temporary table a revision left are gone before the next tenant starts (the revision
    fails in any tenant that finds them), and the tenants did share one connection."""
    names = ["ss1", "ss2", "ss3"]
    make_tenants(settings, names, TENANT_HEAD)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP ROLE IF EXISTS session_state_role")
        conn.exec_driver_sql("CREATE ROLE session_state_role")
        conn.exec_driver_sql("GRANT session_state_role TO CURRENT_USER")
        conn.exec_driver_sql("CREATE TABLE public.session_pids (schema text, pid int)")
        conn.exec_driver_sql("GRANT ALL ON public.session_pids TO session_state_role")
        for name in names:  # the version row is written after the revision, under its role
            conn.exec_driver_sql(f"GRANT ALL ON SCHEMA {name} TO session_state_role")
            conn.exec_driver_sql(f"GRANT ALL ON ALL TABLES IN SCHEMA {name} TO session_state_role")
    config = str(project_with(tmp_path, {"004_session_state.py": LEAVES_SESSION_STATE}))
    try:
        done = run_cli("-c", config, "upgrade", "--all-tenants", "-j1", "--json", url=database_url)
        errors = [t["error"] for t in json.loads(done.stdout)["tenants"] if t["error"]]
        assert done.returncode == 0 and not errors, (errors, done.stderr)
        assert {version(engine, name) for name in names} == {"004_session_state"}
        with engine.connect() as conn:
            # (The compile's scratch walk runs the revision too, committed, on its own
            # connection: its rows are left out.)
            pids = conn.exec_driver_sql(
                "SELECT schema, pid FROM public.session_pids WHERE schema LIKE 'ss_'"
            ).all()
        assert sorted(schema for schema, _ in pids) == names
        assert len({pid for _, pid in pids}) == 1, pids  # one connection, kept
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS public.session_pids")
            conn.exec_driver_sql("DROP OWNED BY session_state_role")
            conn.exec_driver_sql("DROP ROLE IF EXISTS session_state_role")
