"""Benchmark: the deploy gate (`tenantmig status --check`) at N tenants, against its floor.

    python bench/deploy_gate.py                     # 10,000 tenants, embedded PostgreSQL
    python bench/deploy_gate.py --tenants 200 --pairs 3
    python bench/deploy_gate.py --database-url postgresql://postgres@127.0.0.1:5433/postgres
    python bench/deploy_gate.py --code /tmp/head/src   # time another source tree (git archive)

The gate is what a deploy pipeline runs before it sends traffic to new code, so it is timed as
a user runs it: a new process, start-up included. Targets (the issue): at 10,000 tenants on 2
cores, under 2 s, and at most 1.5x its floor, which is the time of

  `tenantmig --version`   the interpreter and tenantmig's own start-up
  + one bulk query        every tenant's alembic_version read by one psql process (one
                          connection; a single UNION ALL, or when that cannot run in one
                          transaction, 10,000 version tables exhausting the server's lock table,
                          one UNION ALL per chunk of 500 schemas, each its own transaction, in
                          the same psql call; the output says which)

Each round runs, in this order, `--version`, the bulk query, `status --check` with every tenant
at head (must exit 0) and `status --check` with one tenant put one revision behind (must exit
2; the version row is set back after it, untimed). One untimed warm-up round, then --pairs
timed rounds, so a busy machine slows every side alike; ratios are per round, then the median.

The database (`bench_gate_<N>`) is kept and reused by the next run when `status --check`
still passes on it with N tenants (--fresh rebuilds it, --drop removes it at the end). It is
built without running N migrations: the shared schema upgraded by tenantmig, the first tenant
created and migrated to head by tenantmig, the other N-1 registered by tenantmig (schemas
created, not migrated) and then given, in bulk, the version table Alembic creates holding the
tenant head: as far as the gate (which reads versions only) can tell, N tenants at head.

Then where the time goes: the gate's imports by package group (PYTHONPROFILEIMPORTTIME, median
of five runs) and its phases, timed inside a new process (median of five runs).

src/ and the chains' revision files are byte-compiled first, as an installed wheel is, and
PYTHONDONTWRITEBYTECODE is unset for the timed processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "alembic.ini"
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO / "src"))

from tenantmig import api  # noqa: E402
from tenantmig.chains.scripts import ChainScripts  # noqa: E402
from tenantmig.errors import ConfigError  # noqa: E402
from tenantmig.server import embedded  # noqa: E402
from tenantmig.server.config import load_settings  # noqa: E402

TARGET_SECONDS = 2.0
TARGET_RATIO = 1.5
CHUNK = 500  # schemas per statement when one statement cannot read them all
BATCH = 1000  # tenants registered per transaction while building
GROUPS = {
    "sqlalchemy": "database stack",
    "alembic": "database stack",
    "mako": "database stack",
    "psycopg2": "database stack",
    "tenantmig": "tenantmig",
    "rich": "rich",
}

# Run in a new process: the gate's phases, each timed where tenantmig does it (the functions
# api.deploy_check calls are wrapped in place; nothing else changes). Prints JSON.
PHASES = r"""
import contextlib, io, json, sys, time
began = time.perf_counter()
import tenantmig.cli
from tenantmig.cli import main
cli_imported = time.perf_counter()
from tenantmig import api
from tenantmig.cli import commands
from tenantmig.schema import gate
commands_imported = time.perf_counter()
spent = {}

def add(label, seconds):
    spent[label] = spent.get(label, 0.0) + seconds

def wrap(owner, name, label):
    inner = getattr(owner, name)
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            add(label(args) if callable(label) else label, time.perf_counter() - start)
    setattr(owner, name, timed)

def wrap_context(owner, name, label):
    inner = getattr(owner, name)
    @contextlib.contextmanager
    def timed(*args, **kwargs):
        start = time.perf_counter()
        with inner(*args, **kwargs) as value:
            add(label, time.perf_counter() - start)
            yield value
    setattr(owner, name, timed)

wrap(commands, "_settings", "settings (alembic.ini, environment)")
wrap(api, "ChainScripts", "chain scripts (both chains, order cache)")
wrap_context(api, "open_database", "connect (engine, server checks)")
wrap(api, "read_versions", lambda a: "shared version" if len(a[1]) == 1 else "tenant versions")
wrap(api, "_select_tenants", "tenant list (registry)")
wrap_context(api, "_by_database", "tenant placement (directory)")
wrap(gate, "evaluate", "evaluate (classify each tenant)")
# Overlapping the phases above: the catalog queries inside the version reads, and every
# statement's time in the driver's execute (the server's work and the round trip).
from sqlalchemy import event
from sqlalchemy.engine import Engine
from tenantmig.schema import versions
detail = {}
inner_catalog = versions._catalog_rows
def catalog_rows(*args, **kwargs):
    start = time.perf_counter()
    try:
        return inner_catalog(*args, **kwargs)
    finally:
        detail["catalog queries"] = detail.get("catalog queries", 0.0) + time.perf_counter() - start
versions._catalog_rows = catalog_rows
statements = []
@event.listens_for(Engine, "before_cursor_execute")
def before(conn, cursor, statement, parameters, context, executemany):
    conn.info["bench_began"] = time.perf_counter()
@event.listens_for(Engine, "after_cursor_execute")
def after(conn, cursor, statement, parameters, context, executemany):
    kind = "version" if "version_num FROM" in statement else "other"
    statements.append((kind, time.perf_counter() - conn.info.pop("bench_began")))
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(sys.argv[1:])
ended = time.perf_counter()
print(json.dumps({
    "exit": code,
    "import tenantmig.cli (parser)": cli_imported - began,
    "import the command (api, sqlalchemy, ...)": commands_imported - cli_imported,
    "phases": spent,
    "detail": {
        **detail,
        "UNION ALL version queries": sum(t for k, t in statements if k == "version"),
        "all statements in execute": sum(t for k, t in statements),
        "statements": len(statements),
    },
    "command": ended - commands_imported,
    "in script": ended - began,
}))
"""


def median_ratio(seconds: Sequence[float], baseline: Sequence[float]) -> float:
    """The median of the per-round ratios."""
    return statistics.median([t / b for t, b in zip(seconds, baseline, strict=True)])


def run(
    command: Sequence[str], env: dict[str, str]
) -> tuple[float, subprocess.CompletedProcess[str]]:
    began = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    return time.perf_counter() - began, done


def timed(command: Sequence[str], env: dict[str, str], expect: int = 0) -> float:
    elapsed, done = run(command, env)
    if done.returncode != expect:
        raise SystemExit(
            f"{' '.join(command)} exited {done.returncode}, expected {expect}:\n"
            f"{done.stdout[-1000:]}{done.stderr[-2000:]}"
        )
    return elapsed


def database_names(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.exec_driver_sql("SELECT datname FROM pg_database").scalars())


def build(url: str, n: int) -> None:
    """Shared schema at head and N tenants whose version table says head (see the docstring)."""
    settings = load_settings(config_file=CONFIG, database_url=url)
    head = ChainScripts(settings, "tenant").head
    began = time.perf_counter()
    api.upgrade(settings, api.Selection.shared_only())
    names = [f"t{i:05d}" for i in range(n)]
    api.create_tenants(settings, names[:1], migrate=True)  # the real chain, once
    for start_at in range(1, n, BATCH):
        api.create_tenants(settings, names[start_at : start_at + BATCH], migrate=False)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    # The table Alembic creates (alembic.runtime.migration), one row: the head.
    for start_at in range(1, n, CHUNK):
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "".join(
                    f'CREATE TABLE "{name}".alembic_version (version_num VARCHAR(32) NOT NULL, '
                    "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)); "
                    f"INSERT INTO \"{name}\".alembic_version VALUES ('{head}'); "
                    for name in names[start_at : start_at + CHUNK]
                )
            )
    engine.dispose()
    # Statistics as a live database has them (the catalogs included); outside a transaction,
    # so that each table's lock is let go as it is done.
    engine = sa.create_engine(url, poolclass=sa.NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE").close()
    engine.dispose()
    print(f"built {n} tenants at head in {time.perf_counter() - began:.1f}s")


def registered(url: str) -> int | None:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return int(
                conn.exec_driver_sql(
                    "SELECT count(*) FROM public.tenants WHERE status = 'active'"
                ).scalar_one()
            )
    except sa.exc.DBAPIError:
        return None
    finally:
        engine.dispose()


def bulk_sql(url: str, path: Path) -> str:
    """Write the bulk version query of every active tenant to ``path``: one statement if the
    server can run it, else one per CHUNK schemas. Returns which, for the report."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        schemas = list(
            conn.exec_driver_sql(
                "SELECT schema_name FROM public.tenants WHERE status = 'active' ORDER BY name"
            ).scalars()
        )

    def union(part: Sequence[str]) -> str:
        return (
            " UNION ALL ".join(
                f"SELECT '{s}' AS schema, version_num FROM \"{s}\".alembic_version" for s in part
            )
            + ";\n"
        )

    single = union(schemas)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(single).all()
        engine.dispose()
        if len(rows) != len(schemas):
            raise SystemExit(f"bulk query read {len(rows)} rows for {len(schemas)} schemas")
        path.write_text(single)
        return f"one UNION ALL over {len(schemas)} version tables"
    except sa.exc.OperationalError as exc:  # too many locks, or too deep a statement
        engine.dispose()
        reason = str(exc.orig).splitlines()[0]
    path.write_text("".join(union(schemas[i : i + CHUNK]) for i in range(0, len(schemas), CHUNK)))
    chunks = -(-len(schemas) // CHUNK)
    return (
        f"{chunks} UNION ALL statements of {CHUNK} version tables, each its own transaction "
        f"(one statement over all {len(schemas)} fails: {reason})"
    )


def import_split(command: Sequence[str], env: dict[str, str], runs: int = 5) -> dict[str, float]:
    seen: dict[str, list[float]] = {}
    for _ in range(runs):
        _elapsed, done = run(command, {**env, "PYTHONPROFILEIMPORTTIME": "1"})
        split: dict[str, float] = {}
        for line in done.stderr.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            self_us, _cumulative, module = line.removeprefix("import time:").split("|")
            group = GROUPS.get(module.strip().split(".")[0], "standard library and other")
            split[group] = split.get(group, 0.0) + int(self_us) / 1e6
        for group, seconds in split.items():
            seen.setdefault(group, []).append(seconds)
    return {group: statistics.median(times) for group, times in seen.items()}


def phases(args: Sequence[str], env: dict[str, str], runs: int = 5) -> dict[str, float]:
    """Median seconds per phase of the gate in a new process; 'interpreter start and exit' is
    the wall time outside the script."""
    seen: dict[str, list[float]] = {}
    for _ in range(runs):
        elapsed, done = run([sys.executable, "-c", PHASES, *args], env)
        if done.returncode != 0:
            raise SystemExit(f"phases script failed: {done.stderr[-2000:]}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        if report["exit"] != 0:
            raise SystemExit(f"status --check exited {report['exit']} in the phases script")
        row = {
            "interpreter start and exit": elapsed - report["in script"],
            "import tenantmig.cli (parser)": report["import tenantmig.cli (parser)"],
            "import the command (api, sqlalchemy, ...)": report[
                "import the command (api, sqlalchemy, ...)"
            ],
            **report["phases"],
        }
        row["rest of the command (parsing, printing, ...)"] = report["command"] - sum(
            report["phases"].values()
        )
        row["total (wall)"] = elapsed
        row.update({f"  of which {label}": value for label, value in report["detail"].items()})
        for label, seconds in row.items():
            seen.setdefault(label, []).append(seconds)
    return {label: statistics.median(times) for label, times in seen.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--database-url", help="superuser URL (default: embedded server)")
    parser.add_argument("--pairs", type=int, default=9, help="timed rounds (default: 9)")
    parser.add_argument("--code", type=Path, default=REPO / "src",
                        help="src/ directory the timed tenantmig runs from (default: this "
                        "checkout's)")  # fmt: skip
    parser.add_argument("--fresh", action="store_true", help="rebuild the database")
    parser.add_argument("--drop", action="store_true", help="drop the database at the end")
    args = parser.parse_args()
    code = args.code.resolve()
    for tree in (code, REPO / "migrations"):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree)], check=True,
                       capture_output=True)  # fmt: skip
    admin_url = args.database_url
    if admin_url is None:
        _provider, server = embedded.start(OUT / "pg", cleanup_mode=None)
        admin_url = server.get_uri()
    try:
        psql = str(embedded.bin_dir(OUT / "pg") / "psql")
    except ConfigError:  # no embedded PostgreSQL installed: the one on PATH
        psql = "psql"
    name = f"bench_gate_{args.tenants}"
    admin = sa.create_engine(
        make_url(admin_url).set(drivername="postgresql+psycopg2"),
        isolation_level="AUTOCOMMIT",
        poolclass=sa.NullPool,
    )
    url = make_url(admin_url).set(drivername="postgresql+psycopg2", database=name)
    url_text = url.render_as_string(hide_password=False)
    libpq_url = url.set(drivername="postgresql").render_as_string(hide_password=False)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env = {**env, "TENANTMIG_DATABASE_URL": url_text, "PYTHONPATH": str(code)}
    tenantmig = [sys.executable, "-m", "tenantmig", "--config", str(CONFIG)]
    check = [*tenantmig, "status", "--check"]

    exists = name in database_names(admin)
    reuse = (
        exists
        and not args.fresh
        and registered(url_text) == args.tenants
        and run(check, env)[1].returncode == 0
    )
    if not reuse:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        build(url_text, args.tenants)
    else:
        print(f"reusing database {name}: {args.tenants} tenants at head")
    _elapsed, done = run(check, env)
    if done.returncode != 0 or f"{args.tenants} tenant(s) at head" not in done.stdout:
        raise SystemExit(f"status --check is not ok: exit {done.returncode}\n{done.stdout}")
    print(f"status --check: {done.stdout.strip()}")

    settings = load_settings(config_file=CONFIG, database_url=url_text)
    scripts = ChainScripts(settings, "tenant")
    order = scripts.revisions()  # newest first
    behind_revision = order[1].revision
    lagging = f"t{args.tenants // 2:05d}"
    sql_file = OUT / f"deploy_gate_{args.tenants}.sql"
    bulk_form = bulk_sql(url_text, sql_file)
    bulk = [psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", libpq_url,
            "-f", str(sql_file), "-o", os.devnull]  # fmt: skip
    data = sa.create_engine(url_text, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)

    def set_lagging(revision: str) -> None:
        with data.connect() as conn:
            conn.exec_driver_sql(
                f"UPDATE \"{lagging}\".alembic_version SET version_num = '{revision}'"
            )

    sides = ["tenantmig --version", "bulk query (psql)", "status --check, all at head",
             f"status --check, {lagging} behind"]  # fmt: skip
    times: dict[str, list[float]] = {side: [] for side in sides}
    load_before = os.getloadavg()[0]
    try:
        for round_ in range(args.pairs + 1):
            got = [timed([*tenantmig, "--version"], env), timed(bulk, env), timed(check, env)]
            set_lagging(behind_revision)
            try:
                got.append(timed(check, env, expect=2))
            finally:
                set_lagging(scripts.head or "")
            if round_:
                for side, seconds in zip(sides, got, strict=True):
                    times[side].append(seconds)
        set_lagging(behind_revision)
        try:
            _elapsed, failing = run(check, env)  # its output, for the report
        finally:
            set_lagging(scripts.head or "")
        floor = [v + q for v, q in zip(times[sides[0]], times[sides[1]], strict=True)]
        load_after = os.getloadavg()[0]
        print()
        print(f"N = {args.tenants} tenants, {os.cpu_count()} cores, Python "
              f"{platform.python_version()}, PostgreSQL {server_version(admin)}, 1-min load "
              f"average {load_before:.2f} before, {load_after:.2f} after; {args.pairs} timed "
              "rounds (after one warm-up)")  # fmt: skip
        print(f"bulk query: {bulk_form}; one psql process, timed as a process")
        print(f"tenantmig run from {code}")
        print()
        print(f"| {'what':44} | {'median':>8} | {'min':>8} | {'max':>8} | ratio to floor |")
        print(f"|{'-' * 46}|{'-' * 9}:|{'-' * 9}:|{'-' * 9}:|{'-' * 15}:|")
        rows = [*((side, times[side]) for side in sides),
                ("floor: --version + bulk query", floor)]  # fmt: skip
        for label, row in rows:
            shown = f"{median_ratio(row, floor):.2f}" if label.startswith("status") else ""
            print(f"| {label:44} | {statistics.median(row):7.3f}s | {min(row):7.3f}s | "
                  f"{max(row):7.3f}s | {shown:>14} |")  # fmt: skip
        print()
        for side in sides[2:]:
            middle = statistics.median(times[side])
            against = median_ratio(times[side], floor)
            print(f"{side}: {middle:.3f}s (target < {TARGET_SECONDS:.0f} s: "
                  f"{'met' if middle < TARGET_SECONDS else 'not met'}), "
                  f"{against:.2f}x the floor (target <= {TARGET_RATIO}x: "
                  f"{'met' if against <= TARGET_RATIO else 'not met'})")  # fmt: skip
        failing_vs_ok = median_ratio(times[sides[3]], times[sides[2]])
        print(f"failing path / passing path: {failing_vs_ok:.2f} (median of per-round ratios)")
        print(f"failing output (exit {failing.returncode}): {failing.stdout.strip()}")

        print()
        print("imports of one status --check, by group (s, median of 5, -X importtime self):")
        split = import_split(check, env)
        shown = ", ".join(f"{g} {t:.3f}" for g, t in sorted(split.items(), key=lambda i: -i[1]))
        print(f"  total {sum(split.values()):.3f}: {shown}")
        print("phases of one status --check in a new process (s, median of 5):")
        for label, seconds in phases(check[3:], env).items():
            shown = f"{seconds:.0f}" if label.endswith("statements") else f"{seconds:.3f}"
            print(f"  {label:58} {shown}")
    finally:
        data.dispose()
        if args.drop:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def server_version(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        return str(conn.exec_driver_sql("SHOW server_version").scalar())


if __name__ == "__main__":
    main()
