"""Benchmark: how soon workers migrate, before and after forking them from a preloaded server.

    python bench/worker_startup.py                         # --jobs 2, 8, 16; 64 tenants
    python bench/worker_startup.py --jobs 16 --pairs 5 --tenants 64
    python bench/worker_startup.py --before 1b60f7a        # the code to compare against

Each round: a fresh database with the shared schema at head and N registered, empty tenant
schemas, then `tenantmig upgrade --all-tenants -j J --events FILE` as a user runs it (a new
process), once with the code before the change (`git archive` of --before, by default the
commit before run/worker_server.py was added) and once with this tree, alternately (before
first), --pairs times for each J. Measured from the moment the command is started:

  coordinator   the run_started event: the coordinator's own start (imports, connection,
                registry, ledger, compiling the step), the same work in both trees
  first done    the first tenant_finished event
  J-th done     the J-th tenant_finished event: by then about every worker has finished a
                tenant, so an upper bound on the time for all J workers to be ready
  all done      the command's exit
  CPU           user + system CPU of the command and every process it started (the workers
                and, after, the worker server), from the kernel's accounting of reaped
                children: the work is the same in both trees, so the difference is start-up

Medians over the pairs; the machine's cores and load are printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import CONFIG, OUT, Server, admin_url, machine, prepare  # noqa: E402

_ADDED = Path("src/tenantmig/run/worker_server.py")


@dataclass
class Round:
    code: str  # "before" or "after"
    jobs: int
    coordinator: float
    first: float
    jth: float
    total: float
    cpu: float


def before_tree(ref: str | None) -> tuple[str, Path]:
    """The source tree to compare against, extracted from git."""
    if ref is None:
        added = subprocess.run(
            ["git", "log", "--diff-filter=A", "--format=%H", "--", str(_ADDED)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if not added:
            raise SystemExit("no commit adds run/worker_server.py yet: pass --before REF")
        ref = f"{added[-1]}^"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    root = OUT / f"startup_before_{commit}"
    if not (root / "src" / "tenantmig").is_dir():
        archive = subprocess.run(
            ["git", "archive", "--format=tar", commit, "src"], cwd=REPO, capture_output=True,
            check=True,
        ).stdout  # fmt: skip
        root.mkdir(parents=True, exist_ok=True)
        archive_path = root / "src.tar"
        archive_path.write_bytes(archive)
        with tarfile.open(archive_path) as tar:
            tar.extractall(root, filter="data")
        archive_path.unlink()
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "src")], check=True)
    return commit, root / "src"


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def timed_round(code: str, src: Path, url: str, jobs: int, n: int) -> Round:
    events = OUT / f"startup_events_{code}_{jobs}.jsonl"
    events.unlink(missing_ok=True)
    env = {**os.environ, "TENANTMIG_DATABASE_URL": url, "PYTHONPATH": str(src)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    command = [sys.executable, "-m", "tenantmig", "--config", str(CONFIG), "upgrade",
               "--all-tenants", "-j", str(jobs), "--events", str(events), "--json"]  # fmt: skip
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    total = time.time() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{code} -j{jobs} exited {done.returncode}: {done.stderr[-1500:]}")
    seen = [json.loads(line) for line in events.read_text().splitlines()]
    finished = sorted(_seconds(e["ts"]) - started for e in seen if e["event"] == "tenant_finished")
    (run_started,) = (_seconds(e["ts"]) - started for e in seen if e["event"] == "run_started")
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return Round(code, jobs, run_started, finished[0], finished[min(jobs, n) - 1], total, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, nargs="+", default=[2, 8, 16])
    parser.add_argument("--tenants", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--before", help="git ref of the code to compare against")
    parser.add_argument("--database-url", help="superuser URL (default: embedded server)")
    args = parser.parse_args()
    commit, before_src = before_tree(args.before)
    server = Server(admin_url(args))
    load_before = os.getloadavg()
    rounds: list[Round] = []
    try:
        for jobs in args.jobs:
            for _ in range(args.pairs):
                for code, src in (("before", before_src), ("after", REPO / "src")):
                    url = server.fresh_database()
                    prepare(url, args.tenants)
                    rounds.append(timed_round(code, src, url, jobs, args.tenants))
                    r = rounds[-1]
                    print(f"{code:6} -j{jobs:<3} coordinator {r.coordinator:5.2f} s  first "
                          f"{r.first:5.2f} s  {jobs}th {r.jth:5.2f} s  all {r.total:5.2f} s  "
                          f"CPU {r.cpu:5.2f} s", flush=True)  # fmt: skip
    finally:
        server.drop_all()
    print(f"PostgreSQL {server.version()}; {machine()}; before = {commit}")
    print(f"load average before {load_before}, after {os.getloadavg()}")
    print(
        "| --jobs | code | coordinator | first tenant done | J-th done | "
        f"all {args.tenants} done | CPU |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for jobs in args.jobs:
        for code in ("before", "after"):
            mine = [r for r in rounds if r.jobs == jobs and r.code == code]

            def med(field: str, mine: list[Round] = mine) -> float:
                return statistics.median(getattr(r, field) for r in mine)

            print(f"| {jobs} | {code} | {med('coordinator'):.2f} s | {med('first'):.2f} s | "
                  f"{med('jth'):.2f} s | {med('total'):.2f} s | {med('cpu'):.2f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
