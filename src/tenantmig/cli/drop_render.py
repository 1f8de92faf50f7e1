"""What `tenantmig tenants drop` did, per database and state, as text."""

from __future__ import annotations

from collections.abc import Sequence

from tenantmig.errors import some_names
from tenantmig.run.bulk import DropOutcome, DropResult, DropState

NAMES_SHOWN = 25  # names listed per line of a drop's report; past it, a count

_DROP_LABELS = {
    DropState.DROPPED: "dropped (schema and registry row)",
    DropState.SCHEMA_WAS_GONE: "registry row removed (the schema was already gone)",
    DropState.ALREADY_GONE: "already gone, nothing left (named by drop run {runs})",
    DropState.SCHEMA_DROPPED: "schema dropped, still registered",
    DropState.SCHEMA_MISSING: "untouched, still registered without a schema",
    DropState.ROW_REMOVED: "registry row removed, schema still there",
    DropState.UNTOUCHED: "untouched (registry row and schema as they were)",
    DropState.UNKNOWN: "unknown (the database could not be read back)",
}

# What stays in between after a drop stopped, for its one-line summary (in this order).
_LEFT = (
    (DropState.SCHEMA_DROPPED, "schemas dropped but still registered"),
    (DropState.ROW_REMOVED, "registry rows removed but schemas still there"),
    (DropState.UNKNOWN, "state unknown (a database could not be read back)"),
    (DropState.SCHEMA_MISSING, "still registered without a schema"),
    (DropState.UNTOUCHED, "still registered and untouched"),
)


def drop_text(result: DropResult) -> str:
    """What a drop did, per database and state; the first line alone for a drop of tenants of
    one database that all had a schema."""
    done = result.names(DropState.DROPPED, DropState.SCHEMA_WAS_GONE)
    run = f" (run {result.run_id})" if result.run_id is not None else ""
    listed = f": {some_names(done, NAMES_SHOWN)}" if done else ""
    lines = [f"dropped {len(done)} tenant(s){listed}{run}"]
    grouped = result.by_database()
    states = {state for found in grouped.values() for state in found}
    if len(grouped) > 1 or states - {DropState.DROPPED}:
        for database, found in grouped.items():
            lines.append(f"database {database}:")
            lines.extend(
                f"  {_drop_label(state, outcomes)}: "
                f"{some_names([o.name for o in outcomes], NAMES_SHOWN)}"
                for state, outcomes in found.items()
            )
    if not result.succeeded:
        lines.append("the same command again drops what is left and names what is already gone")
    return "\n".join(lines)


def _drop_label(state: DropState, outcomes: Sequence[DropOutcome]) -> str:
    runs = sorted({o.earlier_run for o in outcomes if o.earlier_run is not None})
    return _DROP_LABELS[state].format(runs=", ".join(str(r) for r in runs) or "?")


def drop_stopped(result: DropResult) -> str:
    """One line (for stderr): why a drop stopped, how far it got, what is left in between."""
    named = [o for o in result.outcomes if o.state is not DropState.ALREADY_GONE]
    done = result.names(DropState.DROPPED, DropState.SCHEMA_WAS_GONE)
    parts = [
        result.stopped or "interrupted",
        f"dropped {len(done)} of {len(named)} tenant(s)"
        + (f" ({some_names(done)})" if done else ""),
    ]
    for state, label in _LEFT:
        names = result.names(state)
        if names:
            parts.append(f"{label}: {some_names(names)}")
    return "; ".join(parts)
