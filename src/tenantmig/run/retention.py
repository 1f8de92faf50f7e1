"""Pruning the run ledger: old finished runs go, what recovery and status rely on stays.

The ledger grows by a row per tenant per run. A run is removed (with its tenants' rows, by the
foreign key's ON DELETE CASCADE) only when it is finished and old enough, and never when:

- it is running, or was abandoned (still "running", its coordinator gone): ``--only-failed``
  finishes an abandoned run from exactly its rows;
- it is the latest run of its kind (command and scope): ``--only-failed`` finishes the latest
  run of a kind, and removing it would make an older one the latest;
- it holds a tenant's latest row and that row says the tenant is not where it was meant to be
  (failed, interrupted, not run, missing, moved): that row is how ``status`` and the next run
  know what is left;
- it is a rollout that is not over (paused, stopped by a wave's gate, interrupted) with
  tenants left: ``runs resume`` goes on from its rows.

Runs are deleted a batch at a time, each batch its own short transaction: the rows they lock are
the removed runs' own, so a run writing the ledger meanwhile is not held up.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantmig.errors import ConfigError
from tenantmig.run.locks import live_runs
from tenantmig.run.results import RunOutcome, TenantStatus
from tenantmig.schema.owned import RUN_TENANTS, RUNS
from tenantmig.server.identifiers import qualified

# Runs per DELETE: with 1,000 tenants a batch removes 25,000 rows, well under a second.
BATCH_RUNS = 25

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhw]?)\s*$")
_UNIT_DAYS = {"": 1.0, "d": 1.0, "w": 7.0, "h": 1 / 24}


def parse_age(text: str) -> float:
    """``90d``, ``12h``, ``2w`` or a number of days, as days; ConfigError otherwise."""
    found = _AGE.match(text)
    if found is None:
        raise ConfigError(
            f"--older-than {text!r}: give an age such as 90d, 2w or 12h (days, weeks, hours)"
        )
    days = float(found.group(1)) * _UNIT_DAYS[found.group(2)]
    if days <= 0:
        raise ConfigError(f"--older-than {text!r}: the age must be more than zero")
    return days


@dataclass(frozen=True)
class Retention:
    """What to remove: runs older than ``older_than_days``, beyond the ``keep_last`` most
    recent; both given: only runs that are both."""

    older_than_days: float | None = None
    keep_last: int | None = None

    def __post_init__(self) -> None:
        if self.older_than_days is None and self.keep_last is None:
            raise ConfigError("say what to prune: --older-than AGE, --keep-last N, or both")
        if self.keep_last is not None and self.keep_last < 0:
            raise ConfigError("--keep-last must be 0 or more")

    def describe(self) -> str:
        parts = []
        if self.older_than_days is not None:
            parts.append(f"older than {self.older_than_days:g} day(s)")
        if self.keep_last is not None:
            parts.append(f"beyond the last {self.keep_last}")
        return " and ".join(parts)


@dataclass
class PrunePlan:
    retention: Retention
    runs: list[int]  # to remove, oldest first
    tenant_rows: int
    kept: dict[str, int] = field(default_factory=dict)  # reason -> runs kept for it

    def question(self) -> str:
        return (
            f"remove {len(self.runs)} run(s) {self.retention.describe()} and their "
            f"{self.tenant_rows} tenant row(s) from the ledger"
        )


@dataclass
class PruneResult:
    retention: Retention
    removed_runs: list[int]
    removed_rows: int
    kept: dict[str, int]
    dry_run: bool
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "older_than_days": self.retention.older_than_days,
            "keep_last": self.retention.keep_last,
            "removed_runs": len(self.removed_runs),
            "removed_tenant_rows": self.removed_rows,
            "run_ids": self.removed_runs,
            "kept": self.kept,
            "duration_s": round(self.duration_s, 3),
        }


KEPT_RUNNING = "running or abandoned"
KEPT_LATEST_OF_KIND = "the latest run of its kind"
KEPT_UNFINISHED = "the latest run of a tenant it left unfinished"
KEPT_OPEN_ROLLOUT = "a paused or stopped rollout with tenants left (runs resume, runs cancel)"


def plan_prune(conn: Connection, shared_schema: str, retention: Retention) -> PrunePlan:
    """The runs ``retention`` removes, and how many it keeps for each reason (read only)."""
    runs, run_tenants = qualified(shared_schema, RUNS), qualified(shared_schema, RUN_TENANTS)
    if not conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": runs}).scalar():
        return PrunePlan(retention, [], 0)
    unfinished = [s.value for s in TenantStatus if not s.is_done]
    rows = conn.execute(
        sa.text(
            f"WITH eligible AS (SELECT id, command, scope, outcome, options ? 'waves' AS waves"
            f" FROM {runs}"
            " WHERE (CAST(:days AS double precision) IS NULL"
            "        OR started_at < now() - make_interval(secs => :days * 86400))"
            "   AND (CAST(:keep AS integer) IS NULL OR id NOT IN"
            f"        (SELECT id FROM {runs} ORDER BY id DESC LIMIT :keep))),"
            f" latest_of_kind AS (SELECT max(id) AS id FROM {runs} GROUP BY command, scope),"
            # Each tenant's newest row through the (tenant, run_id DESC) index, the runs of
            # those that say the tenant is not done.
            " pinned AS (SELECT DISTINCT last.run_id AS id FROM"
            f"  (SELECT DISTINCT tenant FROM {run_tenants}) AS t"
            "  CROSS JOIN LATERAL (SELECT run_id, status FROM"
            f"   {run_tenants} x WHERE x.tenant = t.tenant ORDER BY x.run_id DESC LIMIT 1) AS last"
            "  WHERE last.status = ANY(:unfinished))"
            " SELECT e.id, e.outcome,"
            # A rollout that is not over (paused, stopped, ...) with tenants left: resumable.
            "  e.waves AND e.outcome NOT IN ('succeeded', 'cancelled') AND EXISTS (SELECT 1"
            f"   FROM {run_tenants} u WHERE u.run_id = e.id AND u.status = ANY(:unfinished))"
            "   AS open_rollout,"
            "  e.id IN (SELECT id FROM latest_of_kind) AS latest,"
            "  e.id IN (SELECT id FROM pinned) AS pinned"
            " FROM eligible e ORDER BY e.id"
        ),
        {"days": retention.older_than_days, "keep": retention.keep_last, "unfinished": unfinished},
    ).all()
    kept: dict[str, int] = {}
    remove: list[int] = []
    alive = live_runs(conn)
    for row in rows:
        if row.outcome == RunOutcome.RUNNING.value or row.id in alive:
            reason = KEPT_RUNNING
        elif row.open_rollout:
            reason = KEPT_OPEN_ROLLOUT
        elif row.latest:
            reason = KEPT_LATEST_OF_KIND
        elif row.pinned:
            reason = KEPT_UNFINISHED
        else:
            remove.append(int(row.id))
            continue
        kept[reason] = kept.get(reason, 0) + 1
    tenant_rows = 0
    if remove:
        tenant_rows = int(
            conn.execute(
                sa.text(f"SELECT count(*) FROM {run_tenants} WHERE run_id = ANY(:ids)"),
                {"ids": remove},
            ).scalar_one()
        )
    return PrunePlan(retention, remove, tenant_rows, kept)


def prune(
    conn: Connection,
    shared_schema: str,
    plan: PrunePlan,
    *,
    lock_timeout_s: float,
    on_batch: Callable[[int, int], None] | None = None,
) -> PruneResult:
    """Delete the planned runs, BATCH_RUNS at a time, each batch committed on its own (a
    failure keeps what the earlier batches removed; the same command removes the rest).
    ``on_batch(removed so far, planned)`` after each batch."""
    runs, run_tenants = qualified(shared_schema, RUNS), qualified(shared_schema, RUN_TENANTS)
    started = time.monotonic()
    removed: list[int] = []
    rows = 0
    for start in range(0, len(plan.runs), BATCH_RUNS):
        batch = plan.runs[start : start + BATCH_RUNS]
        with conn.begin():
            conn.execute(
                sa.text("SELECT set_config('lock_timeout', :ms, true)"),
                {"ms": f"{round(lock_timeout_s * 1000)}ms"},
            )
            rows += int(
                conn.execute(
                    sa.text(f"SELECT count(*) FROM {run_tenants} WHERE run_id = ANY(:ids)"),
                    {"ids": batch},
                ).scalar_one()
            )
            # Their tenant rows go by the foreign key's ON DELETE CASCADE. A run id is never
            # reused and a finished run never runs again: the plan still holds.
            conn.execute(
                sa.text(f"DELETE FROM {runs} WHERE id = ANY(:ids) AND outcome <> :running"),
                {"ids": batch, "running": RunOutcome.RUNNING.value},
            )
        removed.extend(batch)
        if on_batch is not None:
            on_batch(len(removed), len(plan.runs))
    return PruneResult(plan.retention, removed, rows, plan.kept, False, time.monotonic() - started)
