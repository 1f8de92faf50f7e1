"""``--version``, ``--help`` and usage errors end before any command runs, so they must not pay
for importing the database stack (SQLAlchemy, Alembic, psycopg2: most of tenantmig's start-up
time). Checked by what the process loaded, not by timing it (timings are in bench/startup.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("sqlalchemy", "alembic", "psycopg2")

# Calls the entry point as `python -m tenantmig` does, then prints which heavy packages the
# process loaded, whether main returned or exited.
PROBE = f"""
import json, sys
from tenantmig.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
print(json.dumps({{"code": code, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}),
      file=sys.stderr)
"""


def _probe(*argv: str) -> tuple[int, list[str], str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60
    )
    *output, last = done.stderr.rstrip("\n").split("\n")
    report = json.loads(last)
    return report["code"], report["loaded"], done.stdout + "\n".join(output)


@pytest.mark.parametrize(
    ("argv", "code", "shown"),
    [
        (["--version"], 0, "tenantmig"),
        (["--help"], 0, "exit codes"),
        (["upgrade", "--help"], 0, "usage: tenantmig upgrade"),
        (["tenants", "create", "--help"], 0, "usage: tenantmig tenants create"),
        (["upgrade", "--all-tenant"], 1, "--all-tenant"),
        (["upgrad"], 1, "upgrad"),
    ],
)
def test_no_database_stack_before_a_command_runs(argv: list[str], code: int, shown: str) -> None:
    exit_code, loaded, output = _probe(*argv)
    assert exit_code == code, output
    assert shown in output
    assert loaded == [], f"tenantmig {' '.join(argv)} imported {loaded}"


def test_every_subcommands_help_skips_the_database_stack() -> None:
    from tenantmig.cli.parser import build_parser

    parser = build_parser()
    commands = next(
        a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"
    ).choices
    assert commands
    for name in commands:
        exit_code, loaded, output = _probe(name, "--help")
        assert exit_code == 0, output
        assert loaded == [], f"tenantmig {name} --help imported {loaded}"


def test_python_m_tenantmig_version_skips_the_database_stack() -> None:
    """The real entry point (``python -m tenantmig``), seen through -X importtime."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tenantmig", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert not {name.split(".")[0] for name in imported} & set(HEAVY)
