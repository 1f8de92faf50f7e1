"""Benchmark: tenantmig against the DDL floor and Alembic's cookbook loop, in one run.

    python bench/run.py --tenants 1000            # embedded PostgreSQL under bench/out/pg
    python bench/run.py --database-url postgresql://postgres@127.0.0.1:5433/postgres

Every scenario gets a fresh database with the shared schema migrated and N empty tenant schemas
registered, then migrates all N tenants from nothing to head:

  floor      the offline SQL (alembic --sql) replayed through psql, one transaction per tenant,
             in as many psql sessions as tenantmig's default worker count
  cookbook   Alembic's multi-tenant recipe: one `alembic -x tenant=T upgrade head` process per
             tenant, one after the other (run on --cookbook-sample tenants and extrapolated)
  tenantmig  `tenantmig upgrade --all-tenants` at --jobs 1, 2 and the default
  no-op      tenantmig again with every tenant at head
  drift      `tenantmig drift` over all N
  nothing replayable (--unreplayable)
             the demo chain plus one revision that reads data, so no step can be replayed:
             tenantmig with replay on (the default) and with --no-replay, twice each in the
             order on, off, off, on: what compiling costs when it cannot pay off

Ratios are against the floor measured in the same run on the same server: measured first and
again last, and the faster of the two is used (the conservative choice for tenantmig). Peak
memory is the summed RSS of the tenantmig process tree; connections are the most tenantmig
sessions seen in pg_stat_activity (both sampled every 50 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tenantmig.server import embedded

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "alembic.ini"
OUT = REPO / "bench" / "out"
PLACEHOLDER = "benchtenantplaceholder"


@dataclass
class Row:
    scenario: str
    tenants: int
    seconds: float
    extrapolated: bool = False
    peak_rss_mb: float | None = None
    max_connections: int | None = None
    exit_code: int = 0

    @property
    def rate(self) -> float:
        return self.tenants / self.seconds if self.seconds else 0.0


def admin_url(args: argparse.Namespace) -> str:
    if args.database_url:
        return str(args.database_url)
    _provider, server = embedded.start(OUT / "pg", cleanup_mode=None)
    return str(server.get_uri())


def pg_bin(name: str) -> str:
    return str(embedded.bin_dir(OUT / "pg") / name)


class Server:
    def __init__(self, url: str) -> None:
        self.admin = make_url(url).set(drivername="postgresql+psycopg2")
        self.engine = sa.create_engine(
            self.admin, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
        )
        self.created: list[str] = []

    def fresh_database(self) -> str:
        name = f"bench_{uuid.uuid4().hex[:10]}"
        with self.engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.admin.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.engine.connect() as conn:
            for name in self.created:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def postmaster_pid_file(self) -> Path | None:
        """The server's postmaster.pid when its data directory is readable here (a local
        server), else None."""
        with self.engine.connect() as conn:
            try:
                directory = conn.exec_driver_sql("SHOW data_directory").scalar()
            except Exception:  # a role that may not read it
                return None
        path = Path(str(directory)) / "postmaster.pid"
        try:
            path.read_text()
        except OSError:
            return None
        return path

    def version(self) -> str:
        with self.engine.connect() as conn:
            return str(conn.exec_driver_sql("SHOW server_version").scalar())


def tenant_names(n: int) -> list[str]:
    return [f"t{i:05d}" for i in range(n)]


def prepare(url: str, n: int) -> None:
    """Shared schema at head and N registered, empty tenant schemas (not timed)."""
    env = {**os.environ, "TENANTMIG_DATABASE_URL": url}
    for args in (["upgrade", "--shared", "-q"],):
        subprocess.run(
            [sys.executable, "-m", "tenantmig", "--config", str(CONFIG), *args],
            env=env,
            check=True,
            capture_output=True,
        )
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        for name in tenant_names(n):
            conn.exec_driver_sql(
                f"INSERT INTO public.tenants (name, schema_name) VALUES ('{name}', '{name}')"
            )
            conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    engine.dispose()


class Sampler:
    """Peak RSS of a process tree and peak tenantmig connections, sampled in a thread; also
    the coordinator's own peak RSS and its descendants' peak proportional set size (forked
    workers share pages with the server they are forked from, which RSS counts in each)."""

    def __init__(self, pid: int, url: str, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.engine = sa.create_engine(url, poolclass=sa.NullPool)
        self.peak_rss = 0
        self.peak_connections = 0
        self.coordinator_rss = 0
        self.children_pss = 0
        self.most_children = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.engine.dispose()

    def _run(self) -> None:
        with self.engine.connect() as conn:
            while not self._stop.is_set():
                try:
                    root = psutil.Process(self.pid)
                    children = root.children(recursive=True)
                    procs = [root, *children]
                    rss = sum(p.memory_info().rss for p in procs if p.is_running())
                    self.peak_rss = max(self.peak_rss, rss)
                    self.coordinator_rss = max(self.coordinator_rss, root.memory_info().rss)
                    pss = sum(p.memory_full_info().pss for p in children)
                    self.children_pss = max(self.children_pss, pss)
                    self.most_children = max(self.most_children, len(children))
                except psutil.Error:
                    pass
                count = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE application_name LIKE 'tenantmig%'"
                    )
                ).scalar()
                conn.commit()
                self.peak_connections = max(self.peak_connections, int(count or 0))
                time.sleep(self.interval)


def timed_tenantmig(scenario: str, url: str, n: int, *args: str, config: Path = CONFIG) -> Row:
    env = {**os.environ, "TENANTMIG_DATABASE_URL": url}
    cmd = [sys.executable, "-m", "tenantmig", "--config", str(config), *args]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with Sampler(proc.pid, url) as sampler:
        _out, err = proc.communicate()
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 2):
        print(f"{scenario} failed ({proc.returncode}): {err.strip()[-500:]}", file=sys.stderr)
    return Row(
        scenario,
        n,
        seconds,
        peak_rss_mb=sampler.peak_rss / 2**20,
        max_connections=sampler.peak_connections,
        exit_code=proc.returncode,
    )


def offline_sql() -> str:
    env = {**os.environ, "TENANTMIG_DATABASE_URL": "postgresql://offline/offline"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "alembic",
            "-c",
            str(CONFIG),
            "-n",
            "tenant",
            "-x",
            f"tenant={PLACEHOLDER}",
            "upgrade",
            "head",
            "--sql",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return done.stdout


def floor(url: str, n: int, sessions: int) -> Row:
    """Replay the offline SQL through psql sessions: the server's own cost, no Python."""
    template = offline_sql()
    assert template.count("BEGIN;") == 1 and "COMMIT;" in template
    work = Path(tempfile.mkdtemp(prefix="tenantmig-floor-"))
    names = tenant_names(n)
    files = []
    for s in range(sessions):
        path = work / f"session{s}.sql"
        with path.open("w") as fh:
            for name in names[s::sessions]:
                fh.write(re.sub(rf"\b{PLACEHOLDER}\b", name, template))
        files.append(path)
    psql = pg_bin("psql")
    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    start = time.perf_counter()
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
    seconds = time.perf_counter() - start
    shutil.rmtree(work)
    if any(codes):
        raise SystemExit(f"floor replay failed: {[p.stderr.read() for p in procs if p.stderr]}")
    return Row(f"floor (psql x{sessions})", n, seconds, max_connections=sessions)


def cookbook(url: str, n: int, sample: int) -> Row:
    """One alembic process per tenant, sequentially, on a sample; extrapolated to N."""
    env = {**os.environ, "TENANTMIG_DATABASE_URL": url}
    names = tenant_names(n)[:sample]
    start = time.perf_counter()
    for name in names:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "alembic",
                "-c",
                str(CONFIG),
                "-n",
                "tenant",
                "-x",
                f"tenant={name}",
                "upgrade",
                "head",
            ],
            env=env,
            check=True,
            capture_output=True,
            cwd=REPO,
        )
    per_tenant = (time.perf_counter() - start) / len(names)
    return Row(
        f"cookbook (sample {len(names)})", n, per_tenant * n, extrapolated=True, max_connections=1
    )


READING_REVISION = '''"""Decides by reading data: never replayable."""

import sqlalchemy as sa
from alembic import op

revision = "004_reads_data"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().execute(sa.text("SELECT count(*) FROM users")).scalar():
        op.create_index("ix_users_full_name", "users", ["full_name"])


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_users_full_name")
'''


def unreplayable_project() -> Path:
    """A copy of the project whose tenant chain ends in a revision that reads data."""
    root = OUT / "unreplayable"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(REPO / "migrations", root / "migrations")
    shutil.copy(CONFIG, root / "alembic.ini")
    (root / "migrations" / "tenant" / "versions" / "004_reads_data.py").write_text(READING_REVISION)
    return root / "alembic.ini"


def unreplayable(server: Server, n: int) -> list[Row]:
    config = unreplayable_project()
    rows = []
    for label, extra in (
        ("nothing replayable: replay on", []),
        ("nothing replayable: --no-replay", ["--no-replay"]),
        ("nothing replayable: --no-replay, again", ["--no-replay"]),
        ("nothing replayable: replay on, again", []),
    ):
        url = server.fresh_database()
        prepare(url, n)
        args = ["upgrade", "--all-tenants", "-q", *extra]
        rows.append(timed_tenantmig(label, url, n, *args, config=config))
    return rows


def machine() -> dict[str, object]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
    }


def render(rows: list[Row], floor_row: Row) -> str:
    lines = [
        "| scenario | tenants | time (s) | tenants/s | x floor | peak RSS (MB) | max conns |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r.seconds / floor_row.seconds if floor_row.seconds else 0
        lines.append(
            f"| {r.scenario}{' (extrapolated)' if r.extrapolated else ''} | {r.tenants} | "
            f"{r.seconds:.2f} | {r.rate:.1f} | {ratio:.2f} | "
            f"{'' if r.peak_rss_mb is None else f'{r.peak_rss_mb:.0f}'} | "
            f"{'' if r.max_connections is None else r.max_connections} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--database-url", help="superuser URL (default: embedded server)")
    parser.add_argument("--cookbook-sample", type=int, default=20)
    parser.add_argument(
        "--unreplayable",
        action="store_true",
        help="also time replay on and off on a chain where nothing can be replayed",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["floor", "cookbook", "jobs1", "jobs2", "default"],
        help="leave out a scenario (repeatable)",
    )
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "src"))
    from tenantmig.run.plan import default_jobs

    server = Server(admin_url(args))
    n = args.tenants
    jobs = default_jobs()
    rows: list[Row] = []
    try:
        if "floor" not in args.skip:
            url = server.fresh_database()
            prepare(url, n)
            rows.append(floor(url, n, jobs))
        if "cookbook" not in args.skip:
            url = server.fresh_database()
            prepare(url, min(n, args.cookbook_sample))
            rows.append(cookbook(url, n, min(n, args.cookbook_sample)))
        for key, label, extra in (
            ("jobs1", "tenantmig --jobs 1", ["--jobs", "1"]),
            ("jobs2", "tenantmig --jobs 2", ["--jobs", "2"]),
            ("default", f"tenantmig (default --jobs {jobs})", []),
        ):
            if key in args.skip:
                continue
            url = server.fresh_database()
            prepare(url, n)
            rows.append(timed_tenantmig(label, url, n, "upgrade", "--all-tenants", "-q", *extra))
            if key == "default":
                rows.append(
                    timed_tenantmig("no-op (all at head)", url, n, "upgrade", "--all-tenants", "-q")
                )
                rows.append(timed_tenantmig("drift", url, n, "drift", "--json"))
        if args.unreplayable:
            rows.extend(unreplayable(server, n))
        if "floor" not in args.skip:
            # The floor again, last: the server's speed drifts during a run (checkpoints,
            # autovacuum, the page cache), so ratios use the faster of the two floors.
            url = server.fresh_database()
            prepare(url, n)
            again = floor(url, n, jobs)
            again.scenario += ", repeated last"
            rows.append(again)
        version = server.version()
    finally:
        server.drop_all()
    floors = [r for r in rows if r.scenario.startswith("floor")] or rows[:1]
    floor_row = min(floors, key=lambda r: r.seconds)
    report = {
        "tenants": n,
        "postgresql": version,
        "machine": machine(),
        "rows": [asdict(r) | {"rate": r.rate} for r in rows],
    }
    (OUT / f"results-{n}.json").write_text(json.dumps(report, indent=2))
    print(f"PostgreSQL {version}; {report['machine']}")
    print(f"ratios against the faster floor run: {floor_row.seconds:.2f} s")
    print(render(rows, floor_row))
    on = [r.seconds for r in rows if r.scenario.startswith("nothing replayable: replay on")]
    off = [r.seconds for r in rows if r.scenario.startswith("nothing replayable: --no-replay")]
    if on and off:
        print(f"nothing replayable: replay on / --no-replay = {sum(on) / sum(off):.3f}")


if __name__ == "__main__":
    main()
