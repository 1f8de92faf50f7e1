"""tenantmig as a user installs it: a wheel in a fresh virtualenv, used outside this repository.

The wheel must carry everything ``init`` and ``demo`` need. The virtualenv gets tenantmig from
the wheel alone; its dependencies are borrowed from the test environment through a path file
(a plain directory entry, so the test environment's own tenantmig is not visible) to keep the
test quick and independent of a package index.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """bin/ of a virtualenv holding the freshly built wheel."""
    root = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(root)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = root.glob("tenantmig-*.whl")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    target = next((env_dir / "lib").glob("python3*/site-packages"))
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(wheel)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    ours = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (target / "zz_test_dependencies.pth").write_text("\n".join(ours) + "\n")
    # pip --target writes no console script for the venv: the module entry point is the same.
    yield env_dir / "bin"


def _tenantmig(bin_dir: Path, *args: str, cwd: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTMIG_")}
    env["TENANTMIG_DATABASE_URL"] = url
    return subprocess.run(
        [str(bin_dir / "python"), "-m", "tenantmig", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_the_wheel_is_what_runs(installed: Path, tmp_path: Path) -> None:
    where = subprocess.run(
        [str(installed / "python"), "-c", "import tenantmig; print(tenantmig.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert where.returncode == 0, where.stderr
    assert str(installed.parent) in where.stdout and str(REPO) not in where.stdout


def test_init_then_upgrade_from_the_wheel(
    installed: Path, tmp_path: Path, database_url: str
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    done = _tenantmig(installed, "init", "myapp", cwd=outside, url=database_url)
    assert done.returncode == 0, done.stderr
    project = outside / "myapp"
    for step in (["upgrade", "--shared"], ["tenants", "create", "acme"], ["status", "--json"]):
        done = _tenantmig(installed, *step, cwd=project, url=database_url)
        assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads(done.stdout)
    assert status["shared"]["revision"] == "001_initial_schema"
    assert [t["name"] for t in status["tenants"]] == ["acme"]


def test_demo_outside_a_project_runs_the_shipped_demo(
    installed: Path, tmp_path: Path, database_url: str
) -> None:
    done = _tenantmig(installed, "demo", cwd=tmp_path, url=database_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo project shipped with tenantmig" in done.stderr
    assert "3 ok" in done.stdout
    assert (tmp_path / ".tenantmig").is_dir()  # its run log lives here, not in the package
