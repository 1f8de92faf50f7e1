"""The project ``tenantmig init`` writes, shipped inside the package.

``tenantmig/project/`` is a complete project: ``alembic.ini`` with both chains, each chain's
``env.py`` and ``script.py.mako``, the tenant registry as the first shared revision, and the demo
chains. A new project gets the environment and, unless the application keeps its own tenant list,
the registry; ``--demo`` gets everything. This repository's own ``alembic.ini`` and
``migrations/`` are links to the same files, so the demo, the tests and ``init`` cannot disagree.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath

from tenantmig.errors import ConfigError

CONFIG_NAME = "alembic.ini"
MIGRATIONS = "migrations"
REGISTRY_REVISION = PurePosixPath("migrations/shared/versions/001_initial_schema.py")
_ENVIRONMENT = (
    PurePosixPath(CONFIG_NAME),
    PurePosixPath("migrations/shared/env.py"),
    PurePosixPath("migrations/shared/script.py.mako"),
    PurePosixPath("migrations/tenant/env.py"),
    PurePosixPath("migrations/tenant/script.py.mako"),
)
_VERSION_DIRS = (
    PurePosixPath("migrations/shared/versions"),
    PurePosixPath("migrations/tenant/versions"),
)


@dataclass(frozen=True)
class InitResult:
    directory: Path
    files: list[PurePosixPath] = field(default_factory=list)  # relative to directory
    demo: bool = False
    registry: bool = True

    def to_json(self) -> dict[str, object]:
        return {
            "directory": str(self.directory),
            "files": [str(f) for f in self.files],
            "demo": self.demo,
            "registry": self.registry,
        }


def packaged_project() -> Path:
    """The directory of the shipped project (a real directory: the package is installed
    unzipped, as pip always installs wheels)."""
    return Path(str(resources.files("tenantmig") / "project"))


def packaged_config() -> Path:
    return packaged_project() / CONFIG_NAME


def _demo_files(root: Path) -> list[PurePosixPath]:
    return sorted(
        PurePosixPath(path.relative_to(root).as_posix())
        for versions in _VERSION_DIRS
        for path in (root / versions).glob("*.py")
    )


def write_project(
    directory: Path, *, demo: bool = False, registry: bool = True, shared_schema: str | None = None
) -> InitResult:
    """Write a new project into ``directory`` (created if missing).

    Refused, with nothing written, when the directory already holds an ``alembic.ini`` or a
    ``migrations/`` directory: ``init`` never overwrites a project. A ``.gitignore`` that
    exists is kept, with tenantmig's home added to it when missing.
    """
    if demo and not registry:
        raise ConfigError("--demo needs the tenant registry: leave out --no-registry")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} exists and is not a directory")
    existing = [name for name in (CONFIG_NAME, MIGRATIONS) if (directory / name).exists()]
    if existing:
        raise ConfigError(
            f"{directory.resolve()} already holds {' and '.join(existing)}; tenantmig init "
            "never overwrites a project (pick an empty directory)"
        )
    source = packaged_project()
    wanted = list(_ENVIRONMENT)
    if demo:
        wanted += _demo_files(source)
    elif registry:
        wanted.append(REGISTRY_REVISION)
    written: list[PurePosixPath] = []
    for versions in _VERSION_DIRS:
        (directory / versions).mkdir(parents=True, exist_ok=True)
    for relative in wanted:
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / relative, target)
        written.append(relative)
    if shared_schema:
        _set_shared_schema(directory / CONFIG_NAME, shared_schema)
    if _ignore_home(directory / GITIGNORE):
        written.append(PurePosixPath(GITIGNORE))
    return InitResult(directory=directory.resolve(), files=written, demo=demo, registry=registry)


GITIGNORE = ".gitignore"
# tenantmig's home next to alembic.ini: the embedded database (tens of MB once used) and the
# run logs. Neither belongs in the repository, and `git add .` would take both.
_HOME_IGNORED = ".tenantmig/"


def _ignore_home(gitignore: Path) -> bool:
    """Make ``gitignore`` ignore tenantmig's home: write it, or add the line to the project's
    own. True when the file was changed."""
    if not gitignore.exists():
        gitignore.write_text(
            "# tenantmig: the embedded PostgreSQL, the run logs and the chains' order cache\n"
            + _HOME_IGNORED
            + "\n"
        )
        return True
    text = gitignore.read_text()
    home = _HOME_IGNORED.rstrip("/")
    if any(line.strip().strip("/") == home for line in text.splitlines()):
        return False
    separator = "" if not text or text.endswith("\n") else "\n"
    gitignore.write_text(f"{text}{separator}{_HOME_IGNORED}\n")
    return True


def _set_shared_schema(config: Path, schema: str) -> None:
    lines = config.read_text().splitlines(keepends=True)
    for index, line in enumerate(lines):
        if line.startswith("shared_schema ="):
            lines[index] = f"shared_schema = {schema}\n"
            break
    config.write_text("".join(lines))
