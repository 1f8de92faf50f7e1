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

A URL is written as a URL: a password holding ``@ : / ; %`` or a space is percent-encoded
(``;`` as ``%3B``, which is also how a ``;`` survives ``TENANTMIG_DATABASES``'s separator, ``%`` as
``%25``), and so is a ``${VAR}``'s value, which is inserted as it is. The section is read without
alembic.ini's ``%`` interpolation: only tenantmig reads it, and a URL's ``%40`` means ``@``, so
it is written as is (no ``%%``). Every URL is checked (``server.urls.check_url``) when the
settings are loaded, before anything connects; errors name the entry, never the URL.

Names are what users type (``--database eu``), what the registry stores and what logs and JSON
show: lower-case letters, digits and underscores, so a name never needs quoting anywhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tenantmig.errors import ConfigError
from tenantmig.server.urls import check_url

CONTROL = "control"  # the name of the control database, reserved
ENV_DATABASES = "TENANTMIG_DATABASES"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# NAME=URL: what an entry of TENANTMIG_DATABASES looks like before its parts are checked. A
# password's unencoded ; splits it into pieces that do not (the tail has no scheme).
_ENV_ENTRY = re.compile(r"\s*[^=\s][^=]*=\s*([A-Za-z][A-Za-z0-9+]*://.*)?", re.DOTALL)


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
    """Validated entries: good names, no repeats, no ``control``, every URL well formed."""
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
        check_url(url, f"{where} entry {name!r}")
        found[name] = DirectoryEntry(name, url)
    return tuple(found.values())


def directory_from(
    section: Mapping[str, str] | None, env_value: str | None
) -> tuple[DirectoryEntry, ...]:
    """The directory from ``TENANTMIG_DATABASES`` if set, else alembic.ini's [databases]."""
    if env_value is not None and env_value.strip():
        return parse_directory(_env_entries(env_value), ENV_DATABASES)
    return parse_directory((section or {}).items(), "[databases] in alembic.ini")


def _env_entries(env_value: str) -> list[tuple[str, str]]:
    """``TENANTMIG_DATABASES`` split into (name, URL) pairs.

    Every entry is checked for the NAME=URL shape before any is looked at further: a password
    with an unencoded ``;`` leaves a piece like ``x=1@host/db`` whose name would otherwise be
    reported (a piece of the password). Such an entry is shown by its number only.
    """
    pairs = []
    for number, part in enumerate(re.split(r"[;\n]", env_value), start=1):
        if not part.strip():
            continue
        if not _ENV_ENTRY.fullmatch(part):
            raise ConfigError(
                f"{ENV_DATABASES}: entry {number} is not NAME=URL (eu=postgresql://...); "
                "databases are separated by ;, so a ; in a password is written %3B"
            )
        name, _, url = part.partition("=")
        pairs.append((name, url))
    return pairs
