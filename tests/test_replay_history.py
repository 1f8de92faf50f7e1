"""Replay of steps whose history (the revisions before them) cannot run in one transaction."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from tenantmig import api
from tenantmig.server.config import Settings, load_settings
from tests.helpers import project_with, snapshot, version
from tests.test_autocommit import ADD_NICKNAME, UNIQUE_FULL_NAME
from tests.test_engine import make_tenants

ADD_BIO = '''"""users.bio: plain DDL after a revision with an autocommit block."""
import sqlalchemy as sa
from alembic import op

revision = "006_bio"
down_revision = "005_unique_full_name"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("bio", sa.Text(), nullable=True))
    op.create_index("ix_users_bio", "users", ["bio"])


def downgrade() -> None:
    op.drop_index("ix_users_bio", table_name="users")
    op.drop_column("users", "bio")
'''


def _scratch_schemas(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT nspname FROM pg_namespace"
                    " WHERE lower(nspname) LIKE 'tenantmig_compile%'"
                    " OR lower(nspname) LIKE 'tenantmig_replay_check%'"
                )
            ).scalars()
        )


def test_a_step_after_a_concurrently_revision_is_replayed(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    revisions = {
        "004_nickname.py": ADD_NICKNAME,
        "005_unique.py": UNIQUE_FULL_NAME,
        "006_bio.py": ADD_BIO,
    }
    config = project_with(tmp_path, revisions)
    project = load_settings(config_file=str(config), database_url=database_url)
    make_tenants(project, ["r1", "r2", "r3", "plain"], "005_unique_full_name")

    # The step 005 -> 006 is plain DDL; its starting state has CREATE INDEX CONCURRENTLY in
    # its history, which cannot be built inside the rolled-back compile transaction.
    result = api.upgrade(project, api.Selection.named(["r1", "r2", "r3"]), "006_bio")
    assert result.succeeded, result.to_json()
    assert all(o.replayed for o in result.outcomes), result.to_json()
    assert not any("not replayed" in n for n in result.notices), result.notices

    alembic_run = api.upgrade(
        project, api.Selection.named(["plain"]), "006_bio", api.RunOptions(replay=False)
    )
    assert alembic_run.succeeded and not alembic_run.outcomes[0].replayed
    for name in ("r1", "r2", "r3"):
        assert version(engine, name) == "006_bio"
        assert snapshot(engine, name) == snapshot(engine, "plain")
    # The committed scratch schemas the starting state was built in are gone.
    assert _scratch_schemas(engine) == []


def test_a_step_across_a_concurrently_revision_is_split_around_it(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    """The step 004 -> 006 runs 005 (CREATE INDEX CONCURRENTLY): the tenant cannot be one
    transaction. 005 runs as Alembic runs it, 006 is replayed, each in its own transaction;
    the result equals Alembic's."""
    revisions = {
        "004_nickname.py": ADD_NICKNAME,
        "005_unique.py": UNIQUE_FULL_NAME,
        "006_bio.py": ADD_BIO,
    }
    config = project_with(tmp_path, revisions)
    project = load_settings(config_file=str(config), database_url=database_url)
    make_tenants(project, ["s1", "s2", "twin"], "004_nickname")

    result = api.upgrade(project, api.Selection.named(["s1", "s2"]), "006_bio")
    assert result.succeeded, result.to_json()
    split = [n for n in result.notices if "is split" in n]
    assert len(split) == 1 and "005_unique_full_name" in split[0], result.notices
    assert "autocommit block" in split[0], split
    assert all(o.replayed for o in result.outcomes), result.to_json()
    twin = api.upgrade(
        project, api.Selection.named(["twin"]), "006_bio", api.RunOptions(replay=False)
    )
    assert twin.succeeded
    for name in ("s1", "s2"):
        assert version(engine, name) == "006_bio"
        assert snapshot(engine, name) == snapshot(engine, "twin")
    assert _scratch_schemas(engine) == []
