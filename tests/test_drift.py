"""Drift: exactly the mutated tenants and objects are reported, nothing else."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from tenantmig import api
from tenantmig.server import embedded
from tenantmig.server.config import Settings
from tests.helpers import TENANT_HEAD, run_cli, schemas
from tests.test_engine import make_tenants, names

# tenant -> (SQL run in it, (kind, object, change) that drift must report)
MUTATIONS: dict[str, tuple[str, tuple[str, str, str]]] = {
    "t001": ("DROP INDEX {s}.ix_orders_status", ("index", "ix_orders_status", "missing")),
    "t002": ("CREATE INDEX ix_extra ON {s}.users (full_name)", ("index", "ix_extra", "extra")),
    "t003": (
        "ALTER TABLE {s}.users DROP COLUMN full_name",
        ("column", "users.full_name", "missing"),
    ),
    "t004": ("ALTER TABLE {s}.orders ADD COLUMN notes text", ("column", "orders.notes", "extra")),
    "t005": (
        "ALTER TABLE {s}.orders DROP CONSTRAINT ck_orders_status",
        ("constraint", "orders.ck_orders_status", "missing"),
    ),
    "t006": (
        "ALTER TABLE {s}.order_items DROP CONSTRAINT order_items_order_id_fkey",
        ("constraint", "order_items.order_items_order_id_fkey", "missing"),
    ),
    "t007": (
        "ALTER TABLE {s}.orders ALTER COLUMN total_amount TYPE numeric(14,2)",
        ("column", "orders.total_amount", "changed"),
    ),
    "t008": (
        "ALTER TABLE {s}.users ALTER COLUMN full_name SET NOT NULL",
        ("column nullability", "users.full_name", "changed"),
    ),
    "t009": (
        "ALTER TABLE {s}.orders ALTER COLUMN status SET DEFAULT 'confirmed'",
        ("column default", "orders.status", "changed"),
    ),
    "t010": ("DROP TABLE {s}.audit_logs", ("table", "audit_logs", "missing")),
    "t011": ("CREATE TABLE {s}.scratch (id int)", ("table", "scratch", "extra")),
    "t012": ("CREATE SEQUENCE {s}.stray_seq", ("sequence", "stray_seq", "extra")),
    "t013": (
        "ALTER TABLE {s}.locations ADD CONSTRAINT uq_locations_name UNIQUE (name)",
        ("constraint", "locations.uq_locations_name", "extra"),
    ),
    "t014": (
        "ALTER TABLE {s}.locations DROP CONSTRAINT locations_pkey CASCADE",
        ("constraint", "locations.locations_pkey", "missing"),
    ),
    # Same names, different definitions: the fingerprint must still tell them apart.
    "t017": (
        "DROP INDEX {s}.ix_orders_status; CREATE INDEX ix_orders_status ON {s}.orders (created_at)",
        ("index", "ix_orders_status", "changed"),
    ),
    "t018": (
        "ALTER TABLE {s}.orders DROP CONSTRAINT ck_orders_status, ADD CONSTRAINT ck_orders_status"
        " CHECK (status IN ('pending', 'confirmed'))",
        ("constraint", "orders.ck_orders_status", "changed"),
    ),
    "t019": (
        "ALTER TABLE {s}.order_items DROP CONSTRAINT order_items_order_id_fkey, ADD CONSTRAINT "
        "order_items_order_id_fkey FOREIGN KEY (order_id) REFERENCES {s}.orders (id)",
        ("constraint", "order_items.order_items_order_id_fkey", "changed"),
    ),
}
UNTOUCHED = ["t020", "t021", "t022"]


def mutate(engine: sa.Engine, schema: str, sql: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(sql.format(s=f'"{schema}"'))


@pytest.fixture()
def head_tenants(settings: Settings, engine: sa.Engine) -> Settings:
    make_tenants(settings, [*MUTATIONS, "t015", "t016", *UNTOUCHED], "head")
    for tenant, (sql, _) in MUTATIONS.items():
        mutate(engine, tenant, sql)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE \"t015\".alembic_version SET version_num = 'zzz_future'")
        conn.exec_driver_sql('DROP SCHEMA "t016" CASCADE')
    return settings


def test_structural_and_version_drift_report_exactly_the_mutations(
    head_tenants: Settings, engine: sa.Engine
) -> None:
    report = api.drift(head_tenants)
    by_name = {d.name: d for d in report.drifted}
    assert set(by_name) == {*MUTATIONS, "t015", "t016"}  # untouched tenants are not reported
    assert report.tenants_checked == len(MUTATIONS) + 2 + len(UNTOUCHED)
    for tenant, (_, (kind, obj, change)) in MUTATIONS.items():
        found = {(d.kind, d.object, d.change) for d in by_name[tenant].differences}
        assert (kind, obj, change) in found, (tenant, found)
        assert by_name[tenant].version_drift is None
    # Exactly one difference where one thing changed (no collateral noise).
    for tenant in ("t001", "t002", "t003", "t004", "t005", "t007", "t008", "t009", "t012"):
        assert len(by_name[tenant].differences) == 1, by_name[tenant].differences
    changed = by_name["t007"].differences[0]
    assert (changed.expected, changed.actual) == ("numeric(12,2)", "numeric(14,2)")
    # A dropped table is one difference, not one per column, index, constraint and sequence.
    assert [(d.kind, d.object) for d in by_name["t010"].differences] == [("table", "audit_logs")]
    assert by_name["t015"].version_drift == "unknown_revision"
    assert by_name["t016"].version_drift == "missing_schema"
    assert report.shared is not None and not report.shared.drifted
    assert "tenantmig_reference" not in schemas(engine)  # built in a rolled-back transaction


def test_drift_at_an_older_revision_compares_against_that_revision(
    settings: Settings, engine: sa.Engine
) -> None:
    make_tenants(settings, names(4), "001_initial_schema")
    mutate(engine, "t002", "DROP INDEX {s}.ix_orders_user_id")
    report = api.drift(settings)
    by_name = {d.name: d for d in report.drifted}
    assert set(by_name) == set(names(4))  # all are behind head
    assert {d.version_drift for d in report.drifted} == {"behind"}
    assert [d.differences for n, d in by_name.items() if n != "t002"] == [(), (), ()]
    assert [(d.kind, d.object, d.change) for d in by_name["t002"].differences] == [
        ("index", "ix_orders_user_id", "missing")
    ]


def test_cli_json_text_html_and_exit_codes(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, names(6), "head")
    clean = run_cli("drift", url=database_url)
    assert clean.returncode == 0, clean.stderr
    assert "no drift" in clean.stdout
    for tenant in ("t001", "t002", "t003"):
        mutate(engine, tenant, "DROP INDEX {s}.ix_orders_status")
    html_file = tmp_path / "drift.html"
    done = run_cli("drift", "--json", "--html", str(html_file), url=database_url)
    assert done.returncode == 2, done.stderr
    report = json.loads(done.stdout)
    assert report["head"] == TENANT_HEAD and report["tenants_checked"] == 6
    assert sorted(d["name"] for d in report["drifted"]) == ["t001", "t002", "t003"]
    first = report["drifted"][0]
    assert set(first) >= {"name", "schema", "revision", "version_drift", "differences"}
    assert first["differences"][0]["kind"] == "index"
    assert first["differences"][0]["object"] == "ix_orders_status"
    assert "CREATE INDEX ix_orders_status ON orders" in first["differences"][0]["expected"]
    assert first["differences"][0]["actual"] is None
    page = html_file.read_text()
    assert page.startswith("<!doctype html>") and "ix_orders_status" in page and "t003" in page
    assert "<script" not in page and "http" not in page.split("</head>")[0]
    text = run_cli("drift", url=database_url)
    # Three tenants with the same drift are one group, not three, headed by what is wrong.
    assert "missing index ix_orders_status (3 tenant(s))" in text.stdout
    assert "tenants: t001, t002, t003" in text.stdout
    assert text.stdout.count("CREATE INDEX ix_orders_status ON orders USING btree (status);") == 1
    only = run_cli("drift", "--tenant", "t004", url=database_url)
    assert only.returncode == 0 and "1 tenant(s) checked" in only.stdout


def _pg_dump() -> str:
    return str(embedded.bin_dirs()[0] / "pg_dump")  # the newest installed: dumps any server


def _dump_schema(database_url: str, schema: str) -> list[str]:
    url = sa.engine.make_url(database_url)
    env_url = url.set(drivername="postgresql").render_as_string(hide_password=False)
    out = subprocess.run(
        [_pg_dump(), "--schema-only", "--no-owner", "-n", schema, env_url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = []
    for line in out.splitlines():
        if not line or line.startswith("--") or line.startswith("SET ") or "pg_catalog" in line:
            continue
        lines.append(re.sub(rf"\b{schema}\.", "S.", line).replace(f"SCHEMA {schema}", "SCHEMA S"))
    return lines


def test_agrees_with_pg_dump_schema_comparison(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    make_tenants(settings, ["mutated", "pristine"], "head")
    mutate(engine, "mutated", "DROP INDEX {s}.ix_inventory_items_barcode")
    mutate(engine, "mutated", "ALTER TABLE {s}.locations ADD COLUMN region text")
    dump_a, dump_b = _dump_schema(database_url, "mutated"), _dump_schema(database_url, "pristine")
    only_pristine = [line for line in dump_b if line not in dump_a]
    only_mutated = [line for line in dump_a if line not in dump_b]
    assert any("ix_inventory_items_barcode" in line for line in only_pristine)
    assert any("region text" in line for line in only_mutated)
    report = api.drift(settings)
    assert [d.name for d in report.drifted] == ["mutated"]
    found = {(d.kind, d.object, d.change) for d in report.drifted[0].differences}
    assert found == {
        ("index", "ix_inventory_items_barcode", "missing"),
        ("column", "locations.region", "extra"),
    }
