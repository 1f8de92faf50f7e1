"""`tenantmig lint` over a corpus: dangerous patterns, each caught, and safe rewrites of them,
none flagged. One revision per pattern, on a table that is large in one tenant."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from tests.helpers import project_with, run_cli

LAST = "003_add_inventory_tracking"
BASE = """
create table big (id bigint primary key, a integer, b text, c varchar(80), d numeric(10,2),
                  parent_id bigint);
create table parents (id bigint primary key);
create index big_c_idx on big (c)
"""

# revision id -> (SQL, the rule that must catch it)
DANGEROUS = {
    "d01": ("ALTER TABLE big ALTER COLUMN a TYPE bigint", "large-table-rewrite"),
    "d02": ("ALTER TABLE big ADD COLUMN token float8 DEFAULT random()", "large-table-rewrite"),
    "d03": ("ALTER TABLE big ALTER COLUMN b SET NOT NULL", "large-table-scan"),
    "d04": ("ALTER TABLE big ADD CONSTRAINT a_pos CHECK (a > 0)", "large-table-scan"),
    "d05": (
        "ALTER TABLE big ADD CONSTRAINT big_parent FOREIGN KEY (parent_id) REFERENCES parents (id)",
        "large-table-scan",
    ),
    "d06": ("CREATE INDEX big_b ON big (b)", "large-table-scan"),
    "d07": ("ALTER TABLE big ADD CONSTRAINT big_c_key UNIQUE (c)", "large-table-scan"),
    "d08": ("DROP TABLE parents", "destructive"),
    "d09": ("ALTER TABLE big DROP COLUMN d", "destructive"),
    "d10": ("TRUNCATE big", "destructive"),
    "d11": (
        "ALTER TABLE big ADD COLUMN flag boolean; UPDATE big SET flag = true",
        "lock-held-across-data-migration",
    ),
    "d12": ("ALTER TABLE big ALTER COLUMN c TYPE varchar(10)", "large-table-rewrite"),
    "d13": ("ALTER TABLE big ADD COLUMN seq bigserial", "large-table-rewrite"),
    "d14": ("DELETE FROM big", "destructive"),
    "d15": ("ALTER TABLE big RENAME COLUMN b TO bee", "renaming-column"),  # squawk's
}
# revision id -> SQL that does the same job safely (comments allow what is meant)
SAFE = {
    "s01": "ALTER TABLE big ALTER COLUMN c TYPE text",
    "s02": "ALTER TABLE big ADD COLUMN created_at timestamptz DEFAULT now()",
    "s03": "ALTER TABLE big ADD CONSTRAINT b_not_null CHECK (b IS NOT NULL) NOT VALID",
    "s04": "ALTER TABLE big ADD CONSTRAINT a_pos CHECK (a > 0) NOT VALID",
    "s05": "ALTER TABLE big ADD CONSTRAINT big_parent FOREIGN KEY (parent_id)"
    " REFERENCES parents (id) NOT VALID",
    "s06": "CONCURRENTLY:CREATE INDEX CONCURRENTLY IF NOT EXISTS big_b ON big (b)",
    "s07": "ALTER TABLE big ADD CONSTRAINT big_c_key UNIQUE USING INDEX big_c_idx",
    "s08": "ALTER TABLE big VALIDATE CONSTRAINT a_pos",
    "s09": "ALLOW:DROP TABLE parents",
    "s10": "UPDATE big SET a = 0 WHERE a IS NULL",
    "s11": "ALTER TABLE big ADD COLUMN flag boolean",
    "s12": "ALTER TABLE big ALTER COLUMN d TYPE numeric(12,2)",
    "s13": "ALTER TABLE big ADD COLUMN note text",
}


def _revision(revision: str, down: str, sql: str) -> str:
    allow = ""
    if sql.startswith("ALLOW:"):
        sql = sql.removeprefix("ALLOW:")
        allow = (
            "# tenantmig: allow destructive parents moved to the shared schema\n"
            "# tenantmig: allow ban-drop-table the same\n"
        )
    body = f"    op.execute({sql!r})"
    if sql.startswith("CONCURRENTLY:"):
        body = (
            "    with op.get_context().autocommit_block():\n"
            f"        op.execute({sql.removeprefix('CONCURRENTLY:')!r})"
        )
    return (
        f'"""{revision}"""\n{allow}from alembic import op\n\n'
        f"revision = {revision!r}\ndown_revision = {down!r}\n"
        "branch_labels = None\ndepends_on = None\n\n\n"
        f"def upgrade() -> None:\n{body}\n\n\n"
        "def downgrade() -> None:\n    pass\n"
    )


def test_the_corpus_dangerous_caught_and_safe_not_flagged(
    engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    files = {"r00_base.py": _revision("r00", LAST, "BASE").replace("'BASE'", repr(BASE))}
    down = "r00"
    for revision, sql in [*((r, s) for r, (s, _) in DANGEROUS.items()), *SAFE.items()]:
        files[f"{revision}.py"] = _revision(revision, down, sql)
        down = revision
    config = project_with(tmp_path, files)
    config.write_text(config.read_text().replace(
        "[DEFAULT]\n", "[DEFAULT]\nlint_max_table_size = 256kB\n", 1
    ))  # fmt: skip

    def cli(*args: str) -> object:
        return run_cli("--config", str(config), *args, url=database_url)

    assert cli("upgrade", "--shared").returncode == 0  # type: ignore[attr-defined]
    done = cli("tenants", "create", "huge", "tiny", "--no-migrate")
    assert done.returncode == 0, done.stderr  # type: ignore[attr-defined]
    done = cli("upgrade", "--all-tenants", "r00")
    assert done.returncode == 0, done.stderr  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO huge.big (id, a, b, c) SELECT i, i, 'row ' || i, 'c' || i"
            " FROM generate_series(1, 20000) AS i"
        )

    done = cli("lint", "--json")
    assert done.returncode == 2, done.stderr  # type: ignore[attr-defined]
    report = json.loads(done.stdout)  # type: ignore[attr-defined]
    assert report["squawk"], "squawk is installed with the dev extra"
    assert report["revisions"] == [*DANGEROUS, *SAFE]  # not yet applied to every tenant
    by_revision: dict[str, list[dict[str, object]]] = {}
    for finding in report["findings"]:
        by_revision.setdefault(str(finding["revision"]), []).append(finding)
    for revision, (sql, rule) in DANGEROUS.items():
        rules = {str(f["rule"]) for f in by_revision.get(revision, [])}
        assert rule in rules, (revision, sql, by_revision.get(revision))
    sized = next(f for f in by_revision["d01"] if f["rule"] == "large-table-rewrite")
    assert sized["tenants"] == ["huge"] and sized["level"] == "error"  # not tiny: too small
    for revision, sql in SAFE.items():
        live = [f for f in by_revision.get(revision, []) if f["allowed"] is None]
        assert live == [], (revision, sql, live)
    allowed = {str(f["rule"]) for f in by_revision["s09"]}
    assert allowed == {"destructive", "ban-drop-table"}  # found, and allowed by its comments

    # One revision, with --allow: what the run allows does not fail the lint.
    one = cli("lint", "d08", "--allow", "destructive", "--allow", "ban-drop-table")
    assert one.returncode == 0, one.stdout  # type: ignore[attr-defined]
    assert "allowed (--allow)" in one.stdout  # type: ignore[attr-defined]
    bad = cli("lint", "nosuch")
    assert bad.returncode == 1 and "not in the tenant migrations" in bad.stderr  # type: ignore[attr-defined]


def test_lint_without_tenants_lints_the_sql_as_written(database_url: str) -> None:
    """A CI database with nothing in it: the revisions are linted, without the sizes."""
    done = run_cli("lint", "--json", url=database_url)
    assert done.returncode == 0, done.stderr  # squawk's warnings only: no error
    report = json.loads(done.stdout)
    assert report["revisions"] == ["001_initial_schema", "003_add_inventory_tracking"]
    assert "no tenants" in report["note"]
    assert {f["level"] for f in report["findings"]} <= {"warning"}
