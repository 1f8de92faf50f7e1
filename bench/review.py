"""Benchmark: `tenantmig plan` over N tenants and `tenantmig lint` of the demo chains.

    python bench/review.py --tenants 1000
    python bench/review.py --tenants 1000 --database-url postgresql://postgres@127.0.0.1:5432/postgres

Creates a fresh database with the shared schema and N tenants at the tenant chain's first
revision (so the plan has a step to compile and size for every tenant), then times, end to end
as a user runs them (a new process each, start-up included; median of --repeat):

  plan   `tenantmig plan --all-tenants --json`: versions in bulk, one step compiled in two
         rolled-back scratch schemas, its statements assessed, the sizes of the tables it
         touches read for all N tenants;
  lint   `tenantmig lint --json`: the revisions some tenant has not got (here: the last one),
         the fleet rules (sizes per table over the N tenants) and squawk; and both revisions
         of the demo tenant chain named (`lint-all`).

Targets (on 2 cores): plan under 3 s at 1,000 tenants, lint under 2 s. Then where the time goes:
each command once more with cProfile in-process, the top cumulative entries.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from tenantmig import api  # noqa: E402
from tenantmig.server.config import load_settings  # noqa: E402
from tenantmig.server.embedded import start  # noqa: E402

TARGETS = {"plan": 3.0, "lint": 2.0, "lint-all": 2.0}
FIRST = "001_initial_schema"


def timed(command: list[str], url: str, repeat: int) -> list[float]:
    env = {**os.environ, "TENANTMIG_DATABASE_URL": url}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as an installed wheel runs: bytecode cached
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "tenantmig", "--config", str(REPO / "alembic.ini"), *command],
            env=env, capture_output=True, text=True, cwd=REPO,
        )  # fmt: skip
        times.append(time.perf_counter() - began)
        if done.returncode not in (0, 2):
            raise SystemExit(f"{command} exited {done.returncode}: {done.stderr[-2000:]}")
        json.loads(done.stdout)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--database-url", help="superuser URL (default: embedded server)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src"),
                    str(REPO / "migrations")], check=True)  # fmt: skip
    admin_url = args.database_url
    if admin_url is None:
        _provider, server = start(REPO / "bench" / "out" / "pg-review", cleanup_mode=None)
        admin_url = server.get_uri()
    name = f"bench_review_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(
        make_url(admin_url).set(drivername="postgresql+psycopg2"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(drivername="postgresql+psycopg2", database=name)
    url_text = url.render_as_string(hide_password=False)
    try:
        settings = load_settings(config_file=REPO / "alembic.ini", database_url=url_text)
        api.upgrade(settings, api.Selection.shared_only())
        began = time.perf_counter()
        names = [f"t{i:05d}" for i in range(args.tenants)]
        for start_at in range(0, len(names), 1000):
            api.create_tenants(settings, names[start_at : start_at + 1000], migrate=False)
        api.upgrade(settings, api.Selection.all_tenants(), FIRST)
        print(f"{args.tenants} tenants at {FIRST} in {time.perf_counter() - began:.1f}s")
        rows = []
        every = ["lint", "001_initial_schema", "003_add_inventory_tracking", "--json"]
        for label, command in (("plan", ["plan", "--all-tenants", "--json"]),
                               ("lint", ["lint", "--json"]), ("lint-all", every)):  # fmt: skip
            times = timed(command, url_text, args.repeat)
            median = statistics.median(times)
            verdict = "met" if median <= TARGETS[label] else "NOT met"
            rows.append(f"| `{' '.join(command)}` | {args.tenants} | {median:.2f} s | "
                        f"{min(times):.2f} s | {TARGETS[label]:.0f} s: {verdict} |")  # fmt: skip
        print("| command | tenants | median | best | target |")
        print("|---|---|---|---|---|")
        print("\n".join(rows))
        for label, call in (
            ("plan", lambda: api.plan(settings, api.Selection.all_tenants(), "upgrade", "head")),
            ("lint", lambda: api.lint(settings)),
        ):
            profile = cProfile.Profile()
            profile.enable()
            call()
            profile.disable()
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(
                r"tenantmig/.*\.py"
            )
            print(f"-- {label}, in-process, top entries:")
            print("\n".join(out.getvalue().splitlines()[:30]))
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


if __name__ == "__main__":
    main()
