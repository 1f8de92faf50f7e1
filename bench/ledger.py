"""Benchmark: a ledger of 1,000 tenants x 1,000 runs (1 M rows), read and pruned.

    python bench/ledger.py                       # embedded PostgreSQL under bench/out/pg
    python bench/ledger.py --tenants 1000 --runs 1000 --database-url postgresql://...

Two databases are built the same way: the shared schema at head, N tenants registered and
migrated to the first revision, and a ledger of R finished runs over all N tenants (one row per
tenant per run), the runs started one a day, the last today. Then, each a new process as a user
runs it:

  runs show      `tenantmig runs show LAST --json` (N rows)
  status         `tenantmig status --json` (the last-run column reads the ledger)
  prune          `tenantmig runs prune --older-than D --yes` removing 90 % of the runs
  run alone      `tenantmig upgrade --all-tenants` (first revision to head) on database A
  run + prune    the same run on database B with the prune going on beside it

Targets: runs show and status under 1 s, the prune under 60 s, the run beside the prune about
as fast as alone (the ratio is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "alembic.ini"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "src"))

from tenantmig.server.embedded import start  # noqa: E402

FIRST = "001_initial_schema"


def tenantmig(url: str, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = {**os.environ, "TENANTMIG_DATABASE_URL": url}
    began = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "tenantmig"), "--config", str(CONFIG), *args],
        env=env, cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"tenantmig {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return elapsed, done


def build(admin_url: str, tenants: int, runs: int) -> str:
    name = f"bench_ledger_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    tenantmig(url, "upgrade", "--shared", "-q")
    names = [f"t{i:05d}" for i in range(tenants)]
    for start_at in range(0, tenants, 500):
        tenantmig(url, "tenants", "create", *names[start_at : start_at + 500], "--no-migrate")
    tenantmig(url, "upgrade", "--all-tenants", FIRST, "-q")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        # R finished runs, one a day, the last today; each over every tenant, all ok.
        conn.execute(
            sa.text(
                "INSERT INTO tenantmig_runs (command, scope, target, host, pid, started_at,"
                " finished_at, outcome)"
                " SELECT 'upgrade', 'all-tenants', 'head', 'bench', 0,"
                " now() - make_interval(days => :r - g), now() - make_interval(days => :r - g),"
                " 'succeeded' FROM generate_series(1, :r) AS g"
            ),
            {"r": runs},
        )
        conn.execute(
            sa.text(
                "INSERT INTO tenantmig_run_tenants (run_id, tenant, schema_name, from_revision,"
                " to_revision, status, attempts, duration_s)"
                " SELECT r.id, t.name, t.schema_name, :first, :first, 'ok', 1, 0.1"
                " FROM tenantmig_runs r CROSS JOIN tenants t WHERE r.host = 'bench'"
            ),
            {"first": FIRST},
        )
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
            "VACUUM ANALYZE tenantmig_run_tenants"
        )
        rows = conn.execute(sa.text("SELECT count(*) FROM tenantmig_run_tenants")).scalar_one()
    engine.dispose()
    print(f"built {name}: {tenants} tenants, {runs} runs, {rows} ledger rows", flush=True)
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--database-url", help="superuser URL (default: embedded server)")
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    admin_url = args.database_url
    if admin_url is None:
        _provider, server = start(REPO / "bench" / "out" / "pg", cleanup_mode=None)
        admin_url = server.get_uri()
    admin_url = (
        make_url(admin_url)
        .set(drivername="postgresql+psycopg2")
        .render_as_string(hide_password=False)
    )
    keep_days = max(1, args.runs // 10)  # 90 % of the runs are older
    alone_url = build(admin_url, args.tenants, args.runs)
    beside_url = build(admin_url, args.tenants, args.runs)

    last = tenantmig(beside_url, "runs", "list", "--limit", "1", "--json")[1].stdout
    last_id = json.loads(last)[0]["run_id"]
    show_s, _ = tenantmig(beside_url, "runs", "show", str(last_id), "--json")
    status_s, _ = tenantmig(beside_url, "status", "--json")

    alone_s, _ = tenantmig(alone_url, "upgrade", "--all-tenants", "-q")
    env = {**os.environ, "TENANTMIG_DATABASE_URL": beside_url}
    began = time.perf_counter()
    pruning = subprocess.Popen(
        [str(BIN / "tenantmig"), "--config", str(CONFIG), "runs", "prune",
         "--older-than", f"{keep_days}d", "--yes", "--json"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    beside_s, _ = tenantmig(beside_url, "upgrade", "--all-tenants", "-q")
    out, err = pruning.communicate()
    prune_s = time.perf_counter() - began
    if pruning.returncode != 0:
        raise SystemExit(f"runs prune exited {pruning.returncode}: {err}")
    pruned = json.loads(out)
    print(f"runs show {last_id} ({args.tenants} rows): {show_s:.2f} s (target < 1 s)")
    print(f"status ({args.tenants} tenants, last-run column): {status_s:.2f} s (target < 1 s)")
    print(
        f"runs prune --older-than {keep_days}d: {pruned['removed_runs']} runs, "
        f"{pruned['removed_tenant_rows']} rows in {prune_s:.1f} s (target < 60 s)"
    )
    print(
        f"upgrade --all-tenants alone {alone_s:.1f} s, beside the prune {beside_s:.1f} s "
        f"(ratio {beside_s / alone_s:.2f})"
    )


if __name__ == "__main__":
    main()
