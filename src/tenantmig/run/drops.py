"""What a downgrade would drop, known before anything changes, so the caller can ask first.

A downgrade is decided per tenant: ``-1`` takes a tenant at the chain's first revision to base,
an absolute revision may be several steps below one tenant and none below another. So the
question is asked after triage has resolved each selected tenant's target, from the distinct
steps (revision -> target) the jobs would take, never from the target as the user wrote it.

Each step's SQL is Alembic's offline rendering of it (what ``downgrade --sql`` prints, and what
a compiled step replays). A revision that cannot be rendered offline (it reads from the
database) is counted as one that may drop data: asking once too often is cheap, dropping a
table unasked is not.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tenantmig.chains.context import VERSION_TABLE
from tenantmig.errors import some_names

if TYPE_CHECKING:
    from tenantmig.chains.scripts import ChainScripts
    from tenantmig.run.results import TenantJob
    from tenantmig.server.config import Settings

_log = logging.getLogger(__name__)

# A name as Alembic renders it: bare, or double-quoted (with "" inside), optionally qualified.
_NAME = r'(?:"(?:[^"]|"")+"|[\w$]+)'
_QUALIFIED = rf"{_NAME}(?:\.{_NAME})?"
_DROP_TABLE = re.compile(rf"\bDROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?({_QUALIFIED})", re.IGNORECASE)
_ALTER_TABLE = re.compile(
    rf"\bALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?({_QUALIFIED})\s+([^;]*)", re.IGNORECASE
)
_DROP_COLUMN = re.compile(rf"\bDROP\s+(?:COLUMN\s+)?(?:IF\s+EXISTS\s+)?({_NAME})", re.IGNORECASE)
# ALTER TABLE ... DROP CONSTRAINT / DROP DEFAULT / ... drop no rows.
_NOT_COLUMNS = {"constraint", "default", "not", "expression", "identity"}


@dataclass(frozen=True)
class Drops:
    """What the tenants of one downgrade would lose (empty: nothing is dropped)."""

    tenants: int  # selected tenants whose step drops something (or may)
    to_base: int  # of them, those the downgrade takes to base
    tables: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()  # table.column
    unknown: tuple[str, ...] = ()  # steps whose SQL could not be rendered, with why

    def __bool__(self) -> bool:
        return self.tenants > 0

    def question(self, target: str) -> str:
        """The consequence the user confirms: what is dropped, and in how many tenants."""
        what = []
        if self.tables:
            what.append(f"table(s) {some_names(list(self.tables))}")
        if self.columns:
            what.append(f"column(s) {some_names(list(self.columns))}")
        if self.unknown:
            what.append(
                f"whatever {some_names(list(self.unknown))} drop(s) (its SQL could not be "
                "rendered to check)"
            )
        base = f", {self.to_base} of them to base" if self.to_base else ""
        return (
            f"downgrade {target} drops {' and '.join(what) or 'data'} with their rows in "
            f"{self.tenants} tenant schema(s){base}"
        )


def find_drops(settings: Settings, scripts: ChainScripts, jobs: Sequence[TenantJob]) -> Drops:
    """What ``jobs`` (a downgrade's, targets resolved) would drop, one rendering per step.

    Jobs without a resolved target (a revision these scripts do not know) are refused by their
    worker without changing anything, so they drop nothing.
    """
    # Alembic's command module is loaded only by a downgrade that asks (start-up time).
    from tenantmig.chains.offline import offline_sql
    from tenantmig.chains.output import migration_output

    steps: dict[tuple[str | None, str | None], list[TenantJob]] = {}
    for job in jobs:
        if job.target is not None and scripts.knows(job.seen_revision):
            steps.setdefault((job.seen_revision, job.target.revision), []).append(job)
    tenants = to_base = 0
    tables: dict[str, None] = {}
    columns: dict[str, None] = {}
    unknown: dict[str, None] = {}
    for (start, destination), its_jobs in steps.items():
        span = f"{start or 'base'} -> {destination or 'base'}"
        try:
            # Rendering runs the revisions' downgrade(): what they print goes to the run log,
            # never to stdout (one JSON document with --json).
            with migration_output(its_jobs[0].schema):
                sql = offline_sql(
                    settings, scripts.chain, its_jobs[0].schema, "downgrade", start, destination
                )
        except Exception as exc:  # any failure to render means "cannot tell": ask
            _log.info("downgrade %s could not be rendered offline: %s", span, exc)
            unknown[span] = None
        else:
            found_tables, found_columns = dropped_by(sql)
            tables.update(dict.fromkeys(found_tables))
            columns.update(dict.fromkeys(found_columns))
            if not (found_tables or found_columns or destination is None):
                continue
        tenants += len(its_jobs)
        if destination is None:
            to_base += len(its_jobs)
    return Drops(tenants, to_base, tuple(tables), tuple(columns), tuple(unknown))


def dropped_by(sql: str) -> tuple[list[str], list[str]]:
    """(tables, table.column) that ``sql`` drops, in order; the version table is not data."""
    tables = [
        name
        for match in _DROP_TABLE.finditer(sql)
        if (name := _unqualified(match.group(1))) != VERSION_TABLE
    ]
    columns = []
    for match in _ALTER_TABLE.finditer(sql):
        table = _unqualified(match.group(1))
        for action in match.group(2).split(","):
            dropped = _DROP_COLUMN.match(action.strip())
            if dropped is not None and dropped.group(1).lower() not in _NOT_COLUMNS:
                columns.append(f"{table}.{_unquoted(dropped.group(1))}")
    return tables, columns


def _unqualified(name: str) -> str:
    """The table's own name: the schema in the rendered SQL is the one it was rendered for."""
    parts = re.findall(_NAME, name)
    return _unquoted(parts[-1])


def _unquoted(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name
