"""Replay never differs from Alembic: every pattern of tests/corpus/ run three ways and compared.

For each pattern (one revision on top of the demo head), one database holds three sets of four
tenants at mixed starting points: at head with rows, at head without, at the first revision with
rows, and a fresh schema without a version table. One set is migrated by tenantmig with replay,
one with ``--no-replay``, one by plain Alembic (``alembic -n tenant -x tenant=NAME upgrade``,
through the project's env.py). Then, tenant kind by tenant kind, ``pg_dump --schema-only`` (the
schema name normalised), every table's rows and the version rows must be identical, and replay
must have been used exactly where the pattern says it can be.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig

from tenantmig import api
from tenantmig.backup.dump import LibpqConnection, PgTools, find_pg_tools
from tenantmig.run.results import RunResult, TenantStatus
from tenantmig.server.config import load_settings
from tenantmig.server.database import normalise_url
from tests.helpers import project_with

CORPUS = Path(__file__).parent / "corpus"
PATTERNS = sorted(CORPUS.glob("c[0-9][0-9]_*.py"))
KINDS = {  # kind -> (starting revision, or None for a fresh schema; seeded with rows?)
    "head_a": ("003_add_inventory_tracking", True),
    "head_b": ("003_add_inventory_tracking", False),
    "old": ("001_initial_schema", True),
    "fresh": (None, False),
}
MODES = {"replay": "r", "no_replay": "n", "alembic": "a"}
SEED = """
INSERT INTO users (id, email, full_name, role, is_active, created_at, updated_at) VALUES
  ('00000000-0000-0000-0000-000000000001', 'ann@example.com', 'Ann', 'member', true,
   '2020-01-01 00:00:00+00', '2020-01-01 00:00:00+00'),
  ('00000000-0000-0000-0000-000000000002', 'bob@example.com', 'Bob', 'owner', false,
   '2020-01-02 00:00:00+00', '2020-01-02 00:00:00+00')
"""


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"corpus_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tenant(mode: str, kind: str) -> str:
    return f"{MODES[mode]}_{kind}"


def test_the_corpus_is_big_enough_and_each_pattern_is_one_revision() -> None:
    assert len(PATTERNS) >= 25
    for path in PATTERNS:
        assert _load(path).revision == path.stem


@pytest.mark.parametrize("pattern", PATTERNS, ids=[p.stem for p in PATTERNS])
def test_replay_no_replay_and_plain_alembic_give_identical_tenants(
    pattern: Path, database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    module = _load(pattern)
    target = pattern.stem
    replayable = getattr(module, "corpus_replayed", True)
    fails = getattr(module, "corpus_fails", False)
    modes = [m for m in MODES if m != "alembic" or getattr(module, "corpus_plain_alembic", True)]
    config = project_with(tmp_path, {pattern.name: pattern.read_text()})
    settings = load_settings(config_file=config, database_url=database_url, home=tmp_path / "h")

    _prepare(settings, engine, modes, getattr(module, "corpus_setup", {}))
    results: dict[str, RunResult] = {}
    for mode in modes:
        names = [_tenant(mode, kind) for kind in KINDS]
        if mode == "alembic":
            _plain_alembic(config, database_url, names, target, fails=fails)
            continue
        options = api.RunOptions(jobs=1, replay=mode == "replay")
        results[mode] = api.upgrade(settings, api.Selection.named(names), target, options)

    expected = TenantStatus.FAILED if fails else TenantStatus.OK
    for mode, result in results.items():
        statuses = {o.name: o.status for o in result.outcomes}
        assert set(statuses.values()) == {expected}, (mode, result.to_json())
    replayed = {o.name for o in results["replay"].outcomes if o.replayed}
    if replayable:
        assert replayed == {_tenant("replay", kind) for kind in KINDS}, results["replay"].notices
    else:
        # The pattern's revision runs through Alembic. Tenants at head take only that
        # revision; the others are split around it: the demo revisions before it replay.
        notices = results["replay"].notices
        # A revision that fails in a scratch schema is not split around.
        split = getattr(module, "corpus_split", True) and not fails
        before = {_tenant("replay", k) for k in ("old", "fresh")} if split else set()
        assert replayed == before, notices
        assert any("runs through Alembic" in n for n in notices), notices
        splits = sum(f"revision {target}" in n and "is split" in n for n in notices)
        assert splits == (2 if split else 0), notices
    assert not any(o.replayed for o in results["no_replay"].outcomes)

    tools = find_pg_tools(_server_major(engine))
    for kind in KINDS:
        states = {mode: _state(engine, tools, database_url, _tenant(mode, kind)) for mode in modes}
        reference = states["no_replay"]
        for mode, state in states.items():
            for part in ("schema", "rows"):
                assert state[part] == reference[part], (
                    f"{pattern.stem}: tenant kind {kind!r}: {mode} differs from --no-replay "
                    f"in its {part}:\n{_first_difference(state[part], reference[part])}"
                )


def _prepare(settings: Any, engine: sa.Engine, modes: list[str], setup: dict[str, str]) -> None:
    """Every mode's tenants in the same starting states, set up the same (ordinary) way."""
    assert api.upgrade(settings, api.Selection.shared_only()).succeeded
    names = [_tenant(mode, kind) for mode in modes for kind in KINDS]
    api.create_tenants(settings, names, migrate=False)
    for revision in {start for start, _ in KINDS.values() if start}:
        at = [_tenant(m, k) for m in modes for k, (start, _) in KINDS.items() if start == revision]
        result = api.upgrade(
            settings, api.Selection.named(at), revision, api.RunOptions(jobs=1, replay=False)
        )
        assert result.succeeded, result.to_json()
    with engine.begin() as conn:
        for mode in modes:
            for kind, (_, seeded) in KINDS.items():
                schema = _tenant(mode, kind)
                conn.exec_driver_sql(f'SET LOCAL search_path TO "{schema}"')
                if seeded:
                    conn.exec_driver_sql(SEED)
                if kind in setup:
                    conn.exec_driver_sql(setup[kind])


def _plain_alembic(config: Path, url: str, names: list[str], target: str, *, fails: bool) -> None:
    """``alembic -n tenant -x tenant=NAME -x url=URL upgrade TARGET`` for each tenant, through the
    project's env.py, in this process."""
    for name in names:
        cfg = AlembicConfig(str(config), ini_section="tenant")
        cfg.cmd_opts = argparse.Namespace(x=[f"tenant={name}", f"url={url}"])
        cfg.attributes["configure_logger"] = False
        if fails:
            with pytest.raises(RuntimeError):
                alembic_command.upgrade(cfg, target)
        else:
            alembic_command.upgrade(cfg, target)


def _server_major(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SHOW server_version_num")).scalar_one()) // 10000


def _state(engine: sa.Engine, tools: PgTools, url: str, schema: str) -> dict[str, list[str]]:
    """The schema as pg_dump prints it and every table's rows, the schema name normalised."""
    connection = LibpqConnection.from_url(normalise_url(url))
    dump = subprocess.run(
        [
            tools.tool("pg_dump"),
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            f"--schema={schema}",
            connection.dsn,
        ],
        capture_output=True,
        text=True,
        env=connection.environment(),
        check=True,
    ).stdout
    # One entry per object, in name order: pg_dump orders objects by name, and the names hold
    # the tenant's (different per mode) schema name. Comments carry dump-time details only;
    # \restrict keys are random per dump.
    objects: list[str] = []
    for line in dump.splitlines():
        if line.startswith("-- Name:") or not objects:
            objects.append("")
        if line.strip() and not line.startswith(("--", "\\restrict", "\\unrestrict")):
            objects[-1] += line + "\n"
    lines = sorted(o for o in objects if o)
    rows: list[str] = []
    with engine.connect() as conn:
        tables = conn.execute(
            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = :s ORDER BY 1"),
            {"s": schema},
        ).scalars()
        for table in list(tables):
            content = conn.exec_driver_sql(f'SELECT t::text FROM "{schema}"."{table}" t').scalars()
            rows.extend(f"{table}: {row}" for row in sorted(content))
    return {"schema": sorted(_normalised(lines, schema)), "rows": sorted(_normalised(rows, schema))}


def _normalised(lines: list[str], schema: str) -> list[str]:
    name = re.compile(re.escape(schema), re.IGNORECASE)
    return [name.sub("TENANT", line) for line in lines]


def _first_difference(actual: list[str], expected: list[str]) -> str:
    for i, (a, b) in enumerate(zip(actual, expected, strict=False)):
        if a != b:
            return f"line {i}: {a!r}\n   expected {b!r}"
    return f"lengths {len(actual)} and {len(expected)}"
