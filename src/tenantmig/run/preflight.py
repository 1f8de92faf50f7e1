"""Checks before a run changes anything: can this role, on this server, write at all?

Without them a read-only role or a hot standby would fail on every tenant with the same error,
or halfway through the shared schema. One clear line up front is kinder, and changes nothing.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantmig.errors import CannotWrite
from tenantmig.schema.owned import RUNS
from tenantmig.server.identifiers import qualified


def check_can_migrate(conn: Connection, shared_schema: str, *, shared_chain: bool) -> None:
    """Raise CannotWrite unless this connection can run migrations and write the ledger.

    ``shared_chain``: the run migrates the shared schema too, so it needs CREATE there (or,
    while the schema does not exist yet, in the database) whatever the ledger's state.
    """
    row = conn.execute(
        sa.text(
            "SELECT current_user AS who, pg_is_in_recovery() AS standby,"
            " current_setting('default_transaction_read_only') = 'on' AS read_only,"
            " CASE WHEN EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :schema)"
            "  THEN has_schema_privilege(:schema, 'CREATE')"
            "  ELSE has_database_privilege(current_database(), 'CREATE') END AS can_create,"
            " to_regclass(:runs) IS NOT NULL AS has_ledger,"
            " CASE WHEN to_regclass(:runs) IS NOT NULL"
            "  THEN has_table_privilege(:runs, 'INSERT') END AS can_record"
        ),
        {"schema": shared_schema, "runs": qualified(shared_schema, RUNS)},
    ).one()
    if row.standby:
        raise CannotWrite(
            "the server is a read-only standby (in recovery); point tenantmig at the primary"
        )
    if row.read_only:
        raise CannotWrite(
            f"role {row.who} gets read-only transactions (default_transaction_read_only is on); "
            "run tenantmig as the role that owns the schemas"
        )
    if not row.can_create and (shared_chain or not (row.has_ledger and row.can_record)):
        raise CannotWrite(
            f"role {row.who} may not create objects in schema {shared_schema!r} "
            "(no CREATE privilege); run tenantmig as the role that owns the schemas"
        )
