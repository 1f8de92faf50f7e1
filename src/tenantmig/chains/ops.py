"""Helpers for tenant revisions that must not hold one long transaction.

Call them from a revision's ``upgrade()``/``downgrade()`` like ``op.*`` functions::

    from tenantmig import ops

    def upgrade() -> None:
        ops.update_in_batches("orders", "total_cents = round(total_amount * 100)",
                              where="total_cents IS NULL")

Each one runs in an Alembic autocommit block. tenantmig notices that and migrates such a tenant
with one transaction per revision instead of one for the whole step (see run/migrator.py), so put
an autocommit helper in a revision of its own: the revision's other statements would already be
committed if the helper failed, and a re-run would trip over them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from tenantmig.logs import LOGGER_NAME
from tenantmig.server.identifiers import quote_ident

log = logging.getLogger(f"{LOGGER_NAME}.ops")


def create_index_concurrently(
    index_name: str, table_name: str, columns: Sequence[str], **kw: Any
) -> None:
    """CREATE INDEX CONCURRENTLY: the table stays writable while the index is built.

    Re-runnable: an INVALID index of the same name (left by an earlier failed or interrupted
    build) is dropped first, and a valid one is kept (IF NOT EXISTS). ``kw`` goes to
    ``op.create_index`` (``unique=True``, ``postgresql_where=...``).

    In SQL rendered for review (``--sql``, ``plan``, ``lint``: Alembic's offline mode) nothing
    can be read, so only the CREATE INDEX CONCURRENTLY IF NOT EXISTS is written: applied by
    hand over an INVALID leftover it keeps it, which ``tenantmig drift`` reports.
    """
    context = op.get_context()
    with context.autocommit_block():
        leftover = not context.as_sql and (
            op.get_bind()
            .execute(
                sa.text(
                    "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"
                ),
                {"name": quote_ident(index_name)},  # resolved in the tenant's schema (search_path)
            )
            .scalar()
        )
        if leftover:
            log.warning("dropping INVALID index %s left by an earlier attempt", index_name)
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {quote_ident(index_name)}")
        op.create_index(
            index_name,
            table_name,
            list(columns),
            postgresql_concurrently=True,
            if_not_exists=True,
            **kw,
        )


def drop_index_concurrently(index_name: str) -> None:
    """DROP INDEX CONCURRENTLY IF EXISTS: no ACCESS EXCLUSIVE lock on the table."""
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {quote_ident(index_name)}")


def update_in_batches(
    table: str,
    set_sql: str,
    where: str,
    *,
    key: str = "id",
    batch_size: int = 5_000,
    params: Mapping[str, Any] | None = None,
) -> int:
    """``UPDATE table SET <set_sql> WHERE <where>`` in batches of ``batch_size`` rows.

    Each batch is its own statement and its own transaction (autocommit), so row locks are held
    for one batch only, ``statement_timeout`` bounds each batch rather than the whole table,
    and VACUUM can reclaim old row versions while the backfill runs.

    Resumable: ``where`` must select only rows that still need the update (for example
    ``new_col IS NULL``), so a backfill stopped halfway (killed runner, lost server, timeout)
    continues with the rows that are left when the revision runs again. Batches walk the
    ``key`` column (the primary key, indexed) upwards, so every row is visited at most once per
    run even if ``where`` stays true after the update.

    Returns the number of rows updated.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    quoted_table, quoted_key = quote_ident(table), quote_ident(key)
    values: dict[str, Any] = dict(params or {})
    total = batches = 0
    last: Any = None
    started = time.monotonic()
    with op.get_context().autocommit_block():
        bind = op.get_bind()
        schema = bind.execute(sa.text("SELECT current_schema()")).scalar()
        while True:
            after = "" if last is None else f" AND {quoted_key} > :_tenantmig_after"
            statement = sa.text(
                f"WITH batch AS (SELECT {quoted_key} AS tenantmig_key FROM {quoted_table}"
                f" WHERE ({where}){after} ORDER BY {quoted_key} LIMIT :_tenantmig_limit),"
                f" updated AS (UPDATE {quoted_table} SET {set_sql} FROM batch"
                f" WHERE {quoted_table}.{quoted_key} = batch.tenantmig_key"
                f" RETURNING {quoted_table}.{quoted_key} AS k)"
                " SELECT (SELECT count(*) FROM updated) AS n,"
                " (SELECT k FROM updated ORDER BY k DESC LIMIT 1) AS last"
            )
            row = bind.execute(
                statement,
                {**values, "_tenantmig_after": last, "_tenantmig_limit": batch_size},
            ).one()
            if not row.n:
                break
            total += int(row.n)
            batches += 1
            last = row.last
            if batches % 20 == 0:
                log.info(
                    "%s: %d rows updated in %d batches so far",
                    table,
                    total,
                    batches,
                    extra={"tenant": schema},
                )
    log.info(
        "%s: %d rows updated in %d batches (%.1fs)",
        table,
        total,
        batches,
        time.monotonic() - started,
        extra={"tenant": schema},
    )
    return total
