"""SQL for review (`tenantmig upgrade --sql`): Alembic's offline mode, one schema at a time.

The SQL is what ``alembic upgrade FROM:TO --sql`` prints for that schema, through the chain's
own env.py, preceded by the set-up a tenantmig migration transaction makes: lock and statement
timeouts, the schema's advisory lock (so applying it never races a tenantmig run), and
search_path. It carries no BEGIN/COMMIT of its own: it is meant for ``psql -1 -f FILE``, which
runs the whole file as one transaction, so a failure leaves the schema as it was.

A range with an autocommit block (CREATE INDEX CONCURRENTLY) cannot be one transaction. Its
SQL is rendered again, as tenantmig runs such a range: a transaction per revision (Alembic's
BEGIN/COMMIT written out, the block between them), the set-up session-level and undone at the
end, and a first line that says to run it with ``psql -f``, not ``-1``.
"""

from __future__ import annotations

import argparse
import io

from alembic import command as alembic_command

from tenantmig.chains.env import (
    AUTOCOMMIT_SEEN,
    FOR_CITUS,
    PER_REVISION,
    SETTINGS,
    SINGLE_TRANSACTION,
)
from tenantmig.chains.scripts import Direction
from tenantmig.errors import NotRenderable, TenantmigError
from tenantmig.server.config import Chain, Settings
from tenantmig.server.errorcodes import first_line


def offline_sql(
    settings: Settings,
    chain: Chain,
    schema: str,
    direction: Direction,
    start: str | None,
    destination: str | None,
    *,
    for_citus: bool = False,
) -> str:
    """The SQL taking ``schema`` from ``start`` to ``destination`` (None: base); ``for_citus``:
    for a Citus coordinator, whose workers get the timeouts only when told to."""
    sql, autocommit = _render(settings, chain, schema, direction, start, destination, for_citus)
    if not autocommit:
        return sql
    sql, _ = _render(
        settings, chain, schema, direction, start, destination, for_citus, per_revision=True
    )
    return PER_REVISION_HEADER + sql


PER_REVISION_HEADER = (
    "-- This range has statements that cannot run inside a transaction (an autocommit block):\n"
    "-- run it with `psql -v ON_ERROR_STOP=1 -f FILE`, not `psql -1`. Each revision commits on\n"
    "-- its own with its version row, as tenantmig runs such a range; a failure leaves the\n"
    "-- schema at the last revision that committed.\n"
)


def one_transaction(sql: str) -> bool:
    """Whether ``sql`` (from ``offline_sql``) may run as one transaction (``psql -1``)."""
    return not sql.startswith(PER_REVISION_HEADER)


def _render(
    settings: Settings,
    chain: Chain,
    schema: str,
    direction: Direction,
    start: str | None,
    destination: str | None,
    for_citus: bool,
    *,
    per_revision: bool = False,
) -> tuple[str, bool]:
    """The offline SQL, and whether a revision entered an autocommit block."""
    config = settings.alembic_config(chain)
    buffer = io.StringIO()
    config.output_buffer = buffer
    arguments = [] if chain == "shared" else [f"tenant={schema}"]
    config.cmd_opts = argparse.Namespace(quiet=True, x=arguments)
    config.attributes[SETTINGS] = settings
    config.attributes[SINGLE_TRANSACTION] = True
    config.attributes[FOR_CITUS] = for_citus
    config.attributes[PER_REVISION] = per_revision
    config.attributes["configure_logger"] = False
    span = f"{start or 'base'}:{destination or 'base'}"
    try:
        if direction == "upgrade":
            alembic_command.upgrade(config, span, sql=True)
        else:
            alembic_command.downgrade(config, span, sql=True)
    except TenantmigError:
        raise
    except Exception as exc:
        revision = _revision_in(exc)
        where = f"revision {revision}" if revision else f"{direction} {span}"
        raise NotRenderable(
            f"{where} cannot be written out as SQL without a database ({type(exc).__name__}: "
            f"{first_line(exc)}): it reads from the database to decide what to do, as a data "
            "migration does; it runs only against the database itself",
            revision,
        ) from exc
    return buffer.getvalue(), bool(config.attributes.get(AUTOCOMMIT_SEEN))


def _revision_in(exc: BaseException) -> str | None:
    """The innermost revision module an exception passed through: a frame whose module
    defines ``revision`` and ``down_revision``, as every revision file does."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals
        if isinstance(module.get("revision"), str) and "down_revision" in module:
            found = module["revision"]
        tb = tb.tb_next
    return found
