"""How a migration context is configured, shared by env.py (plain Alembic) and tenantmig.

``migrations/*/env.py`` call run_shared_env()/run_tenant_env(); tenantmig's own runner calls
context_options() (through chains.runner) and the server flavour's prepare_migration() directly.
Both paths therefore put the version table in the same place and open the transaction the same
way.
"""

from __future__ import annotations

import logging.config
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

from tenantmig.errors import ConfigError
from tenantmig.server.config import Settings, load_settings
from tenantmig.server.database import open_database
from tenantmig.server.flavour import ServerFlavour
from tenantmig.server.identifiers import quote_ident, validate_tenant_name
from tenantmig.server.session import Timeouts

VERSION_TABLE = "alembic_version"


def context_options(schema: str, *, per_migration: bool = False) -> dict[str, Any]:
    """Options for EnvironmentContext.configure() for a migration in ``schema``.

    - version_table_schema: the version row lives in the schema it describes and is always
      addressed schema-qualified, never found through search_path.
    - transactional_ddl and one transaction for all revisions: a failure anywhere rolls the
      schema back to exactly where it started (PostgreSQL DDL is transactional).
    - ``per_migration``: one transaction per revision, for steps with autocommit blocks (which
      must commit what came before them); each revision is still atomic with its version row.
    """
    return {
        "version_table": VERSION_TABLE,
        "version_table_schema": schema,
        "transactional_ddl": True,
        "transaction_per_migration": per_migration,
        "compare_type": True,
    }


def _x_arguments() -> dict[str, str]:
    return context.get_x_argument(as_dictionary=True)


def _settings_for_plain_alembic() -> Settings:
    config = context.config
    if config.config_file_name is None:
        raise ConfigError("alembic was started without a configuration file")
    x = _x_arguments()
    return load_settings(config_file=config.config_file_name, database_url=x.get("url"))


def _configure_logging() -> None:
    config = context.config
    if config.config_file_name and config.attributes.get("configure_logger", True):
        logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)


def _run(schema: str, settings: Settings, *, create_schema: bool) -> None:
    if context.is_offline_mode():
        url = settings.database_url or "postgresql://"
        context.configure(url=url, literal_binds=True, **context_options(schema))
        with context.begin_transaction():
            # Offline scripts are replayed by psql or a DBA: pin search_path the same way.
            context.execute(f"SET LOCAL search_path TO {quote_ident(schema)}")
            context.run_migrations()
        return

    with open_database(settings) as database, database.engine.connect() as conn:
        _run_online(conn, database.flavour, schema, settings.timeouts, create_schema=create_schema)


def _run_online(
    conn: Connection,
    flavour: ServerFlavour,
    schema: str,
    timeouts: Timeouts,
    *,
    create_schema: bool,
) -> None:
    with conn.begin():
        if create_schema:
            conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        flavour.prepare_migration(conn, schema, timeouts)
        context.configure(connection=conn, **context_options(schema))
        context.run_migrations()


def run_shared_env() -> None:
    """env.py body for the shared chain: migrate the shared schema."""
    _configure_logging()
    settings = _settings_for_plain_alembic()
    _run(settings.shared_schema, settings, create_schema=settings.shared_schema != "public")


def run_tenant_env() -> None:
    """env.py body for the tenant chain: ``-x tenant=NAME`` selects the tenant schema."""
    _configure_logging()
    settings = _settings_for_plain_alembic()
    tenant = _x_arguments().get("tenant")
    if not tenant:
        raise ConfigError(
            "the tenant chain needs a tenant: alembic -n tenant -x tenant=NAME <command>"
        )
    schema = validate_tenant_name(tenant, shared_schema=settings.shared_schema)
    _run(schema, settings, create_schema=False)
