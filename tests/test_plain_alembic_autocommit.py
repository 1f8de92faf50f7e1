"""Plain Alembic runs revisions with autocommit blocks (CREATE INDEX CONCURRENTLY) as tenantmig
does: the same schema and version row, up and down, for the tenant and the shared chain."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from tenantmig import api
from tenantmig.server.config import load_settings
from tests.helpers import SHARED_HEAD, TENANT_HEAD, project_with, snapshot, version
from tests.test_autocommit import ADD_NICKNAME, UNIQUE_FULL_NAME
from tests.test_engine import make_tenants

# Raises unless what makes a migration transaction safe holds where it is called: this
# session holds the schema's advisory lock, search_path is the schema whose version table
# Alembic writes, and lock_timeout is set. Called inside an autocommit block (no transaction)
# and in the revision after it (a later transaction).
CHECK_SET_UP = """
import sqlalchemy as sa
from alembic import op

from tenantmig.server.session import LOCK_NAMESPACE, lock_key


def check_set_up(where: str) -> None:
    schema = op.get_context().version_table_schema
    row = op.get_bind().execute(
        sa.text(
            "SELECT current_schema() AS schema, current_setting('lock_timeout') AS lock_timeout,"
            " EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted"
            "  AND pid = pg_backend_pid() AND classid = :ns AND objid = :key) AS locked"
        ),
        {"ns": LOCK_NAMESPACE, "key": lock_key(schema) % 2**32},
    ).one()
    if (row.schema, row.locked) != (schema, True) or row.lock_timeout == "0":
        raise RuntimeError(f"{where}: set-up lost in {schema}: {tuple(row)}")
"""

NICKNAME_INDEX = f'''"""An index on users.nickname, built in a plain autocommit block."""
{CHECK_SET_UP}

revision = "006_nickname_index"
down_revision = "005_unique_full_name"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        check_set_up("006 upgrade")
        op.execute("CREATE INDEX CONCURRENTLY ix_users_nickname ON users (nickname)")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        check_set_up("006 downgrade")
        op.execute("DROP INDEX CONCURRENTLY ix_users_nickname")
'''

# An ordinary revision after the blocks: its transaction must still be the tenant's.
ADD_TIMEZONE = f'''"""users.timezone (ordinary, after the autocommit blocks)."""
{CHECK_SET_UP}

revision = "007_timezone"
down_revision = "006_nickname_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    check_set_up("007 upgrade")
    op.add_column("users", sa.Column("timezone", sa.Text(), nullable=True))


def downgrade() -> None:
    check_set_up("007 downgrade")
    op.drop_column("users", "timezone")
'''

REVISIONS = {
    "004_nickname.py": ADD_NICKNAME,
    "005_unique.py": UNIQUE_FULL_NAME,
    "006_nickname_index.py": NICKNAME_INDEX,
    "007_timezone.py": ADD_TIMEZONE,
}
HEAD = "007_timezone"
FALLBACK = "running again with one transaction per revision"
INDEXES = {"ix_users_full_name_unique": True, "ix_users_nickname": True}


def alembic(config: Path, *args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(config), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "TENANTMIG_DATABASE_URL": url},
        cwd=config.parent,
        timeout=120,
    )


def _indexes(engine: sa.Engine, schema: str) -> dict[str, bool]:
    """The test's indexes in ``schema``: name -> valid."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT c.relname, i.indisvalid FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE c.relnamespace = to_regnamespace(:s)"
                " AND c.relname IN ('ix_users_full_name_unique', 'ix_users_nickname')"
            ),
            {"s": schema},
        ).all()
    return {r.relname: r.indisvalid for r in rows}


def _add_users(engine: sa.Engine, schemas: list[str], *, duplicate_names: bool) -> None:
    with engine.begin() as conn:
        for schema in schemas:
            conn.execute(
                sa.text(f"INSERT INTO {schema}.users (email, full_name) VALUES ('a@x', 'Ann'),"
                        " ('b@x', :name)"),
                {"name": "Ann" if duplicate_names else "Bob"},
            )  # fmt: skip


def test_tenant_chain_with_autocommit_blocks_up_and_down_matches_tenantmig(
    database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    config = project_with(tmp_path, REVISIONS)
    settings = load_settings(config_file=config, database_url=database_url, home=tmp_path / "h")
    make_tenants(settings, ["acme", "globex"], TENANT_HEAD)
    _add_users(engine, ["acme", "globex"], duplicate_names=False)

    # An ordinary range keeps its one transaction: no second attempt.
    plain = alembic(config, "-n", "tenant", "-x", "tenant=acme", "upgrade", "004_nickname",
                    url=database_url)  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    assert FALLBACK not in plain.stderr
    assert version(engine, "acme") == "004_nickname"

    up = alembic(config, "-n", "tenant", "-x", "tenant=acme", "upgrade", "head", url=database_url)
    assert up.returncode == 0, up.stderr
    assert FALLBACK in up.stderr
    assert version(engine, "acme") == HEAD
    assert _indexes(engine, "acme") == INDEXES
    assert version(engine, "globex") == TENANT_HEAD  # only the named tenant

    assert api.upgrade(settings, api.Selection.named(["globex"])).succeeded
    assert version(engine, "globex") == HEAD
    assert snapshot(engine, "acme") == snapshot(engine, "globex")

    down = alembic(config, "-n", "tenant", "-x", "tenant=acme", "downgrade", TENANT_HEAD,
                   url=database_url)  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert api.downgrade(settings, api.Selection.named(["globex"]), TENANT_HEAD).succeeded
    for schema in ("acme", "globex"):
        assert version(engine, schema) == TENANT_HEAD
        assert _indexes(engine, schema) == {}
    assert snapshot(engine, "acme") == snapshot(engine, "globex")


def test_a_failed_concurrent_build_stops_where_tenantmig_stops(
    database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    """Revisions before the failing one stay committed, the INVALID index is left behind, and
    the tenant's lock is released: the same state tenantmig leaves, and a re-run repairs it."""
    config = project_with(tmp_path, REVISIONS)
    settings = load_settings(config_file=config, database_url=database_url, home=tmp_path / "h")
    make_tenants(settings, ["acme", "globex"], TENANT_HEAD)
    _add_users(engine, ["acme", "globex"], duplicate_names=True)

    up = alembic(config, "-n", "tenant", "-x", "tenant=acme", "upgrade", "head", url=database_url)
    assert up.returncode != 0
    assert "could not create unique index" in up.stderr
    assert not api.upgrade(settings, api.Selection.named(["globex"])).succeeded
    for schema in ("acme", "globex"):
        assert version(engine, schema) == "004_nickname"
        assert _indexes(engine, schema) == {"ix_users_full_name_unique": False}
    assert snapshot(engine, "acme") == snapshot(engine, "globex")

    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE acme.users SET full_name = 'Bea' WHERE email = 'b@x'"))
    again = alembic(config, "-n", "tenant", "-x", "tenant=acme", "upgrade", "head",
                    url=database_url)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert version(engine, "acme") == HEAD
    assert _indexes(engine, "acme") == INDEXES


SHARED_INDEX = f'''"""An index on tenants.display_name, built in an autocommit block."""
{CHECK_SET_UP}

revision = "003_display_name_index"
down_revision = "{SHARED_HEAD}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        check_set_up("shared upgrade")
        op.execute("CREATE INDEX CONCURRENTLY ix_tenants_display_name ON tenants (display_name)")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        check_set_up("shared downgrade")
        op.execute("DROP INDEX CONCURRENTLY ix_tenants_display_name")
'''


def test_shared_chain_with_an_autocommit_block_up_and_down(
    database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    config = project_with(tmp_path, {})
    versions = config.parent / "migrations" / "shared" / "versions"
    (versions / "003_display_name_index.py").write_text(SHARED_INDEX)

    up = alembic(config, "-n", "shared", "upgrade", "head", url=database_url)
    assert up.returncode == 0, up.stderr
    assert version(engine, "public") == "003_display_name_index"
    with engine.connect() as conn:
        valid = conn.execute(
            sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:n)"),
            {"n": "public.ix_tenants_display_name"},
        ).scalar()
    assert valid is True

    down = alembic(config, "-n", "shared", "downgrade", "-1", url=database_url)
    assert down.returncode == 0, down.stderr
    assert version(engine, "public") == SHARED_HEAD
    with engine.connect() as conn:
        gone = conn.execute(sa.text("SELECT to_regclass('public.ix_tenants_display_name')"))
        assert gone.scalar() is None
