"""Engines, URLs and the embedded PostgreSQL default.

With no URL configured, tenantmig starts an embedded PostgreSQL (``server.embedded``) whose
data lives under ``<home>/pgdata`` and keeps using it across commands. The server is stopped again
when the last tenantmig process using it exits.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from tenantmig.errors import DatabaseUnavailable
from tenantmig.server import citus, embedded
from tenantmig.server.config import Settings
from tenantmig.server.directory import CONTROL
from tenantmig.server.errorcodes import first_line
from tenantmig.server.flavour import ServerFlavour
from tenantmig.server.identifiers import quote_ident
from tenantmig.server.urls import check_url
from tenantmig.server.urls import mask_url as mask_url  # re-exported: the CLI imports it here

EMBEDDED_DATABASE = "tenantmig"
_notice_shown = False  # the embedded-server notice is printed once per process
APPLICATION_NAME = "tenantmig"


def client_url(url: URL, *, show_password: bool) -> str:
    """``url`` as libpq clients (psql, pg_dump, other drivers) take it: no SQLAlchemy driver
    name; the password shown only when asked."""
    return url.set(drivername="postgresql").render_as_string(hide_password=not show_password)


def normalise_url(url: str) -> URL:
    """Parse a URL and pin the psycopg2 driver; reject what is not PostgreSQL (``check_url``;
    Settings built by load_settings were checked already, naming where each URL came from)."""
    return check_url(url, "database URL").set(drivername="postgresql+psycopg2")


def create_engine(url: str | URL, *, role: str | None = None, **kwargs: Any) -> Engine:
    """An engine with tenantmig's connection defaults.

    NullPool: every tenantmig process holds only the connections it is using, so the number of
    server connections is exactly the number of workers plus the coordinator. ``role`` is added
    to application_name ("tenantmig worker 1234") so an operator looking at pg_stat_activity can
    tell which process holds which backend.
    """
    name = f"{APPLICATION_NAME} {role}" if role else APPLICATION_NAME
    connect_args: dict[str, Any] = {"application_name": name, "connect_timeout": 10}
    connect_args.update(kwargs.pop("connect_args", {}))
    return sa.create_engine(url, poolclass=NullPool, connect_args=connect_args, **kwargs)


def describe_connection_error(exc: DBAPIError, url: str | URL) -> DatabaseUnavailable:
    """Turn a driver error on connect into one clear line without the password."""
    return DatabaseUnavailable(f"cannot connect to {mask_url(url)}: {first_line(exc)}")


def _inspect_server(engine: Engine) -> tuple[int, ServerFlavour]:
    """Connect once (a clear error if we cannot): the server's version number and flavour."""
    try:
        with engine.connect() as conn:
            version = int(conn.execute(sa.text("SHOW server_version_num")).scalar_one())
            return version, citus.detect(conn)
    except DBAPIError as exc:
        raise describe_connection_error(exc, engine.url) from exc


@dataclass(frozen=True)
class Database:
    """An open database: the URL workers connect to, the coordinator's engine, and what kind
    of server it is."""

    url: URL
    engine: Engine
    server_version_num: int  # e.g. 160002
    flavour: ServerFlavour

    @property
    def worker_url(self) -> str:
        """The URL with its password, for worker processes (never printed or logged)."""
        return self.url.render_as_string(hide_password=False)

    @property
    def server_major(self) -> int:
        return self.server_version_num // 10000


def _start_embedded(home: Path) -> tuple[Any, URL]:
    pgdata = (home / "pgdata").resolve()
    _provider, server = embedded.start(pgdata)
    admin = make_url(server.get_uri())
    engine = create_engine(
        admin.set(drivername="postgresql+psycopg2"), isolation_level="AUTOCOMMIT"
    )
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": EMBEDDED_DATABASE},
            ).scalar()
            if not exists:
                conn.exec_driver_sql(f"CREATE DATABASE {quote_ident(EMBEDDED_DATABASE)}")
    finally:
        engine.dispose()
    url = admin.set(drivername="postgresql+psycopg2", database=EMBEDDED_DATABASE)
    return server, url


@contextmanager
def open_database(settings: Settings, *, notice: bool = True) -> Iterator[Database]:
    """Resolve the URL (starting the embedded server if none is configured) and connect once."""
    global _notice_shown
    server = None
    if settings.database_url:
        url = normalise_url(settings.database_url)
    else:
        server, url = _start_embedded(settings.home)
        if notice and not _notice_shown:
            _notice_shown = True
            print(
                f"tenantmig: no database URL configured; using the embedded PostgreSQL in "
                f"{(settings.home / 'pgdata').resolve()}",
                file=sys.stderr,
            )
    engine = create_engine(url)
    try:
        version, flavour = _inspect_server(engine)
        yield Database(url=url, engine=engine, server_version_num=version, flavour=flavour)
    finally:
        engine.dispose()
        if server is not None:
            server.cleanup()


def connect_database(url: str) -> Database:
    """An open Database for ``url`` (a directory entry's); the caller disposes its engine.
    DatabaseUnavailable when it cannot be reached, ConfigError when the URL is malformed."""
    parsed = normalise_url(url)
    engine = create_engine(parsed)
    try:
        version, flavour = _inspect_server(engine)
    except BaseException:
        engine.dispose()
        raise
    return Database(url=parsed, engine=engine, server_version_num=version, flavour=flavour)


class DatabaseSet:
    """The control database and the directory's others, each opened on first use.

    A database that cannot be reached is remembered as such (its error), so a run asks once
    and carries on with the others; ``close()`` disposes every engine opened.
    """

    def __init__(self, settings: Settings, control: Database) -> None:
        self.settings = settings
        self.control = control
        self._opened: dict[str, Database | DatabaseUnavailable] = {CONTROL: control}

    def get(self, name: str) -> Database:
        """The database ``name``; DatabaseUnavailable if it cannot be reached."""
        if name not in self._opened:
            entry = self.settings.database_entry(name)
            try:
                self._opened[name] = connect_database(entry.url)
            except DatabaseUnavailable as exc:
                self._opened[name] = exc
        found = self._opened[name]
        if isinstance(found, DatabaseUnavailable):
            raise found
        return found

    def unreachable(self, name: str) -> str | None:
        """Why ``name`` cannot be reached (None: it can)."""
        try:
            self.get(name)
        except DatabaseUnavailable as exc:
            return str(exc)
        return None

    def close(self) -> None:
        for name, found in self._opened.items():
            if name != CONTROL and isinstance(found, Database):
                found.engine.dispose()
