"""One frozen settings object, built once from alembic.ini, the environment and flags.

Precedence for every value: explicit argument (a CLI flag) > environment variable > alembic.ini >
built-in default. The object is validated when built and then passed explicitly; nothing reads
the environment later.

alembic.ini is read as Alembic reads it: in the sections Alembic reads ([DEFAULT], [shared],
[tenant]) ``%(here)s`` is the file's directory and a ``%`` itself is written ``%%`` (so
``sqlalchemy.url`` and ``tenants_from`` mean the same to plain ``alembic`` and to tenantmig).
[databases] is tenantmig's own and is read as written: a URL's ``%40`` is ``@``. A file that
cannot be read, and every URL that is malformed, is a one-line ConfigError that never quotes
the value (configparser's own messages quote whole lines, passwords included).
"""

from __future__ import annotations

import argparse
import configparser
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tenantmig.errors import ConfigError
from tenantmig.server.directory import (
    CONTROL,
    ENV_DATABASES,
    DirectoryEntry,
    directory_from,
    validate_database_name,
)
from tenantmig.server.identifiers import validate_schema_name
from tenantmig.server.session import Timeouts
from tenantmig.server.urls import check_url

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

Chain = Literal["shared", "tenant"]
CHAINS: tuple[Chain, ...] = ("shared", "tenant")

ENV_CONFIG = "TENANTMIG_CONFIG"
ENV_DATABASE_URL = "TENANTMIG_DATABASE_URL"
ENV_SHARED_SCHEMA = "TENANTMIG_SHARED_SCHEMA"
ENV_HOME = "TENANTMIG_HOME"
ENV_TENANTS_FROM = "TENANTMIG_TENANTS_FROM"
ENV_SCRATCH_SCHEMA = "TENANTMIG_SCRATCH_SCHEMA"
ENV_DRIFT_IGNORE = "TENANTMIG_DRIFT_IGNORE"
ENV_CITUS_SCHEMAS = "TENANTMIG_CITUS_SCHEMAS"
ENV_CITUS_REFERENCE_TABLES = "TENANTMIG_CITUS_REFERENCE_TABLES"
CitusSchemas = Literal["distributed", "local"]
CITUS_SCHEMAS: tuple[CitusSchemas, ...] = ("distributed", "local")
# Object kinds a team may manage outside its migrations (schema.catalog's kind names).
DRIFT_IGNORABLE = ("privileges", "owner", "comment")

DEFAULT_LOCK_TIMEOUT_S = 5.0
DEFAULT_RETRIES = 3
DEFAULT_RECONNECT_TIMEOUT_S = 60.0


TenantSourceKind = Literal["registry", "query", "schemas"]
_GLOB = re.compile(r"[a-z0-9_*?]+")
_SOURCE_HELP = (
    "use `registry` (tenantmig's tenants table), `query: SELECT name, schema_name FROM ...` "
    "(the application's own table; write % as %% in alembic.ini), or `schemas: GLOB` "
    "(every schema matching, e.g. `schemas: tenant_*`)"
)


@dataclass(frozen=True)
class TenantSource:
    """Where the list of tenants comes from (``tenants_from`` in alembic.ini, ``--tenants-from``).

    - ``registry``: tenantmig's ``<shared>.tenants`` table (``tenants create/register/drop``);
    - ``query``: a SELECT over the application's own table returning ``name`` and
      ``schema_name`` columns; tenantmig only reads it;
    - ``schemas``: every schema whose name matches a glob (``*`` and ``?``), the tenant named
      after its schema.
    """

    kind: TenantSourceKind
    shared_schema: str
    query: str | None = None
    glob: str | None = None

    @property
    def is_registry(self) -> bool:
        return self.kind == "registry"

    @property
    def schema_regex(self) -> str:
        """The glob as an anchored POSIX regular expression for ``nspname ~ ...``."""
        assert self.glob is not None
        return "^" + self.glob.replace("?", ".").replace("*", ".*") + "$"

    def describe(self) -> str:
        if self.kind == "query":
            return f"query: {self.query}"
        if self.kind == "schemas":
            return f"schemas: {self.glob}"
        return "registry"


def parse_tenant_source(spec: str, shared_schema: str) -> TenantSource:
    """Parse a ``tenants_from`` value; ConfigError naming the accepted forms when it is bad."""
    kind, _, value = spec.strip().partition(":")
    kind, value = kind.strip().lower(), value.strip()
    if kind == "registry" and not value:
        return TenantSource("registry", shared_schema)
    if kind == "query":
        if not re.match(r"(?is)\s*(select|with|values|table)\b", value):
            raise ConfigError(f"tenants_from query must be a SELECT, got {value!r}; {_SOURCE_HELP}")
        if ";" in value.rstrip().rstrip(";"):
            raise ConfigError(f"tenants_from query must be one statement; {_SOURCE_HELP}")
        return TenantSource("query", shared_schema, query=value.rstrip().rstrip(";"))
    if kind == "schemas":
        if not _GLOB.fullmatch(value) or value.strip("*?") == "":
            raise ConfigError(
                f"tenants_from schemas glob {value!r} is not allowed: lower-case letters, "
                "digits, _ and the wildcards * and ?, with at least one fixed character"
            )
        return TenantSource("schemas", shared_schema, glob=value)
    raise ConfigError(f"tenants_from {spec!r} is not understood; {_SOURCE_HELP}")


@dataclass(frozen=True)
class Settings:
    """Everything a tenantmig operation needs to know about where and how to run."""

    config_file: Path
    # None: use the embedded PostgreSQL under ``home``. Kept out of repr(): it may hold a
    # password, and reprs end up in tracebacks and logs.
    database_url: str | None = field(repr=False)
    shared_schema: str = "public"
    home: Path = field(default_factory=lambda: Path(".tenantmig"))
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
    statement_timeout_s: float | None = None
    retries: int = DEFAULT_RETRIES
    # How long a tenant keeps reconnecting after losing its connection (server restart).
    reconnect_timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S
    tenants_from: str = "registry"
    # A schema this role owns where steps are compiled and drift references built, for roles
    # that may not create schemas (None: tenantmig creates short-lived schemas of its own).
    scratch_schema: str | None = None
    # What drift leaves out, for teams that manage it outside migrations.
    drift_ignore: frozenset[str] = frozenset()
    # ledger_keep_days: every all-tenants run prunes the ledger's runs older than this (None: no)
    ledger_keep_days: float | None = None
    # notify / notify_format: where and how upgrade and downgrade report a run that ended.
    notify: tuple[str, ...] = ()
    notify_format: str = "json"
    # events: where upgrade and downgrade write their event stream (None: nowhere).
    events: str | None = None
    # tenantmig lint: a rewrite or scan of a table larger than this in a tenant is an error;
    # rules allowed for every revision.
    lint_max_table_size: int = 100 * 1024**2
    lint_allow: tuple[str, ...] = ()
    # [rollout]: what an all-tenants upgrade or downgrade does without --waves and its options.
    rollout: RolloutDefaults = field(default_factory=lambda: RolloutDefaults())
    # On a Citus coordinator: new tenant schemas distributed (each on one worker) or local.
    citus_schemas: str = "distributed"
    # On a Citus coordinator: shared tables made reference tables after `upgrade --shared`
    # ("none", "all", or table names separated by commas).
    citus_reference_tables: str = "none"
    # The other databases tenant schemas live in (the database directory); URLs may hold
    # passwords, so kept out of repr().
    databases: tuple[DirectoryEntry, ...] = field(default=(), repr=False)

    def database_entry(self, name: str) -> DirectoryEntry:
        """The directory entry of a database other than the control one."""
        for entry in self.databases:
            if entry.name == name:
                return entry
        known = ", ".join(e.name for e in self.databases) or "none"
        raise ConfigError(
            f"database {name!r} is not in the directory ([databases] in alembic.ini or "
            f"${ENV_DATABASES}; known: {CONTROL}, {known})"
        )

    def check_database_names(self, names: Sequence[str]) -> None:
        """Every name is the control database or in the directory (before anything runs)."""
        for name in names:
            validate_database_name(name)
            if name != CONTROL:
                self.database_entry(name)

    @property
    def reference_tables(self) -> tuple[str, ...] | None:
        """The shared tables to make reference tables: () for none, None for all."""
        spec = self.citus_reference_tables.strip()
        if spec.lower() == "all":
            return None
        if spec.lower() in ("", "none"):
            return ()
        return tuple(part.strip() for part in spec.split(",") if part.strip())

    @property
    def scratch_schemas(self) -> tuple[str, str] | None:
        """The configured scratch schema and its second, for the replay check's compilation
        under a name that needs quoting (both created by ``tenantmig grant``); None when not
        configured."""
        if self.scratch_schema is None:
            return None
        return self.scratch_schema, f"{self.scratch_schema}_Check"

    @property
    def tenant_source(self) -> TenantSource:
        return parse_tenant_source(self.tenants_from, self.shared_schema)

    @property
    def timeouts(self) -> Timeouts:
        """The lock and statement timeouts every migration transaction sets."""
        return Timeouts(self.lock_timeout_s, self.statement_timeout_s)

    def alembic_config(self, chain: Chain) -> AlembicConfig:
        """A fresh Alembic Config for one chain (section [shared] or [tenant])."""
        from alembic.config import Config as AlembicConfig  # not needed to read settings

        if self.script_location(chain) is None:
            raise ConfigError(f"{self.config_file} has no [{chain}] section with a script_location")
        # quiet: Alembic's own "Generating ... done" lines would repeat what tenantmig reports.
        return AlembicConfig(
            str(self.config_file), ini_section=chain, cmd_opts=argparse.Namespace(quiet=True)
        )

    def script_location(self, chain: Chain) -> str | None:
        """The chain's script_location as Alembic reads it (None when missing)."""
        return _option(_parsed(self.config_file), self.config_file, chain, "script_location")

    def chain_option(self, chain: Chain, name: str) -> str | None:
        """Another option of the chain's section, as Alembic reads it."""
        return _option(_parsed(self.config_file), self.config_file, chain, name)

    def with_options(self, **changes: object) -> Settings:
        """A copy with some fields changed (validated again)."""
        updated = replace(self, **changes)  # type: ignore[arg-type]
        updated.validate()
        return updated

    def validate(self) -> None:
        validate_schema_name(self.shared_schema)
        if self.lock_timeout_s <= 0:
            raise ConfigError("--lock-timeout must be a positive number of seconds")
        if self.statement_timeout_s is not None and self.statement_timeout_s <= 0:
            raise ConfigError("--statement-timeout must be a positive number of seconds")
        if self.reconnect_timeout_s < 0:
            raise ConfigError("--reconnect-timeout must be 0 or more seconds")
        if self.retries < 0:
            raise ConfigError("--retries must be 0 or more")
        self.tenant_source  # noqa: B018 (parsing is the validation)
        unknown = sorted(self.drift_ignore - set(DRIFT_IGNORABLE))
        if unknown:
            raise ConfigError(
                f"drift cannot ignore {', '.join(unknown)}: choose from "
                f"{', '.join(DRIFT_IGNORABLE)}"
            )
        if self.citus_schemas not in CITUS_SCHEMAS:
            raise ConfigError(
                f"citus_schemas {self.citus_schemas!r} is not understood: use distributed "
                "(each tenant schema on one worker node) or local (on the coordinator)"
            )
        for table in self.reference_tables or ():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]{0,62}", table):
                raise ConfigError(
                    f"citus_reference_tables: {table!r} is not a table name; use none, all, "
                    "or shared table names separated by commas"
                )
        if self.scratch_schema is not None:
            validate_schema_name(self.scratch_schema)
            if len(self.scratch_schema.encode()) > 57:
                raise ConfigError("scratch_schema may be at most 57 bytes long (it gets _Check)")
            if self.scratch_schema in (self.shared_schema, "public"):
                raise ConfigError(
                    "scratch_schema must be a schema of its own, not the shared schema: "
                    "tenantmig builds and rolls back migrations in it"
                )


def find_config_file(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The alembic.ini to use: explicit path, $TENANTMIG_CONFIG, or ./alembic.ini."""
    chosen = explicit or os.environ.get(ENV_CONFIG) or "alembic.ini"
    # abspath, not resolve(): a symlinked alembic.ini keeps its own directory as %(here)s and as
    # the home of .tenantmig/, as Alembic itself does.
    path = Path(os.path.abspath(Path(chosen).expanduser()))
    if not path.is_file():
        raise ConfigError(
            f"configuration file {path} not found; run from the project directory, pass "
            f"--config (or set {ENV_CONFIG}), or start a project with `tenantmig init`"
        )
    return path


def _ini_problem(exc: configparser.Error) -> str:
    """What configparser found wrong, by line and option: its own text quotes the lines."""
    if isinstance(exc, configparser.DuplicateOptionError):
        return f"[{exc.section}] sets {exc.option!r} twice (line {exc.lineno}); keep one"
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"section [{exc.section}] appears twice (line {exc.lineno}); keep one"
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno} comes before any [section] header"
    if isinstance(exc, configparser.ParsingError):
        lines = ", ".join(str(number) for number, _line in exc.errors)
        return f"line {lines} cannot be read: a setting is written NAME = VALUE"
    if isinstance(exc, configparser.InterpolationError):
        return (
            f"[{exc.section}] {exc.option} cannot be read: in the sections Alembic reads, "
            "%(here)s is this file's directory and a % itself is written %% "
            "([databases] URLs are read as written, %40 meaning @)"
        )
    return f"cannot be read ({type(exc).__name__})"


def _parsed(path: Path) -> configparser.ConfigParser:
    """The file as Alembic parses it (``alembic.config.Config.file_config``: ``%(here)s`` is
    the file's directory, read in the locale's encoding), or a ConfigError that quotes no line
    of it. Read without importing Alembic: reading settings must not cost its start-up."""
    parser = configparser.ConfigParser({"here": path.absolute().parent.as_posix()})
    try:
        parser.read([path], encoding="locale")
        return parser
    except configparser.Error as exc:
        raise ConfigError(f"{path}: {_ini_problem(exc)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: cannot be read as text in this system's encoding") from None


def _option(parser: configparser.ConfigParser, path: Path, section: str, name: str) -> str | None:
    """One value with Alembic's interpolation; None when the section or option is missing."""
    try:
        return parser.get(section, name, fallback=None)
    except configparser.Error as exc:
        raise ConfigError(f"{path}: {_ini_problem(exc)}") from None


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb)?\s*", re.I)


def parse_size(text: str) -> int:
    """``100MB``, ``1.5 GB``, ``64kB``, ``1048576`` -> bytes; a clear error otherwise."""
    found = _SIZE.fullmatch(text)
    if not found:
        raise ConfigError(f"lint_max_table_size = {text!r}: give a size such as 100MB or 2GB")
    power = ("b", "kb", "mb", "gb", "tb").index((found.group(2) or "b").lower())
    return int(float(found.group(1)) * 1024**power)


@dataclass(frozen=True)
class RolloutDefaults:
    """The [rollout] section of alembic.ini: waves for every all-tenants upgrade and downgrade
    (``--waves`` and its options override; ``--no-waves`` leaves them out)."""

    waves: str | None = None
    wave_seed: str | None = None
    wave_max_failures: int | None = None
    pause_after_wave: bool = False
    soak_s: float | None = None


def _rollout_section(parser: configparser.ConfigParser, path: Path) -> RolloutDefaults:
    if not parser.has_section("rollout"):
        return RolloutDefaults()

    def value(name: str) -> str | None:
        found = _option(parser, path, "rollout", name)
        return found.strip() if found is not None and found.strip() else None

    def number(name: str, kind: type[int] | type[float]) -> Any:
        text = value(name)
        if text is None:
            return None
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{path}: [rollout] {name} = {text!r} is not a number") from None

    pause = (value("pause_after_wave") or "false").lower()
    if pause not in ("true", "false", "yes", "no", "on", "off", "1", "0"):
        raise ConfigError(f"{path}: [rollout] pause_after_wave = {pause!r}: give true or false")
    return RolloutDefaults(
        waves=value("waves"),
        wave_seed=value("wave_seed"),
        wave_max_failures=number("wave_max_failures", int),
        pause_after_wave=pause in ("true", "yes", "on", "1"),
        soak_s=number("soak", float),
    )


def _events_path(value: str | None, config_file: Path) -> str | None:
    """alembic.ini's ``events``: ``-`` (standard output), or a file; a relative path is
    relative to alembic.ini's directory, wherever tenantmig runs from."""
    value = (value or "").strip()
    if not value or value == "-":
        return value or None
    return str(config_file.parent / Path(value).expanduser())


def _read_ini(path: Path) -> configparser.ConfigParser:
    """alembic.ini, every value written in a chain's section interpolated once, so that a bad
    ``%`` there is reported here rather than as a traceback from inside Alembic. [DEFAULT]'s
    own keys are left to whoever reads them (another tool's ``%(asctime)s`` may sit there);
    tenantmig's reads go through ``_option``."""
    parser = _parsed(path)
    defaults = parser.defaults()
    for chain in CHAINS:
        if parser.has_section(chain):
            for name in parser.options(chain):
                if name not in defaults:
                    _option(parser, path, chain, name)
    return parser


def _databases_section(parser: configparser.ConfigParser) -> dict[str, str]:
    """[databases] as written (raw: no ``%`` interpolation), without [DEFAULT]'s keys."""
    if not parser.has_section("databases"):
        return {}
    defaults = parser.defaults()
    return {k: v for k, v in parser.items("databases", raw=True) if k not in defaults}


def url_from_ini(config_file: Path, parser: configparser.ConfigParser | None = None) -> str | None:
    """sqlalchemy.url from alembic.ini ([DEFAULT], [shared] or [tenant]), if set."""
    parser = parser or _read_ini(config_file)
    for chain in CHAINS:
        url = _option(parser, config_file, chain, "sqlalchemy.url")
        if url:
            return url
    return None


def _database_url(
    explicit: str | None, path: Path, parser: configparser.ConfigParser
) -> str | None:
    """The control database's URL, first found wins, checked and named by where it came from."""
    for url, where in (
        (explicit, "--database-url"),
        (os.environ.get(ENV_DATABASE_URL), ENV_DATABASE_URL),
        (url_from_ini(path, parser), f"sqlalchemy.url in {path}"),
    ):
        if url:
            check_url(url, where)
            return url
    return None


def load_settings(
    *,
    config_file: str | os.PathLike[str] | None = None,
    database_url: str | None = None,
    shared_schema: str | None = None,
    home: str | os.PathLike[str] | None = None,
    lock_timeout_s: float | None = None,
    statement_timeout_s: float | None = None,
    retries: int | None = None,
    reconnect_timeout_s: float | None = None,
    tenants_from: str | None = None,
    scratch_schema: str | None = None,
    drift_ignore: Sequence[str] | None = None,
    citus_schemas: str | None = None,
) -> Settings:
    """Build and validate Settings from arguments, environment and alembic.ini."""
    path = find_config_file(config_file)
    parser = _read_ini(path)

    def ini_option(name: str) -> str | None:
        return _option(parser, path, "shared", name)

    url = _database_url(database_url, path, parser)
    schema = (
        shared_schema
        or os.environ.get(ENV_SHARED_SCHEMA)
        or ini_option("shared_schema")
        or "public"
    )
    source = (
        tenants_from or os.environ.get(ENV_TENANTS_FROM) or ini_option("tenants_from") or "registry"
    )
    scratch = (
        scratch_schema or os.environ.get(ENV_SCRATCH_SCHEMA) or ini_option("scratch_schema") or None
    )
    ignore_text = (
        ",".join(drift_ignore)
        if drift_ignore is not None
        else os.environ.get(ENV_DRIFT_IGNORE) or ini_option("drift_ignore") or ""
    )
    ignored = frozenset(
        {"owners": "owner", "comments": "comment"}.get(k, k)
        for k in (part.strip().lower() for part in ignore_text.split(","))
        if k
    )
    citus = (
        citus_schemas
        or os.environ.get(ENV_CITUS_SCHEMAS)
        or ini_option("citus_schemas")
        or "distributed"
    )
    reference_tables = (
        os.environ.get(ENV_CITUS_REFERENCE_TABLES) or ini_option("citus_reference_tables") or "none"
    )
    keep_text = ini_option("ledger_keep_days")
    try:
        keep_days = float(keep_text) if keep_text else None
    except ValueError:
        raise ConfigError(
            f"{path}: ledger_keep_days = {keep_text!r}: give a number of days"
        ) from None
    if keep_days is not None and keep_days <= 0:
        raise ConfigError(f"{path}: ledger_keep_days must be more than zero")
    directory = directory_from(_databases_section(parser), os.environ.get(ENV_DATABASES))
    home_dir = Path(home or os.environ.get(ENV_HOME) or path.parent / ".tenantmig")
    settings = Settings(
        config_file=path,
        database_url=url or None,
        shared_schema=schema,
        home=home_dir,
        lock_timeout_s=DEFAULT_LOCK_TIMEOUT_S if lock_timeout_s is None else lock_timeout_s,
        statement_timeout_s=statement_timeout_s,
        retries=DEFAULT_RETRIES if retries is None else retries,
        reconnect_timeout_s=(
            DEFAULT_RECONNECT_TIMEOUT_S if reconnect_timeout_s is None else reconnect_timeout_s
        ),
        tenants_from=source,
        scratch_schema=scratch,
        drift_ignore=ignored,
        ledger_keep_days=keep_days,
        notify=tuple(u for u in (ini_option("notify") or "").replace(",", " ").split() if u),
        notify_format=(ini_option("notify_format") or "json").strip().lower(),
        events=_events_path(ini_option("events"), path),
        rollout=_rollout_section(parser, path),
        lint_max_table_size=parse_size(ini_option("lint_max_table_size") or "100MB"),
        lint_allow=tuple(
            r for r in (ini_option("lint_allow") or "").replace(",", " ").split() if r
        ),
        citus_schemas=citus.strip().lower(),
        citus_reference_tables=reference_tables,
        databases=directory,
    )
    settings.validate()
    return settings
