"""Steps split around the revisions that cannot be replayed.

A step from A to B that runs one revision that reads data (or opts out of replay) used to run
through Alembic for every tenant, revisions that are plain DDL included. Here it is split at
such revisions instead: the revisions before one are a replayed segment, the revision itself
runs through Alembic, the revisions after it are another segment, and so on, all in order in
the tenant's one transaction, exactly as Alembic would run them one after the other.

A segment is compiled from the state Alembic's revisions produce in a scratch schema, which
holds no rows. A revision run through Alembic in a tenant may act on that tenant's rows, and
what it does to the structure may depend on them (an index only where rows exist, say). So
the segment after it is replayed only where the tenant's structure at that point is exactly
the structure the segment was compiled from (the catalog fingerprint drift compares, read in
the tenant's transaction); anywhere else the rest of the step runs through Alembic.
``plan_step`` checks after every revision it splits around; ``run.walk``, which sees what each
revision sent, only after one that read (or opted out).

A revision with an autocommit block (CREATE INDEX CONCURRENTLY) cannot run inside the tenant's
one transaction. Alembic runs such a chain a transaction per revision; a step split around one
does the same with its parts: each replayed segment in a transaction of its own, each other
revision as Alembic runs it (``outside_transaction``), the tenant's lock held by the session
throughout.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from tenantmig.chains.scripts import ChainScripts, Direction
from tenantmig.run.replay import CompiledStep, NotReplayable, StepKey, replay, step_revisions
from tenantmig.schema.catalog import read_fingerprints
from tenantmig.server.flavour import ServerFlavour
from tenantmig.server.identifiers import quote_as_alembic


@dataclass(frozen=True)
class ThroughAlembic:
    """Revisions run through Alembic in the tenant's transaction, up to ``to_revision``."""

    revisions: tuple[str, ...]
    to_revision: str | None
    whys: tuple[NotReplayable, ...]  # why, for each revision found not replayable


@dataclass(frozen=True)
class Replayed:
    """A compiled segment; ``checked``: replayed only where the tenant's structure matches the
    one it was compiled from (it follows revisions run through Alembic).

    ``unquoted_names_only``: the segment (one revision) writes the schema's name into its SQL
    unquoted, as alembic_utils' PGTrigger does. Alembic sends that as written, so the recording
    is what Alembic sends only in a tenant whose name SQLAlchemy also writes unquoted (no
    capitals, not a keyword): it is replayed there, and run through Alembic, for this reason,
    in any other tenant."""

    step: CompiledStep
    checked: bool
    unquoted_names_only: NotReplayable | None = None

    def replays_in(self, schema: str) -> bool:
        """Whether this segment is replayed in ``schema`` (before any structure check)."""
        return self.unquoted_names_only is None or quote_as_alembic(schema) == schema


@dataclass(frozen=True)
class SegmentedStep:
    key: StepKey
    parts: tuple[ThroughAlembic | Replayed, ...]
    # A part has an autocommit block: no part shares a transaction with another.
    outside_transaction: bool = False

    def describe(self, tenants: int) -> str:
        """Per revision what runs how, for the run's notices."""
        said = []
        for part in self.parts:
            if isinstance(part, Replayed):
                checked = " where the structure matches" if part.checked else ""
                instead = part.unquoted_names_only
                if instead is not None:
                    title = f' "{instead.title}"' if instead.title else ""
                    checked += (
                        f" in tenants whose schema name needs no quoting (in any other, "
                        f"revision {instead.revision}{title} runs through Alembic: "
                        f"{instead.reason})"
                    )
                said.append(f"{part.step.key.describe()} replayed{checked}")
            else:
                named = {why.revision for why in part.whys}
                for why in part.whys:
                    title = f' "{why.title}"' if why.title else ""
                    subject = f"revision {why.revision}" if why.revision else "the rest"
                    said.append(f"{subject}{title} through Alembic: {why.reason}")
                others = [r for r in part.revisions if r not in named]
                if others:
                    said.append(f"then {', '.join(others)} through Alembic with them")
        return f"step {self.key.describe()} ({tenants} tenant(s)) is split: " + "; ".join(said)


# Compiles a step (with its starting fingerprint when the flag is set), or says why not.
Compile = Callable[[StepKey, bool], CompiledStep | NotReplayable]


def state_after(scripts: ChainScripts, revision: str, direction: Direction) -> str | None:
    """The revision a schema is at once ``revision`` ran in ``direction``."""
    if direction == "upgrade":
        return revision
    position = scripts.position(revision)
    return scripts.order[position - 1] if position > 0 else None


def plan_step(
    scripts: ChainScripts,
    key: StepKey,
    direction: Direction,
    compile_step: Compile,
    ruled_out: dict[str, NotReplayable],
) -> CompiledStep | SegmentedStep | NotReplayable:
    """The whole step compiled, or split into segments around the revisions that cannot be
    replayed (learnt into ``ruled_out``, shared by every step of the run), or why not even a
    part of it can be replayed."""
    runs = step_revisions(scripts, key, direction)
    parts: list[ThroughAlembic | Replayed] = []
    state, has_table, index = key.from_revision, key.has_version_table, 0
    while index < len(runs):
        known = next((i for i in range(index, len(runs)) if runs[i] in ruled_out), len(runs))
        if known == index:
            revision = runs[index]
            verdict = ruled_out[revision]
            if not verdict.splittable:
                return verdict.again(key) if verdict.key != key else verdict
            state, has_table, index = state_after(scripts, revision, direction), True, index + 1
            last = parts[-1] if parts else None
            if isinstance(last, ThroughAlembic):
                parts[-1] = ThroughAlembic(
                    (*last.revisions, revision), state, (*last.whys, verdict)
                )
            else:
                parts.append(ThroughAlembic((revision,), state, (verdict,)))
            continue
        end = state_after(scripts, runs[known - 1], direction)
        checked = bool(parts)  # it follows revisions run through Alembic
        found = compile_step(StepKey(state, end, has_table), checked)
        if isinstance(found, CompiledStep):
            parts.append(Replayed(found, checked))
            state, has_table, index = end, True, known
            continue
        culprit = found.revision
        if culprit is None or culprit not in runs[index:known] or not found.splittable:
            # Not one revision's doing (or not one to split around): whatever is left runs
            # through Alembic.
            if not parts or not any(isinstance(p, Replayed) for p in parts):
                return found if found.key == key else _for_step(found, key)
            rest = tuple(runs[index:])
            last = parts[-1]
            if isinstance(last, ThroughAlembic):
                parts[-1] = ThroughAlembic(
                    (*last.revisions, *rest), key.to_revision, (*last.whys, found)
                )
            else:
                parts.append(ThroughAlembic(rest, key.to_revision, (found,)))
            break
        ruled_out[culprit] = found
    if len(parts) == 1 and isinstance(parts[0], Replayed) and not parts[0].checked:
        return parts[0].step
    if not any(isinstance(p, Replayed) for p in parts):
        first = next(p for p in parts if isinstance(p, ThroughAlembic))
        return _for_step(first.whys[0], key)
    outside = any(
        isinstance(p, ThroughAlembic) and any(ruled_out[r].autocommit for r in p.revisions
                                              if r in ruled_out)
        for p in parts
    )  # fmt: skip
    return SegmentedStep(key, tuple(parts), outside)


def _for_step(verdict: NotReplayable, key: StepKey) -> NotReplayable:
    return verdict if verdict.key == key else verdict.again(key)


def run_segments(
    conn: Connection,
    flavour: ServerFlavour,
    step: SegmentedStep,
    schema: str,
    through_alembic: Callable[[str | None], None],
    transaction: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> bool:
    """Run a split step in ``schema``: each replayed segment checked and replayed inside
    ``transaction()`` (nothing: the caller's one transaction; a new one per segment for a
    step ``outside_transaction``), each other revision through ``through_alembic(to)``.
    True when some segment was replayed. Raises ValueError if a replayed segment did not land
    on its end (never committed: the caller rolls back)."""
    replayed = False
    for index, part in enumerate(step.parts):
        if isinstance(part, ThroughAlembic):
            through_alembic(part.to_revision)
            continue
        if not part.replays_in(schema):
            # Alembic would write this tenant's name unquoted where the recording has a name
            # that needs no quoting: run it as Alembic does, error included. A checked part
            # follows revisions that may have acted on rows, and the parts after it rely on
            # its check: then the rest of the step runs through Alembic.
            if part.checked:
                through_alembic(step.key.to_revision)
                return replayed
            through_alembic(part.step.key.to_revision)
            continue
        with transaction():
            matches = not part.checked or (
                read_fingerprints(conn, [schema]).get(schema) == part.step.start_fingerprint
            )
            if matches:
                after = replay(conn, flavour, part.step, schema)
                if after != part.step.key.to_revision:
                    raise ValueError(
                        f"replayed segment {index + 1} ended at {after!r}, "
                        f"expected {part.step.key.to_revision!r}"
                    )
        if not matches:
            # What ran before left this tenant's structure unlike the segment's starting
            # state: the rest of the step runs through Alembic.
            through_alembic(step.key.to_revision)
            return replayed
        replayed = True
    return replayed
