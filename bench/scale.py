"""Benchmark: every fleet command end to end at 1,000 to 100,000 tenants on one database.

    python bench/scale.py --tenants 1000 10000                   # the demo tenant chain
    python bench/scale.py --tenants 100000 --chain small         # a two-table chain
    python bench/scale.py --database-url postgresql://postgres@127.0.0.1:5499/postgres \\
        --server-log /tmp/pg15-bench/server.log --tenants 30000

For each N: a database with the shared schema at head and N registered tenants one revision
behind head, built without running N migrations (the offline SQL of the chain up to head's
parent, with the tenant's name put in, streamed through one psql session, 50 tenants per
transaction). Then, each a new process as a user runs it:

  step       upgrade --all-tenants: one real revision over all N (head's parent -> head)
  no-op      upgrade --all-tenants again, nothing to do
  status     status
  check      status --check (the deploy gate)
  drift      drift
  list       tenants list --json
  runs show  runs show of the step's run (N rows)

Each with its wall time, the coordinator's peak RSS, the workers' peak (the sum of their
proportional set sizes, PSS: forked workers share pages with the server they are forked from,
which RSS would count once per process) and the most tenantmig sessions seen on the server,
sampled every 100 ms. With --server-log (the embedded server's own log by default), the
server logs every statement of 5 s or more (log_min_duration_statement, set on the database)
and the lines that appeared while tenantmig ran are reported: a production statement_timeout
must never kill tenantmig's own reads.

Results go to stdout and bench/out/scale-<chain>-<N>.json; building time and the database's
size (pg_database_size, the catalog included) are reported with them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import CONFIG, OUT, PLACEHOLDER, Sampler, Server, admin_url, machine, pg_bin  # noqa: E402

SLOW_MS = 5000
BATCH = 50  # tenants per transaction while building: about 30 locks each on the demo chain
SMALL = {
    "s1_items.py": '''"""items."""
import sqlalchemy as sa
from alembic import op

revision = "s1_items"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("items", sa.Column("id", sa.Integer(), primary_key=True),
                    sa.Column("name", sa.Text(), nullable=False))


def downgrade() -> None:
    op.drop_table("items")
''',
    "s2_notes.py": '''"""notes."""
import sqlalchemy as sa
from alembic import op

revision = "s2_notes"
down_revision = "s1_items"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("notes", sa.Column("id", sa.Integer(), primary_key=True),
                    sa.Column("body", sa.Text(), nullable=False))


def downgrade() -> None:
    op.drop_table("notes")
''',
}
DEMO = ("001_initial_schema", "003_add_inventory_tracking")
CHAINS = ("demo", "small")


@dataclass
class Measured:
    command: str
    seconds: float
    exit_code: int
    coordinator_mb: float = 0.0
    workers_mb: float = 0.0
    workers: int = 0
    connections: int = 0
    slow_statements: list[str] = field(default_factory=list)


@dataclass
class Report:
    chain: str
    tenants: int
    build_seconds: float
    database_mb: float
    server: str
    machine: dict[str, object]
    measured: list[Measured]


def project(chain: str) -> Path:
    """alembic.ini of the project to measure: the repository's, or a copy whose tenant chain
    is the two-table one."""
    if chain == "demo":
        return CONFIG
    root = OUT / "scale_small"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(REPO / "migrations", root / "migrations")
    shutil.copy(CONFIG, root / "alembic.ini")
    versions = root / "migrations" / "tenant" / "versions"
    shutil.rmtree(versions)
    versions.mkdir()
    for name, text in SMALL.items():
        (versions / name).write_text(text)
    return root / "alembic.ini"


def revisions(chain: str) -> tuple[str, str]:
    return ("s1_items", "s2_notes") if chain == "small" else DEMO


def tenantmig(config: Path, url: str, *args: str, check: bool = True) -> str:
    env = {**os.environ, "TENANTMIG_DATABASE_URL": url}
    done = subprocess.run(
        [sys.executable, "-m", "tenantmig", "--config", str(config), *args],
        env=env, capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    if check and done.returncode != 0:
        raise SystemExit(f"tenantmig {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.stdout


def offline_sql(config: Path, revision: str) -> str:
    """The chain up to ``revision`` for the placeholder schema, without BEGIN/COMMIT."""
    env = {**os.environ, "TENANTMIG_DATABASE_URL": "postgresql://offline/offline"}
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(config), "-n", "tenant",
         "-x", f"tenant={PLACEHOLDER}", "upgrade", revision, "--sql"],
        env=env, check=True, capture_output=True, text=True, cwd=config.parent,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.strip() not in ("BEGIN;", "COMMIT;")]
    return "\n".join(lines) + "\n"


def build(url: str, config: Path, chain: str, n: int) -> float:
    """N registered tenants at head's parent; returns the seconds it took."""
    began = time.perf_counter()
    tenantmig(config, url, "upgrade", "--shared", "-q")
    template = offline_sql(config, revisions(chain)[0])
    names = [f"t{i:06d}" for i in range(n)]
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO public.tenants (name, schema_name) "
                "SELECT n, n FROM unnest(CAST(:names AS text[])) AS n"
            ),
            {"names": names},
        )
    engine.dispose()
    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    psql = subprocess.Popen(
        [pg_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", libpq],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert psql.stdin is not None
    pattern = re.compile(rf"\b{PLACEHOLDER}\b")
    for start in range(0, n, BATCH):
        psql.stdin.write("BEGIN;\n")
        for name in names[start : start + BATCH]:
            psql.stdin.write(f'CREATE SCHEMA "{name}";\n')
            psql.stdin.write(pattern.sub(name, template))
        psql.stdin.write("COMMIT;\n")
        if start and start % 10_000 == 0:
            print(f"  built {start} tenants in {time.perf_counter() - began:.0f} s", flush=True)
    psql.stdin.close()
    if psql.wait() != 0:
        raise SystemExit("building the tenants failed")
    return time.perf_counter() - began


def slow_lines(log: Path | None, offset: int) -> list[str]:
    if log is None or not log.exists():
        return []
    with log.open("rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    return [line[:300] for line in text.splitlines() if "duration:" in line]


def measure(label: str, config: Path, url: str, log: Path | None, *args: str) -> Measured:
    env = {**os.environ, "TENANTMIG_DATABASE_URL": url}
    offset = log.stat().st_size if log is not None and log.exists() else 0
    command = [sys.executable, "-m", "tenantmig", "--config", str(config), *args]
    began = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    with Sampler(process.pid, url, interval=0.1) as sampler:
        out, err = process.communicate()
    seconds = time.perf_counter() - began
    if process.returncode not in (0, 2):
        print(f"{label} exited {process.returncode}: {err.strip()[-600:]}", file=sys.stderr)
    time.sleep(0.2)  # the server writes its log line after the statement
    result = Measured(
        label,
        seconds,
        process.returncode,
        sampler.coordinator_rss / 2**20,
        sampler.children_pss / 2**20,
        sampler.most_children,
        sampler.peak_connections,
        slow_lines(log, offset),
    )
    result_out[label] = out
    print(
        f"  {label:10} {seconds:8.2f} s  exit {process.returncode}  coordinator "
        f"{result.coordinator_mb:6.0f} MB  workers {result.workers_mb:6.0f} MB "
        f"({result.workers})  connections {result.connections}  slow {len(result.slow_statements)}",
        flush=True,
    )
    return result


result_out: dict[str, str] = {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenants", type=int, nargs="+", default=[1000])
    parser.add_argument("--chain", choices=CHAINS, default="demo")
    parser.add_argument("--database-url", help="superuser URL (default: embedded server)")
    parser.add_argument("--server-log", type=Path, help="the server's log file to scan")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    args = parser.parse_args()
    server = Server(admin_url(args))
    log = args.server_log or (None if args.database_url else OUT / "pg" / "log")
    config = project(args.chain)
    try:
        for n in args.tenants:
            url = server.fresh_database()
            database = make_url(url).database
            with server.engine.connect() as conn:
                conn.exec_driver_sql(
                    f'ALTER DATABASE "{database}" SET log_min_duration_statement = {SLOW_MS}'
                )
            print(f"N = {n} ({args.chain} chain): building", flush=True)
            built = build(url, config, args.chain, n)
            with server.engine.connect() as conn:
                size = conn.execute(sa.text(f"SELECT pg_database_size('{database}')")).scalar()
            print(f"  built in {built:.0f} s, database {int(size or 0) / 2**20:.0f} MB", flush=True)
            measured = [measure("step", config, url, log, "upgrade", "--all-tenants", "--json")]
            run_id = json.loads(result_out["step"])["run_id"]
            for label, command in (
                ("no-op", ["upgrade", "--all-tenants"]),
                ("status", ["status"]),
                ("check", ["status", "--check"]),
                ("drift", ["drift"]),
                ("list", ["tenants", "list", "--json"]),
                ("runs show", ["runs", "show", str(run_id)]),
            ):
                measured.append(measure(label, config, url, log, *command))
            report = Report(
                args.chain, n, built, int(size or 0) / 2**20, server.version(), machine(), measured
            )
            path = OUT / f"scale-{args.chain}-{n}.json"
            path.write_text(json.dumps(asdict(report), indent=2))
            print(f"  written to {path}", flush=True)
    finally:
        if not args.keep:
            server.drop_all()


if __name__ == "__main__":
    main()
