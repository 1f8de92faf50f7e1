"""Benchmark: 200 tenant connections at once, in 200 worker processes or in 10.

    python bench/connections.py --url postgresql://postgres@127.0.0.1:5499/postgres
    python bench/connections.py --url ... --databases 10 --tenants 60 --per-database 20

Ten databases on one server (the control database and nine of the directory), each with
--tenants tenants at base, then one `tenantmig upgrade --all-tenants --jobs 200
--jobs-per-database 20 --json` base -> head (the demo chain, replayed), as a user runs it: once
with one tenant per worker process (--connections-per-worker 1, 200 processes) and once with
--connections-per-worker 20 (10 processes), fresh databases each time. Sampled every 0.2 s: the
peak RSS of tenantmig's processes summed (the coordinator, the worker server, the workers), the
workers' peak proportional set size summed (forked workers share pages with their server, which
RSS counts once per process), the most worker processes, and the most tenantmig sessions on the
server. Both runs must give the same outcome for every tenant and the same ledger.

The server needs max_connections above 200 plus the coordinator's few (the bench server of
bench/RESULTS.md has 300).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))

from databases import REPO, cli, create, drop
from run import Sampler


def _psycopg2(url: str) -> sa.URL:
    return make_url(url).set(drivername="postgresql+psycopg2")


def build(server: str, databases: int, tenants: int) -> tuple[str, str, list[str]]:
    """(control URL, directory, every URL) with ``tenants`` tenants at base in each database."""
    urls = [create(server) for _ in range(databases)]
    control = urls[0]
    directory = ";".join(f"db{i}={url}" for i, url in enumerate(urls[1:], start=1))
    cli(control, directory, "upgrade", "--shared")
    for index in range(databases):
        where = "control" if index == 0 else f"db{index}"
        names = [f"t{index}_{i:04d}" for i in range(tenants)]
        cli(control, directory, "tenants", "create", *names, "--database", where, "--no-migrate")
    return control, directory, urls


def run(control: str, directory: str, jobs: int, per_database: int, per_worker: int) -> dict:
    env = {**os.environ, "TENANTMIG_DATABASE_URL": control, "TENANTMIG_DATABASES": directory}
    env["PYTHONPATH"] = str(REPO / "src")
    command = [
        sys.executable, "-m", "tenantmig", "--config", str(REPO / "alembic.ini"),
        "upgrade", "--all-tenants", "--jobs", str(jobs), "--jobs-per-database",
        str(per_database), "--connections-per-worker", str(per_worker), "--json",
    ]  # fmt: skip
    began = time.perf_counter()
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    with Sampler(proc.pid, _psycopg2(control), interval=0.2) as sampler:
        out, err = proc.communicate()
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"exit {proc.returncode}: {err[-2000:]}")
    result = json.loads(out)
    return {
        "per_worker": per_worker,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(sampler.peak_rss / 2**20),
        "coordinator_rss_mb": round(sampler.coordinator_rss / 2**20),
        "workers_pss_mb": round(sampler.children_pss / 2**20),
        "most_processes": sampler.most_children,
        "most_sessions": sampler.peak_connections,
        "outcomes": sorted(
            (t["database"], t["name"], t["status"], t["to"], t["replayed"])
            for t in result["tenants"]
        ),
    }


def ledger(urls: list[str]) -> list[tuple[str, str, str]]:
    """The control database's ledger rows of the last run: (tenant, status, to_revision)."""
    engine = sa.create_engine(_psycopg2(urls[0]))
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT tenant, status, to_revision FROM public.tenantmig_run_tenants "
                "WHERE run_id = (SELECT max(id) FROM public.tenantmig_runs) ORDER BY tenant"
            )
        ).all()
    engine.dispose()
    return [tuple(r) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="superuser URL of the server")
    parser.add_argument("--databases", type=int, default=10)
    parser.add_argument("--tenants", type=int, default=60, help="tenants per database")
    parser.add_argument("--per-database", type=int, default=20, help="--jobs-per-database")
    parser.add_argument(
        "--modes", type=int, nargs="+", default=[20, 1], help="--connections-per-worker values"
    )
    args = parser.parse_args()
    jobs = args.databases * args.per_database
    measured = []
    for per_worker in args.modes:
        control, directory, urls = build(args.url, args.databases, args.tenants)
        try:
            found = run(control, directory, jobs, args.per_database, per_worker)
            found["ledger"] = ledger(urls)
        finally:
            for url in urls:
                drop(url)
        measured.append(found)
        print(
            f"--connections-per-worker {per_worker:>3}: {found['seconds']:7.2f} s  "
            f"peak RSS {found['peak_rss_mb']:6} MB (coordinator {found['coordinator_rss_mb']} MB)"
            f"  workers PSS {found['workers_pss_mb']:6} MB  processes {found['most_processes']}"
            f"  sessions {found['most_sessions']}",
            flush=True,
        )
    same = all(m["outcomes"] == measured[0]["outcomes"] for m in measured)
    same_ledger = all(m["ledger"] == measured[0]["ledger"] for m in measured)
    statuses = {o[2] for m in measured for o in m["outcomes"]}
    print(f"same outcomes: {same}; same ledger: {same_ledger}; statuses: {sorted(statuses)}")
    out = REPO / "bench" / "out" / "connections.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(measured, indent=2))


if __name__ == "__main__":
    main()
