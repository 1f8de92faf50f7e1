"""The database directory: the other databases tenant schemas may live in, by name.

The **control** database (``--database-url`` / ``TENANTMIG_DATABASE_URL``) holds the shared
schema, the tenant registry with each tenant's database, and the run ledger. The others are named
in alembic.ini::

    [databases]
    eu = postgresql://tenantmig:${EU_PASSWORD}@eu-db.internal/app
    us = postgresql://tenantmig@us-db.internal/app

or in ``TENANTMIG_DATABASES`` (``eu=postgresql://...;us=postgresql://...``), which replaces the
section. ``${VAR}`` in a URL is replaced by that environment variable, so no password need be
written in the file; a variable that is not set is an error, never an empty password.

Names are what users type (``--database eu``), what the registry stores and what logs and JSON
show: lower-case letters, digits and underscores, so a name never needs quoting anywhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tenantmig.errors import ConfigError

CONTROL = "control"  # the name of the control database, reserved
ENV_DATABASES = "TENANTMIG_DATABASES"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class DirectoryEntry:
    """One database of the directory. The URL may hold a password: kept out of repr()."""

    name: str
    url: str = field(repr=False)


def validate_database_name(name: str) -> str:
    if name == CONTROL:
        return name
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"database name {name!r} is not allowed: use lower-case letters, digits and _ "
            "(starting with a letter, at most 63 characters)"
        )
    return name


def expand_variables(value: str, where: str) -> str:
    """``${VAR}`` replaced by the environment's VAR; an unset one is an error."""

    def replace(match: re.Match[str]) -> str:
        variable = match.group(1)
        if variable not in os.environ:
            raise ConfigError(f"{where} uses ${{{variable}}}, which is not set in the environment")
        return os.environ[variable]

    return _VARIABLE.sub(replace, value)


def parse_directory(entries: Iterable[tuple[str, str]], where: str) -> tuple[DirectoryEntry, ...]:
    """Validated entries: good names, no repeats, no ``control``, every URL non-empty."""
    found: dict[str, DirectoryEntry] = {}
    for raw_name, raw_url in entries:
        name = raw_name.strip()
        validate_database_name(name)
        if name == CONTROL:
            raise ConfigError(
                f"{where}: {CONTROL!r} is the control database's name (the --database-url one); "
                "give the other databases names of their own"
            )
        if name in found:
            raise ConfigError(f"{where}: database {name!r} is named twice")
        url = expand_variables(raw_url.strip(), f"{where} entry {name!r}")
        if not url:
            raise ConfigError(f"{where}: database {name!r} has no URL")
        found[name] = DirectoryEntry(name, url)
    return tuple(found.values())


def directory_from(
    section: Mapping[str, str] | None, env_value: str | None
) -> tuple[DirectoryEntry, ...]:
    """The directory from ``TENANTMIG_DATABASES`` if set, else alembic.ini's [databases]."""
    if env_value is not None and env_value.strip():
        pairs = []
        for number, part in enumerate(re.split(r"[;\n]", env_value), start=1):
            if not part.strip():
                continue
            name, sep, url = part.partition("=")
            if not sep:  # the entry itself is not shown: it may hold a password
                raise ConfigError(
                    f"{ENV_DATABASES}: entry {number} is not NAME=URL; separate databases with ;"
                )
            pairs.append((name, url))
        return parse_directory(pairs, ENV_DATABASES)
    return parse_directory((section or {}).items(), "[databases] in alembic.ini")
