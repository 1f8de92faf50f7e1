"""Benchmark: one upgrade on a Citus coordinator (replay, --no-replay) and on plain PostgreSQL.

    python bench/citus.py --citus-url postgresql://postgres@127.0.0.1:56000/postgres \\
        --postgres-url postgresql://postgres@127.0.0.1:55432/postgres --tenants 200

For each target a fresh database gets the shared schema and N tenants created without migrating
(tenantmig itself does that; on Citus each a distributed schema spread over the workers), then
`tenantmig upgrade --all-tenants` takes them from base to head as a user runs it (a new process,
default jobs); the tenants are downgraded to base again between rounds. Best of --repeat per
mode. Printed as seconds and as ratios to plain PostgreSQL measured in the same run.

The Citus URL is a superuser URL on the coordinator of a cluster whose workers are on the
coordinator's port + 1 and + 2 (``../shared/vendor/citus/cluster.sh``).

Citus against its own floor: on the same cluster, the same tenants, the per-tenant SQL that
``alembic upgrade head --sql`` writes for the tenant chain (each tenant's statements in one
transaction, as tenantmig runs them) replayed by as many psql sessions as tenantmig uses
workers, each statement its own round trip as psql sends it. What the cluster itself costs for
the same DDL at the same concurrency; tenantmig's ratio to it is its own overhead on Citus.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
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


def create_database(url: str, citus: bool) -> tuple[str, list[str]]:
    """A fresh database (on every node of a Citus cluster); its URL and the nodes' URLs."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    base = make_url(url)
    nodes = [base]
    if citus:
        port = base.port or 5432
        nodes += [base.set(port=port + 1), base.set(port=port + 2)]
    for node in nodes:
        with admin(node.render_as_string(False)).connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        if citus:
            with admin(node.set(database=name).render_as_string(False)).connect() as conn:
                conn.exec_driver_sql("CREATE EXTENSION citus")
    if citus:
        with admin(base.set(database=name).render_as_string(False)).connect() as conn:
            conn.execute(
                sa.text("SELECT citus_set_coordinator_host(:h, :p)"),
                {"h": base.host, "p": base.port or 5432},
            )
            for node in nodes[1:]:
                conn.execute(
                    sa.text("SELECT citus_add_node(:h, :p)"), {"h": node.host, "p": node.port}
                )
    return base.set(database=name).render_as_string(False), [
        n.render_as_string(False) for n in nodes
    ]


def drop_database(nodes: list[str], name: str) -> None:
    for node in nodes:
        with admin(node).connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cli(url: str, *args: str) -> tuple[float, dict[str, object]]:
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tenantmig", "--config", str(REPO / "alembic.ini"), *args, "--json"],
        env={**os.environ, "TENANTMIG_DATABASE_URL": url, "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return elapsed, json.loads(done.stdout) if done.stdout.strip() else {}


PLACEHOLDER = "benchtenantplaceholder"


def offline_sql() -> str:
    """The tenant chain from nothing to head for the placeholder schema (BEGIN ... COMMIT)."""
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), "-n", "tenant",
         "-x", f"tenant={PLACEHOLDER}", "upgrade", "head", "--sql"],
        env={**os.environ, "TENANTMIG_DATABASE_URL": "postgresql://offline/offline"},
        check=True, capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    return done.stdout


def floor(url: str, names: list[str], sessions: int) -> float:
    """Every tenant's SQL through ``sessions`` psql sessions, tenants dealt round-robin."""
    # After a round's downgrade to base the version table stays, empty: both sides start there.
    template = offline_sql().replace(
        f"CREATE TABLE {PLACEHOLDER}.alembic_version",
        f"CREATE TABLE IF NOT EXISTS {PLACEHOLDER}.alembic_version",
    )
    work = Path(tempfile.mkdtemp(prefix="tenantmig-citus-floor-"))
    files = []
    for s in range(sessions):
        path = work / f"session{s}.sql"
        with path.open("w") as fh:
            for name in names[s::sessions]:
                fh.write(re.sub(rf"\b{PLACEHOLDER}\b", name, template))
        files.append(path)
    psql = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    began = time.perf_counter()
    procs = [
        subprocess.Popen(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(f), libpq],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for f in files
    ]
    codes = [p.wait() for p in procs]
    elapsed = time.perf_counter() - began
    shutil.rmtree(work)
    if any(codes):
        raise SystemExit(f"floor failed: {[p.stderr.read() for p in procs if p.stderr]}")
    return elapsed


def measure(
    url: str, citus: bool, tenants: int, modes: list[list[str]], repeat: int
) -> list[float]:
    database, nodes = create_database(url, citus)
    try:
        cli(database, "upgrade", "--shared")
        names = [f"t{i:05d}" for i in range(tenants)]
        for start in range(0, tenants, 500):
            cli(database, "tenants", "create", *names[start : start + 500], "--no-migrate")
        best = []
        for extra in modes:
            times = []
            for _ in range(repeat):
                if extra == ["floor"]:
                    times.append(floor(database, names, 2))
                    # Back to base as tenantmig leaves it: the floor wrote the version row.
                    cli(database, "downgrade", "--all-tenants", "base", "--yes")
                    continue
                elapsed, result = cli(database, "upgrade", "--all-tenants", "-j", "2", *extra)
                statuses = {t["status"] for t in result["tenants"]}  # type: ignore[index, union-attr]
                assert statuses == {"ok"}, statuses
                times.append(elapsed)
                cli(database, "downgrade", "--all-tenants", "base", "--yes")
            best.append(min(times))
        return best
    finally:
        drop_database(nodes, make_url(database).database or "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--citus-url", required=True, help="superuser URL on the coordinator")
    parser.add_argument("--postgres-url", help="superuser URL on plain PostgreSQL")
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--floor-only", action="store_true",
        help="only Citus against its own floor (psql, same SQL, same concurrency)",
    )  # fmt: skip
    args = parser.parse_args()
    n = args.tenants
    if args.floor_only or args.postgres_url is None:
        # Alternately, so that a busy machine slows both alike: floor, tenantmig, floor, ...
        low, replay = measure(args.citus_url, True, n, [["floor"], []], args.repeat)
        print(f"{n} tenants on Citus, base -> head, 2 sessions / -j 2, best of {args.repeat}:")
        print(f"  floor (psql x2)      {low:7.2f} s  {low / n * 1000:6.1f} ms/tenant  1.00x")
        print(f"  tenantmig, replay    {replay:7.2f} s  {replay / n * 1000:6.1f} ms/tenant  "
              f"{replay / low:.2f}x")  # fmt: skip
        return
    (plain,) = measure(args.postgres_url, False, args.tenants, [[]], args.repeat)
    replay, no_replay = measure(
        args.citus_url, True, args.tenants, [[], ["--no-replay"]], args.repeat
    )
    n = args.tenants
    print(f"{n} tenants, base -> head, best of {args.repeat}:")
    print(f"  plain PostgreSQL, replay   {plain:7.2f} s  {plain / n * 1000:6.1f} ms/tenant  1.00x")
    for label, value in (("Citus, replay", replay), ("Citus, --no-replay", no_replay)):
        print(
            f"  {label:<26} {value:7.2f} s  {value / n * 1000:6.1f} ms/tenant  {value / plain:.2f}x"
        )


if __name__ == "__main__":
    main()
