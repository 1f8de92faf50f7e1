"""Benchmark: the run's queue order, largest tenants first (--order size) against by name.

    python bench/order.py                       # embedded PostgreSQL under bench/out/pg_order
    python bench/order.py --database-url postgresql://postgres@127.0.0.1:5433/postgres
    python bench/order.py --tenants 400 --big 8 --rows 2000 --factor 100 --jobs 2 --jobs 4

One database: the shared schema at head and --tenants tenants at 001_initial_schema, each with
--rows rows in inventory_items, except --big of them (zz_big_1 ...: last by name) with
--factor times as many; then VACUUM ANALYZE, so relpages (what --order size reads) is current.
Revision 003 adds columns to inventory_items, builds two indexes on it and validates a CHECK
constraint and a foreign key over it, so its time grows with that table's rows.

After --warmup untimed cycles (downgrade, upgrade), for each --jobs J, --pairs rounds of A B
(name, then size), each run prepared the same way (not timed): every tenant downgraded to 001,
VACUUM, CHECKPOINT; then `tenantmig upgrade --all-tenants --jobs J --order O -q` timed end to
end (a new process, wall clock: the makespan as a user sees it). After each run: exit code 0
and every tenant at 003 (`tenantmig current --json`), else the benchmark stops. Printed per J:
the median makespans, the per-pair ratio size / name and its median. With --tenant-times, each
run is made with --json instead of -q: per-tenant durations (big and normal), and both queue
orders list-scheduled on J workers with that run's measured durations, which is what the order
can change, apart from the run's fixed costs (start-up, planning, compiling the step).

Before the timed part it waits (up to --wait-quiet minutes) until no pytest or CI clone is
running on the machine, and says so if it could not. Raw numbers: bench/out/order.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "alembic.ini"
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO / "src"))

from tenantmig.schema.sizes import schema_sizes  # noqa: E402
from tenantmig.server.embedded import start  # noqa: E402

BASE = "001_initial_schema"
HEAD = "003_add_inventory_tracking"
BUSY = "pytest|ci-clone"


def tenantmig(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    # Source tree byte-compiled in main(); without PYTHONDONTWRITEBYTECODE the processes read
    # the bytecode as an installed wheel's would, instead of compiling every module each time.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env |= {"TENANTMIG_DATABASE_URL": url, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-m", "tenantmig", "--config", str(CONFIG), *args],
        env=env, cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip


def must(done: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    if done.returncode != 0:
        raise SystemExit(f"{what} exited {done.returncode}: {done.stderr[-2000:]}")
    return done


def names(tenants: int, big: int) -> tuple[list[str], list[str]]:
    normal = [f"t{i:05d}" for i in range(tenants - big)]
    return normal, [f"zz_big_{i}" for i in range(1, big + 1)]


def fill(engine: sa.Engine, schema: str, rows: int) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f'INSERT INTO "{schema}".inventory_items (name, description, quantity, unit_price) '
            "SELECT 'item ' || g, md5(g::text) || md5((g + 1)::text), mod(g, 500),"
            " mod(g, 10000) / 100.0 "
            f"FROM generate_series(1, {rows}) AS g"
        )


def prepare(url: str, engine: sa.Engine, args: argparse.Namespace) -> None:
    """Shared schema at head, the tenants at 001 with their rows, statistics current."""
    normal, big = names(args.tenants, args.big)
    began = time.perf_counter()
    must(tenantmig(url, "upgrade", "--shared", "-q"), "upgrade --shared")
    everyone = [*normal, *big]
    for at in range(0, len(everyone), 200):
        must(tenantmig(url, "tenants", "create", *everyone[at : at + 200], "--no-migrate"),
             "tenants create")  # fmt: skip
    must(tenantmig(url, "upgrade", "--all-tenants", BASE, "-q"), f"upgrade to {BASE}")
    print(f"{len(everyone)} tenants at {BASE} in {time.perf_counter() - began:.1f}s", flush=True)
    began = time.perf_counter()
    for schema in normal:
        fill(engine, schema, args.rows)
    for schema in big:
        fill(engine, schema, args.rows * args.factor)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
    print(f"rows in {time.perf_counter() - began:.1f}s: {args.rows} per tenant, "
          f"{args.rows * args.factor} in each of {big[0]}..{big[-1]}", flush=True)  # fmt: skip


def reset(url: str, engine: sa.Engine) -> None:
    """Every tenant back to 001, then VACUUM (relpages after the dropped indexes) and a
    CHECKPOINT, so that each timed run starts from the same state."""
    must(tenantmig(url, "downgrade", "--all-tenants", BASE, "--yes", "-q"), "downgrade")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM")
        conn.exec_driver_sql("CHECKPOINT")


def all_at_head(url: str, expected: int) -> None:
    report = json.loads(must(tenantmig(url, "current", "--json"), "current").stdout)
    revisions: dict[str, str | None] = report["tenants"]  # name -> revision
    at_head = sum(revision == HEAD for revision in revisions.values())
    if len(revisions) != expected or at_head != expected:
        raise SystemExit(f"after the run: {at_head} of {len(revisions)} tenants at {HEAD}, "
                         f"{expected} expected")  # fmt: skip


def tenant_times(stdout: str, big: set[str]) -> dict[str, object]:
    """From a run's --json: per-tenant durations (median and sum, normal and big)."""
    durations = {t["name"]: float(t["duration_s"]) for t in json.loads(stdout)["tenants"]}
    big_d = [d for n, d in durations.items() if n in big]
    normal_d = [d for n, d in durations.items() if n not in big]
    return {
        "normal_median_s": statistics.median(normal_d) if normal_d else 0.0,
        "normal_sum_s": sum(normal_d),
        "big_median_s": statistics.median(big_d) if big_d else 0.0,
        "big_sum_s": sum(big_d),
        "durations": durations,
    }


def list_schedule(durations: dict[str, float], queue: list[str], workers: int) -> float:
    """The makespan of handing ``queue`` out to ``workers`` as each one frees up, with the
    measured per-tenant durations: the scheduling alone, without the run's fixed costs."""
    free = [0.0] * workers
    for name in queue:
        free[free.index(min(free))] += durations[name]
    return max(free)


def simulated(durations: dict[str, float], sizes: dict[str, int], jobs: int) -> dict[str, float]:
    by_name = sorted(durations)
    by_size = sorted(by_name, key=lambda n: -sizes.get(n, 0))  # stable, as the coordinator's
    return {
        "simulated_name_s": list_schedule(durations, by_name, jobs),
        "simulated_size_s": list_schedule(durations, by_size, jobs),
        "work_over_jobs_s": sum(durations.values()) / jobs,
    }


def timed(url: str, jobs: int, order: str, with_json: bool) -> tuple[float, str]:
    output = ["--json"] if with_json else ["-q"]
    began = time.perf_counter()
    done = tenantmig(url, "upgrade", "--all-tenants", "--jobs", str(jobs), "--order", order,
                     *output)  # fmt: skip
    elapsed = time.perf_counter() - began
    must(done, f"upgrade --jobs {jobs} --order {order}")
    return elapsed, done.stdout


def busy_now() -> str:
    found = subprocess.run(["pgrep", "-af", BUSY], capture_output=True, text=True).stdout
    return "\n".join(line for line in found.splitlines() if "pgrep" not in line)


def wait_quiet(minutes: float) -> str:
    deadline = time.monotonic() + minutes * 60
    began = time.monotonic()
    while True:
        busy = busy_now()
        if not busy:
            waited = time.monotonic() - began
            return f"machine quiet (no pytest or CI clone) after waiting {waited:.0f}s"
        if time.monotonic() > deadline:
            return f"still busy after {minutes:.0f} min, timed anyway: {busy.splitlines()[0]}"
        time.sleep(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--database-url", help="superuser URL (default: embedded server)")
    parser.add_argument("--data-dir", type=Path, default=OUT / "pg_order",
                        help="the embedded server's data directory")  # fmt: skip
    parser.add_argument("--tenants", type=int, default=400)
    parser.add_argument("--big", type=int, default=8, help="tenants with --factor x the rows")
    parser.add_argument("--rows", type=int, default=2000, help="inventory_items rows per tenant")
    parser.add_argument("--factor", type=int, default=100)
    parser.add_argument("--jobs", type=int, action="append", default=[])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed downgrade + upgrade cycles first")  # fmt: skip
    parser.add_argument("--tenant-times", action="store_true",
                        help="run with --json and summarise per-tenant durations")  # fmt: skip
    parser.add_argument("--wait-quiet", type=float, default=20.0, help="minutes, at most")
    args = parser.parse_args()
    jobs_list = args.jobs or [2, 4]
    for tree in (REPO / "src", REPO / "migrations"):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree)], check=True,
                       capture_output=True)  # fmt: skip
    admin_url = args.database_url
    if admin_url is None:
        _provider, server = start(args.data_dir, cleanup_mode=None)
        admin_url = server.get_uri()
    name = f"bench_order_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(
        make_url(admin_url).set(drivername="postgresql+psycopg2"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        version = conn.exec_driver_sql("SHOW server_version").scalar()
    url = make_url(admin_url).set(drivername="postgresql+psycopg2", database=name)
    url_text = url.render_as_string(hide_password=False)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    normal, big = names(args.tenants, args.big)
    results: dict[str, object] = {
        "tenants": args.tenants, "big": args.big, "rows": args.rows, "factor": args.factor,
        "postgresql": version, "cpus": os.cpu_count(),
    }  # fmt: skip
    try:
        prepare(url_text, engine, args)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            sizes = schema_sizes(conn, [*normal, *big])
        ranked = sorted(sizes, key=lambda s: -sizes[s])
        print(f"catalog sizes: largest {ranked[: args.big]}; big {sizes[big[0]] / 2**20:.1f} MiB, "
              f"normal {sizes[normal[0]] / 2**20:.2f} MiB", flush=True)  # fmt: skip
        if set(ranked[: args.big]) != set(big):
            raise SystemExit("the big tenants are not the largest by the catalog")
        # Tenant durations grow over the first downgrade/upgrade cycles (a normal tenant's
        # 0.007 s, 0.015 s, then about 0.023 s on), whichever the order: time the steady state.
        for _ in range(args.warmup):
            reset(url_text, engine)
            must(tenantmig(url_text, "upgrade", "--all-tenants", "-q"), "warm-up upgrade")
        waited_until = time.monotonic() + args.wait_quiet * 60
        quiet = wait_quiet(args.wait_quiet)
        print(quiet, flush=True)
        results["quiet"] = quiet
        results["load_before"] = os.getloadavg()
        runs: list[dict[str, Any]] = []
        results["runs"] = runs
        for jobs in jobs_list:
            for pair in range(1, args.pairs + 1):
                # Each pair waits again (within what is left of --wait-quiet) for CI or tests
                # started meanwhile; a run that overlapped them anyway is marked "busy".
                left = max(0.0, (waited_until - time.monotonic()) / 60)
                if busy_now():
                    print(wait_quiet(left), flush=True)
                for order in ("name", "size"):
                    reset(url_text, engine)
                    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                        sizes = schema_sizes(c, [*normal, *big])
                    busy = busy_now()
                    seconds, stdout = timed(url_text, jobs, order, args.tenant_times)
                    busy = busy or busy_now()
                    all_at_head(url_text, args.tenants)
                    run: dict[str, Any] = {
                        "jobs": jobs, "pair": pair, "order": order, "seconds": seconds,
                        "busy": bool(busy), "load1": os.getloadavg()[0],
                    }  # fmt: skip
                    note = " BUSY (CI or pytest running)" if busy else ""
                    if args.tenant_times:
                        run |= tenant_times(stdout, set(big))
                        run |= simulated(run["durations"], sizes, jobs)
                        note += (f"; tenants: normal median {run['normal_median_s']:.3f}s, big "
                                 f"median {run['big_median_s']:.3f}s; list-scheduled name "
                                 f"{run['simulated_name_s']:.2f}s, size "
                                 f"{run['simulated_size_s']:.2f}s")  # fmt: skip
                    runs.append(run)
                    print(f"--jobs {jobs} pair {pair} {order:4}: {seconds:.2f}s (exit 0, all "
                          f"{args.tenants} at {HEAD}){note}", flush=True)  # fmt: skip
        results["load_after"] = os.getloadavg()
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "order.json").write_text(json.dumps(results, indent=2))
    print(f"PostgreSQL {version}, {os.cpu_count()} CPUs; {args.tenants} tenants, {args.big} with "
          f"{args.factor}x the {args.rows} rows")  # fmt: skip
    print("| --jobs | median name (s) | median size (s) | size/name per pair | median ratio |"
          " busy runs |")  # fmt: skip
    print("|---:|---:|---:|---|---:|---:|")
    for jobs in jobs_list:
        mine = [r for r in runs if r["jobs"] == jobs]
        by_name = [r["seconds"] for r in mine if r["order"] == "name"]
        by_size = [r["seconds"] for r in mine if r["order"] == "size"]
        ratios = [s / n for s, n in zip(by_size, by_name, strict=True)]
        print(f"| {jobs} | {statistics.median(by_name):.2f} | {statistics.median(by_size):.2f} | "
              f"{', '.join(f'{r:.3f}' for r in ratios)} | {statistics.median(ratios):.3f} | "
              f"{sum(bool(r['busy']) for r in mine)} |")  # fmt: skip
    if args.tenant_times:
        print("list scheduling of each run's measured tenant durations (medians over the runs):")
        for jobs in jobs_list:
            mine = [r for r in runs if r["jobs"] == jobs]

            def med(key: str, mine: list[dict[str, Any]] = mine) -> float:
                return float(statistics.median(r[key] for r in mine))

            print(f"  --jobs {jobs}: name {med('simulated_name_s'):.2f}s, size "
                  f"{med('simulated_size_s'):.2f}s, work/jobs {med('work_over_jobs_s'):.2f}s; "
                  f"a big tenant {med('big_median_s'):.3f}s, a normal one "
                  f"{med('normal_median_s'):.3f}s")  # fmt: skip


if __name__ == "__main__":
    main()
