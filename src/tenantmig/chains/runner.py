"""Running a chain's revisions in one schema, on a connection the caller prepared.

Used by every path that runs Alembic: a tenant's migration, the shared schema's, a compiled step's
scratch schema, and drift's reference schemas. The caller owns the transaction and has pointed
search_path at the schema (see server.session).
"""

from __future__ import annotations

from typing import Any

from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from tenantmig.chains.context import context_options
from tenantmig.chains.output import migration_output
from tenantmig.chains.scripts import ChainScripts, Direction


def run_alembic(
    conn: Connection,
    scripts: ChainScripts,
    schema: str,
    direction: Direction,
    destination: str | None,
    *,
    per_migration: bool = False,
    echo_output: bool = False,
) -> None:
    """Run the chain's revisions in ``schema`` up or down to ``destination`` (None: base).

    Runs inside the caller's open transaction (Alembic sees an external transaction and does not
    commit), with search_path already pointing at ``schema``. With ``per_migration`` the caller
    has no transaction open and Alembic commits each revision in its own. What the revisions
    print goes to the run log (and to stderr with ``echo_output``), never to stdout.
    """
    script = scripts.script
    target = destination or "base"

    def step(revision: Any, _context: MigrationContext) -> Any:
        if direction == "upgrade":
            return script._upgrade_revs(target, revision)
        return script._downgrade_revs(target, revision)

    environment = EnvironmentContext(scripts.config, script, fn=step, destination_rev=target)
    with environment, migration_output(schema, echo=echo_output):
        environment.configure(
            connection=conn, **context_options(schema, per_migration=per_migration)
        )
        environment.run_migrations()


def raised_by_autocommit_block(exc: BaseException) -> bool:
    """True when Alembic's autocommit_block() refused to run inside our transaction.

    Inside an external transaction the block fails before running anything (it cannot commit
    a transaction it does not own), so its frame in the traceback identifies this case.
    """
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "autocommit_block" and "alembic" in code.co_filename:
            return True
        tb = tb.tb_next
    return False
