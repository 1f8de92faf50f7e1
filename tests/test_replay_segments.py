"""Steps split around revisions that cannot be replayed: the rest is replayed, and the result
is what Alembic gives, revision by revision, also where a data migration changed structure."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from tenantmig import api
from tenantmig.server.config import Settings, load_settings
from tests.helpers import TENANT_HEAD, project_with, snapshot, version
from tests.test_autocommit import ADD_NICKNAME
from tests.test_engine import make_tenants

# Reads rows into Python and acts on them: not replayable. What it does to the structure
# depends on the rows: an index only for a tenant that has users.
BACKFILL = '''"""Backfill nicknames in Python; index them where there are users."""
import sqlalchemy as sa
from alembic import op

revision = "005_backfill"
down_revision = "004_nickname"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, email FROM users ORDER BY email")).all()
    for row in rows:
        bind.execute(
            sa.text("UPDATE users SET nickname = :n WHERE id = :id"),
            {"n": row.email.split("@")[0], "id": row.id},
        )
    if rows:
        op.create_index("ix_users_nickname", "users", ["nickname"])


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_users_nickname")
    op.execute("UPDATE users SET nickname = NULL")
'''

ADD_BIO = '''"""users.bio, and a table of notes."""
import sqlalchemy as sa
from alembic import op

revision = "006_bio"
down_revision = "005_backfill"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("bio", sa.Text(), nullable=True))
    op.create_table(
        "notes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("body", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("notes")
    op.drop_column("users", "bio")
'''

REVISIONS = {"004_nickname.py": ADD_NICKNAME, "005_backfill.py": BACKFILL, "006_bio.py": ADD_BIO}


def _users(engine: sa.Engine, schema: str) -> list[tuple[str, str | None]]:
    with engine.connect() as conn:
        return [
            (r.email, r.nickname)
            for r in conn.execute(
                sa.text(f"SELECT email, nickname FROM {schema}.users ORDER BY email")
            )
        ]


def _add_users(engine: sa.Engine, schemas: list[str]) -> None:
    with engine.begin() as conn:
        for schema in schemas:
            conn.execute(
                sa.text(
                    f"INSERT INTO {schema}.users (email, full_name) VALUES (:a, 'A'), (:b, 'B')"
                ),
                {"a": f"ann@{schema}", "b": f"bob@{schema}"},
            )


def test_a_step_is_split_around_a_data_migration_and_equals_alembic(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    config = project_with(tmp_path, REVISIONS)
    project = load_settings(config_file=str(config), database_url=database_url)
    replayed = ["e1", "e2", "u1", "u2"]
    twins = ["e_alembic", "u_alembic"]
    make_tenants(project, [*replayed, *twins], TENANT_HEAD)
    _add_users(engine, ["u1", "u2", "u_alembic"])

    result = api.upgrade(project, api.Selection.named(replayed), "006_bio")
    assert result.succeeded, result.to_json()
    split = [n for n in result.notices if "is split" in n]
    assert len(split) == 1, result.notices
    assert "005_backfill" in split[0] and "reads from the database" in split[0], split
    # The empty tenants match the segment's starting structure: their last segment is
    # replayed. The tenants with users got an index from the data migration: their structure
    # differs, and the rest of their step ran through Alembic. The first segment
    # (003 -> 004) is replayed for all of them.
    assert all(o.replayed for o in result.outcomes), result.to_json()

    baseline = api.upgrade(
        project, api.Selection.named(twins), "006_bio", api.RunOptions(replay=False)
    )
    assert baseline.succeeded and not any(o.replayed for o in baseline.outcomes)

    for name in replayed:
        assert version(engine, name) == "006_bio"
    for name, twin in (("e1", "e_alembic"), ("e2", "e_alembic"), ("u1", "u_alembic"),
                       ("u2", "u_alembic")):  # fmt: skip
        assert snapshot(engine, name) == snapshot(engine, twin), name
    assert "index" in str(snapshot(engine, "u1")).lower()
    assert snapshot(engine, "u1") != snapshot(engine, "e1")  # the data made a difference
    assert sorted(n for _e, n in _users(engine, "u1")) == ["ann", "bob"]
    assert sorted(n for _e, n in _users(engine, "u_alembic")) == ["ann", "bob"]

    # Down again across the data migration: split the same way, equal to Alembic's.
    down = api.downgrade(
        project, api.Selection.named(replayed), TENANT_HEAD,
        api.RunOptions(confirm_drops=lambda _drops: True),
    )  # fmt: skip
    assert down.succeeded, down.to_json()
    down_twins = api.downgrade(
        project, api.Selection.named(twins), TENANT_HEAD,
        api.RunOptions(replay=False, confirm_drops=lambda _drops: True),
    )  # fmt: skip
    assert down_twins.succeeded, down_twins.to_json()
    for name, twin in (("e1", "e_alembic"), ("u1", "u_alembic")):
        assert version(engine, name) == TENANT_HEAD
        assert snapshot(engine, name) == snapshot(engine, twin), name


def test_a_revision_ruled_out_once_is_split_around_in_later_steps(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    """Tenants at two revisions: both steps run the data migration; each is split."""
    config = project_with(tmp_path, REVISIONS)
    project = load_settings(config_file=str(config), database_url=database_url)
    make_tenants(project, ["a1", "a2"], TENANT_HEAD)
    api.create_tenants(project, ["b1", "b2"], migrate=False)
    assert api.upgrade(project, api.Selection.named(["b1", "b2"]), "004_nickname").succeeded

    result = api.upgrade(project, api.Selection.named(["a1", "a2", "b1", "b2"]), "006_bio")
    assert result.succeeded, result.to_json()
    split = [n for n in result.notices if "is split" in n]
    assert len(split) == 2, result.notices
    assert {o.name: o.replayed for o in result.outcomes} == dict.fromkeys(
        ["a1", "a2", "b1", "b2"], True
    ), result.notices
    assert snapshot(engine, "a1") == snapshot(engine, "b1")
