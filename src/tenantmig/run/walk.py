"""Every segment of a step compiled in one walk of the chain.

``run.segments.plan_step`` learns which revisions of a step cannot be replayed one compile at a
time, and every compile builds its starting state from nothing: on a history with a large
squash revision and a few revisions to split around, the squash is built a dozen times, which
can cost more than replay saves. Here the step's revisions run once per scratch name, one
revision at a time, in a scratch schema committed between them, exactly as Alembic runs a chain
with a transaction per revision:

- a revision that may be replayed runs in a transaction of its own, recorded as a compile
  records a step (``run.replay.Recorder``); it commits, and the next revision starts from it;
- a revision found not replayable (it reads data, it has an autocommit block, it opts out)
  runs through Alembic unrecorded, as it will in every tenant, and the structural fingerprint
  of the state it leaves is read: the segment after it is replayed only in a tenant whose
  structure matches it (``run.segments``);
- a revision that fails only under the name that needs quoting writes the schema's name into
  SQL unquoted (alembic_utils' PGTrigger): the second walk records it under its plain build
  name instead, and when both walks agree it is a segment of its own, replayed only in tenants
  whose name needs no quoting (``Replayed.unquoted_names_only``).

A segment's statements are its revisions' recordings one after the other: what Alembic sends
for A -> C in one call is what it sends for A -> B then B -> C, version row updates included
(it updates the version row after each revision either way). The two walks, under a plain name
and under one that needs quoting, must agree segment by segment, as two compiles must.

Anything this walk does not settle (a revision that fails under both names, a segment whose
two recordings differ, a configured scratch schema, which is only ever used in rolled-back
transactions) returns None: the step is then planned compile by compile, as before, which
reports each of those cases in its own words.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantmig.chains.runner import raised_by_autocommit_block, run_alembic
from tenantmig.chains.scripts import ChainScripts, Direction
from tenantmig.run.replay import (
    AUTOCOMMIT_BLOCK,
    OPTED_OUT,
    CompiledStep,
    NotReplayable,
    Recorder,
    RevisionFiles,
    StepKey,
    Unreplayable,
    build_starting_state,
    first_difference,
    opts_out,
    reads_data,
    rendered,
    scratch_names,
    step_revisions,
    title_of,
    unquoted_name,
)
from tenantmig.run.segments import Replayed, SegmentedStep, ThroughAlembic, state_after
from tenantmig.schema.catalog import read_fingerprints
from tenantmig.server.flavour import ServerFlavour
from tenantmig.server.identifiers import quote_ident
from tenantmig.server.session import Timeouts, reset_session


@dataclass(frozen=True)
class _Why:
    reason: str
    autocommit: bool = False
    # What it does may depend on the tenant's rows: it read some, or it opted out (for a
    # reason of its author's). The segment after it is replayed only where the structure
    # matches. A revision run through Alembic for another reason (an autocommit block, the
    # schema's name written unquoted) sends the same SQL in every tenant, as a replayed
    # revision does, and leaves the same structure where it found the same.
    data_dependent: bool = True
    # Found so in an earlier step of the run: run through Alembic here, not recorded again.
    known: NotReplayable | None = None


@dataclass
class _Walk:
    """What one walk under one scratch name saw, per revision."""

    statements: dict[str, list[str]] = field(default_factory=dict)  # replayable so far
    whys: dict[str, _Why] = field(default_factory=dict)  # not replayable
    # A revision that failed only under the name that needs quoting, as recorded under the
    # plain build name instead: replayable where a tenant's name needs no quoting.
    unquoted_only: dict[str, list[str]] = field(default_factory=dict)
    fingerprints: dict[str, str | None] = field(default_factory=dict)  # after a revision


class _Unsettled(Exception):
    """The walk cannot settle the step: plan it compile by compile instead."""


class _WritesElsewhere(Exception):
    """A revision run in the walk wrote rows outside the scratch schema. The walk commits what
    each revision does, so those writes would stay: the transaction is rolled back, and the
    step runs through Alembic in each tenant, where the revision writes as it was written to."""

    def __init__(self, table: str, revision: str | None) -> None:
        super().__init__(table)
        self.table = table
        self.revision = revision


def _reraise_elsewhere(exc: BaseException) -> None:
    """Let a _WritesElsewhere through the handlers that take a migration's own errors."""
    if isinstance(exc, _WritesElsewhere):
        raise exc


# Rows inserted, updated or deleted in tables outside the scratch schema (temporary tables
# aside), as the backend's per-transaction statistics count them. Since PostgreSQL 15 those
# counts also hold what earlier transactions of the same backend did and the backend has not
# flushed yet (it flushes at most once a second): behind a pooler the backend is shared, so an
# earlier client's INSERT shows up. The walk reads them at the start and at the end of each
# transaction and compares: nothing is flushed while a transaction runs.
_WRITES_ELSEWHERE = sa.text(
    "SELECT quote_ident(schemaname) || '.' || quote_ident(relname),"
    " n_tup_ins + n_tup_upd + n_tup_del"
    " FROM pg_stat_xact_user_tables"
    " WHERE n_tup_ins + n_tup_upd + n_tup_del > 0"
    " AND schemaname <> :schema AND schemaname NOT LIKE 'pg\\_temp\\_%'"
)


def _writes_elsewhere_reason(table: str, subject: str = "it") -> str:
    return (
        f"{subject} writes rows outside the tenant's schema ({table}); compiling runs each "
        "revision committed in a scratch schema, so the compile would make those writes too "
        "(shared tables are best written by a revision of the shared chain)"
    )


def walk_step(
    conn: Connection,
    scripts: ChainScripts,
    key: StepKey,
    direction: Direction,
    timeouts: Timeouts,
    flavour: ServerFlavour,
    ruled_out: Mapping[str, NotReplayable] | None = None,
) -> CompiledStep | SegmentedStep | NotReplayable | None:
    """The step compiled whole, split into replayed segments and revisions run through
    Alembic, or why none of it can be replayed; None when the walk cannot settle it.
    ``ruled_out``: revisions an earlier step of the run found not replayable, by id."""
    runs = step_revisions(scripts, key, direction)
    known = dict(ruled_out or {})
    if not runs:
        return None
    if all(revision in known for revision in runs):
        verdict = known[runs[0]]
        return verdict if verdict.key == key else verdict.again(key)
    plain, quoted, build = scratch_names()
    walker = _Walker(conn, scripts, key, direction, timeouts, flavour, runs, known)
    try:
        # The name that needs quoting first: a revision that fails only there is known before
        # the plain walk, which then also reads the structure it leaves.
        second = walker.walk(quoted, build, known=set())
        first = walker.walk(plain, plain, known=set(second.whys))
        return _assemble(scripts, key, direction, runs, first, second)
    except _Unsettled:
        return None
    except _WritesElsewhere as found:
        subject = "it" if found.revision else "a revision before it (its starting state)"
        reason = _writes_elsewhere_reason(found.table, subject)
        return NotReplayable(
            key, reason, found.revision, title_of(scripts, found.revision), splittable=False
        )


@dataclass
class _Walker:
    conn: Connection
    scripts: ChainScripts
    key: StepKey
    direction: Direction
    timeouts: Timeouts
    flavour: ServerFlavour
    runs: list[str]
    ruled_out: dict[str, NotReplayable]

    def __post_init__(self) -> None:
        self.origins = RevisionFiles(self.scripts)

    def walk(self, name: str, build_in: str, known: set[str]) -> _Walk:
        """Walk the step in a committed scratch schema ``name`` (its starting state built in
        ``build_in``, then renamed), on a connection of its own. Dropped afterwards.

        Every transaction sets its timeouts, lock and search_path itself, transaction-local,
        as a tenant's migration does: nothing is left on the connection, which a pooler in
        transaction mode (PgBouncer) may lend to another client after any transaction. Only
        an autocommit block, which runs outside a transaction, needs them session-level; they
        are reset right after it (see ``_outside_transaction``)."""
        seen = _Walk()
        with self.conn.engine.connect() as walk:
            try:
                with walk.begin():
                    self.flavour.begin_scratch(walk)
                    walk.exec_driver_sql(f"CREATE SCHEMA {quote_ident(build_in)}")
                self._build(walk, build_in)
                self._rename(walk, build_in, name)
                for revision in self.runs:
                    self._one(walk, name, build_in, revision, seen)
                    if (revision in seen.whys or revision in known) and revision != self.runs[-1]:
                        with walk.begin():
                            seen.fingerprints[revision] = read_fingerprints(walk, [name]).get(name)
            finally:
                with contextlib.suppress(Exception):
                    walk.rollback()
                # Under either name: a walk that stopped mid-rename left it under the other.
                names = ", ".join(quote_ident(n) for n in dict.fromkeys((name, build_in)))
                with contextlib.suppress(Exception), self.conn.engine.begin() as drop:
                    drop.exec_driver_sql(f"DROP SCHEMA IF EXISTS {names} CASCADE")
        return seen

    def _prepare(self, walk: Connection, schema: str) -> None:
        """First in each transaction: timeouts, the schema's lock, search_path (local)."""
        self.flavour.prepare_migration(walk, schema, self.timeouts, verify=False)

    @staticmethod
    @contextlib.contextmanager
    def _writing_only_in(walk: Connection, schema: str, revision: str | None) -> Iterator[None]:
        """Around a revision's work in a transaction that commits it: raise _WritesElsewhere
        (the caller's transaction rolls back) when it wrote outside ``schema``. Revisions run
        a transaction each for an autocommit block commit inside Alembic and are not checked:
        building from a history with one always had that cost."""

        def counts() -> dict[str, int]:
            rows = walk.execute(_WRITES_ELSEWHERE, {"schema": schema}).all()
            return {str(table): int(n) for table, n in rows}

        before = counts()
        yield
        grown = sorted(table for table, n in counts().items() if n > before.get(table, 0))
        if grown:
            raise _WritesElsewhere(grown[0], revision)

    def _build(self, walk: Connection, schema: str) -> None:
        """The step's starting state in ``schema``: in one transaction, or, when the history
        has an autocommit block, as Alembic runs such a chain."""
        try:
            with walk.begin():
                self._prepare(walk, schema)
                with self._writing_only_in(walk, schema, None):
                    build_starting_state(walk, self.scripts, self.key, schema, per_migration=False)
            return
        except Exception as exc:
            _reraise_elsewhere(exc)
            if not raised_by_autocommit_block(exc):
                raise _Unsettled() from exc
        with self._outside_transaction(walk, schema):
            build_starting_state(walk, self.scripts, self.key, schema, per_migration=True)

    @contextlib.contextmanager
    def _outside_transaction(self, walk: Connection, schema: str) -> Iterator[None]:
        """Session-level settings and lock for revisions Alembic runs a transaction each,
        reset afterwards (``server.session.reset_session``); anything that fails in it leaves
        the walk unsettled."""
        try:
            with walk.begin():
                self.flavour.prepare_migration(
                    walk, schema, self.timeouts, verify=False, local=False
                )
            yield
        except Exception as exc:
            raise _Unsettled() from exc
        finally:
            with contextlib.suppress(Exception):
                reset_session(walk)

    def _rename(self, walk: Connection, old: str, new: str) -> None:
        if old != new:
            with walk.begin():
                walk.exec_driver_sql(
                    f"ALTER SCHEMA {quote_ident(old)} RENAME TO {quote_ident(new)}"
                )

    def _through_alembic(self, walk: Connection, schema: str, revision: str) -> bool:
        """``revision`` as Alembic runs it: in a transaction, or, with an autocommit block,
        as Alembic runs such a chain (a transaction per revision). True in that case."""
        destination = state_after(self.scripts, revision, self.direction)
        try:
            with walk.begin():
                self._prepare(walk, schema)
                with self._writing_only_in(walk, schema, revision):
                    run_alembic(walk, self.scripts, schema, self.direction, destination)
            return False
        except Exception as exc:
            if not raised_by_autocommit_block(exc):
                raise
        with self._outside_transaction(walk, schema):
            run_alembic(walk, self.scripts, schema, self.direction, destination, per_migration=True)
        return True

    def _one(self, walk: Connection, name: str, build_in: str, revision: str, seen: _Walk) -> None:
        """Run ``revision`` in ``name``, recorded where it may be replayed."""
        recorder, watcher = Recorder(self.origins), Recorder(self.origins)
        earlier = self.ruled_out.get(revision)
        if earlier is not None:
            with watcher.listening(walk):
                try:
                    self._through_alembic(walk, name, revision)
                except Exception as exc:
                    _reraise_elsewhere(exc)
                    if name == build_in:
                        raise _Unsettled() from exc
                    self._under_build_name(walk, name, build_in, revision)
            data_dependent = watcher.read_any or opts_out(self.scripts, revision)
            seen.whys[revision] = _Why(earlier.reason, earlier.autocommit, data_dependent, earlier)
            return
        if opts_out(self.scripts, revision):
            seen.whys[revision] = _Why(OPTED_OUT)
            self._or_unsettled(lambda: self._through_alembic(walk, name, revision))
            return
        try:
            self._recorded(walk, name, revision, recorder)
        except Exception as exc:
            _reraise_elsewhere(exc)
            if raised_by_autocommit_block(exc):
                read_any = self._per_migration(walk, name, revision)
                seen.whys[revision] = _Why(AUTOCOMMIT_BLOCK, True, read_any)
                return
            if name == build_in:  # fails under a plain name: the migration's own error
                raise _Unsettled() from exc
            # Fails only under the name that needs quoting: it writes the name into SQL
            # unquoted. A tenant whose name needs quoting runs it through Alembic; here it
            # runs, recorded, under the plain build name: what it sends there is what it
            # sends in a tenant whose name needs none (compared with the plain walk's).
            self._rename(walk, name, build_in)
            read_any = self._record_unquoted(walk, build_in, revision, seen)
            self._rename(walk, build_in, name)
            seen.whys[revision] = _Why(unquoted_name(exc), data_dependent=read_any)
            return
        reads = [statement for statement in recorder.recorded if statement.read]
        if reads:
            seen.whys[revision] = _Why(reads_data(reads[0].sql))
            return
        try:
            seen.statements[revision] = rendered(walk, recorder.recorded, name)
        except Unreplayable as refused:
            if refused.revision is None:
                raise _Unsettled() from refused
            seen.whys[revision] = _Why(refused.reason)

    def _record_unquoted(self, walk: Connection, schema: str, revision: str, seen: _Walk) -> bool:
        """Run ``revision`` in ``schema`` (a plain name), recorded into ``seen.unquoted_only``
        when it may be replayed there; True when it read rows."""
        recorder = Recorder(self.origins)
        try:
            self._recorded(walk, schema, revision, recorder)
        except Exception as exc:
            _reraise_elsewhere(exc)
            if not raised_by_autocommit_block(exc):
                raise _Unsettled() from exc
            # With an autocommit block too: through Alembic everywhere, as Alembic runs it.
            return self._per_migration(walk, schema, revision)
        if recorder.read_any:
            return True
        with contextlib.suppress(Unreplayable):  # the name used otherwise: through Alembic
            seen.unquoted_only[revision] = rendered(walk, recorder.recorded, schema)
        return False

    def _recorded(self, walk: Connection, schema: str, revision: str, recorder: Recorder) -> None:
        """``revision`` in ``schema`` in a transaction of its own, recorded by ``recorder``."""
        destination = state_after(self.scripts, revision, self.direction)
        with walk.begin():
            self._prepare(walk, schema)
            with self._writing_only_in(walk, schema, revision), recorder.listening(walk):
                run_alembic(walk, self.scripts, schema, self.direction, destination)

    def _per_migration(self, walk: Connection, schema: str, revision: str) -> bool:
        """``revision`` with its autocommit block, as Alembic runs it; True when it read rows."""
        destination = state_after(self.scripts, revision, self.direction)
        watcher = Recorder(self.origins)
        with watcher.listening(walk), self._outside_transaction(walk, schema):
            run_alembic(walk, self.scripts, schema, self.direction, destination, per_migration=True)
        return watcher.read_any

    def _under_build_name(self, walk: Connection, name: str, build_in: str, revision: str) -> None:
        """``revision`` through Alembic with the scratch schema renamed to the plain build
        name for it (it writes the schema's name unquoted), as a compile builds a starting
        state under that name."""
        self._rename(walk, name, build_in)
        self._or_unsettled(lambda: self._through_alembic(walk, build_in, revision))
        self._rename(walk, build_in, name)

    @staticmethod
    def _or_unsettled(run: Callable[[], object]) -> None:
        try:
            run()
        except Exception as exc:
            _reraise_elsewhere(exc)
            raise _Unsettled() from exc


def _assemble(
    scripts: ChainScripts,
    key: StepKey,
    direction: Direction,
    runs: list[str],
    first: _Walk,
    second: _Walk,
) -> CompiledStep | SegmentedStep | NotReplayable:
    """The step from the two walks: consecutive replayable revisions make a segment."""
    whys = {**second.whys, **first.whys}  # the plain walk's words where both have some
    parts: list[ThroughAlembic | Replayed] = []
    segment: list[str] = []
    start, has_table = key.from_revision, key.has_version_table
    state = start
    previous: str | None = None  # the last revision run through Alembic
    # A revision whose effect may depend on the tenant's rows ran since the last segment.
    unchecked = False

    def close(end: str | None, unquoted_only: NotReplayable | None = None) -> None:
        ours = [s for revision in segment for s in first.statements[revision]]
        theirs = [
            s
            for revision in segment
            for s in second.statements.get(revision, second.unquoted_only.get(revision, []))
        ]
        if first_difference(ours, theirs) is not None:
            raise _Unsettled()
        fingerprint = None
        if unchecked and previous is not None:
            fingerprint = first.fingerprints.get(previous)
            if fingerprint is None or fingerprint != second.fingerprints.get(previous):
                raise _Unsettled()
        compiled = CompiledStep(StepKey(start, end, has_table), tuple(ours), fingerprint)
        parts.append(Replayed(compiled, fingerprint is not None, unquoted_only))

    for revision in runs:
        after = state_after(scripts, revision, direction)
        why = whys.get(revision)
        if why is None:
            segment.append(revision)
            state = after
            continue
        if segment:
            close(state)
            segment, unchecked = [], False
            start, has_table = state, True
        verdict = (
            why.known.again(key)
            if why.known is not None
            else NotReplayable(
                key, why.reason, revision, title_of(scripts, revision), True, why.autocommit
            )
        )
        if (
            why.known is None
            and revision in first.statements
            and revision in second.unquoted_only
            and not why.autocommit
        ):
            # Written with the schema's name unquoted: its own segment, replayed in tenants
            # whose name needs no quoting (checked like any segment after a data read).
            segment = [revision]
            close(after, verdict)
            segment, unchecked = [], False
            start, has_table, state = after, True, after
            continue
        unchecked = unchecked or why.data_dependent
        last = parts[-1] if parts else None
        if isinstance(last, ThroughAlembic):
            parts[-1] = ThroughAlembic((*last.revisions, revision), after, (*last.whys, verdict))
        else:
            parts.append(ThroughAlembic((revision,), after, (verdict,)))
        start, has_table, state, previous = after, True, after, revision
    if segment:
        close(state)
    if len(parts) == 1 and isinstance(parts[0], Replayed) and not parts[0].unquoted_names_only:
        return CompiledStep(key, parts[0].step.statements)
    if not any(isinstance(part, Replayed) for part in parts):
        first_part = parts[0]
        assert isinstance(first_part, ThroughAlembic)
        return first_part.whys[0]
    outside = any(why.autocommit for why in whys.values())
    return SegmentedStep(key, tuple(parts), outside)
