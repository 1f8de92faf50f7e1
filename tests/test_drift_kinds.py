"""Drift sees what `pg_dump --schema-only` sees: one tenant per kind of change, each found, and
nothing else flagged; objects extensions own are left out; the report says what to do."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tenantmig import api
from tenantmig.schema.drift_report import DriftReport, SchemaDrift
from tenantmig.server.config import Settings, load_settings

from .helpers import CONFIG, run_cli

# tenant -> (the change made by hand, the differences drift must report: (kind, object, change))
MUTATIONS: dict[str, tuple[str, set[tuple[str, str, str]]]] = {
    "enum_type": (
        "CREATE TYPE \"{s}\".mood AS ENUM ('ok', 'meh')",
        {("type", "mood", "extra")},
    ),
    "domain_type": (
        'CREATE DOMAIN "{s}".positive AS integer CHECK (VALUE > 0)',
        {("type", "positive", "extra")},
    ),
    "composite_type": (
        'CREATE TYPE "{s}".pair AS (a integer, b text)',
        {("type", "pair", "extra")},
    ),
    "rls_enabled": (
        'ALTER TABLE "{s}".orders ENABLE ROW LEVEL SECURITY',
        {("row level security", "orders", "extra")},
    ),
    "rls_forced": (
        'ALTER TABLE "{s}".orders FORCE ROW LEVEL SECURITY',
        {("row level security", "orders", "extra")},
    ),
    "policy": (
        "CREATE POLICY only_open ON \"{s}\".orders USING (status <> 'cancelled')",
        {("policy", "orders.only_open", "extra")},
    ),
    "grant": (
        'GRANT SELECT ON "{s}".orders TO {reader}',
        {("privileges", "orders", "extra")},
    ),
    "schema_grant": (
        'GRANT USAGE ON SCHEMA "{s}" TO {reader}',
        {("privileges", "(schema)", "extra")},
    ),
    "owner": (
        'ALTER TABLE "{s}".locations OWNER TO {reader}',
        {("owner", "locations", "extra")},
    ),
    "table_comment": (
        "COMMENT ON TABLE \"{s}\".orders IS 'customer orders'",
        {("comment", "orders", "extra")},
    ),
    "column_comment": (
        "COMMENT ON COLUMN \"{s}\".orders.status IS 'see ck_orders_status'",
        {("comment", "orders.status", "extra")},
    ),
    "sequence_options": (
        'ALTER SEQUENCE "{s}".inventory_transactions_id_seq INCREMENT BY 10',
        {("sequence", "inventory_transactions_id_seq", "changed")},
    ),
    "missing_index": (
        'DROP INDEX "{s}".ix_orders_status',
        {("index", "ix_orders_status", "missing")},
    ),
    "extension_objects": (
        'CREATE EXTENSION citext SCHEMA "{s}"',
        set(),  # an extension's types and functions are the extension's, not drift
    ),
}


@pytest.fixture(scope="module")
def drifted(admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    tuple[Settings, DriftReport, str]
]:  # fmt: skip
    """One database: a clean tenant and one tenant per mutation; drift run once."""
    name = f"tm_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(
        make_url(admin_url).set(drivername="postgresql+psycopg2"),
        isolation_level="AUTOCOMMIT",
        poolclass=sa.NullPool,
    )
    reader = f"tm_reader_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        conn.exec_driver_sql(f'CREATE ROLE "{reader}"')
    url = make_url(admin_url).set(drivername="postgresql+psycopg2", database=name)
    database_url = url.render_as_string(hide_password=False)
    settings = load_settings(
        config_file=CONFIG,
        database_url=database_url,
        home=tmp_path_factory.mktemp("drift") / "home",
    )
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    try:
        assert api.upgrade(settings, api.Selection.shared_only()).succeeded
        api.create_tenants(settings, ["clean", *MUTATIONS])
        with engine.begin() as conn:
            for tenant, (statement, _) in MUTATIONS.items():
                conn.exec_driver_sql(statement.format(s=tenant, reader=f'"{reader}"'))
            # An extension's views in the shared schema (as pg_stat_statements' or Citus's
            # are) are the extension's: not drift.
            conn.exec_driver_sql("CREATE EXTENSION pg_stat_statements SCHEMA public")
        yield settings, api.drift(settings), reader
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{reader}"')
        admin.dispose()


def _by_name(report: DriftReport) -> dict[str, SchemaDrift]:
    return {d.name: d for d in report.drifted}


@pytest.mark.parametrize("tenant", sorted(MUTATIONS))
def test_each_kind_of_change_is_found_and_nothing_else(
    drifted: tuple[Settings, DriftReport, str], tenant: str
) -> None:
    _settings, report, _reader = drifted
    expected = MUTATIONS[tenant][1]
    found = _by_name(report).get(tenant)
    seen = {(d.kind, d.object, d.change) for d in found.differences} if found else set()
    assert seen == expected
    if found is not None:
        assert found.version_drift is None


def test_the_clean_tenant_and_the_shared_schema_have_no_drift(
    drifted: tuple[Settings, DriftReport, str],
) -> None:
    _settings, report, _reader = drifted
    assert "clean" not in _by_name(report)
    assert report.shared is not None and not report.shared.drifted
    assert report.tenants_checked == len(MUTATIONS) + 1


def test_privileges_owners_and_comments_can_be_left_out(
    drifted: tuple[Settings, DriftReport, str],
) -> None:
    settings, _report, _reader = drifted
    relaxed = settings.with_options(drift_ignore=frozenset({"privileges", "owner", "comment"}))
    names = set(_by_name(api.drift(relaxed)))
    assert not names & {"grant", "schema_grant", "owner", "table_comment", "column_comment"}
    assert "policy" in names and "missing_index" in names
    cli = run_cli("drift", "--ignore", "privileges", "--json", url=settings.database_url)
    assert cli.returncode == 2
    assert json.loads(cli.stdout)["ignored"] == ["privileges"]
    bad = run_cli("drift", "--ignore", "indexes", url=settings.database_url)
    assert bad.returncode == 1


def test_the_suggested_statement_fixes_what_it_names(settings: Settings, engine: sa.Engine) -> None:
    assert api.upgrade(settings, api.Selection.shared_only()).succeeded
    api.create_tenants(settings, ["acme", "globex", "initech"])
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX acme.ix_orders_status")
        conn.exec_driver_sql("ALTER TABLE globex.orders DROP COLUMN total_amount")
        conn.exec_driver_sql("ALTER TABLE initech.orders DROP CONSTRAINT ck_orders_status")
    report = api.drift(settings)
    groups = report.groups()
    assert len(groups) == 3
    with engine.begin() as conn:
        for group in groups:
            (statement,) = group.suggested_sql()
            for tenant in group.tenants:
                conn.exec_driver_sql(f'SET LOCAL search_path TO "{tenant.schema}"')
                conn.exec_driver_sql(statement)
    assert not api.drift(settings).any_drift


# tenant -> what was done by hand to the keys of its tables (unique constraints and the indexes
# behind them, primary keys and the foreign keys that need them, exclusion constraints).
KEY_MUTATIONS: dict[str, list[str]] = {
    "dropped_unique": ["ALTER TABLE {s}.locations DROP CONSTRAINT uq_locations_code"],
    "dropped_unique_index": ["DROP INDEX {s}.ix_inventory_items_sku"],
    # CASCADE drops the two foreign keys to it: they can only come back after it.
    "dropped_primary_key": ["ALTER TABLE {s}.locations DROP CONSTRAINT locations_pkey CASCADE"],
    "extra_unique": ["ALTER TABLE {s}.locations ADD CONSTRAINT uq_locations_name UNIQUE (name)"],
    "extra_exclusion": [
        "ALTER TABLE {s}.locations ADD CONSTRAINT ex_locations_code EXCLUDE USING btree"
        " (code WITH =)"
    ],
    # A constraint swapped for a plain unique index of the same name, and the reverse.
    "swapped": [
        "ALTER TABLE {s}.locations DROP CONSTRAINT uq_locations_code",
        "CREATE UNIQUE INDEX uq_locations_code ON {s}.locations (code)",
        "DROP INDEX {s}.ix_inventory_items_sku",
        "ALTER TABLE {s}.inventory_items ADD CONSTRAINT ix_inventory_items_sku UNIQUE (sku)",
    ],
    # Everything at once, plus an extra foreign key that needs the extra unique constraint and
    # a dropped column that takes its index along.
    "all_at_once": [
        "ALTER TABLE {s}.locations DROP CONSTRAINT locations_pkey CASCADE",
        "ALTER TABLE {s}.locations DROP CONSTRAINT uq_locations_code",
        "DROP INDEX {s}.ix_inventory_items_sku",
        "ALTER TABLE {s}.locations ADD CONSTRAINT uq_locations_name UNIQUE (name)",
        "ALTER TABLE {s}.inventory_transactions ADD CONSTRAINT fk_transactions_reference"
        " FOREIGN KEY (reference) REFERENCES {s}.locations (name)",
        "ALTER TABLE {s}.locations ADD CONSTRAINT ex_locations_code EXCLUDE USING btree"
        " (code WITH =)",
        "ALTER TABLE {s}.inventory_items DROP COLUMN barcode",
    ],
    # Re-made under the same names: a check, an index, a unique constraint's index options (no
    # foreign key needs that key), and a primary key whose foreign keys went with it.
    "remade": [
        "ALTER TABLE {s}.orders DROP CONSTRAINT ck_orders_status,"
        " ADD CONSTRAINT ck_orders_status CHECK (status <> 'x')",
        "DROP INDEX {s}.ix_orders_status",
        "CREATE INDEX ix_orders_status ON {s}.orders (created_at)",
        "ALTER INDEX {s}.uq_locations_code SET (fillfactor = 70)",
        "ALTER TABLE {s}.locations DROP CONSTRAINT locations_pkey CASCADE,"
        " ADD CONSTRAINT locations_pkey PRIMARY KEY (id, code)",
    ],
    # A primary key the foreign keys still depend on: dropping it to re-make it would be
    # refused, so no fix is named (rather than one that fails).
    "needed_key": ["ALTER INDEX {s}.locations_pkey SET (fillfactor = 70)"],
}


def test_one_fix_per_key_difference_runs_in_the_order_given(
    settings: Settings, engine: sa.Engine
) -> None:
    """A dropped unique constraint is one difference with one fix (not an ADD CONSTRAINT and a
    CREATE UNIQUE INDEX that then collides with it); an extra one is dropped as a constraint
    (DROP INDEX on its index fails); keys come back before the foreign keys that need them and
    foreign keys go before the keys they need. Every suggestion, run in the order given, in one
    transaction, leaves no drift."""
    assert api.upgrade(settings, api.Selection.shared_only()).succeeded
    api.create_tenants(settings, list(KEY_MUTATIONS))
    with engine.begin() as conn:
        for tenant, statements in KEY_MUTATIONS.items():
            for statement in statements:
                conn.exec_driver_sql(statement.format(s=f'"{tenant}"'))
    report = api.drift(settings)
    by_name = _by_name(report)
    assert set(by_name) == set(KEY_MUTATIONS)
    found = {
        name: [(d.kind, d.object, d.change) for d in drift.differences]
        for name, drift in by_name.items()
    }
    assert found["dropped_unique"] == [("constraint", "locations.uq_locations_code", "missing")]
    assert found["dropped_unique_index"] == [("index", "ix_inventory_items_sku", "missing")]
    assert found["extra_unique"] == [("constraint", "locations.uq_locations_name", "extra")]
    assert found["extra_exclusion"] == [("constraint", "locations.ex_locations_code", "extra")]
    assert found["needed_key"] == [("constraint", "locations.locations_pkey", "changed")]
    assert by_name["needed_key"].differences[0].suggested_sql is None
    for drift in by_name.values():
        assert drift.version_drift is None
        if drift.name != "needed_key":  # one fix per difference, none left without one here
            assert all(d.suggested_sql for d in drift.differences), drift.differences
    (drop,) = [d.suggested_sql for d in by_name["extra_unique"].differences]
    assert drop == "ALTER TABLE locations DROP CONSTRAINT uq_locations_name;"
    key_first = [d.object for d in by_name["dropped_primary_key"].differences]
    assert key_first[0] == "locations.locations_pkey" and len(key_first) == 3
    groups = report.groups()
    assert len(groups) == len(KEY_MUTATIONS)
    with engine.begin() as conn:
        for group in groups:
            for tenant in group.tenants:
                conn.exec_driver_sql(f'SET LOCAL search_path TO "{tenant.schema}"')
                for statement in group.suggested_sql():
                    conn.exec_driver_sql(statement)
    after = api.drift(settings)
    assert [d.name for d in after.drifted] == ["needed_key"], after.drifted


def test_report_order_header_and_formats_agree(
    settings: Settings, engine: sa.Engine, tmp_path: Path
) -> None:
    assert api.upgrade(settings, api.Selection.shared_only()).succeeded
    api.create_tenants(settings, ["a1", "a2", "a3", "b1", "c1"])
    api.downgrade(settings, api.Selection.named(["c1"]), "001_initial_schema")
    with engine.begin() as conn:
        for schema in ("a1", "a2", "a3"):  # the largest group, but the least serious
            conn.exec_driver_sql(f"COMMENT ON TABLE {schema}.orders IS 'x'")
        conn.exec_driver_sql("DROP TABLE b1.audit_logs")
    url = settings.database_url
    assert url is not None
    text = run_cli("drift", "--html", str(tmp_path / "drift.html"), url=url)
    as_json = json.loads(run_cli("drift", "--json", url=url).stdout)
    assert text.returncode == 2
    titles = [g["title"] for g in as_json["groups"]]
    assert titles == [
        "1 revision(s) behind",
        "missing table audit_logs",
        "extra comment orders",
    ]
    # Text and HTML show the same groups in the same order.
    positions = [text.stdout.index(t) for t in titles]
    assert positions == sorted(positions)
    page = (tmp_path / "drift.html").read_text()
    assert [page.index(t) for t in titles] == sorted(page.index(t) for t in titles)
    # The header: which database (password masked), when, and the shared schema's state.
    database = make_url(url).database
    assert database is not None and database in as_json["database"]
    assert database in text.stdout.splitlines()[0] and database in page
    assert "shared schema public: no drift" in text.stdout
    assert as_json["generated_at"][:4].isdigit()
