"""One vocabulary for where a schema stands against its chain, used by status and by drift."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from tenantmig.chains.scripts import ChainScripts
from tenantmig.schema.versions import SchemaVersion


class SchemaState(str, Enum):
    CURRENT = "current"  # at head (or the chain is empty and so is the schema)
    BEHIND = "behind"  # at a known revision (or base) before head
    UNINITIALIZED = "uninitialized"  # no version table: never migrated by these migrations
    MISSING_SCHEMA = "missing_schema"  # registered, but the schema does not exist
    UNKNOWN_REVISION = "unknown_revision"  # a revision these migrations do not know
    DIVERGED = "diverged"  # several version rows
    # INVALID indexes left by a failed CREATE INDEX CONCURRENTLY; status only, drift lists them
    NEEDS_ATTENTION = "needs_attention"
    UNREACHABLE = "unreachable"  # its database (of the directory) cannot be reached


@dataclass(frozen=True)
class Classified:
    state: SchemaState
    detail: str  # one line for a person: "at 001, 2 revision(s) behind head 003"


def classify(version: SchemaVersion | None, scripts: ChainScripts) -> Classified:
    """Where ``version`` (from ``read_versions``) stands against ``scripts``' head."""
    head = scripts.head
    if version is None or not version.schema_exists:
        return Classified(SchemaState.MISSING_SCHEMA, "the schema does not exist")
    if version.diverged:
        return Classified(
            SchemaState.DIVERGED, f"several revisions recorded: {', '.join(version.revisions)}"
        )
    if not version.has_version_table:
        if head is None:
            return Classified(SchemaState.CURRENT, "no revisions in the chain")
        return Classified(
            SchemaState.UNINITIALIZED,
            "no alembic_version table: never migrated by these migrations",
        )
    current = version.revision
    if current is None:
        if head is None:
            return Classified(SchemaState.CURRENT, "at base")
        return Classified(SchemaState.BEHIND, f"at base, head is {head}")
    if not scripts.knows(current):
        return Classified(
            SchemaState.UNKNOWN_REVISION,
            f"at {current}, which these migrations do not know: ahead of head (applied by newer "
            "code) or from another branch",
        )
    if current != head:
        behind = scripts.position(head) - scripts.position(current)
        return Classified(
            SchemaState.BEHIND, f"at {current}, {behind} revision(s) behind head {head}"
        )
    return Classified(SchemaState.CURRENT, "at head")
