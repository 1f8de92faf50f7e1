"""A chain's revision order, remembered between commands while its files stay the same.

Knowing a chain's order (base to head) takes Alembic: importing it (about a third of a
command's start-up) and loading every revision file. Most commands need nothing else from it:
an upgrade with nothing to do, ``status``, a run's triage. So the order Alembic computed is kept
in the project's home (``.tenantmig/cache/``) under a key that covers everything it depends on:
the bytes of alembic.ini and of every ``.py`` file under the chain's script_location, and the
versions of tenantmig and Alembic. Any change to any of them is a different key, and Alembic is
asked again. Chains whose revisions may live elsewhere (``version_locations``, a
``package:path`` script_location, ``sourceless``) are never cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from tenantmig import __version__
from tenantmig.server.config import Chain, Settings

_CACHE_DIR = "cache"


def cache_key(settings: Settings, chain: Chain) -> str | None:
    """The key of the chain's current files, or None when the chain is not cached."""
    location = settings.script_location(chain)
    if location is None:
        return None
    for option in ("version_locations", "sourceless"):
        if settings.chain_option(chain, option):
            return None
    root = Path(location)  # relative to the working directory, as Alembic takes it
    if not root.is_dir():
        return None  # also a "package:path" location: Alembic resolves those
    digest = hashlib.sha256()
    for part in (chain, __version__, _alembic_version()):
        digest.update(part.encode() + b"\0")
    try:
        digest.update(settings.config_file.read_bytes() + b"\0")
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    except OSError:
        return None
    return digest.hexdigest()


def _alembic_version() -> str:
    try:
        return metadata.version("alembic")
    except metadata.PackageNotFoundError:
        return "?"


def _path(settings: Settings, chain: Chain) -> Path:
    return settings.home / _CACHE_DIR / f"chain-{chain}.json"


def read_order(settings: Settings, chain: Chain, key: str) -> list[str] | None:
    """The order kept under ``key``, or None."""
    try:
        kept = json.loads(_path(settings, chain).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    order = kept.get("order") if isinstance(kept, dict) and kept.get("key") == key else None
    if not isinstance(order, list) or not all(isinstance(r, str) for r in order):
        return None
    return order


def write_order(settings: Settings, chain: Chain, key: str, order: list[str]) -> None:
    """Keep ``order`` under ``key`` (best effort: a home that cannot be written is no error)."""
    path = _path(settings, chain)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"key": key, "order": order}), encoding="utf-8")
        os.replace(temporary, path)  # atomic: a concurrent reader sees the old or the new
