"""Compile a migration step once, replay its SQL in every tenant that is in the same state.

Running Alembic for a tenant costs tens of milliseconds of Python per tenant (building,
compiling and rendering every operation), about as much as the server spends executing the DDL.
For thousands of tenants that are all at the same revision, that work is the same every time.
So for each step (from revision, to revision, version table present or not) tenantmig runs the
migrations in a scratch schema, records every statement Alembic sends, rolls the scratch schema
back, and then replays the recorded statements in each tenant whose state matches.

A step is replayed only when the recording provably reproduces what Alembic would send in the
tenant; anything else runs through Alembic for each tenant, and the run says why:

- Nothing the revisions executed returned rows. The recording is taken at the cursor, so every
  statement counts however it was issued (``op.execute``, ``op.get_bind().execute``, an
  inspector's catalog query, executemany). A statement is the revisions' own when a revision
  file of the chain is on the Python stack while it runs; the rest is Alembic's bookkeeping,
  whose reads (does the version table exist, which revision is recorded) are not replayed: the
  tenant's state is verified under its lock instead, and its writes (the version table and row)
  are.
- The scratch schema's name occurs in the SQL only as an identifier (``server.sqltext``),
  rendered as SQLAlchemy renders a schema, so putting the tenant's name there, rendered the same
  way, is what Alembic would have sent.
- Two compilations with two different scratch names give the same SQL once the names are marked:
  SQL that depends on the name in any other way, or on the clock or chance (a Python-side
  ``uuid4()`` in ``bulk_insert``), differs and is not replayed.
- No revision in the step opts out with ``tenantmig_replay = False`` at module level.

Statements are kept one by one (a server that needs them sent separately can do so); a plain
server gets them in one multi-statement string, joined so that no comment, string or ``$$`` body
of one statement can swallow the next.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection

from tenantmig.chains.context import VERSION_TABLE
from tenantmig.chains.runner import raised_by_autocommit_block, run_alembic
from tenantmig.chains.scripts import ChainScripts, Direction
from tenantmig.schema.catalog import read_fingerprints
from tenantmig.server.errorcodes import first_line
from tenantmig.server.flavour import PostgreSQL, ServerFlavour
from tenantmig.server.identifiers import qualified, quote_as_alembic, quote_ident
from tenantmig.server.session import Timeouts, reset_session
from tenantmig.server.sqltext import find_mentions

# Where each tenant's schema name goes in a compiled statement; never in SQL text.
_SQL_MARK = "\x00schema\x00"
# Where a revision wrote the schema name always quoted (``"acme"."f"``, as alembic_utils does):
# the tenant's name goes there quoted too, whatever it is.
_SQL_MARK_QUOTED = "\x00quoted schema\x00"
# The second name needs quoting (capitals): SQLAlchemy quotes it where it renders a schema, so
# a name written into SQL by hand (an f-string) shows as unquoted there, and is caught.
# The pid and a random token: a starting state built outside a transaction (see _Compiler)
# commits its scratch schema, which must not meet another coordinator's on the same server.
_SCRATCH_NAMES = ("tenantmig_compile_{pid}_{token}", "Tenantmig_Replay_Check_{pid}_{token}")
# The second compilation's starting state is built under this lowercase name, then renamed: a
# revision in the history that writes the schema name unquoted (alembic_utils' PGTrigger does)
# still builds, while the step itself runs under the name that needs quoting.
_BUILD_NAME = "tenantmig_build_{pid}_{token}"


def scratch_names() -> tuple[str, str, str]:
    """New names for the two compilations and for the second's build: (plain, needs quoting,
    build)."""
    token = secrets.token_hex(4)
    plain, quoted = (n.format(pid=os.getpid(), token=token) for n in _SCRATCH_NAMES)
    return plain, quoted, _BUILD_NAME.format(pid=os.getpid(), token=token)


@dataclass(frozen=True)
class StepKey:
    from_revision: str | None
    to_revision: str | None
    has_version_table: bool

    def describe(self) -> str:
        start = self.from_revision or ("base" if self.has_version_table else "a new schema")
        return f"{start} -> {self.to_revision or 'base'}"


@dataclass(frozen=True)
class CompiledStep:
    key: StepKey
    # Each statement as the server must see it (parameters rendered), the schema marked.
    statements: tuple[str, ...]
    # The structural fingerprint (schema.catalog) of the state the step was compiled from,
    # when asked for: a segment that follows a revision run through Alembic is replayed only
    # in a tenant whose structure at that point is exactly this (see run.segments).
    start_fingerprint: str | None = None

    def for_schema(self, schema: str) -> list[str]:
        """The step's statements for ``schema``."""
        rendered, quoted = quote_as_alembic(schema), quote_ident(schema)
        return [
            statement.replace(_SQL_MARK, rendered).replace(_SQL_MARK_QUOTED, quoted)
            for statement in self.statements
        ]


@dataclass(frozen=True)
class NotReplayable:
    """Why a step runs through Alembic for each tenant instead. Said to the author of the
    migration: which revision (id and title), what in it (the statement, the setting), and,
    where it is in their hands, what to change."""

    key: StepKey
    reason: str  # a clause about the revision ("it reads from the database (...)")
    revision: str | None = None  # the revision that made it so, when one did
    title: str | None = None  # that revision's message (the first line of its docstring)
    # The step may be split around ``revision`` (run through Alembic alone, the rest
    # replayed; see run.segments).
    splittable: bool = True
    # ``revision`` has an autocommit block: a step split around it runs outside one
    # transaction, a transaction per part, as Alembic runs such a chain.
    autocommit: bool = False

    def describe(self, tenants: int | None = None) -> str:
        if self.revision is not None:
            title = f' "{self.title}"' if self.title else ""
            subject = f"revision {self.revision}{title} (step {self.key.describe()})"
        else:
            subject = f"step {self.key.describe()}"
        who = f" for each of its {tenants} tenant(s)" if tenants is not None else " per tenant"
        return f"{subject} runs through Alembic{who}, not replayed: {self.reason}"

    def again(self, key: StepKey) -> NotReplayable:
        """The same verdict for another step that runs the same revision (not compiled again)."""
        reason = f"{self.reason} (found in step {self.key.describe()}, not compiled again)"
        return NotReplayable(
            key, reason, self.revision, self.title, self.splittable, self.autocommit
        )


@dataclass(frozen=True)
class _Recorded:
    sql: str
    params: Any
    many: bool
    revision: str | None  # the revision whose code issued it; None for Alembic's bookkeeping
    read: bool = False  # the revision's statement returned rows


class _StartingStateFailed(Exception):
    """Building the state a step starts from failed (raised from the migration's error): the
    step itself was never tried, and must not be reported as failing."""


class Unreplayable(Exception):
    """Raised while compiling; ``reason`` is a clause whose subject is the revision ("it
    ...") when ``revision`` is known, else the step."""

    def __init__(self, reason: str, revision: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.revision = revision


OPTED_OUT = "it sets tenantmig_replay = False (remove that line to have it replayed)"
AUTOCOMMIT_BLOCK = (
    "it has an autocommit block (statements that run outside a transaction, "
    "such as CREATE INDEX CONCURRENTLY), which Alembic runs in a transaction per "
    "revision; a replayed step is one transaction"
)


def reads_data(sql: str) -> str:
    """Why a revision that ran ``sql``, which returned rows, is not replayed."""
    return (
        f"it reads from the database ({_shortened(sql)}) and may act on what "
        "it reads, which can differ per tenant. That is correct, only slower; to have "
        "it replayed, do the work in SQL alone (INSERT ... SELECT, UPDATE ... WHERE, "
        "a DO block) instead of reading rows into Python"
    )


def unquoted_name(exc: BaseException) -> str:
    """Why a revision that ran under one scratch name and failed (``exc``) under the name
    that needs quoting is not replayed."""
    return (
        "it fails in a scratch schema whose name needs quoting "
        f"({type(exc).__name__}: {first_line(exc)}): it writes the schema's name into "
        "SQL unquoted, which Alembic sends as written"
    )


def step_revisions(scripts: ChainScripts, key: StepKey, direction: Direction) -> list[str]:
    """The revisions a step runs, in the order it runs them."""
    lo, hi = scripts.position(key.from_revision), scripts.position(key.to_revision)
    if direction == "downgrade":
        return list(reversed(scripts.order[hi + 1 : lo + 1]))
    return scripts.order[lo + 1 : hi + 1]


def replay_allowed(scripts: ChainScripts, key: StepKey, direction: Direction) -> bool:
    """False when any revision in the step opts out with ``tenantmig_replay = False``."""
    return _opted_out(scripts, key, direction) is None


def _opted_out(scripts: ChainScripts, key: StepKey, direction: Direction) -> str | None:
    for revision in step_revisions(scripts, key, direction):
        if opts_out(scripts, revision):
            return revision
    return None


def opts_out(scripts: ChainScripts, revision: str) -> bool:
    """``revision`` sets ``tenantmig_replay = False`` at module level."""
    found = scripts.script.get_revision(revision)
    module = found.module if found is not None else None
    return getattr(module, "tenantmig_replay", True) is False


def compile_step(
    conn: Connection,
    scripts: ChainScripts,
    key: StepKey,
    direction: Direction,
    timeouts: Timeouts,
    flavour: ServerFlavour | None = None,
) -> CompiledStep | None:
    """The compiled step, or None when it must run through Alembic (see ``compile_or_explain``)."""
    found = compile_or_explain(conn, scripts, key, direction, timeouts, flavour)
    return found if isinstance(found, CompiledStep) else None


def title_of(scripts: ChainScripts, revision: str | None) -> str | None:
    """The first line of ``revision``'s message, to name it in words as well as by id."""
    if revision is None:
        return None
    try:
        script = scripts.script.get_revision(revision)
    except Exception:  # an id the chain cannot resolve: the id alone names it
        return None
    doc = (script.doc or "").strip() if script is not None else ""
    return doc.splitlines()[0] if doc else None


# Longest a statement quoted in a notice may be: it names the statement, the log has it whole.
_QUOTED_SQL = 100


def _shortened(sql: str) -> str:
    """``sql`` on one line, cut to ``_QUOTED_SQL`` characters."""
    line = " ".join(sql.split())
    return line if len(line) <= _QUOTED_SQL else line[: _QUOTED_SQL - 3] + "..."


def compile_or_explain(
    conn: Connection,
    scripts: ChainScripts,
    key: StepKey,
    direction: Direction,
    timeouts: Timeouts,
    flavour: ServerFlavour | None = None,
    scratch: tuple[str, str] | None = None,
    *,
    fingerprint_start: bool = False,
) -> CompiledStep | NotReplayable:
    """Compile ``key`` twice in rolled-back scratch schemas; the step, or why it is not
    replayable. Never raises for what a migration does: a step that fails to compile simply
    runs the ordinary way, where its error is reported per tenant.

    ``scratch``: two existing, empty schemas this role owns (``scratch_schema``), for roles
    that may not create schemas; by default two short-lived schemas are created in the
    rolled-back transactions. ``fingerprint_start``: also the structural fingerprint of the
    state the step starts from (``CompiledStep.start_fingerprint``)."""
    flavour = flavour or PostgreSQL()
    opted_out = _opted_out(scripts, key, direction)
    if opted_out is not None:
        return NotReplayable(key, OPTED_OUT, opted_out, title_of(scripts, opted_out))
    compiler = _Compiler(
        conn, scripts, key, direction, timeouts, flavour, scratch is not None, fingerprint_start
    )
    token = secrets.token_hex(4)
    names = scratch or tuple(n.format(pid=os.getpid(), token=token) for n in _SCRATCH_NAMES)
    builds = (names[0], names[1] if scratch else _BUILD_NAME.format(pid=os.getpid(), token=token))
    compiled: list[tuple[list[str], str | None]] = []
    try:
        for name, build_in in zip(names, builds, strict=True):
            compiled.append(compiler.compile(name, build_in))
    except Unreplayable as exc:
        return NotReplayable(key, exc.reason, exc.revision, title_of(scripts, exc.revision))
    except _StartingStateFailed as exc:
        cause = exc.__cause__ or exc
        revision = compiler.origins.in_traceback(cause)
        reason = (
            f"building its starting state ({key.from_revision or 'base'}) in a scratch "
            f"schema failed{f' in revision {revision}' if revision else ''} "
            f"({type(cause).__name__}: {first_line(cause)}); the step itself was not tried"
        )
        return NotReplayable(key, reason, None, None)
    except Exception as exc:  # the migration's own error: every tenant will report it
        revision = compiler.origins.in_traceback(exc)
        if compiled and revision is not None and not scratch:
            # It ran in the first scratch schema and fails in the second, whose name needs
            # quoting: it writes the schema's name into SQL unquoted. Alembic sends that as
            # written, which fails for a tenant whose name needs quoting, so the revision is
            # not replayed; the rest of the step can be.
            return NotReplayable(key, unquoted_name(exc), revision, title_of(scripts, revision))
        if raised_by_autocommit_block(exc):
            return NotReplayable(
                key,
                AUTOCOMMIT_BLOCK,
                revision,
                title_of(scripts, revision),
                revision is not None,
                True,
            )
        reason = (
            f"{'it' if revision else 'the step'} failed in a scratch schema "
            f"({type(exc).__name__}: {first_line(exc)}); each tenant will report the error"
        )
        return NotReplayable(key, reason, revision, title_of(scripts, revision), False)
    (first, first_start), (second, second_start) = compiled
    if fingerprint_start and first_start != second_start:
        return NotReplayable(
            key,
            "its starting state's structure differs between two builds, so a tenant's "
            "structure cannot be checked against it",
            splittable=False,
        )
    changed = first_difference(first, second)
    if changed is not None:
        return NotReplayable(
            key,
            "its SQL differs between two compilations (statement "
            f"{changed + 1} depends on the schema name, the clock or chance)",
        )
    return CompiledStep(key, tuple(first), first_start)


def first_difference(first: Sequence[str], second: Sequence[str]) -> int | None:
    """Where two compilations of the same statements (the first under a name that needs no
    quoting, the second under one that does) differ, or None where they say the same; the
    first's statements are then the ones to replay."""
    # The first schema's name needs no quoting, the second's does: where the first shows the
    # name always quoted, so does the second, where SQLAlchemy quotes too. Compared alike; the
    # first compilation's marks say which is which.
    alike = [statement.replace(_SQL_MARK_QUOTED, _SQL_MARK) for statement in first]
    other = [statement.replace(_SQL_MARK_QUOTED, _SQL_MARK) for statement in second]
    if alike == other:
        return None
    if _normalised(alike) == _normalised(other):
        # Only the order of CREATE INDEX statements in a row differs: Alembic creates a new
        # table's indexes by iterating a set (Table.indexes), in an order that changes between
        # runs of the same code. Each names its index and builds it on a table that exists
        # before the run starts; none depends on another, so any order gives the same schema,
        # and the first compilation's order is one Alembic itself sends.
        return None
    return next(
        (i for i, (a, b) in enumerate(zip(alike, other, strict=False)) if a != b),
        min(len(alike), len(other)),
    )


_CREATE_INDEX = re.compile(r"\s*CREATE\s+(UNIQUE\s+)?INDEX\s+(?!CONCURRENTLY\b)", re.I)


def _normalised(statements: Sequence[str]) -> list[str | tuple[str, ...]]:
    """``statements`` with each run of consecutive CREATE INDEX statements as a sorted tuple:
    equal for two compilations that differ only in the order of such runs."""
    out: list[str | tuple[str, ...]] = []
    run: list[str] = []
    for statement in statements:
        if _CREATE_INDEX.match(statement):
            run.append(statement)
            continue
        if run:
            out.append(tuple(sorted(run)))
            run = []
        out.append(statement)
    if run:
        out.append(tuple(sorted(run)))
    return out


@dataclass
class _Compiler:
    """One step, compiled in a scratch schema (as many times as asked, under different names)."""

    conn: Connection
    scripts: ChainScripts
    key: StepKey
    direction: Direction
    timeouts: Timeouts
    flavour: ServerFlavour
    existing_scratch: bool = False  # the scratch schemas exist (configured): do not create
    fingerprint_start: bool = False  # read the starting state's structural fingerprint

    def __post_init__(self) -> None:
        self.origins = RevisionFiles(self.scripts)

    def compile(self, scratch: str, build_in: str) -> tuple[list[str], str | None]:
        """The step's statements as the server saw them, the scratch name marked; with the
        starting state's fingerprint when asked for. The starting state is built in schema
        ``build_in``, renamed to ``scratch`` when the names differ."""
        self._start_fingerprint: str | None = None
        recorded = self._record(scratch, build_in)
        reads = [r for r in recorded if r.read]
        if reads:
            raise Unreplayable(reads_data(reads[0].sql), reads[0].revision)
        return rendered(self.conn, recorded, scratch), self._start_fingerprint

    def _record(self, scratch: str, build_in: str) -> list[_Recorded]:
        """Run the step in ``scratch`` inside a transaction that is always rolled back, and
        record each statement sent to the server with the revision that issued it.

        The starting state is built in that same transaction, unless the revisions before the
        step have an autocommit block (CREATE INDEX CONCURRENTLY...), which cannot run inside
        a transaction: then it is built as Alembic runs such a chain, a transaction per
        revision, in a scratch schema that is committed and dropped afterwards; the step is
        still recorded in a rolled-back transaction."""
        try:
            return self._record_in_transaction(scratch, build_in, build=True)
        except _StartingStateFailed as exc:
            if exc.__cause__ is None or not raised_by_autocommit_block(exc.__cause__):
                raise
        if self.existing_scratch:
            raise Unreplayable(
                "the revisions before it have an autocommit block, so its starting state "
                "must be built outside a transaction, and the configured scratch schema is "
                "only used inside rolled-back ones (without scratch_schema, a role that may "
                "create schemas builds it in a short-lived one)"
            )
        self._build_committed(build_in)
        try:
            return self._record_in_transaction(scratch, build_in, build=False)
        finally:
            self._drop_committed(build_in)

    def _start(self, conn: Connection, scratch: str, *, per_migration: bool) -> None:
        """Bring ``scratch`` to the step's starting state (not recorded)."""
        try:
            build_starting_state(conn, self.scripts, self.key, scratch, per_migration=per_migration)
        except Exception as exc:
            raise _StartingStateFailed() from exc

    def _build_committed(self, scratch: str) -> None:
        """The starting state in a committed ``scratch`` schema, on a connection of its own:
        its session settings and the scratch schema's session advisory lock end with it."""
        with self.conn.engine.connect() as build:
            with build.begin():
                self.flavour.begin_scratch(build)
                build.exec_driver_sql(f"CREATE SCHEMA {quote_ident(scratch)}")
            try:
                with build.begin():
                    self.flavour.prepare_migration(
                        build, scratch, self.timeouts, verify=False, local=False
                    )
                self._start(build, scratch, per_migration=True)
                # Nothing session-level stays on a server connection a pooler lends on.
                reset_session(build)
            except BaseException:
                with contextlib.suppress(Exception):
                    build.rollback()
                with contextlib.suppress(Exception):
                    self._drop_committed(scratch)
                raise

    def _drop_committed(self, scratch: str) -> None:
        with self.conn.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(scratch)} CASCADE")

    def _record_in_transaction(
        self, scratch: str, build_in: str, *, build: bool
    ) -> list[_Recorded]:
        conn = self.conn
        recorder = Recorder(self.origins)
        transaction = conn.begin()
        try:
            self.flavour.begin_scratch(conn)
            if build and not self.existing_scratch:
                conn.exec_driver_sql(f"CREATE SCHEMA {quote_ident(build_in)}")
            # Also the scratch schema's advisory lock: two runs compiling in one configured
            # scratch schema take turns instead of seeing each other's uncommitted tables.
            self.flavour.prepare_migration(conn, build_in, self.timeouts)
            if build:
                if self.existing_scratch:
                    require_empty(conn, build_in)
                self._start(conn, build_in, per_migration=False)
            if build_in != scratch:  # rolled back with the rest: a committed build keeps its name
                conn.exec_driver_sql(
                    f"ALTER SCHEMA {quote_ident(build_in)} RENAME TO {quote_ident(scratch)}"
                )
                self.flavour.prepare_migration(conn, scratch, self.timeouts)
            if self.fingerprint_start:
                self._start_fingerprint = read_fingerprints(conn, [scratch]).get(scratch)
            with recorder.listening(conn):
                run_alembic(conn, self.scripts, scratch, self.direction, self.key.to_revision)
        finally:
            transaction.rollback()
        return recorder.recorded


def build_starting_state(
    conn: Connection, scripts: ChainScripts, key: StepKey, scratch: str, *, per_migration: bool
) -> None:
    """Bring ``scratch`` to the state ``key`` starts from, through Alembic (not recorded)."""
    start = key.from_revision
    if not (key.has_version_table or start is not None):
        return  # a new schema: nothing before the step
    if start is None:  # an empty version table: up to the first revision and back
        run_alembic(conn, scripts, scratch, "upgrade", scripts.order[0],
                    per_migration=per_migration)  # fmt: skip
        run_alembic(conn, scripts, scratch, "downgrade", None, per_migration=per_migration)
    else:
        run_alembic(conn, scripts, scratch, "upgrade", start, per_migration=per_migration)


class Recorder:
    """Each statement sent on a connection while it listens, with the revision that issued it
    (``after_cursor_execute``): what a step sends, to be replayed."""

    def __init__(self, origins: RevisionFiles) -> None:
        self.origins = origins
        self.recorded: list[_Recorded] = []

    @property
    def read_any(self) -> bool:
        """A revision's statement returned rows."""
        return any(statement.read for statement in self.recorded)

    @contextlib.contextmanager
    def listening(self, conn: Connection) -> Iterator[None]:
        event.listen(conn, "after_cursor_execute", self._after)
        try:
            yield
        finally:
            event.remove(conn, "after_cursor_execute", self._after)

    def _after(self, _conn: Any, cursor: Any, sql: str, params: Any, _ctx: Any, many: bool) -> None:
        revision = self.origins.on_stack()
        if cursor.description is not None:
            if revision is not None:
                self.recorded.append(_Recorded(sql, params, many, revision, read=True))
            elif not sql.lstrip().upper().startswith("SELECT"):
                # A write of Alembic's that returns rows (a version row INSERT ... RETURNING).
                self.recorded.append(_Recorded(sql, params, many, None))
            # Alembic's own reads are not replayed: the tenant's state is verified instead.
            return
        self.recorded.append(_Recorded(sql, params, many, revision))


def rendered(conn: Connection, recorded: Sequence[_Recorded], scratch: str) -> list[str]:
    """The recorded statements as the server received them, ``scratch``'s name marked.
    Raises Unreplayable for a statement that cannot be (see ``_mark``)."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        return [
            _mark(text, scratch, statement.revision)
            for statement in recorded
            for text in _render(cursor, statement)
        ]
    finally:
        cursor.close()


def require_empty(conn: Connection, schema: str) -> None:
    """A configured scratch schema must hold nothing: steps are compiled from an empty schema,
    and an object left there would change what Alembic sends."""
    objects = conn.execute(
        sa.text("SELECT count(*) FROM pg_class WHERE relnamespace = to_regnamespace(:s)::oid"),
        {"s": quote_ident(schema)},
    ).scalar()
    if objects:
        raise Unreplayable(
            f"the scratch schema {schema!r} is not empty ({objects} relation(s)); drop what "
            "is in it"
        )


def _render(cursor: Any, statement: _Recorded) -> Iterator[str]:
    """The statement as the server received it; executemany becomes one statement per row.

    Always through the driver's own rendering (``mogrify``), even without parameters: it turns
    the "%%" SQLAlchemy escaped into the "%" the server saw (None leaves the text as it is).
    """
    # SQLAlchemy's "insertmanyvalues" reports executemany for one batched INSERT whose
    # parameters are a single mapping; a real executemany passes a sequence of them.
    expand = statement.many and isinstance(statement.params, (list, tuple))
    param_sets: Sequence[Any] = statement.params if expand else [statement.params]
    for params in param_sets:
        try:
            rendered = cursor.mogrify(statement.sql, params)
        except Exception as exc:
            raise Unreplayable(
                f"a statement's parameters cannot be rendered as SQL ({type(exc).__name__})",
                statement.revision,
            ) from exc
        yield rendered.decode() if isinstance(rendered, bytes) else str(rendered)


def _mark(sql: str, scratch: str, revision: str | None) -> str:
    mentions = find_mentions(sql, scratch)
    if mentions.elsewhere:
        raise Unreplayable(
            f"the schema's name is used inside {mentions.elsewhere[0]}, not only as an identifier",
            revision,
        )
    rendered, quoted = quote_as_alembic(scratch), quote_ident(scratch)
    spans = [(start, end) for start, end in mentions.identifiers if sql[start:end] == rendered]
    always_quoted = [
        (start, end)
        for start, end in mentions.identifiers
        if sql[start:end] == quoted and sql[start:end] != rendered
    ]
    if len(spans) + len(always_quoted) != len(mentions.identifiers):
        # Put there by hand, not as SQLAlchemy renders a schema: for a tenant whose name must
        # be quoted (a keyword), Alembic would send it as written, and replay must not differ.
        raise Unreplayable(
            "the schema's name is written into its SQL by hand, unquoted (leave the schema out: "
            "search_path is the tenant's schema)",
            revision,
        )
    # From the end backwards, so that each span's offsets still hold when it is replaced.
    marked = sql
    for start, end in sorted(spans + always_quoted, reverse=True):
        mark = _SQL_MARK if (start, end) in spans else _SQL_MARK_QUOTED
        marked = marked[:start] + mark + marked[end:]
    return marked.strip()


class RevisionFiles:
    """Which revision of the chain (if any) is running, from the Python stack."""

    def __init__(self, scripts: ChainScripts) -> None:
        self.by_file: dict[str, str] = {}
        for revision in scripts.order:
            script = scripts.script.get_revision(revision)
            if script is not None and script.path:
                self.by_file[os.path.realpath(script.path)] = revision
        self._seen: dict[str, str | None] = {}

    def _revision(self, filename: str) -> str | None:
        if filename not in self._seen:
            self._seen[filename] = self.by_file.get(os.path.realpath(filename))
        return self._seen[filename]

    def on_stack(self) -> str | None:
        """The innermost revision on the current Python stack."""
        frame: FrameType | None = sys._getframe(1)
        while frame is not None:
            revision = self._revision(frame.f_code.co_filename)
            if revision is not None:
                return revision
            frame = frame.f_back
        return None

    def in_traceback(self, exc: BaseException) -> str | None:
        """The innermost revision an exception passed through."""
        found = None
        tb = exc.__traceback__
        while tb is not None:
            found = self._revision(tb.tb_frame.f_code.co_filename) or found
            tb = tb.tb_next
        return found


def replay(conn: Connection, flavour: ServerFlavour, step: CompiledStep, schema: str) -> str | None:
    """Run the step's statements for ``schema`` in the caller's transaction; return the
    revision the schema's version table holds afterwards."""
    statements = [
        *step.for_schema(schema),
        f"SELECT version_num FROM {qualified(schema, VERSION_TABLE)}",
    ]
    rows = flavour.send_statements(conn, statements)
    if len(rows) > 1:
        raise ValueError(f"several revisions after replay: {rows}")
    return str(rows[0][0]) if rows else None
