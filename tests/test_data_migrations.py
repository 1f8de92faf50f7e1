"""Data safety: migrations keep every row, and large backfills run in bounded, resumable batches."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tenantmig import api
from tenantmig.server.config import Settings, load_settings
from tests.helpers import TENANT_HEAD, project_with, run_cli, start_cli, version
from tests.test_engine import make_tenants
from tests.test_signals import tenantmig_sessions, wait_for

ADD_EMAIL_DOMAIN = '''"""users.email_domain, nullable (filled by the next revision)."""
import sqlalchemy as sa
from alembic import op

revision = "004_email_domain"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("email_domain", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("users", "email_domain")
'''

BACKFILL_TEMPLATE = '''"""Backfill users.email_domain in bounded batches."""
from tenantmig import ops

revision = "005_backfill_email_domain"
down_revision = "004_email_domain"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ops.update_in_batches(
        "users",
        "email_domain = split_part(email, '@', 2)",
        where="email_domain IS NULL",
        batch_size=BATCH,
    )


def downgrade() -> None:
    ops.update_in_batches(
        "users", "email_domain = NULL", where="email_domain IS NOT NULL", batch_size=BATCH
    )
'''

# The columns revision 001 creates: what must survive any later up/down/up unchanged.
BASE_COLUMNS = {
    "users": "id, email, full_name, role, is_active",
    "inventory_items": "id, name, quantity, unit_price",
    "orders": "id, user_id, status, total_amount",
    "order_items": "id, order_id, item_id, quantity, unit_price",
    "audit_logs": "id, user_id, action, entity_type, entity_id, changes",
}


def _sql(conn: sa.Connection, sql: str) -> sa.CursorResult[Any]:
    return conn.execute(sa.text(sql))


def _project(tmp_path: Path, batch: int) -> Path:
    backfill = BACKFILL_TEMPLATE.replace("BATCH", str(batch))
    return project_with(
        tmp_path, {"004_email_domain.py": ADD_EMAIL_DOMAIN, "005_backfill.py": backfill}
    )


def _load(engine: sa.Engine, schema: str, users: int, seed: int) -> None:
    """Realistic rows in every tenant table, linked by foreign keys."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"INSERT INTO {schema}.users (email, full_name, role)"
                " SELECT 'user' || g || '@d' || (g % 7) || '.example', 'User ' || g,"
                " CASE WHEN g % 10 = 0 THEN 'admin' ELSE 'member' END"
                " FROM generate_series(1, :n) g"
            ),
            {"n": users},
        )
        conn.execute(
            sa.text(
                f"INSERT INTO {schema}.inventory_items (name, quantity, unit_price)"
                " SELECT 'item ' || g, (g * :seed) % 500, ((g * 37) % 10000) / 100.0"
                " FROM generate_series(1, 50) g"
            ),
            {"seed": seed},
        )
        _sql(
            conn,
            f"INSERT INTO {schema}.orders (user_id, status, total_amount)"
            " SELECT id, 'confirmed', (abs(hashtext(email)) % 100000) / 100.0"
            f" FROM {schema}.users",
        )
        _sql(
            conn,
            f"INSERT INTO {schema}.order_items (order_id, item_id, quantity, unit_price)"
            " SELECT o.id, i.id, 1 + (abs(hashtext(o.id::text || i.id::text)) % 5), i.unit_price"
            f" FROM {schema}.orders o CROSS JOIN LATERAL"
            f" (SELECT id, unit_price FROM {schema}.inventory_items"
            "  ORDER BY md5(o.id::text || id::text) LIMIT 2) i",
        )
        _sql(
            conn,
            f"INSERT INTO {schema}.audit_logs (user_id, action, entity_type, entity_id, changes)"
            " SELECT user_id, 'create', 'order', id::text,"
            f" jsonb_build_object('total', total_amount) FROM {schema}.orders",
        )


def _measure(engine: sa.Engine, schema: str) -> dict[str, tuple[int, str]]:
    """Per table: row count and an md5 over every original column of every row."""
    found = {}
    with engine.connect() as conn:
        for table, columns in BASE_COLUMNS.items():
            row = _sql(
                conn,
                f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
                f" FROM (SELECT {columns} FROM {schema}.{table}) t",
            ).one()
            found[table] = (int(row[0]), str(row[1]))
    return found


def _sums(engine: sa.Engine, schema: str) -> tuple[int, str, str]:
    with engine.connect() as conn:
        row = _sql(
            conn,
            f"SELECT (SELECT sum(quantity) FROM {schema}.order_items),"
            f" (SELECT sum(total_amount) FROM {schema}.orders),"
            f" (SELECT sum(quantity * unit_price) FROM {schema}.order_items)",
        ).one()
    return int(row[0]), str(row[1]), str(row[2])


def test_upgrade_downgrade_upgrade_keeps_every_row(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    tenants = ["acme", "globex"]
    make_tenants(settings, tenants, "001_initial_schema")
    for seed, tenant in enumerate(tenants, start=3):
        _load(engine, tenant, users=300 + seed, seed=seed)
    before = {t: (_measure(engine, t), _sums(engine, t)) for t in tenants}
    assert before["acme"][0]["order_items"][0] == 2 * 303  # the data really is there
    project = load_settings(
        config_file=_project(tmp_path, batch=100), database_url=database_url, home=settings.home
    )
    plan = [
        ("upgrade", TENANT_HEAD),
        ("upgrade", "head"),  # through the batched backfill
        ("downgrade", "001_initial_schema"),
        ("upgrade", "head"),
    ]
    for direction, target in plan:
        if direction == "upgrade":
            result = api.upgrade(project, api.Selection.all_tenants(), target)
        else:
            result = api.downgrade(project, api.Selection.all_tenants(), target)
        assert result.succeeded, result.to_json()
        for tenant in tenants:
            assert (_measure(engine, tenant), _sums(engine, tenant)) == before[tenant], (
                direction,
                target,
                tenant,
            )
    with engine.connect() as conn:
        missing = _sql(
            conn,
            "SELECT count(*) FROM acme.users WHERE email_domain IS DISTINCT FROM"
            " split_part(email, '@', 2)",
        ).scalar()
    assert missing == 0
    assert version(engine, "acme") == "005_backfill_email_domain"


def test_batched_backfill_of_100k_rows_resumes_after_the_runner_is_killed(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    rows = 100_000
    make_tenants(settings, ["big"], TENANT_HEAD)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO big.users (email) SELECT 'u' || g || '@d' || (g % 13) || '.example'"
                " FROM generate_series(1, :n) g"
            ),
            {"n": rows},
        )
    config = str(_project(tmp_path, batch=500))
    first = run_cli(
        "-c", config, "upgrade", "--tenant", "big", "004_email_domain", url=database_url
    )
    assert first.returncode == 0, first.stderr

    def filled() -> int:
        with engine.connect() as conn:
            return int(
                _sql(
                    conn,
                    "SELECT count(*) FROM big.users WHERE email_domain IS NOT NULL",
                ).scalar_one()
            )

    log = tmp_path / "run.log"
    runner = start_cli(
        *("-c", config, "upgrade", "--tenant", "big", "--log-file", str(log)),
        url=database_url,
        new_session=True,
    )
    deadline = time.monotonic() + 120
    while filled() < 5_000 and runner.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait()
    # The batch running at the kill may still commit: the server notices a dead client only
    # when it next talks to it. Count once the runner's backend is gone.
    wait_for(lambda: tenantmig_sessions(engine) == 0, timeout=30)
    done_before_kill = filled()
    # Killed mid-backfill: committed batches stay, the revision is not stamped.
    assert 0 < done_before_kill < rows, done_before_kill
    assert version(engine, "big") == "004_email_domain"

    resumed = run_cli(
        *("-c", config, "upgrade", "--tenant", "big", "--log-file", str(log), "--json"),
        url=database_url,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["tenants"][0]["status"] == "ok"
    assert version(engine, "big") == "005_backfill_email_domain"
    assert filled() == rows
    # The re-run updated only the rows that were left, in batches of at most 500.
    finished = re.findall(r"users: (\d+) rows updated in (\d+) batches \(", log.read_text())
    assert finished, log.read_text()[-2000:]
    updated, batches = (int(n) for n in finished[-1])
    assert updated == rows - done_before_kill
    assert batches == -(-updated // 500)
    with engine.connect() as conn:
        wrong = _sql(
            conn, "SELECT count(*) FROM big.users WHERE email_domain <> split_part(email, '@', 2)"
        ).scalar()
    assert wrong == 0
