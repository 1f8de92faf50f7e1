"""Benchmark: how long tenantmig takes to start, against Alembic in the same run.

    python bench/startup.py                     # embedded PostgreSQL under bench/out/pg
    python bench/startup.py --database-url postgresql://postgres@127.0.0.1:5433/postgres
    python bench/startup.py --code src --code /path/to/other/checkout/src   # two versions

Two comparisons, each a new process as a user runs it, in pairs A B A B ... so that a busy
machine slows both sides alike:

  version   `tenantmig --version` against `alembic --version`
  no-op     `tenantmig upgrade --tenant acme` with acme already at head (nothing to do)
            against `alembic -n tenant -x tenant=acme current` (reads one schema's revision)

For each pair the ratio tenantmig / alembic is taken; the median of the --pairs ratios is
printed with the median times. Targets: version at most 0.5, no-op at most 1.0. Then where the
time goes: each no-op command five times more with PYTHONPROFILEIMPORTTIME, its imports
summed by package group (-X importtime's self times, which the profiling inflates a little),
median per group. --code picks
the source tree tenantmig runs from (default: this checkout's src/); given several times (the
code before and after a change), each is timed in the same rotation against the same database.
Every tree (and the chains' revision files) is byte-compiled first, as an installed wheel is.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "alembic.ini"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "src"))

from tenantmig.server.embedded import start  # noqa: E402

TENANT = "acme"
TARGETS = {"version": 0.5, "no-op": 1.0}
GROUPS = {
    "sqlalchemy": "database stack",
    "alembic": "database stack",
    "mako": "database stack",
    "psycopg2": "database stack",
    "tenantmig": "tenantmig",
    "rich": "rich",
}


def timed(command: Sequence[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")
    return elapsed


def import_split(command: Sequence[str], env: dict[str, str], runs: int = 5) -> dict[str, float]:
    """Seconds of imports by group (database stack, tenantmig, rich, the rest): per group the
    median of ``runs`` runs."""
    seen: dict[str, list[float]] = {}
    for _ in range(runs):
        done = subprocess.run(
            command, env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, cwd=REPO, capture_output=True,
            text=True, check=True,
        )  # fmt: skip
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


def compare(
    label: str,
    sides: dict[str, tuple[list[str], dict[str, str]]],
    baseline: str,
    pairs: int,
) -> list[str]:
    """Time every side once per round (after one untimed warm-up round); report medians and
    the median of the per-round ratios against ``baseline``, with the target's verdict."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(pairs + 1):
        for name, (command, env) in sides.items():
            elapsed = timed(command, env)
            if round_:
                times[name].append(elapsed)
    lines = []
    for name, seconds in times.items():
        ratios = [t / b for t, b in zip(seconds, times[baseline], strict=True)]
        ratio = ""
        if name != baseline:
            median = statistics.median(ratios)
            verdict = "met" if median <= TARGETS[label] else "not met"
            ratio = f"  ratio {median:.2f} (target <= {TARGETS[label]}: {verdict})"
        lines.append(
            f"{label:8} {name:28} median {statistics.median(seconds):.3f}s "
            f"(min {min(seconds):.3f}s){ratio}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--database-url", help="superuser URL (default: embedded server)")
    parser.add_argument("--pairs", type=int, default=9, help="timed rounds (default: 9)")
    parser.add_argument("--code", type=Path, action="append", default=[],
                        help="src/ directory to run tenantmig from (repeatable; default: "
                        "this checkout's)")  # fmt: skip
    args = parser.parse_args()
    codes = [code.resolve() for code in args.code] or [REPO / "src"]
    # An installed package has its bytecode (pip compiles a wheel at install time); a source
    # tree run with PYTHONDONTWRITEBYTECODE set would compile every module on every start and
    # time the compiler. Both sides load the chains' revision files: compiled for both.
    for tree in [*codes, REPO / "migrations"]:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree)], check=True,
                       capture_output=True)  # fmt: skip
    admin_url = args.database_url
    if admin_url is None:
        _provider, server = start(REPO / "bench" / "out" / "pg", cleanup_mode=None)
        admin_url = server.get_uri()
    name = f"bench_startup_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(
        make_url(admin_url).set(drivername="postgresql+psycopg2"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(drivername="postgresql+psycopg2", database=name)
    env = {**os.environ, "TENANTMIG_DATABASE_URL": url.render_as_string(hide_password=False)}
    tenantmig = [str(BIN / "tenantmig"), "--config", str(CONFIG)]
    alembic = [str(BIN / "alembic"), "-c", str(CONFIG)]
    # The tenantmig side runs each source tree; the alembic side this checkout's (env.py
    # imports tenantmig.chains.env).
    trees = {
        f"tenantmig {code.parent.name}/{code.name}": {**env, "PYTHONPATH": str(code)}
        for code in codes
    }
    setup = next(iter(trees.values()))
    env = {**env, "PYTHONPATH": str(REPO / "src")}
    try:
        timed([*tenantmig, "upgrade", "--shared", "-q"], setup)
        timed([*tenantmig, "tenants", "create", TENANT, "--json"], setup)
        version = {
            **{k: ([*tenantmig, "--version"], e) for k, e in trees.items()},
            "alembic --version": ([*alembic, "--version"], env),
        }
        upgrade = [*tenantmig, "upgrade", "--tenant", TENANT, "-q"]
        noop = {
            **{k: (upgrade, e) for k, e in trees.items()},
            f"alembic current ({TENANT})": (
                [*alembic, "-n", "tenant", "-x", f"tenant={TENANT}", "current"],
                env,
            ),
        }
        lines = [
            *compare("version", version, "alembic --version", args.pairs),
            *compare("no-op", noop, f"alembic current ({TENANT})", args.pairs),
        ]
        print(f"{args.pairs} rounds each, ratios are medians of per-round tenantmig/alembic")
        print("\n".join(lines))
        print("imports of one no-op command, by group (s):")
        for side, (command, side_env) in noop.items():
            split = import_split(command, side_env)
            shown = ", ".join(f"{g} {t:.3f}" for g, t in sorted(split.items(), key=lambda i: -i[1]))
            print(f"  {side}: total {sum(split.values()):.3f}: {shown}")
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


if __name__ == "__main__":
    main()
