"""`upgrade --sql`: SQL for review that, applied with `psql -1 -f`, does what tenantmig does."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tenantmig import api
from tenantmig.server import embedded
from tenantmig.server.config import Settings, load_settings

from .helpers import SHARED_HEAD, TENANT_HEAD, project_with, run_cli, version


def _psql(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    url = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    psql = embedded.bin_dirs()[0] / "psql"
    return subprocess.run(
        [str(psql), "-X", "-v", "ON_ERROR_STOP=1", "--dbname", url, *args],
        capture_output=True,
        text=True,
    )


def _dump(database_url: str, schema: str) -> list[str]:
    url = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    out = subprocess.run(
        [str(embedded.bin_dirs()[0] / "pg_dump"), "--schema-only", "--no-owner", "-n", schema,
         url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sorted(
        line.replace(f"{schema}.", "S.").replace(f"SCHEMA {schema}", "SCHEMA S")
        for line in out.splitlines()
        if line.strip()
        and not line.startswith("--")
        and not line.startswith("\\")
        # Some server builds (Debian's PostgreSQL 15.20) stamp each column with a per-table
        # pg_attver option that pg_dump prints: the server's bookkeeping, not the schema.
        and "pg_attver=" not in line
    )


def test_sql_applied_with_psql_matches_tenantmig(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    assert api.upgrade(settings, api.Selection.shared_only()).succeeded
    api.create_tenants(settings, ["by_psql", "by_tenantmig"], migrate=False)
    api.upgrade(settings, api.Selection.named(["by_psql", "by_tenantmig"]), "001_initial_schema")
    done = run_cli(
        "upgrade", "--tenant", "by_psql", "--tenant", "by_tenantmig", "--sql-dir",
        str(tmp_path / "sql"), "--lock-timeout", "2", url=database_url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    script = (tmp_path / "sql" / "by_psql.sql").read_text()
    assert "SET LOCAL lock_timeout = '2000ms'" in script
    assert "pg_advisory_xact_lock" in script and "BEGIN" not in script
    # Review changed nothing.
    assert version(engine, "by_psql") == "001_initial_schema"
    applied = _psql(database_url, "-1", "-f", str(tmp_path / "sql" / "by_psql.sql"))
    assert applied.returncode == 0, applied.stderr
    assert api.upgrade(settings, api.Selection.named(["by_tenantmig"])).succeeded
    assert version(engine, "by_psql") == TENANT_HEAD
    assert _dump(database_url, "by_psql") == _dump(database_url, "by_tenantmig")
    assert not api.drift(settings).any_drift


def test_sql_stream_ranges_and_json(settings: Settings, engine: sa.Engine) -> None:
    assert api.upgrade(settings, api.Selection.shared_only()).succeeded
    api.create_tenants(settings, ["acme", "globex"])
    url = settings.database_url
    assert url is not None
    # Everyone is at head: no SQL, one line saying so per schema.
    stream = run_cli("upgrade", "--sql", url=url)
    assert stream.returncode == 0, stream.stderr
    assert stream.stdout.count("already at the target") == 3  # shared + 2 tenants
    # A FROM:TO range, as in Alembic, for one tenant, downgrade direction.
    down = run_cli("downgrade", "--tenant", "acme", "--sql", f"{TENANT_HEAD}:001_initial_schema",
                   url=url)  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert "DROP TABLE inventory_transactions" in down.stdout
    assert "-- tenant acme (schema acme): downgrade" in down.stdout
    relative = run_cli("downgrade", "--all-tenants", "-1", "--sql", "--json", url=url)
    assert relative.returncode == 0, relative.stderr
    schemas = json.loads(relative.stdout)["schemas"]
    assert [(s["name"], s["from"], s["to"]) for s in schemas] == [
        ("acme", TENANT_HEAD, "001_initial_schema"),
        ("globex", TENANT_HEAD, "001_initial_schema"),
    ]
    shared = run_cli("downgrade", "--shared", "--sql", "--json", "base", "--yes", url=url)
    assert shared.returncode == 0, shared.stderr
    (only,) = json.loads(shared.stdout)["schemas"]
    assert only["from"] == SHARED_HEAD and only["to"] == "base"
    # Nothing ran.
    assert version(engine, "acme") == TENANT_HEAD and version(engine, "public") == SHARED_HEAD
    bad = run_cli("upgrade", "--all-tenants", "--sql", "nope", url=url)
    assert bad.returncode == 1 and "nope" in bad.stderr


CONCURRENT_INDEX = '''"""An index built concurrently (tenantmig.ops)."""
from tenantmig import ops

revision = "004_concurrent_index"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ops.create_index_concurrently("ix_users_full_name", "users", ["full_name"])


def downgrade() -> None:
    ops.drop_index_concurrently("ix_users_full_name")
'''
AFTER_INDEX = '''"""A plain revision after it."""
import sqlalchemy as sa
from alembic import op

revision = "005_after_index"
down_revision = "004_concurrent_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("nickname", sa.Text()))


def downgrade() -> None:
    op.drop_column("users", "nickname")
'''
READS_ROWS = '''"""A data migration: reads rows into Python."""
import sqlalchemy as sa
from alembic import op

revision = "006_reads_rows"
down_revision = "005_after_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for (user_id,) in op.get_bind().execute(sa.text("SELECT id FROM users")).all():
        op.get_bind().execute(sa.text("UPDATE users SET nickname = 'n' WHERE id = :i"),
                              {"i": user_id})


def downgrade() -> None:
    pass
'''


def test_sql_with_an_autocommit_block_is_a_transaction_per_revision_for_psql_f(
    database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    """CREATE INDEX CONCURRENTLY cannot run in `psql -1`'s one transaction, and after a COMMIT
    a SET LOCAL, the transaction's lock and search_path are gone. Such a range is written a
    transaction per revision with the set-up session-level; applied with `psql -f` it gives
    what tenantmig gives. A data migration cannot be written out at all: a clear error, and
    `plan` and `lint` say so instead of failing."""
    config = project_with(
        tmp_path,
        {"004_concurrent_index.py": CONCURRENT_INDEX, "005_after_index.py": AFTER_INDEX},
    )
    settings = load_settings(config_file=config, database_url=database_url, home=tmp_path / "h")
    assert api.upgrade(settings, api.Selection.shared_only()).succeeded
    api.create_tenants(settings, ["ci_psql", "ci_tenantmig"], migrate=False)
    names = api.Selection.named(["ci_psql", "ci_tenantmig"])
    assert api.upgrade(settings, names, TENANT_HEAD).succeeded
    done = run_cli(
        "-c", str(config), "upgrade", "--tenant", "ci_psql", "--sql-dir", str(tmp_path / "sql"),
        url=database_url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "psql -v ON_ERROR_STOP=1 -f FILE" in done.stdout
    script = (tmp_path / "sql" / "ci_psql.sql").read_text()
    assert "-- apply with: psql -v ON_ERROR_STOP=1 -f ci_psql.sql" in script
    assert "not `psql -1`" in script and "SET LOCAL" not in script
    assert "SELECT pg_advisory_lock(" in script and "SELECT pg_advisory_unlock(" in script
    assert script.index("COMMIT;") < script.index("CREATE INDEX CONCURRENTLY")
    assert version(engine, "ci_psql") == TENANT_HEAD  # review changed nothing
    applied = _psql(database_url, "-f", str(tmp_path / "sql" / "ci_psql.sql"))
    assert applied.returncode == 0, applied.stderr
    assert api.upgrade(settings, api.Selection.named(["ci_tenantmig"])).succeeded
    assert version(engine, "ci_psql") == "005_after_index"
    assert _dump(database_url, "ci_psql") == _dump(database_url, "ci_tenantmig")
    assert not api.drift(settings).any_drift

    (config.parent / "migrations" / "tenant" / "versions" / "006_reads_rows.py").write_text(
        READS_ROWS
    )
    refused = run_cli(
        "-c", str(config), "upgrade", "--tenant", "ci_psql", "--sql", url=database_url
    )  # fmt: skip
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "revision 006_reads_rows cannot be written out as SQL without a database" in (
        refused.stderr
    )
    linted = run_cli("-c", str(config), "lint", "006_reads_rows", url=database_url)
    assert linted.returncode == 0, linted.stderr
    assert "not linted: revision 006_reads_rows cannot be written out" in linted.stdout
    planned = run_cli("-c", str(config), "plan", "--all-tenants", url=database_url)
    assert planned.returncode == 0 and "Traceback" not in planned.stderr, planned.stderr
    assert "statements not shown: revision 006_reads_rows" in planned.stdout
