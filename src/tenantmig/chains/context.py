"""Where a chain's version table lives and how its migration context is configured: the options
every path that runs Alembic shares (env.py under plain Alembic, tenantmig's runner, stamp and
autogenerate)."""

from __future__ import annotations

from typing import Any

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
