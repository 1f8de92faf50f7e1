"""Benchmark: tenants spread over three databases against the same tenants in one database.

    python bench/databases.py --tenants 1000 \\
        --url postgresql://postgres@127.0.0.1:55432/postgres \\
        --url postgresql://postgres@127.0.0.1:55433/postgres

N tenants in each of three databases (the control one and two of the directory, spread over
the servers given, round robin) against 3 x N in the control database alone, on the same
machine: `tenantmig upgrade --all-tenants` from base to head, then a no-op run (everything at
head already), as a user runs them (new processes, default jobs). Fresh databases are created
and dropped. The two layouts alternate for --repeat rounds; printed as the best of each, in
seconds and as ratios to the one-database layout measured in the same run.
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


def admin(url: str) -> sa.Engine:
    return sa.create_engine(
        make_url(url).set(drivername="postgresql+psycopg2"),
        isolation_level="AUTOCOMMIT",
        poolclass=sa.NullPool,
    )


def create(server: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with admin(server).connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    return make_url(server).set(database=name).render_as_string(False)


def drop(url: str) -> None:
    parsed = make_url(url)
    with admin(parsed.set(database="postgres").render_as_string(False)).connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')


def cli(control: str, directory: str, *args: str) -> tuple[float, dict[str, object]]:
    env = {**os.environ, "TENANTMIG_DATABASE_URL": control, "PYTHONPATH": str(REPO / "src")}
    env["TENANTMIG_DATABASES"] = directory
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tenantmig", "--config", str(REPO / "alembic.ini"), *args,
         "--json"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return elapsed, json.loads(done.stdout) if done.stdout.strip() else {}


def measure(servers: list[str], per_database: list[int]) -> tuple[float, float]:
    """(upgrade base -> head, no-op run) with per_database[i] tenants in database i (0: control)."""
    urls = [create(servers[i % len(servers)]) for i in range(len(per_database))]
    control, others = urls[0], urls[1:]
    directory = ";".join(f"db{i}={url}" for i, url in enumerate(others, start=1))
    try:
        cli(control, directory, "upgrade", "--shared")
        for index, count in enumerate(per_database):
            database = "control" if index == 0 else f"db{index}"
            names = [f"t{index}_{i:05d}" for i in range(count)]
            for start in range(0, count, 500):
                cli(control, directory, "tenants", "create", *names[start : start + 500],
                    "--database", database, "--no-migrate")  # fmt: skip
        upgrade, result = cli(control, directory, "upgrade", "--all-tenants")
        statuses = {t["status"] for t in result["tenants"]}  # type: ignore[union-attr]
        assert statuses == {"ok"}, statuses
        noop, result = cli(control, directory, "upgrade", "--all-tenants")
        statuses = {t["status"] for t in result["tenants"]}  # type: ignore[union-attr]
        assert statuses == {"skipped"}, statuses
        return upgrade, noop
    finally:
        for url in urls:
            drop(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000, help="tenants per database")
    parser.add_argument("--url", action="append", required=True, help="superuser URL of a server")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, the layouts alternating")
    args = parser.parse_args()
    n = args.tenants
    ones, threes = [], []
    for _ in range(args.repeat):  # alternating, so a slow spell of the machine hits both
        ones.append(measure(args.url, [3 * n]))
        threes.append(measure(args.url, [n, n, n]))
        print(f"  round: one {ones[-1]}, three {threes[-1]}", flush=True)
    one_up, one_noop = min(u for u, _ in ones), min(o for _, o in ones)
    three_up, three_noop = min(u for u, _ in threes), min(o for _, o in threes)
    print(f"base -> head and a no-op run, {3 * n} tenants in all, best of {args.repeat}:")
    print(f"  one database x {3 * n}:     upgrade {one_up:7.2f} s   no-op {one_noop:6.2f} s")
    print(
        f"  three databases x {n}:  upgrade {three_up:7.2f} s   no-op {three_noop:6.2f} s"
        f"   ({three_up / one_up:.2f}x, {three_noop / one_noop:.2f}x)"
    )


if __name__ == "__main__":
    main()
