"""A chain's order is kept between commands while its files stay the same: a command that
needs only the order (a no-op upgrade, status) does not import Alembic; any change to a
revision file, alembic.ini or the versions of tenantmig and Alembic is noticed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from tenantmig.chains.scripts import ChainScripts
from tenantmig.server.config import Settings, load_settings
from tests.helpers import REPO, TENANT_HEAD, project_with
from tests.test_autocommit import ADD_NICKNAME
from tests.test_engine import make_tenants

ORDER = ["001_initial_schema", "003_add_inventory_tracking"]


def _project(tmp_path: Path) -> Settings:
    config = project_with(tmp_path, {})
    return load_settings(config_file=str(config), home=tmp_path / "home")


def _loaded_by_alembic(scripts: ChainScripts) -> bool:
    return "script" in vars(scripts)  # the cached_property was filled


def test_the_order_is_kept_and_any_change_is_noticed(tmp_path: Path) -> None:
    settings = _project(tmp_path)
    first = ChainScripts(settings, "tenant")
    assert _loaded_by_alembic(first) and first.order == ORDER  # nothing kept yet
    kept = ChainScripts(settings, "tenant")
    assert not _loaded_by_alembic(kept)
    assert (kept.order, kept.head) == (ORDER, ORDER[-1])
    assert kept.resolve_target("head") == ORDER[-1] and kept.resolve_target(ORDER[0]) == ORDER[0]
    assert not _loaded_by_alembic(kept)
    assert kept.resolve_target("001_init") == ORDER[0]  # a prefix: Alembic resolves it
    assert _loaded_by_alembic(kept)

    versions = settings.config_file.parent / "migrations" / "tenant" / "versions"
    # A new revision file.
    (versions / "004_nickname.py").write_text(ADD_NICKNAME)
    grown = ChainScripts(settings, "tenant")
    assert _loaded_by_alembic(grown) and grown.order == [*ORDER, "004_nickname"]
    # A change inside a file, same size and times as before: the bytes are compared.
    path = versions / "004_nickname.py"
    stat = path.stat()
    path.write_text(ADD_NICKNAME.replace("004_nickname", "004_nicknamf"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    renamed = ChainScripts(settings, "tenant")
    assert _loaded_by_alembic(renamed) and renamed.order == [*ORDER, "004_nicknamf"]
    # alembic.ini changed.
    settings.config_file.write_text(settings.config_file.read_text() + "\n# edited\n")
    assert _loaded_by_alembic(ChainScripts(settings, "tenant"))
    # A damaged cache file is ignored and replaced.
    cache = settings.home / "cache" / "chain-tenant.json"
    cache.write_text("{not json")
    damaged = ChainScripts(settings, "tenant")
    assert _loaded_by_alembic(damaged) and damaged.order == [*ORDER, "004_nicknamf"]
    assert json.loads(cache.read_text())["order"] == [*ORDER, "004_nicknamf"]


def test_a_chain_with_version_locations_is_never_kept(tmp_path: Path) -> None:
    settings = _project(tmp_path)
    text = settings.config_file.read_text()
    versions = settings.config_file.parent / "migrations" / "tenant" / "versions"
    text = text.replace("[tenant]\n", f"[tenant]\nversion_locations = {versions}\n", 1)
    settings.config_file.write_text(text)
    for _ in range(2):
        scripts = ChainScripts(settings, "tenant")
        assert _loaded_by_alembic(scripts) and scripts.order == ORDER
    assert not (settings.home / "cache" / "chain-tenant.json").exists()


def test_a_no_op_upgrade_does_not_import_alembic(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, ["acme"], TENANT_HEAD)
    project = tmp_path / "project"
    shutil.copytree(REPO / "migrations", project / "migrations")
    shutil.copy(REPO / "alembic.ini", project / "alembic.ini")
    probe = (
        "import json, sys\n"
        "from tenantmig.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print(json.dumps([code, 'alembic' in sys.modules]), file=sys.stderr)\n"
    )
    env = {**os.environ, "TENANTMIG_DATABASE_URL": database_url}
    seen = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", probe, "--config", str(project / "alembic.ini"),
             "upgrade", "--tenant", "acme", "-q"],
            capture_output=True, text=True, env=env, cwd=project, timeout=120,
        )  # fmt: skip
        seen.append(json.loads(done.stderr.strip().splitlines()[-1]))
    # The first run computes the order with Alembic; the second finds it kept.
    assert seen == [[0, True], [0, False]], seen
