"""SQL for review (`tenantmig upgrade --sql`): Alembic's offline mode, one schema at a time.

The SQL is what ``alembic upgrade FROM:TO --sql`` prints for that schema, through the chain's
own env.py, preceded by the set-up a tenantmig migration transaction makes: lock and statement
timeouts, the schema's advisory lock (so applying it never races a tenantmig run), and
search_path. It carries no BEGIN/COMMIT of its own: it is meant for ``psql -1 -f FILE``, which
runs the whole file as one transaction, so a failure leaves the schema as it was.
"""

from __future__ import annotations

import argparse
import io

from alembic import command as alembic_command

from tenantmig.chains.env import FOR_CITUS, SETTINGS, SINGLE_TRANSACTION
from tenantmig.chains.scripts import Direction
from tenantmig.server.config import Chain, Settings


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
    config = settings.alembic_config(chain)
    buffer = io.StringIO()
    config.output_buffer = buffer
    arguments = [] if chain == "shared" else [f"tenant={schema}"]
    config.cmd_opts = argparse.Namespace(quiet=True, x=arguments)
    config.attributes[SETTINGS] = settings
    config.attributes[SINGLE_TRANSACTION] = True
    config.attributes[FOR_CITUS] = for_citus
    config.attributes["configure_logger"] = False
    span = f"{start or 'base'}:{destination or 'base'}"
    if direction == "upgrade":
        alembic_command.upgrade(config, span, sql=True)
    else:
        alembic_command.downgrade(config, span, sql=True)
    return buffer.getvalue()
