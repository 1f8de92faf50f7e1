"""Compile a migration step once, replay its SQL in every tenant that is in the same state.

Running Alembic for a tenant costs tens of milliseconds of Python per tenant (building,
compiling and rendering every operation), about as much as the server spends executing the DDL.
For thousands of tenants that are all at the same revision, that work is the same every time.
So for each step (from revision, to revision, version table present or not) tenantmig runs the
migrations once in a scratch schema, records every statement Alembic sends, rolls the scratch
schema back, and then replays the recorded statements in each tenant whose state matches.

When is the replay provably the same work as running Alembic there?
- The step's statements did not read anything: a migration that looks at the database
  (``op.get_bind().execute(select ...)``, an inspector) could decide differently per tenant.
  Every row-returning statement other than Alembic's own version-table bookkeeping marks the
  step as not replayable, and those tenants run through Alembic as usual.
- The tenant is verified, under its lock, to be in exactly the compiled state (same revision,
  version table present or not); otherwise it runs through Alembic.
- A revision can opt out explicitly with ``tenantmig_replay = False`` at module level (for
  example if its SQL depends on the clock or the environment rather than the database).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection

from tenantmig.chains.env import VERSION_TABLE
from tenantmig.chains.runner import run_alembic
from tenantmig.chains.scripts import ChainScripts, Direction
from tenantmig.server.flavour import PostgreSQL, ServerFlavour
from tenantmig.server.identifiers import qualified, quote_as_alembic, quote_ident
from tenantmig.server.session import Timeouts

Statement = tuple[str, Any]


@dataclass(frozen=True)
class StepKey:
    from_revision: str | None
    to_revision: str | None
    has_version_table: bool


# Markers in a compiled step's script where each tenant's schema name goes: in SQL text (as
# Alembic renders it, quoted when it is a keyword) and inside rendered parameter values (bare).
_SQL_MARK = "\x00schema\x00"  # never in SQL text; replaced before anything is sent
_PARAM_MARK = "tenantmigschemaparammark"


@dataclass(frozen=True)
class CompiledStep:
    key: StepKey
    statements: tuple[Statement, ...]
    # The whole step as one script with parameters rendered and the schema marked: replaying
    # it for a tenant is two str.replace calls, no per-statement work in Python.
    template: str = ""

    def for_schema(self, schema: str) -> str:
        """The step's script for ``schema``."""
        rendered = quote_as_alembic(schema)
        return self.template.replace(_SQL_MARK, rendered).replace(_PARAM_MARK, schema)


def _template(cursor: Any, placeholder: str, statements: Sequence[Statement]) -> str:
    """Render the recorded statements once into a script with the schema name marked.

    In SQL text the name is matched as a whole word, with the quotes Alembic may have put
    around it; in bound parameters it is matched as a word and left bare. Parameters are
    rendered by the driver exactly as it would render them when executing.
    """
    name = re.escape(placeholder)
    in_sql = re.compile(rf'"?\b{name}\b"?')
    in_params = re.compile(rf"\b{name}\b")
    parts = []
    for sql, params in statements:
        text = in_sql.sub(lambda _m: _SQL_MARK, sql)
        # Always through mogrify, even with empty parameters: the driver then turns the "%%"
        # that SQLAlchemy escaped into the "%" the server must see (None leaves text as is).
        text = cursor.mogrify(text, _substitute(params, in_params, _PARAM_MARK)).decode()
        parts.append(text.strip().rstrip(";"))
    return ";\n".join(parts)


def _substitute(params: Any, pattern: re.Pattern[str], schema: str) -> Any:
    if isinstance(params, dict):
        return {k: _substitute(v, pattern, schema) for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return type(params)(_substitute(v, pattern, schema) for v in params)
    if isinstance(params, str):
        return pattern.sub(schema, params)
    return params


def _is_bookkeeping(sql: str) -> bool:
    """Alembic's own reads: the version table lookup and its existence check."""
    lowered = sql.lower()
    return "alembic_version" in lowered or ("pg_catalog" in lowered and "relname" in lowered)


def replay_allowed(scripts: ChainScripts, key: StepKey, direction: Direction) -> bool:
    """False when any revision in the step opts out with ``tenantmig_replay = False``."""
    lo, hi = scripts.position(key.from_revision), scripts.position(key.to_revision)
    if direction == "downgrade":
        lo, hi = hi, lo
    for revision in scripts.order[lo + 1 : hi + 1]:
        found = scripts.script.get_revision(revision)
        module = found.module if found is not None else None
        if getattr(module, "tenantmig_replay", True) is False:
            return False
    return True


def compile_step(
    conn: Connection,
    scripts: ChainScripts,
    key: StepKey,
    direction: Direction,
    timeouts: Timeouts,
    flavour: ServerFlavour | None = None,
) -> CompiledStep | None:
    """Run the step in a scratch schema inside a rolled-back transaction and record its SQL.

    Returns None when the step read from the database (not replayable) or failed.
    """
    flavour = flavour or PostgreSQL()
    if not replay_allowed(scripts, key, direction):
        return None
    placeholder = f"tenantmig_compile_{os.getpid()}"
    recorded: list[Statement] = []
    reads: list[str] = []
    capturing = False

    def after(_conn: Any, cursor: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        if not capturing:
            return
        statement = sql.lstrip().upper()
        if cursor.description is None:
            recorded.append((sql, params))
        elif "ALEMBIC_VERSION" in statement and statement.startswith(
            ("INSERT", "UPDATE", "DELETE")
        ):
            recorded.append((sql, params))  # the version row write (SQLAlchemy adds RETURNING)
        elif not _is_bookkeeping(sql):
            reads.append(sql)
        # Alembic's own reads (is there a version table, which revision) are not replayed:
        # the tenant's state is verified under its lock before a replay instead.

    transaction = conn.begin()
    try:
        conn.exec_driver_sql(f"CREATE SCHEMA {quote_ident(placeholder)}")
        flavour.prepare_migration(conn, placeholder, timeouts)
        if key.has_version_table or key.from_revision is not None:
            # Bring the scratch schema to the starting state (not recorded).
            start = key.from_revision
            if start is None:
                run_alembic(conn, scripts, placeholder, "upgrade", scripts.order[0])
                run_alembic(conn, scripts, placeholder, "downgrade", None)
            else:
                run_alembic(conn, scripts, placeholder, "upgrade", start)
        event.listen(conn, "after_cursor_execute", after)
        capturing = True
        try:
            run_alembic(conn, scripts, placeholder, direction, key.to_revision)
        finally:
            capturing = False
            event.remove(conn, "after_cursor_execute", after)
    except Exception:
        return None  # anything unusual: tenants take the ordinary path and report errors
    finally:
        transaction.rollback()
    if reads:
        return None
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        template = _template(cursor, placeholder, recorded)
    finally:
        cursor.close()
    return CompiledStep(key, tuple(recorded), template)


def replay(conn: Connection, flavour: ServerFlavour, step: CompiledStep, schema: str) -> str | None:
    """Run the step's script for ``schema`` in the caller's transaction; return the revision
    the schema's version table holds afterwards.

    On a plain server the script goes as one multi-statement string: one round trip per tenant
    instead of one per statement (the flavour decides how it is sent).
    """
    script = (
        f"{step.for_schema(schema)};\nSELECT version_num FROM {qualified(schema, VERSION_TABLE)}"
    )
    rows = flavour.send_script(conn, script)
    if len(rows) > 1:
        raise ValueError(f"several revisions after replay: {rows}")
    return str(rows[0][0]) if rows else None
