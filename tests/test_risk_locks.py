"""The lock each statement takes, as ``risk.classify`` says it, against what PostgreSQL holds:
every statement of the corpus runs in a transaction that is rolled back, and the table locks
its backend holds (``pg_locks``) are compared, table by table; the effects are checked too."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from tenantmig.risk.classify import assess
from tenantmig.risk.statements import LOCK_MODES, Catalog

SCHEMA = "risk_locks"
SETUP = f"""
CREATE SCHEMA {SCHEMA};
SET search_path TO {SCHEMA};
CREATE TABLE parents (id int PRIMARY KEY);
CREATE TABLE items (id int PRIMARY KEY, name varchar(20), price int, qty numeric(10,2),
                    note text, parent_id int);
CREATE TABLE children (id int PRIMARY KEY, parent_id int);
CREATE INDEX items_name_idx ON items (name);
CREATE UNIQUE INDEX items_name_unique ON items (name);
ALTER TABLE items ADD CONSTRAINT items_price_check CHECK (price >= 0) NOT VALID;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
"""
AE, SRE, SUE, SH, RE = (
    "ACCESS EXCLUSIVE", "SHARE ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE", "ROW EXCLUSIVE"
)  # fmt: skip

# (statement, {table: strongest lock}, effect)
CORPUS: list[tuple[str, dict[str, str], str]] = [
    ("ALTER TABLE items ADD COLUMN color text", {"items": AE}, "metadata-only"),
    ("ALTER TABLE items ADD COLUMN at timestamptz DEFAULT now()", {"items": AE}, "metadata-only"),
    ("ALTER TABLE items ADD COLUMN token float8 DEFAULT random()", {"items": AE}, "rewrite"),
    ("ALTER TABLE items ADD COLUMN seq bigserial", {"items": AE}, "rewrite"),
    ("ALTER TABLE items ADD COLUMN n int GENERATED ALWAYS AS IDENTITY", {"items": AE}, "rewrite"),
    ("ALTER TABLE items ALTER COLUMN price TYPE bigint", {"items": AE}, "rewrite"),
    (
        "ALTER TABLE items ALTER COLUMN price TYPE bigint USING price * 100",
        {"items": AE},
        "rewrite",
    ),
    ("ALTER TABLE items ALTER COLUMN name TYPE varchar(40)", {"items": AE}, "metadata-only"),
    ("ALTER TABLE items ALTER COLUMN name TYPE text", {"items": AE}, "metadata-only"),
    ("ALTER TABLE items ALTER COLUMN name TYPE varchar(10)", {"items": AE}, "rewrite"),
    ("ALTER TABLE items ALTER COLUMN qty TYPE numeric(12,2)", {"items": AE}, "metadata-only"),
    ("ALTER TABLE items ALTER COLUMN qty TYPE numeric(12,4)", {"items": AE}, "rewrite"),
    ("ALTER TABLE items ALTER COLUMN note SET NOT NULL", {"items": AE}, "scan"),
    ("ALTER TABLE items ALTER COLUMN note DROP NOT NULL", {"items": AE}, "metadata-only"),
    ("ALTER TABLE items ALTER COLUMN price SET DEFAULT 0", {"items": AE}, "metadata-only"),
    ("ALTER TABLE items ADD CONSTRAINT p_pos CHECK (price > 0)", {"items": AE}, "scan"),
    (
        "ALTER TABLE items ADD CONSTRAINT p_pos CHECK (price > 0) NOT VALID",
        {"items": AE},
        "metadata-only",
    ),
    ("ALTER TABLE items VALIDATE CONSTRAINT items_price_check", {"items": SUE}, "scan"),
    (
        "ALTER TABLE children ADD CONSTRAINT fk FOREIGN KEY (parent_id) REFERENCES parents (id)",
        {"children": SRE, "parents": SRE},
        "scan",
    ),
    (
        "ALTER TABLE children ADD CONSTRAINT fk FOREIGN KEY (parent_id) REFERENCES parents (id)"
        " NOT VALID",
        {"children": SRE, "parents": SRE},
        "metadata-only",
    ),
    ("ALTER TABLE items ADD CONSTRAINT items_name_key UNIQUE (name)", {"items": AE}, "scan"),
    (
        "ALTER TABLE items ADD CONSTRAINT items_name_key UNIQUE USING INDEX items_name_unique",
        {"items": AE},
        "metadata-only",
    ),
    ("CREATE INDEX items_price_idx ON items (price)", {"items": SH}, "scan"),
    ("CREATE UNIQUE INDEX items_name_uq ON items (name)", {"items": SH}, "scan"),
    ("ALTER TABLE items DROP COLUMN note", {"items": AE}, "destructive"),
    ("DROP TABLE children", {"children": AE}, "destructive"),
    ("TRUNCATE items", {"items": AE}, "destructive"),
    ("ALTER TABLE items RENAME COLUMN note TO remark", {"items": AE}, "metadata-only"),
    ("ALTER TABLE items RENAME TO goods", {"items": AE}, "metadata-only"),
    (
        "CREATE TRIGGER t BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION touch()",
        {"items": SRE},
        "metadata-only",
    ),
    ("ALTER TABLE items DISABLE TRIGGER ALL", {"items": SRE}, "metadata-only"),
    ("COMMENT ON TABLE items IS 'goods'", {"items": SUE}, "metadata-only"),
    ("COMMENT ON COLUMN items.note IS 'free text'", {"items": SUE}, "metadata-only"),
    ("ALTER TABLE items ALTER COLUMN price SET STATISTICS 500", {"items": SUE}, "metadata-only"),
    ("ALTER TABLE items SET (fillfactor = 70)", {"items": SUE}, "metadata-only"),
    ("ALTER TABLE items SET UNLOGGED", {"items": AE}, "rewrite"),
    ("UPDATE items SET price = 0", {"items": RE}, "scan"),
    ("UPDATE items SET price = 0 WHERE id = 1", {"items": RE}, "scan"),
    ("DELETE FROM items", {"items": RE}, "destructive"),
    ("INSERT INTO items (id) VALUES (1)", {"items": RE}, "metadata-only"),
    ("CREATE TABLE extra (id int REFERENCES parents (id))", {"parents": SRE}, "metadata-only"),
    ("CREATE TABLE fresh (id int PRIMARY KEY)", {}, "metadata-only"),
]
_MODES = {m.title().replace(" ", "") + "Lock": m for m in LOCK_MODES}


@pytest.fixture()
def conn(engine: sa.Engine) -> Any:
    with engine.connect() as connection:
        with connection.begin():
            connection.exec_driver_sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
            connection.exec_driver_sql(SETUP)
        yield connection
        with connection.begin():
            connection.exec_driver_sql(f"DROP SCHEMA {SCHEMA} CASCADE")


def _tables(conn: Any) -> dict[int, str]:
    """The schema's tables as they are before the statement (it may drop or rename them; the
    tables it creates are new, nobody else waits for them)."""
    rows = conn.exec_driver_sql(
        f"SELECT oid::int, relname FROM pg_class WHERE relnamespace = '{SCHEMA}'::regnamespace"
        " AND relkind IN ('r', 'p')"
    ).all()
    return {oid: name for oid, name in rows}


def _held(conn: Any, tables: dict[int, str]) -> dict[str, str]:
    rows = conn.exec_driver_sql(
        "SELECT relation::int, mode FROM pg_locks WHERE pid = pg_backend_pid()"
        " AND locktype = 'relation'"
    ).all()
    strongest: dict[str, str] = {}
    for oid, mode in rows:
        if oid not in tables:
            continue
        name = tables[oid]
        mode = _MODES[mode]
        if name not in strongest or LOCK_MODES.index(mode) > LOCK_MODES.index(strongest[name]):
            strongest[name] = mode
    return strongest


@pytest.mark.parametrize(("sql", "locks", "effect"), CORPUS, ids=[c[0][:60] for c in CORPUS])
def test_the_lock_and_effect_of_each_statement(
    conn: Any, sql: str, locks: dict[str, str], effect: str
) -> None:
    with conn.begin() as transaction:
        conn.exec_driver_sql(f"SET LOCAL search_path TO {SCHEMA}")

        def ask(query: str, params: dict[str, Any]) -> list[Any]:
            return list(conn.execute(sa.text(query), params).all())

        (assessed,) = assess(sql, Catalog(ask))
        tables = _tables(conn)
        before = _held(conn, tables)  # the catalog reads take no lock on the tables
        conn.exec_driver_sql(sql)
        held = _held(conn, tables)
        transaction.rollback()
    assert before == {}
    assert held == locks, (sql, held)  # what PostgreSQL holds: the expectation is right
    said = {t: m for t, m in assessed.locks.items() if t in tables.values()}
    assert said == held, (sql, assessed.locks)  # and the classifier says the same
    assert assessed.effect == effect, (sql, assessed.why)
