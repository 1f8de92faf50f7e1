"""Replay never differs from Alembic over a whole chain: tests/corpus_chain/ run three ways.

The chain (twelve revisions on top of the demo head) mixes what a real history holds: indexes
built concurrently early on (k01, k03), a large squash revision (k02: 30 tables, 130 indexes of
every kind, CHECK constraints, foreign keys), alembic_utils functions and a trigger (k04, k05),
two data migrations that read rows into Python and write them back (k07, k09) with plain DDL
between and after them (k06, k08, k10-k12: columns, indexes, renames, views).

One database holds three sets of tenants, one per starting point: a fresh schema, a schema at
base (an empty version table), and schemas at the demo head, before and after each
CONCURRENTLY revision, before, between and after the data migrations, and at the chain's head,
most with rows. One set is migrated by tenantmig with replay, one with ``--no-replay``, one by
plain Alembic (``alembic -n tenant -x tenant=NAME upgrade head`` in a subprocess, through the
project's env.py); then all of them are downgraded twice, a few revisions and then back to
the demo head, the same three ways. After each of the three moves, kind by kind, ``pg_dump
--schema-only`` (the schema name normalised), every table's rows and the version rows must be
identical. Replay must also have been used wherever a step holds a revision that can be
replayed: alembic_utils entities (a schema always quoted, a trigger's table written unquoted)
and the revisions after them included.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from tenantmig import api
from tenantmig.backup.dump import find_pg_tools
from tenantmig.run.results import RunResult, TenantStatus
from tenantmig.server.config import Settings, load_settings
from tests.helpers import project_with
from tests.test_replay_corpus import _first_difference, _server_major, _state

CHAIN = Path(__file__).parent / "corpus_chain"
FILES = sorted(CHAIN.glob("k[0-9][0-9]_*.py"))
REVISIONS = ["001_initial_schema", "003_add_inventory_tracking", *(p.stem for p in FILES)]
HEAD = REVISIONS[-1]
KINDS = {  # kind -> (starting revision: None for a fresh schema, "base"; seeded with rows?)
    "fresh": (None, False),
    "base": ("base", False),
    "demo": ("003_add_inventory_tracking", True),
    "k01": ("k01_orders_index_concurrently", True),
    "k04": ("k04_functions", True),
    "k06": ("k06_user_columns", True),
    "k07": ("k07_fill_user_columns", True),
    "k09": ("k09_number_invoices", True),
    "head": (HEAD, True),
}
MODES = {"replay": "r", "no_replay": "n", "alembic": "a"}
MOVES = (  # (name, direction, target), in this order
    ("upgrade", "upgrade", "head"),
    ("downgrade", "downgrade", "k08_user_domain_index"),  # k12 .. k09 (k09's downgrade is SQL)
    ("downgrade again", "downgrade", "003_add_inventory_tracking"),  # k08 .. k01: both
    # CONCURRENTLY revisions, the trigger, the functions, the squash
)
# Which tenants of the replay set reported replayed, and the run's notices, per move: the last
# two tests read what the first one saw (it runs first: pytest keeps the order of a module).
SEEN: dict[str, tuple[set[str], list[str]]] = {}
SEED = """
INSERT INTO users (id, email, full_name, role, is_active, created_at, updated_at) VALUES
  ('00000000-0000-0000-0000-000000000001', ' Ann@Example.COM', 'ann van der berg', 'member',
   true, '2020-01-01 00:00:00+00', '2020-01-01 00:00:00+00'),
  ('00000000-0000-0000-0000-000000000002', 'bob@example.org', NULL, 'owner', false,
   '2020-01-02 00:00:00+00', '2020-01-02 00:00:00+00');
INSERT INTO inventory_items (id, name, quantity, unit_price, created_at, updated_at) VALUES
  ('00000000-0000-0000-0000-0000000000a1', 'Blue widget (large)', 3, 9.50,
   '2020-01-01 00:00:00+00', '2020-01-01 00:00:00+00'),
  ('00000000-0000-0000-0000-0000000000a2', 'gizmo #2', 0, 120.00,
   '2020-01-01 00:00:00+00', '2020-01-01 00:00:00+00');
"""
SEED_SQUASHED = """
INSERT INTO sq_accounts (code, name, email, status, amount, data, created_at, owner_id) VALUES
  ('A-1', 'Main', 'Billing@Example.COM', 'active', 10, '{"tier": "gold"}',
   '2020-01-01 00:00:00+00', '00000000-0000-0000-0000-000000000001'),
  (NULL, 'Old', NULL, 'archived', 0, '{}', '2020-01-01 00:00:00+00', NULL);
INSERT INTO sq_invoices (code, name, status, amount, created_at) VALUES
  ('I-1', 'first', 'active', 100.25, '2020-02-01 00:00:00+00'),
  ('I-2', 'second', 'draft', 0, '2020-02-02 00:00:00+00'),
  (NULL, 'third', 'archived', 7, '2020-02-03 00:00:00+00');
"""


def _tenant(mode: str, kind: str) -> str:
    return f"{MODES[mode]}_{kind}"


def test_the_chain_is_what_the_docstring_says() -> None:
    assert len(FILES) == 12
    for before, path in zip(REVISIONS[1:-1], FILES, strict=True):
        text = path.read_text()
        assert f'revision = "{path.stem}"' in text
        assert f'down_revision = "{before}"' in text


def test_replay_no_replay_and_plain_alembic_agree_over_the_chain(
    database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    config = project_with(tmp_path, {p.name: p.read_text() for p in FILES})
    settings = load_settings(config_file=config, database_url=database_url, home=tmp_path / "h")
    _prepare(settings, engine)
    tools = find_pg_tools(_server_major(engine))

    SEEN.clear()
    for move, direction, target in MOVES:
        results: dict[str, RunResult] = {}
        for mode in MODES:
            names = [_tenant(mode, kind) for kind in KINDS]
            if mode == "alembic":
                _plain_alembic(config, database_url, names, direction, target)
                continue
            migrate = api.upgrade if direction == "upgrade" else api.downgrade
            options = api.RunOptions(jobs=2, replay=mode == "replay")
            results[mode] = migrate(settings, api.Selection.named(names), target, options)
            statuses = {o.name: o.status for o in results[mode].outcomes}
            # Skipped: a tenant already at the target (at head, upgraded to head).
            ok = {TenantStatus.OK, TenantStatus.SKIPPED}
            assert set(statuses.values()) <= ok, results[mode].to_json()
        assert not any(o.replayed for o in results["no_replay"].outcomes)
        replay = results["replay"]
        SEEN[move] = ({o.name for o in replay.outcomes if o.replayed}, replay.notices)

        for kind in KINDS:
            states = {m: _state(engine, tools, database_url, _tenant(m, kind)) for m in MODES}
            reference = states["no_replay"]
            for mode, state in states.items():
                for part in ("schema", "rows"):
                    assert state[part] == reference[part], (
                        f"{move} to {target}: tenant kind {kind!r}: {mode} differs from "
                        f"--no-replay in its {part}:\n"
                        f"{_first_difference(state[part], reference[part])}"
                    )


def _replayed(move: str) -> tuple[set[str], list[str]]:
    if move not in SEEN:
        pytest.skip("needs test_replay_no_replay_and_plain_alembic_agree_over_the_chain first")
    return SEEN[move]


def test_replay_is_used_before_the_revision_that_writes_the_tenant_name_unquoted() -> None:
    """The segments of the upgrade ahead of k05 are replayed: 001-003 and k02, between the two
    CONCURRENTLY revisions (run through Alembic)."""
    replayed, notices = _replayed("upgrade")
    before = {_tenant("replay", kind) for kind in ("fresh", "base", "demo", "k01")}
    assert before <= replayed, (sorted(before - replayed), notices)


def test_replay_is_used_wherever_a_step_holds_a_replayable_revision() -> None:
    # Every step holds replayable revisions, but the upgrade of the tenants already at head.
    expected = {_tenant("replay", kind) for kind, (start, _) in KINDS.items() if start != HEAD}
    for move, _, _ in MOVES:
        replayed, notices = _replayed(move)
        assert replayed == expected, (move, sorted(expected - replayed), notices)
        expected = {_tenant("replay", kind) for kind in KINDS}


def _prepare(settings: Settings, engine: sa.Engine) -> None:
    """Every mode's tenants in the same starting states, set up the ordinary way, then rows."""
    assert api.upgrade(settings, api.Selection.shared_only()).succeeded
    api.create_tenants(settings, [_tenant(m, k) for m in MODES for k in KINDS], migrate=False)
    no_replay = api.RunOptions(jobs=2, replay=False)
    for kind, (start, _) in KINDS.items():
        if start is None:
            continue
        names = api.Selection.named([_tenant(m, kind) for m in MODES])
        result = api.upgrade(settings, names, REVISIONS[0] if start == "base" else start, no_replay)
        assert result.succeeded, result.to_json()
        if start == "base":  # the version table stays, empty
            result = api.downgrade(settings, names, "base", no_replay)
            assert result.succeeded, result.to_json()
    with engine.begin() as conn:
        for mode in MODES:
            for kind, (start, seeded) in KINDS.items():
                if not seeded:
                    continue
                conn.exec_driver_sql(f'SET LOCAL search_path TO "{_tenant(mode, kind)}"')
                conn.exec_driver_sql(SEED)
                if REVISIONS.index(str(start)) >= REVISIONS.index("k02_squash"):
                    conn.exec_driver_sql(SEED_SQUASHED)


def _plain_alembic(config: Path, url: str, names: list[str], direction: str, target: str) -> None:
    """``alembic -n tenant -x tenant=NAME -x url=URL DIRECTION TARGET`` per tenant, each in a
    process of its own (two at a time), as an operator would run it."""

    def run(name: str) -> subprocess.CompletedProcess[str]:
        options = ["-x", f"tenant={name}", "-x", f"url={url}", direction, target]
        return subprocess.run(
            [sys.executable, "-m", "alembic", "-c", str(config), "-n", "tenant", *options],
            capture_output=True,
            text=True,
            cwd=config.parent,
            timeout=240,
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        for name, done in zip(names, pool.map(run, names), strict=True):
            assert done.returncode == 0, (name, done.stdout, done.stderr)


def test_the_unquoted_trigger_is_replayed_only_where_the_name_needs_no_quoting(
    database_url: str, tmp_path: Path
) -> None:
    """k05 (alembic_utils writes ``schema.users`` unquoted) is replayed in a tenant named
    ``acme``, where that is what Alembic sends; in a tenant named ``order`` (a keyword,
    rendered quoted everywhere else) Alembic sends ``order.users`` and fails, and so must
    the run with replay, with the same error."""
    config = project_with(tmp_path, {p.name: p.read_text() for p in FILES})
    settings = load_settings(config_file=config, database_url=database_url, home=tmp_path / "h")
    assert api.upgrade(settings, api.Selection.shared_only()).succeeded
    names = ["acme", "order", "plain_b", "select"]
    api.create_tenants(settings, names, migrate=False)
    no_replay = api.RunOptions(jobs=2, replay=False)
    start = api.upgrade(settings, api.Selection.named(names), "k04_functions", no_replay)
    assert start.succeeded, start.to_json()

    replay = api.upgrade(
        settings, api.Selection.named(["acme", "order"]), "k06_user_columns", api.RunOptions(jobs=2)
    )
    alembic = api.upgrade(
        settings, api.Selection.named(["plain_b", "select"]), "k06_user_columns", no_replay
    )
    by_name = {o.name: o for o in [*replay.outcomes, *alembic.outcomes]}
    assert by_name["acme"].status == TenantStatus.OK and by_name["acme"].replayed
    assert by_name["plain_b"].status == TenantStatus.OK
    for keyword in ("order", "select"):
        assert by_name[keyword].status == TenantStatus.FAILED, by_name[keyword]
        assert "syntax error at or near" in str(by_name[keyword].error)
        assert by_name[keyword].reached == "k04_functions"  # nothing of the step committed
    notice = " ".join(replay.notices)
    assert (
        "k04_functions -> k05_trigger replayed in tenants whose schema name needs no quoting"
        in notice
    )
