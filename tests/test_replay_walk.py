"""One walk of a step compiles the same segments as planning it compile by compile.

``run.walk`` records each revision once per scratch name in a schema committed between them;
``run.segments.plan_step`` compiles every segment from a freshly built starting state. Over the
corpus chain (autocommit blocks early, a squash, alembic_utils entities, data migrations), for
steps up and down from several starting points, both must split the step at the same
revisions for the same reasons and replay the same statements. The walk checks a tenant's
structure before a segment only after a revision whose effect may depend on its rows (one that
reads them), where planning checks after every revision it split around: where the walk
checks, both compare against the same fingerprint. That the replayed statements give what
Alembic gives is tests/test_replay_chain_corpus.py's to prove; this proves the walk is a faster
way to the same compile.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from tenantmig import api
from tenantmig.chains.scripts import ChainScripts, Direction
from tenantmig.run.replay import (
    CompiledStep,
    NotReplayable,
    StepKey,
    compile_or_explain,
    first_difference,
)
from tenantmig.run.segments import Replayed, SegmentedStep, ThroughAlembic, plan_step
from tenantmig.run.walk import walk_step
from tenantmig.schema.catalog import read_fingerprints
from tenantmig.server.config import Settings, load_settings
from tenantmig.server.flavour import PostgreSQL
from tenantmig.server.session import Timeouts
from tests.helpers import TENANT_HEAD, project_with
from tests.test_engine import make_tenants

CHAIN = Path(__file__).parent / "corpus_chain"
FILES = sorted(CHAIN.glob("k[0-9][0-9]_*.py"))
STEPS: list[tuple[StepKey, Direction]] = [
    (StepKey(None, "k12_views", False), "upgrade"),  # a new schema to head: every kind
    (StepKey(None, "k02_squash", True), "upgrade"),  # an empty version table
    (StepKey("k01_orders_index_concurrently", "k06_user_columns", True), "upgrade"),
    (StepKey("k06_user_columns", "k10_invoice_columns", True), "upgrade"),  # a read in it
    (StepKey("k12_views", "k08_user_domain_index", True), "downgrade"),
    (StepKey("k08_user_domain_index", "003_add_inventory_tracking", True), "downgrade"),
    (StepKey("k10_invoice_columns", "k12_views", True), "upgrade"),  # replayed whole
]


@pytest.fixture
def scripts(database_url: str, tmp_path: Path) -> ChainScripts:
    root = tmp_path
    config = project_with(root, {p.name: p.read_text() for p in FILES})
    settings = load_settings(config_file=config, database_url=database_url, home=root / "h")
    return ChainScripts(settings, "tenant")


def _shape(found: object) -> list[tuple[str, ...]]:
    """Each part as (kind, revisions or key, reasons): what a run's notice says."""
    if isinstance(found, CompiledStep):
        return [("replayed", found.key.describe())]
    if isinstance(found, NotReplayable):
        return [("not replayable", str(found.revision), found.reason)]
    assert isinstance(found, SegmentedStep)
    shape: list[tuple[str, ...]] = []
    for part in found.parts:
        if isinstance(part, Replayed) and part.unquoted_names_only is None:
            shape.append(("replayed", part.step.key.describe()))
            continue
        # Planning runs a revision that writes the schema's name unquoted through Alembic in
        # every tenant; the walk replays it in tenants whose name needs no quoting, for the
        # same reason given to the others.
        revisions, whys = (
            ((part.unquoted_names_only.revision,), (part.unquoted_names_only,))
            if isinstance(part, Replayed)
            else (part.revisions, part.whys)
        )
        reasons = tuple(f"{w.revision}: {w.reason.split(' (')[0]}" for w in whys if w)
        if shape and shape[-1][0] == "alembic":  # planning runs them in one part
            previous = shape.pop()
            count = sum(1 for item in previous if ":" not in item) - 1
            shape.append(
                ("alembic", *previous[1 : 1 + count], *revisions, *previous[1 + count :], *reasons)
            )
        else:
            shape.append(("alembic", *(r or "base" for r in revisions), *reasons))
    return shape


def _replayed(found: object) -> list[CompiledStep]:
    """The segments replayed in every tenant."""
    if isinstance(found, CompiledStep):
        return [found]
    if isinstance(found, SegmentedStep):
        return [
            part.step
            for part in found.parts
            if isinstance(part, Replayed) and part.unquoted_names_only is None
        ]
    return []


@pytest.mark.parametrize(("key", "direction"), STEPS, ids=[k.describe() for k, _ in STEPS])
def test_the_walk_compiles_what_compile_by_compile_planning_compiles(
    engine: sa.Engine, scripts: ChainScripts, key: StepKey, direction: Direction
) -> None:
    timeouts = Timeouts(30)
    with engine.connect() as conn:
        walked = walk_step(conn, scripts, key, direction, timeouts, PostgreSQL())
        assert walked is not None, "the walk settles every step of this chain"

        def compile_step(part: StepKey, fingerprint: bool) -> CompiledStep | NotReplayable:
            return compile_or_explain(
                conn, scripts, part, direction, timeouts, fingerprint_start=fingerprint
            )

        planned = plan_step(scripts, key, direction, compile_step, {})
    assert _shape(walked) == _shape(planned)
    for ours, theirs in zip(_replayed(walked), _replayed(planned), strict=True):
        assert ours.key == theirs.key
        if ours.start_fingerprint is not None:
            assert ours.start_fingerprint == theirs.start_fingerprint
        # The same statements; CREATE INDEX runs in a row may come in either order (Alembic
        # iterates a set), as between any two compilations.
        assert first_difference(ours.statements, theirs.statements) is None, ours.key


def test_only_a_segment_after_a_data_read_checks_the_structure_and_no_scratch_is_left(
    engine: sa.Engine, scripts: ChainScripts
) -> None:
    with engine.connect() as conn:
        found = walk_step(
            conn, scripts, StepKey(None, "k12_views", False), "upgrade", Timeouts(30), PostgreSQL()
        )
        assert isinstance(found, SegmentedStep)
        checked = [
            (part.step.key.from_revision, part.checked)
            for part in found.parts
            if isinstance(part, Replayed)
        ]
        # After the trigger and k03's hand-written CONCURRENTLY (the same SQL in every
        # tenant): not checked. After k01 (tenantmig.ops reads pg_index for an invalid
        # leftover of an interrupted build) and the two data migrations: checked. The trigger
        # (k04 -> k05) is a part of its own, replayed only where the name needs no quoting.
        assert checked == [
            (None, False),
            ("k01_orders_index_concurrently", True),
            ("k03_invoices_index_concurrently", False),
            ("k04_functions", False),
            ("k05_trigger", False),
            ("k07_fill_user_columns", True),
            ("k09_number_invoices", True),
        ]
        assert found.outside_transaction
        only_unquoted = [
            part for part in found.parts if isinstance(part, Replayed) and part.unquoted_names_only
        ]
        assert [p.step.key.describe() for p in only_unquoted] == ["k04_functions -> k05_trigger"]
        trigger = only_unquoted[0].step
        # The schema's name, marked, where alembic_utils wrote it unquoted: the tenant's own
        # name in a tenant that needs no quoting; such a part is never replayed elsewhere.
        assert any(
            "CREATE TRIGGER" in s and "\x00schema\x00.users" in s for s in trigger.statements
        )
        assert "CREATE TRIGGER" in " ".join(trigger.for_schema("acme"))
        assert "acme.users" in " ".join(trigger.for_schema("acme"))
        assert only_unquoted[0].replays_in("acme")
        assert not only_unquoted[0].replays_in("Acme")
        assert not only_unquoted[0].replays_in("order")
        assert any(isinstance(p, ThroughAlembic) for p in found.parts)
        left = conn.execute(
            sa.text(
                "SELECT nspname FROM pg_namespace WHERE lower(nspname) LIKE 'tenantmig_compile%' "
                "OR lower(nspname) LIKE 'tenantmig_build%' "
                "OR lower(nspname) LIKE 'tenantmig_replay_check%'"
            )
        ).all()
    assert left == []


FAILING = '''"""Fails whatever the schema is called."""
from alembic import op

revision = "004_fails"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE no_such_table ADD COLUMN x int")


def downgrade() -> None:
    pass
'''


def test_a_revision_that_fails_everywhere_is_left_to_compile_by_compile_planning(
    engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    """The walk does not settle it; planning says the step fails in a scratch schema, and
    each tenant will report the error."""
    config = project_with(tmp_path, {"004_fails.py": FAILING})
    settings = load_settings(config_file=config, database_url=database_url, home=tmp_path / "h")
    chain = ChainScripts(settings, "tenant")
    with engine.connect() as conn:
        key = StepKey(None, "004_fails", False)
        assert walk_step(conn, chain, key, "upgrade", Timeouts(30), PostgreSQL()) is None
        left = conn.execute(
            sa.text("SELECT count(*) FROM pg_namespace WHERE lower(nspname) LIKE 'tenantmig_%'")
        ).scalar()
    assert left == 0


def test_a_structure_check_is_the_same_read_and_leaves_the_planner_as_it_was(
    settings: Settings, engine: sa.Engine
) -> None:
    """A check of one schema (hash joins off) and a read of many (the planner's choice) give
    the same fingerprint; the tenant's transaction plans as before after the check."""
    names = [f"fp{i}" for i in range(12)]
    make_tenants(settings, names, TENANT_HEAD)
    with engine.connect() as conn, conn.begin():
        conn.exec_driver_sql("SET LOCAL enable_mergejoin = off")  # the caller's own choice
        settings_before = conn.execute(sa.text(_PLANNER)).one()
        alone = read_fingerprints(conn, ["fp3"])
        settings_after = conn.execute(sa.text(_PLANNER)).one()
        together = read_fingerprints(conn, names)
    assert settings_after == settings_before and settings_before[2] == "off"
    assert len(together) == 12 and alone["fp3"] == together["fp3"]


_PLANNER = (
    "SELECT current_setting('jit'), current_setting('enable_hashjoin'), "
    "current_setting('enable_mergejoin')"
)


def test_a_walk_leaves_nothing_on_the_connections_it_used(
    database_url: str, scripts: ChainScripts
) -> None:
    """A pooler in transaction mode (PgBouncer) lends a server connection to any client after
    any transaction: nothing a walk sets may stay on one, also after the autocommit blocks it
    ran (session-level while they run). SQLAlchemy's pool lends them on the same way here."""
    engine = sa.create_engine(database_url, pool_size=3, max_overflow=0)
    try:
        with engine.connect() as conn:
            found = walk_step(
                conn, scripts, StepKey(None, "k12_views", False), "upgrade", Timeouts(30),
                PostgreSQL(),
            )  # fmt: skip
            assert isinstance(found, SegmentedStep) and found.outside_transaction
        lent = [engine.connect() for _ in range(3)]  # every connection the pool holds
        try:
            for conn in lent:
                state = conn.execute(
                    sa.text(
                        "SELECT current_setting('search_path'), current_setting('lock_timeout'), "
                        "current_setting('statement_timeout'), "
                        "(SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() "
                        " AND locktype = 'advisory')"
                    )
                ).one()
                assert tuple(state) == ('"$user", public', "0", "0", 0)
        finally:
            for conn in lent:
                conn.close()
    finally:
        engine.dispose()


WRITES_SHARED = '''"""Logs each tenant's migration in a shared table (outside its schema)."""
from alembic import op

revision = "004_writes_shared"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("INSERT INTO public.migration_log (schema) VALUES (current_schema())")
    op.execute("ALTER TABLE users ADD COLUMN logged boolean")


def downgrade() -> None:
    op.execute("ALTER TABLE users DROP COLUMN logged")
'''


def test_a_revision_that_writes_outside_its_schema_is_not_compiled_into_that_table(
    database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    """The walk commits each revision in a scratch schema: one that writes a shared table
    would leave the compile's rows there. It is caught before the commit, rolled back, and the
    step runs through Alembic: the table holds exactly one row per tenant."""
    config = project_with(tmp_path, {"004_writes_shared.py": WRITES_SHARED})
    settings = load_settings(config_file=config, database_url=database_url, home=tmp_path / "h")
    names = ["log_a", "log_b", "log_c"]
    make_tenants(settings, names, TENANT_HEAD)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE public.migration_log (schema text)")
    try:
        result = api.upgrade(settings, api.Selection.named(names), "head", api.RunOptions(jobs=2))
        assert result.succeeded, result.to_json()
        assert not any(o.replayed for o in result.outcomes)
        notice = " ".join(result.notices)
        assert "writes rows outside the tenant's schema (public.migration_log)" in notice
        with engine.connect() as conn:
            logged = conn.exec_driver_sql("SELECT schema FROM public.migration_log").scalars()
            assert sorted(logged) == names
            left = conn.execute(
                sa.text("SELECT count(*) FROM pg_namespace WHERE lower(nspname) LIKE 'tenantmig_%'")
            ).scalar()
        assert left == 0
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS public.migration_log")


def test_writes_an_earlier_transaction_of_the_backend_made_are_not_the_revisions(
    engine: sa.Engine,
) -> None:
    """Since PostgreSQL 15 a backend's per-transaction table statistics still count what its
    previous transactions wrote until they are flushed (at most once a second). Behind a
    pooler the walk's transaction may get a backend another client just wrote with: only what
    grows within the walk's own transaction is the revision's."""
    from tenantmig.run.walk import _Walker, _WritesElsewhere

    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE public.earlier_writes (x int)")
        conn.commit()
        try:
            with conn.begin():  # another client's write on the same backend, just committed
                conn.exec_driver_sql("INSERT INTO public.earlier_writes VALUES (1)")
            with conn.begin():  # right away: the backend has not flushed that count yet
                with _Walker._writing_only_in(conn, "scratch", "r1"):
                    pass  # the revision wrote nothing
            with pytest.raises(_WritesElsewhere) as caught, conn.begin():
                with _Walker._writing_only_in(conn, "scratch", "r2"):
                    conn.exec_driver_sql("INSERT INTO public.earlier_writes VALUES (2)")
            assert (caught.value.table, caught.value.revision) == ("public.earlier_writes", "r2")
        finally:
            conn.rollback()
            conn.exec_driver_sql("DROP TABLE public.earlier_writes")
            conn.commit()
