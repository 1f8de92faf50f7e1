"""Compiled-step replay: same result as running Alembic, and never used where it could differ."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from tenantmig import api
from tenantmig.chains.scripts import ChainScripts
from tenantmig.run.replay import StepKey, compile_step
from tenantmig.server.config import Settings, load_settings
from tenantmig.server.session import Timeouts
from tests.helpers import TENANT_HEAD, project_with, snapshot, version
from tests.test_engine import make_tenants


def test_replayed_tenants_match_alembic_migrated_ones(  # "order": a keyword, quoted
    settings: Settings, engine: sa.Engine
) -> None:
    make_tenants(settings, ["r1", "order", "r3", "plain"])
    log = settings.home / "replay.log"
    replayed = api.upgrade(
        settings, api.Selection.named(["r1", "order", "r3"]), options=api.RunOptions(log_file=log)
    )
    assert replayed.succeeded
    plain = api.upgrade(
        settings, api.Selection.named(["plain"]), options=api.RunOptions(replay=False)
    )
    assert plain.succeeded
    assert log.read_text().count("(replayed)") == 3
    reference = snapshot(engine, "plain")
    assert all(snapshot(engine, t) == reference for t in ("r1", "order", "r3"))
    assert all(version(engine, t) == TENANT_HEAD for t in ("r1", "order", "r3", "plain"))
    # Downgrades replay too, and land exactly where Alembic does.
    down = api.downgrade(
        settings,
        api.Selection.all_tenants(),
        "001_initial_schema",
        options=api.RunOptions(log_file=log),
    )
    assert down.succeeded and log.read_text().count("(replayed)") == 7
    assert all(snapshot(engine, t) == snapshot(engine, "plain") for t in ("r1", "order", "r3"))
    assert {version(engine, t) for t in ("r1", "order", "r3", "plain")} == {"001_initial_schema"}


READING_REVISION = '''"""Adds an index only where there are users (decided by reading data)."""

import sqlalchemy as sa
from alembic import op

revision = "004_conditional_index"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    users = op.get_bind().execute(sa.text("SELECT count(*) FROM users")).scalar()
    if users:
        op.create_index("ix_users_full_name", "users", ["full_name"])


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_users_full_name")
'''


def _index_exists(engine: sa.Engine, schema: str) -> bool:
    with engine.connect() as conn:
        return (
            conn.execute(
                sa.text("SELECT to_regclass(:i) IS NOT NULL"), {"i": f"{schema}.ix_users_full_name"}
            ).scalar()
            is True
        )


def test_a_revision_that_reads_data_is_never_replayed(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, ["busy", "empty1", "empty2"], "head")
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO busy.users (email) VALUES ('a@example.com')")
    config = project_with(tmp_path, {"004_conditional_index.py": READING_REVISION})
    project = load_settings(config_file=config, database_url=database_url, home=tmp_path / "h")
    scripts = ChainScripts(project, "tenant")
    with engine.connect() as conn:
        step = compile_step(
            conn,
            scripts,
            StepKey(TENANT_HEAD, "004_conditional_index", True),
            "upgrade",
            Timeouts(5),
        )
    assert step is None  # it read the database: not provably the same for every tenant
    result = api.upgrade(project, api.Selection.all_tenants())
    assert result.succeeded
    assert _index_exists(engine, "busy")
    assert not _index_exists(engine, "empty1") and not _index_exists(engine, "empty2")


def test_a_revision_can_opt_out_of_replay(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    opted_out = READING_REVISION.replace(
        'op.get_bind().execute(sa.text("SELECT count(*) FROM users")).scalar()', "1"
    ).replace("depends_on = None", "depends_on = None\ntenantmig_replay = False")
    config = project_with(tmp_path, {"004_conditional_index.py": opted_out})
    project = load_settings(config_file=config, database_url=database_url, home=tmp_path / "h")
    make_tenants(settings, ["a1"], "head")
    scripts = ChainScripts(project, "tenant")
    with engine.connect() as conn:
        assert (
            compile_step(
                conn,
                scripts,
                StepKey(TENANT_HEAD, "004_conditional_index", True),
                "upgrade",
                Timeouts(5),
            )
            is None
        )
        # ...while the shipped revisions compile.
        shipped = ChainScripts(settings, "tenant")
        step = compile_step(
            conn, shipped, StepKey(None, TENANT_HEAD, False), "upgrade", Timeouts(5)
        )
    assert step is not None and len(step.statements) > 20
    with engine.connect() as conn:  # the scratch schema was rolled back
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenantmig_compile%'")
            ).scalar()
            == 0
        )


PERCENT_REVISION = '''"""Percent signs in a CHECK and in comments, one as a bound parameter."""
import sqlalchemy as sa
from alembic import op

revision = "004_percent"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_check_constraint("ck_users_email_at", "users", "email LIKE '%@%'")
    op.execute("COMMENT ON TABLE users IS 'at least 100% real'")
    op.execute(
        sa.text("COMMENT ON TABLE orders IS :note").bindparams(note="orders, 50% off")
    )


def downgrade() -> None:
    op.execute("COMMENT ON TABLE orders IS NULL")
    op.execute("COMMENT ON TABLE users IS NULL")
    op.drop_constraint("ck_users_email_at", "users", type_="check")
'''


def _comments(engine: sa.Engine, schema: str) -> dict[str, str | None]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT relname, obj_description(oid, 'pg_class') FROM pg_class"
                " WHERE relnamespace = to_regnamespace(:s) AND relname IN ('users', 'orders')"
            ),
            {"s": f'"{schema}"'},
        ).all()
    return {r[0]: r[1] for r in rows}


def test_replay_renders_percent_signs_and_parameters_exactly_as_alembic(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, ["r1", "user", "plain"], TENANT_HEAD)  # "user": a keyword
    config = project_with(tmp_path, {"004_percent.py": PERCENT_REVISION})
    project = load_settings(config_file=config, database_url=database_url, home=tmp_path / "h")
    log = tmp_path / "replay.log"
    replayed = api.upgrade(
        project, api.Selection.named(["r1", "user"]), options=api.RunOptions(log_file=log)
    )
    assert replayed.succeeded, replayed.to_json()
    assert log.read_text().count("(replayed)") == 2
    plain = api.upgrade(
        project, api.Selection.named(["plain"]), options=api.RunOptions(replay=False)
    )
    assert plain.succeeded
    expected = {"users": "at least 100% real", "orders": "orders, 50% off"}
    assert _comments(engine, "plain") == expected
    for schema in ("r1", "user"):
        assert _comments(engine, schema) == expected
        assert snapshot(engine, schema) == snapshot(engine, "plain")
