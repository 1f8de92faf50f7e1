"""Bulk drops sized to the server's lock table, not to a fixed number of tenants.

DROP SCHEMA CASCADE takes a lock per object; 25 schemas of a few hundred tables each need more
entries than the whole lock table holds, and a fixed batch of 25 failed with "out of shared
memory". The schemas here are built so that the 25 together need about twice the server's lock
table while one needs well under a quarter of it, whatever the server's settings.
"""

from __future__ import annotations

import json

import sqlalchemy as sa

from tenantmig.run.bulk import plan_batches
from tenantmig.schema.lockbudget import LOCK_TABLE_SHARE, drop_costs, lock_budget
from tenantmig.schema.registry import Tenant
from tests.helpers import run_cli

NAMES = [f"big{i:02d}" for i in range(25)]
# Objects per table with a primary key: the table, its row and array types, the key's index
# and constraint.
OBJECTS_PER_TABLE = 5


def test_a_drop_of_tenants_bigger_than_the_lock_table_is_cut_into_batches_that_fit(
    database_url: str, engine: sa.Engine
) -> None:
    assert run_cli("upgrade", "--shared", url=database_url).returncode == 0
    created = run_cli("tenants", "create", *NAMES, "--no-migrate", url=database_url)
    assert created.returncode == 0, created.stderr
    with engine.connect() as conn:
        budget = lock_budget(conn)
    lock_table = budget * LOCK_TABLE_SHARE
    tables = lock_table * 2 // len(NAMES) // OBJECTS_PER_TABLE
    for name in NAMES:
        with engine.begin() as conn:  # one schema per transaction: each fits the lock table
            conn.execute(
                sa.text(
                    f"DO $$ BEGIN FOR i IN 1..{tables} LOOP EXECUTE format("
                    f"'CREATE TABLE {name}.t%s (id int PRIMARY KEY)', i); END LOOP; END $$"
                )
            )
    with engine.connect() as conn:
        costs = drop_costs(conn, NAMES)
    # All in one transaction would need more than the whole lock table; one fits the budget.
    assert sum(costs.values()) > lock_table
    assert max(costs.values()) <= budget

    dropped = run_cli("tenants", "drop", *NAMES, "--yes", "--json", url=database_url)
    assert dropped.returncode == 0, dropped.stderr
    assert json.loads(dropped.stdout)
    with engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT count(*) FROM pg_namespace WHERE nspname = ANY(:n)"), {"n": NAMES}
        ).scalar()
        registered = conn.execute(
            sa.text("SELECT count(*) FROM public.tenants WHERE name = ANY(:n)"), {"n": NAMES}
        ).scalar()
    assert left == 0 and registered == 0


def _tenant(name: str, database: str = "control") -> Tenant:
    return Tenant(name=name, schema=name, status="active", database=database)


def test_batches_keep_order_fit_each_databases_budget_and_never_leave_a_tenant_out() -> None:
    tenants = [_tenant("a"), _tenant("b", "eu"), _tenant("c"), _tenant("d", "eu"), _tenant("e")]
    costs = {("control", "a"): 40, ("eu", "b"): 70, ("control", "c"): 70, ("eu", "d"): 40}
    batches = plan_batches(tenants, costs, {"control": 100, "eu": 100})
    # a+c would be 110 in control: cut before c; b+d would be 110 in eu: cut before d.
    assert [[t.name for t in b] for b in batches] == [["a", "b"], ["c", "d", "e"]]
    # A tenant over the budget alone is a batch of its own; the cap on tenants holds too.
    huge = plan_batches(tenants[:3], {("control", "c"): 500}, {"control": 100, "eu": 100})
    assert [[t.name for t in b] for b in huge] == [["a", "b"], ["c"]]
    capped = plan_batches(tenants, {}, {"control": 100, "eu": 100}, most=2)
    assert [len(b) for b in capped] == [2, 2, 1]
