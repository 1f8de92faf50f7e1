"""--order size (the default): the largest tenants start first; --order name: by name."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from tenantmig.server.config import Settings
from tests.helpers import run_cli
from tests.test_engine import make_tenants
from tests.test_events import _events


def _started(database_url: str, events: Path, *args: str) -> list[str]:
    events.unlink(missing_ok=True)
    done = run_cli(
        "upgrade", "--all-tenants", "--jobs", "1", "--events", str(events), *args,
        url=database_url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [e["tenant"] for e in _events(events.read_text()) if e["event"] == "tenant_started"]


def test_the_largest_tenants_start_first(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, ["a1", "b2", "m3", "z4"], "001_initial_schema")
    with engine.begin() as conn:
        for schema, rows in (("z4", 30000), ("m3", 3000)):
            conn.exec_driver_sql(
                f'INSERT INTO "{schema}".inventory_items (name, quantity)'
                f" SELECT 'item ' || i, i FROM generate_series(1, {rows}) AS i"
            )
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM")
    events = tmp_path / "events.jsonl"
    assert _started(database_url, events) == ["z4", "m3", "a1", "b2"]  # size, the default
    run_cli("downgrade", "--all-tenants", "001_initial_schema", "--yes", url=database_url)
    assert _started(database_url, events, "--order", "name") == ["a1", "b2", "m3", "z4"]
