"""A downgrade that drops data asks first, whatever its target looks like: -1, -N, a revision or
base, for named tenants and for every tenant. Refused, it changes nothing: no schema, no
version, no run in the ledger. A downgrade that drops nothing is not asked."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from tenantmig import api
from tenantmig.errors import ConfigError
from tenantmig.server.config import Settings
from tests.helpers import (
    TENANT_HEAD,
    project_with,
    run_cli,
    run_in_terminal,
    snapshot,
    version,
)
from tests.test_engine import make_tenants

FIRST = "001_initial_schema"
TENANTS = ["acme", "globex"]

# A revision whose downgrade drops an index: no table, no column, no rows.
INDEX_ONLY = '''"""an index"""
from alembic import op

revision = "004_index_only"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_users_created", "users", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_users_created", table_name="users")
'''


def state(engine: sa.Engine) -> dict[str, object]:
    """Every tenant's revision and catalog, and the number of runs recorded."""
    found: dict[str, object] = {t: (version(engine, t), snapshot(engine, t)) for t in TENANTS}
    with engine.connect() as conn:
        found["runs"] = conn.execute(
            sa.text("SELECT count(*) FROM tenantmig_runs WHERE command = 'downgrade'")
        ).scalar()
    return found


@pytest.mark.parametrize(
    ("start", "target", "expected"),
    [
        (FIRST, "-1", None),  # a relative step that reaches base
        (TENANT_HEAD, "-1", FIRST),  # drops a table and columns, does not reach base
        (TENANT_HEAD, "-2", None),
        (TENANT_HEAD, FIRST, FIRST),  # an absolute revision
        (TENANT_HEAD, "base", None),
    ],
)
@pytest.mark.parametrize(
    "selection", [["--tenant", "acme", "--tenant", "globex"], ["--all-tenants"]]
)
def test_a_downgrade_that_drops_data_is_refused_without_yes_and_done_with_it(
    settings: Settings,
    engine: sa.Engine,
    database_url: str,
    start: str,
    target: str,
    expected: str | None,
    selection: list[str],
) -> None:
    make_tenants(settings, TENANTS, start)
    before = state(engine)
    refused = run_cli("downgrade", *selection, target, url=database_url)
    assert refused.returncode == 1, refused.stderr
    assert "add --yes to confirm; nothing was changed" in refused.stderr, refused.stderr
    # The question names what goes and in how many tenants.
    assert "in 2 tenant schema(s)" in refused.stderr, refused.stderr
    assert ("to base" in refused.stderr) == (expected is None), refused.stderr
    assert state(engine) == before

    done = run_cli("downgrade", *selection, target, "--yes", url=database_url)
    assert done.returncode == 0, done.stderr
    assert [version(engine, t) for t in TENANTS] == [expected, expected]


def test_the_question_counts_only_the_tenants_that_lose_data(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    """-1 takes acme (at the first revision) to base and globex one step down: both drop."""
    make_tenants(settings, TENANTS, TENANT_HEAD)
    assert api.downgrade(settings, api.Selection.named(["acme"]), FIRST).succeeded
    refused = run_cli("downgrade", "--all-tenants", "-1", url=database_url)
    assert refused.returncode == 1, refused.stderr
    assert "in 2 tenant schema(s), 1 of them to base" in refused.stderr, refused.stderr
    assert "table(s) audit_logs" in refused.stderr and "column(s)" in refused.stderr
    assert (version(engine, "acme"), version(engine, "globex")) == (FIRST, TENANT_HEAD)


def test_a_terminal_is_asked_for_a_relative_downgrade_to_base(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    make_tenants(settings, ["acme"], FIRST)
    command = ("downgrade", "--tenant", "acme", "-1")
    code, output = run_in_terminal(*command, url=database_url, answer="no")
    assert code == 1 and "not confirmed; nothing was changed" in output, output
    assert "table(s)" in output and "users" in output, output
    assert version(engine, "acme") == FIRST
    code, output = run_in_terminal(*command, url=database_url, answer="yes")
    assert code == 0, output
    assert version(engine, "acme") is None


def test_a_downgrade_that_drops_nothing_is_not_asked(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    config = project_with(tmp_path, {"004_index_only.py": INDEX_ONLY})
    make_tenants(settings, TENANTS, TENANT_HEAD)
    up = run_cli("--config", str(config), "upgrade", "--all-tenants", url=database_url)
    assert up.returncode == 0, up.stderr
    done = run_cli("--config", str(config), "downgrade", "--all-tenants", "-1", url=database_url)
    assert done.returncode == 0, done.stderr
    assert [version(engine, t) for t in TENANTS] == [TENANT_HEAD, TENANT_HEAD]


def test_the_api_asks_the_callers_function_and_a_no_changes_nothing(
    settings: Settings, engine: sa.Engine
) -> None:
    make_tenants(settings, TENANTS, TENANT_HEAD)
    asked: list[api.Drops] = []

    def refuse(drops: api.Drops) -> bool:
        asked.append(drops)
        return False

    options = api.RunOptions(confirm_drops=refuse)
    with pytest.raises(ConfigError, match="not confirmed; nothing was changed"):
        api.downgrade(settings, api.Selection.all_tenants(), "-1", options)
    (drops,) = asked
    assert (drops.tenants, drops.to_base) == (2, 0)
    assert "inventory_transactions" in drops.tables and "locations" in drops.tables
    assert "inventory_items.sku" in drops.columns
    assert [version(engine, t) for t in TENANTS] == [TENANT_HEAD, TENANT_HEAD]
