"""Benchmark: `tenantmig drift` over N tenants at head, and where its time goes.

    python bench/drift.py --tenants 1000 --database-url postgresql://postgres@127.0.0.1:5432/postgres
    python bench/drift.py --tenants 1000 --code /path/to/other/checkout/src   # another version

Creates a fresh database with the shared schema and N tenants migrated to head (tenantmig itself
does that), then times the `tenantmig drift --json` command end to end (a new process, as a user
runs it; best of --repeat), and once more in-process with each phase timed: loading the chains,
building the references, reading versions, fingerprints and the sample catalogs. --code runs the
command from another source tree (the code before a change) against the same database, so the
two are measured in one run on one server.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
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


def timed_command(code: Path, url: str, repeat: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(code), "TENANTMIG_DATABASE_URL": url}
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "tenantmig", "--config", str(REPO / "alembic.ini"), "drift",
             "--json"],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        elapsed = time.perf_counter() - began
        if done.returncode != 0:
            raise SystemExit(f"drift exited {done.returncode}: {done.stderr[-2000:]}")
        json.loads(done.stdout)
        best = min(best, elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--database-url", help="superuser URL (default: embedded server)")
    parser.add_argument("--code", type=Path, action="append", default=[],
                        help="another src/ directory to time as well (repeatable)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print the top functions")
    args = parser.parse_args()
    admin_url = args.database_url
    if admin_url is None:
        _provider, server = start(REPO / "bench" / "out" / "pg", cleanup_mode=None)
        admin_url = server.get_uri()
    name = f"bench_drift_{uuid.uuid4().hex[:8]}"
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
        api.upgrade(settings, api.Selection.all_tenants())
        print(f"{args.tenants} tenants at head in {time.perf_counter() - began:.1f}s")
        results = {"current": timed_command(REPO / "src", url_text, args.repeat)}
        for other in args.code:
            results[str(other)] = timed_command(other, url_text, args.repeat)
        for label, seconds in results.items():
            print(f"drift, {args.tenants} tenants, {label}: {seconds:.2f}s (best of {args.repeat})")
        profile = cProfile.Profile()
        began = time.perf_counter()
        profile.enable()
        report = api.drift(settings)
        profile.disable()
        print(f"in-process drift: {time.perf_counter() - began:.2f}s, "
              f"{len(report.drifted)} drifted")  # fmt: skip
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out).sort_stats("cumulative")
        stats.print_stats(r"tenantmig/(schema|chains)/.*\.py:\d+\((check|expected|_build|"
                          r"read_versions|read_fingerprints|read_structures|_check_shared|"
                          r"run_alembic|__init__)\)")  # fmt: skip
        print(out.getvalue() if args.profile else "\n".join(out.getvalue().splitlines()[-14:]))
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


if __name__ == "__main__":
    main()
