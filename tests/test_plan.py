"""`tenantmig plan`: each step's statements with their locks and effects, and the tenants
ordered by the size of what the step rewrites or scans; nothing is changed."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import sqlalchemy as sa

from tenantmig.server.config import Settings
from tests.helpers import run_cli
from tests.test_engine import make_tenants

OLD = "001_initial_schema"


def _runs(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM tenantmig_runs").scalar() or 0)


class _Text(HTMLParser):
    """The text of an HTML page, and the elements left open (void ones aside)."""

    VOID = frozenset({"meta", "br", "link", "img", "input", "hr"})

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, (tag, self.open)
        self.open.pop()

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.text.append(data.strip())


def test_a_plan_names_locks_effects_and_the_largest_tenants_first(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, ["small", "big", "mid", "done"], OLD)
    assert run_cli("upgrade", "--tenant", "done", url=database_url).returncode == 0
    with engine.begin() as conn:
        for schema, rows in (("big", 20000), ("mid", 2000)):
            conn.exec_driver_sql(
                f'INSERT INTO "{schema}".inventory_items (name, quantity)'
                f" SELECT 'item ' || i, i FROM generate_series(1, {rows}) AS i"
            )
            conn.exec_driver_sql(f'ANALYZE "{schema}".inventory_items')
    runs = _runs(engine)
    done = run_cli("plan", "--all-tenants", "--json", url=database_url)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["selected"] == 4 and plan["at_target"] == 1
    (step,) = plan["steps"]
    assert (step["from"], step["to"]) == (OLD, "003_add_inventory_tracking")
    assert step["compiled"] is True
    assert [t["name"] for t in step["tenants"]] == ["big", "mid", "small"]  # largest first
    assert step["tenants"][0]["rows"] >= 19000 and step["tenants"][0]["bytes"] > 0
    assert step["touched_tables"] == ["inventory_items"]
    by_sql = {s["sql"]: s for s in step["statements"]}
    sku = next(
        s for q, s in by_sql.items() if q.startswith("CREATE UNIQUE INDEX ix_inventory_items_sku")
    )
    assert (sku["lock"], sku["table"], sku["effect"]) == ("SHARE", "inventory_items", "scan")
    column = next(s for q, s in by_sql.items() if "ADD COLUMN sku" in q)
    assert (column["lock"], column["effect"]) == ("ACCESS EXCLUSIVE", "metadata-only")
    check = next(s for q, s in by_sql.items() if "ck_inventory_items_reorder" in q)
    assert check["effect"] == "scan" and "without NOT VALID" in check["why"][0]
    fk = next(s for q, s in by_sql.items() if "fk_inventory_items_location_id" in q)
    assert (fk["lock"], fk["table"], fk["effect"]) == (
        "SHARE ROW EXCLUSIVE", "inventory_items", "scan"
    )  # fmt: skip
    new = next(s for q, s in by_sql.items() if "ix_inventory_transactions_location_id" in q)
    assert (new["lock"], new["effect"]) == (None, "metadata-only")  # a table of this step
    assert not any("alembic_version" in q for q in by_sql)  # Alembic's bookkeeping left out
    # Nothing changed: no run recorded, every tenant where it was.
    assert _runs(engine) == runs
    with engine.connect() as conn:
        for schema in ("small", "big", "mid"):
            version = conn.exec_driver_sql(f'SELECT version_num FROM "{schema}".alembic_version')
            assert version.scalar() == OLD

    page = tmp_path / "plan.html"
    with_html = run_cli("plan", "--all-tenants", "--html", str(page), url=database_url)
    assert with_html.returncode == 0 and f"HTML plan written to {page}" in with_html.stdout
    reader = _Text()
    reader.feed(page.read_text())
    assert reader.open == [], reader.open  # every element closed
    shown = " ".join(reader.text)
    assert "step 001_initial_schema -> 003_add_inventory_tracking" in shown
    assert "SHARE on inventory_items" in shown and shown.index("big") < shown.index("small")

    text = run_cli("upgrade", "--all-tenants", "--plan", url=database_url)
    assert text.returncode == 0, text.stderr
    assert (
        "plan: upgrade head: 3 of 4 tenant(s) to migrate in 1 step(s); 1 already there"
        in text.stdout
    )
    assert "strongest lock: ACCESS EXCLUSIVE on inventory_items" in text.stdout
    lines = text.stdout.splitlines()
    largest = lines.index(next(line for line in lines if "largest tenants" in line))
    assert lines[largest + 1].split()[0] == "big"

    down = run_cli("plan", "--all-tenants", "--downgrade", "base", "--json", url=database_url)
    assert down.returncode == 0, down.stderr
    effects = {s["effect"] for step in json.loads(down.stdout)["steps"] for s in step["statements"]}
    assert "destructive" in effects  # dropping the tables


def test_a_step_split_around_revisions_is_planned_as_a_run_splits_it(
    database_url: str, tmp_path: Path
) -> None:
    """Over the corpus chain (autocommit blocks, a squash, data migrations) a run splits the
    step; the plan shows the same split, the replayed segments' statements as compiled and
    the other revisions' offline SQL (k01's index built concurrently), and says which
    revisions' statements it cannot show (the data migrations read rows)."""
    from tenantmig import api
    from tenantmig.server.config import load_settings
    from tests.helpers import project_with

    chain = Path(__file__).parent / "corpus_chain"
    config = project_with(tmp_path, {p.name: p.read_text() for p in chain.glob("k[0-9]*.py")})
    settings = load_settings(config_file=config, database_url=database_url, home=tmp_path / "h")
    assert api.upgrade(settings, api.Selection.shared_only()).succeeded
    api.create_tenants(settings, ["split_a", "split_b"], migrate=False)
    done = run_cli("-c", str(config), "plan", "--all-tenants", "--json", url=database_url)
    assert done.returncode == 0, done.stderr
    (step,) = json.loads(done.stdout)["steps"]
    assert step["segmented"] is True and step["compiled"] is False
    assert "is split: a new schema -> 003_add_inventory_tracking replayed" in step["note"]
    assert "statements not shown: revision k07_fill_user_columns" in step["note"]
    sql = [s["sql"] for s in step["statements"]]
    assert any(s.startswith("CREATE TABLE sq_accounts") for s in sql)  # the squash, replayed
    assert any("CREATE INDEX CONCURRENTLY" in s for s in sql)  # k01, through Alembic
    assert not [s for s in sql if "pg_advisory" in s]  # tenantmig's own lock: not the step's
    text = run_cli("-c", str(config), "plan", "--all-tenants", url=database_url)
    assert "split: replayed segments, the rest Alembic's offline SQL" in text.stdout
