"""How a migration context is configured, shared by env.py (plain Alembic) and tenantmig.

``migrations/*/env.py`` call run_shared_env()/run_tenant_env(); tenantmig's own runner calls
context_options() (through chains.runner) and the server flavour's prepare_migration() directly.
Both paths therefore put the version table in the same place and open the transaction the same
way.
"""

from __future__ import annotations

import contextlib
import importlib
import logging.config
from collections.abc import Iterator, Sequence
from typing import Any

from alembic import context
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from tenantmig.chains.context import context_options
from tenantmig.chains.runner import raised_by_autocommit_block
from tenantmig.errors import ConfigError, NoTargetMetadata
from tenantmig.server.config import Settings, load_settings
from tenantmig.server.database import open_database
from tenantmig.server.flavour import ServerFlavour
from tenantmig.server.identifiers import quote_ident, validate_tenant_name
from tenantmig.server.session import LOCK_NAMESPACE, Timeouts, lock_key

# The logger Alembic's own env.py template uses: shown at INFO with Alembic's messages.
log = logging.getLogger("alembic.env")


def _x_arguments() -> dict[str, str]:
    return context.get_x_argument(as_dictionary=True)


# Set by tenantmig when it runs a chain's env.py itself: its Settings (flags included).
SETTINGS = "tenantmig_settings"


def _settings_for_plain_alembic() -> Settings:
    config = context.config
    given = config.attributes.get(SETTINGS)
    if isinstance(given, Settings):
        return given
    if config.config_file_name is None:
        raise ConfigError("alembic was started without a configuration file")
    x = _x_arguments()
    return load_settings(config_file=config.config_file_name, database_url=x.get("url"))


def _configure_logging() -> None:
    config = context.config
    if config.config_file_name and config.attributes.get("configure_logger", True):
        logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)


def _run(
    schema: str,
    settings: Settings,
    *,
    create_schema: bool,
    target_metadata: TargetMetadata = None,
) -> None:
    """Migrate ``schema`` as tenantmig migrates one schema (run/migrator.py), so that plain
    Alembic leaves the same schema and version row as tenantmig, when it succeeds and when it
    fails:

    1. All revisions in one transaction: a failure anywhere rolls the schema back to exactly
       where it started. A range without autocommit blocks only ever takes this path.
    2. A revision with an autocommit block (CREATE INDEX CONCURRENTLY...) cannot run inside it:
       Alembic refuses at the block's entry, before the block sends anything (it cannot commit
       a transaction it does not own), and that one transaction rolls back whole, so nothing of
       the attempt remains. The run then starts again on a new connection with one transaction
       per revision, Alembic's recipe for autocommit blocks (_run_per_migration), as tenantmig's
       second attempt does.

    Not per revision always: a failure in an ordinary range would then leave its earlier
    revisions committed, where tenantmig (and this env.py until now) leaves the schema
    untouched. Not decided from the scripts' source: a block may be reached through a helper in
    another module or only for some data, and a wrong guess either fails as before or commits
    part of an ordinary range. The price of trying first: the revisions before the one with the
    block run twice (the first time rolled back) and are logged twice; tenantmig pays the same.
    """
    if context.is_offline_mode():
        _run_offline(schema, settings, target_metadata)
        return

    with open_database(settings) as database:
        try:
            with database.engine.connect() as conn:
                _run_online(
                    conn,
                    database.flavour,
                    schema,
                    settings.timeouts,
                    create_schema=create_schema,
                    target_metadata=target_metadata,
                )
            return
        except Exception as exc:
            if not raised_by_autocommit_block(exc):
                raise
        log.info(
            "A revision has an autocommit block, which cannot run inside one transaction: "
            "rolled back; running again with one transaction per revision"
        )
        with database.engine.connect() as conn:
            _run_per_migration(
                conn,
                database.flavour,
                schema,
                settings.timeouts,
                create_schema=create_schema,
                target_metadata=target_metadata,
            )


# Set by `tenantmig upgrade --sql`: the script is run with `psql -1 -f`, whose one transaction
# is the script's; Alembic's own BEGIN/COMMIT would end it early.
SINGLE_TRANSACTION = "tenantmig_single_transaction"
# The SQL is for a Citus coordinator: its SET LOCALs must reach the workers too.
FOR_CITUS = "tenantmig_for_citus"
# Set by `tenantmig upgrade --sql` when the range has an autocommit block: a transaction per
# revision, Alembic's BEGIN/COMMIT written out, the set-up session-level (for `psql -f`).
PER_REVISION = "tenantmig_per_revision"
# Set by the rendering when a revision entered an autocommit block.
AUTOCOMMIT_SEEN = "tenantmig_autocommit_seen"


def _run_offline(schema: str, settings: Settings, target_metadata: TargetMetadata) -> None:
    """SQL for a DBA or psql: the same set-up a tenantmig migration makes (timeouts, the
    schema's advisory lock, search_path; see server.session), then Alembic's statements.

    For tenantmig's `--sql` (``SINGLE_TRANSACTION``) the set-up is transaction-local and the
    script has no BEGIN/COMMIT: `psql -1 -f` makes it one transaction (plain `alembic --sql`
    writes Alembic's one BEGIN/COMMIT around it). A script with an autocommit block cannot be
    one transaction, and after its COMMIT a SET LOCAL, the transaction's lock and search_path
    would be gone: for one (``PER_REVISION``, a second rendering chains.offline asks for once
    the first met a block) the set-up is session-level, Alembic writes a transaction per
    revision, and the lock is released and the settings reset at the end."""
    attributes = context.config.attributes
    per_revision = bool(attributes.get(PER_REVISION))
    one_transaction = not per_revision
    options = context_options(schema)
    if attributes.get(SINGLE_TRANSACTION) and not per_revision:
        options["transactional_ddl"] = False
    if per_revision:
        options["transactional_ddl"] = True
        options["transaction_per_migration"] = True
    context.configure(
        url=settings.database_url or "postgresql://",
        literal_binds=True,
        target_metadata=target_metadata,
        **options,
    )
    _note_autocommit_blocks(context.get_context(), attributes)
    timeouts = settings.timeouts
    scope = "LOCAL " if one_transaction else ""
    lock = f"{LOCK_NAMESPACE}, {lock_key(schema)}"
    if not one_transaction:
        _offline_set_up(schema, timeouts, scope, lock)
    with context.begin_transaction():
        if one_transaction:
            _offline_set_up(schema, timeouts, scope, lock)
        context.run_migrations()
    if not one_transaction:
        context.execute(f"SELECT pg_advisory_unlock({lock})")
        context.execute("RESET search_path")
        context.execute("RESET statement_timeout")
        context.execute("RESET lock_timeout")


def _offline_set_up(schema: str, timeouts: Timeouts, scope: str, lock: str) -> None:
    if context.config.attributes.get(FOR_CITUS) and scope:
        # Citus propagates SET LOCAL to the workers only after this (see server.citus);
        # psql sends each statement as its own query string, as Citus needs. (A session-level
        # SET is not propagated at all: a per-revision script's timeouts bind the coordinator.)
        context.execute("SET LOCAL citus.propagate_set_commands = 'local'")
    context.execute(f"SET {scope}lock_timeout = '{timeouts.lock_timeout_ms}ms'")
    context.execute(f"SET {scope}statement_timeout = '{timeouts.statement_timeout_ms}ms'")
    function = "pg_advisory_xact_lock" if scope else "pg_advisory_lock"
    context.execute(f"SELECT {function}({lock})")
    context.execute(f"SET {scope}search_path TO {quote_ident(schema)}")


def _note_autocommit_blocks(migration: Any, attributes: dict[str, Any]) -> None:
    """Have ``attributes[AUTOCOMMIT_SEEN]`` set when a revision enters an autocommit block."""
    original = migration.autocommit_block

    @contextlib.contextmanager
    def noted() -> Iterator[None]:
        attributes[AUTOCOMMIT_SEEN] = True
        with original():
            yield

    migration.autocommit_block = noted


def _run_online(
    conn: Connection,
    flavour: ServerFlavour,
    schema: str,
    timeouts: Timeouts,
    *,
    create_schema: bool,
    target_metadata: TargetMetadata = None,
) -> None:
    with conn.begin():
        if create_schema:
            conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        flavour.prepare_migration(conn, schema, timeouts)
        context.configure(
            connection=conn, target_metadata=target_metadata, **context_options(schema)
        )
        context.run_migrations()


def _run_per_migration(
    conn: Connection,
    flavour: ServerFlavour,
    schema: str,
    timeouts: Timeouts,
    *,
    create_schema: bool,
    target_metadata: TargetMetadata = None,
) -> None:
    """One transaction per revision, for a range with autocommit blocks (see _run).

    What makes the one migration transaction safe must now hold across several transactions
    and the autocommit blocks between them, which run in no transaction at all; so the set-up
    is session-level (``local=False``), made once before Alembic reads the version:

    - The schema's advisory lock (pg_advisory_lock): held from before the version is read until
      the connection closes. Not pg_advisory_xact_lock taken again per transaction: every
      commit would release it, and another runner (tenantmig, a second ``alembic``) could
      migrate the schema between two of our revisions, while this Alembic has already chosen
      its steps from the version it read at the start; inside an autocommit block a
      transaction-level lock lasts one statement and protects nothing.
    - search_path and the timeouts: SET LOCAL would end with the first commit, and the block's
      unqualified ``CREATE INDEX CONCURRENTLY ... ON users`` would find its table through the
      server's default search_path (another schema), its wait for writers unbounded by
      lock_timeout.
    - Released by closing the connection: the engine has no pool (server.database), so closing
      ends the backend, and PostgreSQL releases a session's advisory locks and settings with
      it, also when a revision fails halfway or the process is killed.

    Each revision is still atomic with its version row; a failure leaves the revisions before
    the failing one committed (and an INVALID index if a concurrent build failed), as tenantmig
    does.
    """
    with conn.begin():
        if create_schema:
            conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        flavour.prepare_migration(conn, schema, timeouts, local=False)
    # No transaction open: Alembic owns them and commits each revision in its own.
    context.configure(
        connection=conn,
        target_metadata=target_metadata,
        **context_options(schema, per_migration=True),
    )
    context.run_migrations()


TargetMetadata = MetaData | Sequence[MetaData] | None
# Set by tenantmig on the Alembic Config of `revision --autogenerate` and `check`: the connection
# whose open transaction holds the reference schema (the chain migrated to head), and its name.
REFERENCE_CONNECTION = "connection"
REFERENCE_SCHEMA = "tenantmig_reference_schema"


def target_metadata_from_ini(target_metadata: TargetMetadata) -> TargetMetadata:
    """The models autogenerate compares with: given by env.py, else ``target_metadata =
    package.module:attribute`` in the chain's alembic.ini section."""
    if target_metadata is not None:
        return target_metadata
    spec = context.config.get_main_option("target_metadata")
    if not spec:
        return None
    module_name, _, attribute = spec.partition(":")
    try:
        found: Any = importlib.import_module(module_name.strip())
        for part in attribute.strip().split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"target_metadata = {spec}: cannot load it ({exc})") from exc
    if not isinstance(found, MetaData) and not (
        isinstance(found, (list, tuple)) and all(isinstance(m, MetaData) for m in found)
    ):
        raise ConfigError(f"target_metadata = {spec} is not a SQLAlchemy MetaData")
    return found


def _compare_with_reference(target_metadata: TargetMetadata) -> bool:
    """tenantmig's autogenerate/check: compare the models with the reference schema tenantmig
    built in the connection it passed (search_path and default schema point at it). False when
    this is not such a call."""
    attributes = context.config.attributes
    conn = attributes.get(REFERENCE_CONNECTION)
    if conn is None:
        return False
    metadata = target_metadata_from_ini(target_metadata)
    if metadata is None:
        raise NoTargetMetadata(
            "autogenerate needs the models: pass them in the chain's env.py, "
            "run_tenant_env(target_metadata=Base.metadata), or set target_metadata = "
            "package.module:attribute in its alembic.ini section"
        )
    options = context_options(attributes[REFERENCE_SCHEMA])
    # The reference is the default schema here, and autogenerate leaves the version table out
    # of the comparison only where the version table's schema is the one it reflects (None).
    options["version_table_schema"] = None
    context.configure(connection=conn, target_metadata=metadata, **options)
    context.run_migrations()  # inside tenantmig's transaction: Alembic commits nothing
    return True


def run_shared_env(target_metadata: TargetMetadata = None) -> None:
    """env.py body for the shared chain: migrate the shared schema. ``target_metadata``: the
    shared tables' models, for ``tenantmig revision --shared --autogenerate``."""
    _configure_logging()
    if _compare_with_reference(target_metadata):
        return
    settings = _settings_for_plain_alembic()
    _run(
        settings.shared_schema,
        settings,
        create_schema=settings.shared_schema != "public",
        target_metadata=target_metadata_from_ini(target_metadata),
    )


def run_tenant_env(target_metadata: TargetMetadata = None) -> None:
    """env.py body for the tenant chain: ``-x tenant=NAME`` selects the tenant schema.
    ``target_metadata``: the tenant tables' models (schema-less), for ``tenantmig revision
    --tenant-chain --autogenerate``."""
    _configure_logging()
    if _compare_with_reference(target_metadata):
        return
    settings = _settings_for_plain_alembic()
    tenant = _x_arguments().get("tenant")
    if not tenant:
        raise ConfigError(
            "the tenant chain needs a tenant: alembic -n tenant -x tenant=NAME <command> "
            "(to autogenerate without one: tenantmig revision --tenant-chain --autogenerate)"
        )
    schema = validate_tenant_name(tenant, shared_schema=settings.shared_schema)
    _run(
        schema,
        settings,
        create_schema=False,
        target_metadata=target_metadata_from_ini(target_metadata),
    )
