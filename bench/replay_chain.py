"""Benchmark: replay against --no-replay on a history that mixes what replay can and cannot do.

    python bench/replay_chain.py                      # embedded PostgreSQL under bench/out/pg
    python bench/replay_chain.py --tenants 200 --pairs 2 \\
        --database-url postgresql://postgres@127.0.0.1:5433/postgres

The chain is the demo tenant chain plus tests/corpus_chain/ (twelve revisions: two CREATE
INDEX CONCURRENTLY early on, a squash of 30 tables and 130 indexes, alembic_utils functions
and a trigger, two data migrations that read rows into Python, plain DDL after them). Every
round gets a fresh database with the shared schema at head and N empty tenant schemas
registered (as `tenantmig tenants register` would), then times

    tenantmig upgrade --all-tenants -j2 --json            (replay, the default)
    tenantmig upgrade --all-tenants -j2 --json --no-replay

alternately, replay first, for --pairs pairs. Reported: the time ratio replay / --no-replay
(sum of the replay rounds over the sum of the --no-replay rounds, per pair, and the median
pair), and the share of revisions replayed. Each round's database is dropped after it.

When the server runs on this machine (its data directory readable here), each round also
reports the CPU the server spent (its processes' user and system time, from /proc) next to the
CPU tenantmig's processes spent: both modes send the same DDL, so the server's part is the same
work either way, and on a machine where server and client share two cores it bounds the ratio.

The share is derived from the run's JSON: every tenant says whether it was replayed at all
(``replayed``), and the run's notices say, per step, which revisions ran how. A step without a
notice was replayed whole; "step A -> B (...) is split: ..." names each replayed segment
("X -> Y replayed") and the revisions run through Alembic; a step that "runs through Alembic"
had none replayed. A tenant with ``replayed: false`` counts all its revisions as through
Alembic. A segment "replayed where the structure matches" is counted as replayed for every
tenant that says it was replayed: for tenants from nothing, with no rows, the structure always
matches (the share is exact here; with rows it would be an upper bound).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import OUT, Server, admin_url, machine, prepare  # noqa: E402

CHAIN = REPO / "tests" / "corpus_chain"
FILES = sorted(CHAIN.glob("k[0-9][0-9]_*.py"))
ORDER = ["001_initial_schema", "003_add_inventory_tracking", *(p.stem for p in FILES)]
HEAD = ORDER[-1]
_SEGMENT = re.compile(r"(a new schema|base|\w+) -> (\w+) replayed")


@dataclass
class Round:
    mode: str  # "replay" or "no-replay"
    seconds: float
    tenants: int
    exit_code: int
    replayed_tenants: int = 0
    revisions: int = 0  # run in all tenants
    revisions_replayed: int = 0
    tenant_seconds: float = 0.0  # the tenants' own durations, summed
    server_cpu: float | None = None  # seconds, when the server is local
    client_cpu: float = 0.0  # seconds, tenantmig's processes
    notices: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def project() -> Path:
    """A copy of the project with the corpus chain in its tenant chain."""
    root = OUT / "replay_chain"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(REPO / "migrations", root / "migrations")
    shutil.copy(REPO / "alembic.ini", root / "alembic.ini")
    for path in FILES:
        shutil.copy(path, root / "migrations" / "tenant" / "versions" / path.name)
    return root / "alembic.ini"


def _position(revision: str) -> int:
    """Index in ORDER of the state ``revision`` names; -1 for nothing (a new schema, base)."""
    return ORDER.index(revision) if revision in ORDER else -1


def replayed_revisions(start: str, end: str, replayed: bool, notices: list[str]) -> int:
    """How many of the revisions start -> end ran in replayed segments (see the docstring)."""
    total = _position(end) - _position(start)
    if not replayed:
        return 0
    starts = ("a new schema", "base") if start == "base" else (start,)
    keys = [f"{s} -> {end}" for s in starts]
    said = [n for n in notices if any(f"step {k} " in n for k in keys)]
    said += [n for n in notices if any(f"(step {k})" in n for k in keys)]
    if not said:
        return total  # replayed whole
    split = [n for n in said if " is split: " in n]
    if not split:
        return 0
    return sum(
        _position(to) - _position(frm) for frm, to in _SEGMENT.findall(split[0].split(": ", 1)[1])
    )


def server_cpu(postmaster: Path | None) -> float | None:
    """User and system CPU seconds of a local server: the postmaster with its exited children
    (reaped, so counted in its cutime and cstime) and its live children."""
    if postmaster is None:
        return None
    try:
        pid = int(postmaster.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    ticks = 0

    def fields(stat: Path) -> list[str]:
        return stat.read_text().rsplit(")", 1)[1].split()

    try:
        ticks += sum(int(x) for x in fields(Path(f"/proc/{pid}/stat"))[11:15])
    except OSError:
        return None
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = fields(entry / "stat")
            except OSError:
                continue  # exited meanwhile
            if int(stat[1]) == pid:
                ticks += int(stat[11]) + int(stat[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def timed_round(mode: str, url: str, config: Path, n: int, postmaster: Path | None = None) -> Round:
    env = {**os.environ, "TENANTMIG_DATABASE_URL": url}
    extra = ["--no-replay"] if mode == "no-replay" else []
    cmd = [sys.executable, "-m", "tenantmig", "--config", str(config), "upgrade"]
    cmd += ["--all-tenants", "-j2", "--json", *extra]
    server_before, client_before = server_cpu(postmaster), os.times()
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    server_after, client_after = server_cpu(postmaster), os.times()
    result = Round(mode, seconds, n, done.returncode)
    if server_before is not None and server_after is not None:
        result.server_cpu = server_after - server_before
    result.client_cpu = (client_after.children_user - client_before.children_user) + (
        client_after.children_system - client_before.children_system
    )
    try:
        document = json.loads(done.stdout)
    except json.JSONDecodeError:
        print(f"{mode} failed ({done.returncode}): {done.stderr.strip()[-800:]}", file=sys.stderr)
        return result
    failed = [t for t in document["tenants"] if t["status"] != "ok"]
    if failed:
        result.failures = [f"{t['name']}: {t['status']}: {t['error']}" for t in failed]
        print(f"{mode}: {len(failed)} tenant(s) not ok, first: {result.failures[0]}", flush=True)
    result.notices = document["notices"]
    for tenant in document["tenants"]:
        result.replayed_tenants += bool(tenant["replayed"])
        result.tenant_seconds += tenant["duration_s"]
        result.revisions += _position(tenant["to"]) - _position(tenant["from"])
        result.revisions_replayed += replayed_revisions(
            tenant["from"], tenant["to"], tenant["replayed"], result.notices
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=2, help="replay / --no-replay pairs")
    parser.add_argument("--database-url", help="superuser URL (default: embedded server)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    config = project()
    server = Server(admin_url(args))
    postmaster = server.postmaster_pid_file()
    n = args.tenants
    rounds: list[Round] = []
    load_before = os.getloadavg()
    try:
        for _ in range(args.pairs):
            for mode in ("replay", "no-replay"):
                url = server.fresh_database()
                prepare(url, n)
                rounds.append(timed_round(mode, url, config, n, postmaster))
                server.drop_all()  # the next round starts from the same server state
                server.created.clear()
                r = rounds[-1]
                cpu = f"  server CPU {r.server_cpu:.1f} s" if r.server_cpu is not None else ""
                print(
                    f"{mode:10s} {r.seconds:7.2f} s  tenants replayed {r.replayed_tenants}/{n}"
                    f"  revisions replayed {r.revisions_replayed}/{r.revisions}"
                    f"{cpu}  tenantmig CPU {r.client_cpu:.1f} s  not ok {len(r.failures)}",
                    flush=True,
                )
        version = server.version()
    finally:
        server.drop_all()
    load_after = os.getloadavg()

    on = [r for r in rounds if r.mode == "replay"]
    off = [r for r in rounds if r.mode == "no-replay"]
    ratio = sum(r.seconds for r in on) / sum(r.seconds for r in off)
    pairs = [a.seconds / b.seconds for a, b in zip(on, off, strict=True)]
    share = sum(r.revisions_replayed for r in on) / max(1, sum(r.revisions for r in on))
    report = {
        "tenants": n,
        "postgresql": version,
        "machine": machine(),
        "load_before": load_before,
        "load_after": load_after,
        "ratio_replay_over_no_replay": ratio,
        "ratio_per_pair": pairs,
        "ratio_median_pair": statistics.median(pairs),
        "share_of_revisions_replayed": share,
        "rounds": [r.__dict__ for r in rounds],
    }
    (OUT / f"replay_chain-{n}.json").write_text(json.dumps(report, indent=2))
    print(f"PostgreSQL {version}; {report['machine']}")
    print(f"load average before {load_before}, after {load_after}")
    print(
        "| round | mode | time (s) | tenants' own time (s) | server CPU (s) | tenantmig CPU (s) "
        "| tenants replayed | revisions replayed | not ok |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for i, r in enumerate(rounds, start=1):
        cpu = f"{r.server_cpu:.1f}" if r.server_cpu is not None else "n/a"
        print(
            f"| {i} | {r.mode} | {r.seconds:.2f} | {r.tenant_seconds:.1f} | {cpu} | "
            f"{r.client_cpu:.1f} | {r.replayed_tenants}/{r.tenants} | "
            f"{r.revisions_replayed}/{r.revisions} | {len(r.failures)} |"
        )
    print(
        f"time replay / --no-replay: {ratio:.3f}, median pair {statistics.median(pairs):.3f} "
        f"(per pair: {', '.join(f'{p:.3f}' for p in pairs)})"
    )
    print(f"share of revisions replayed (replay rounds): {share:.1%}")
    print("notices of the first replay round:")
    for notice in on[0].notices:
        print(f"  {notice}")


if __name__ == "__main__":
    main()
