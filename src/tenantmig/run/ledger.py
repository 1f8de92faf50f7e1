"""The durable record of runs and per-tenant outcomes, in the shared schema.

Two tables owned by tenantmig (not by the application's migrations), created on first use:
``tenantmig_runs`` (one row per run) and ``tenantmig_run_tenants`` (one row per tenant per run).
The tenant's own alembic_version row stays the source of truth for its revision; the ledger says
what each run did and why a tenant failed.

Only the coordinating process writes here, on its own autocommit connection, so a tenant's
migration transaction never touches a shared table (no contention between workers) and a
failure's record survives the failed transaction's rollback.
"""

from __future__ import annotations

import functools
import json
import os
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantmig.run.locks import live_runs
from tenantmig.run.results import (
    RunOutcome,
    RunScope,
    Target,
    TenantOutcome,
    TenantStatus,
    WaveResult,
)
from tenantmig.schema.owned import RUN_TENANTS, RUN_TENANTS_INDEX, RUNS
from tenantmig.server.directory import CONTROL
from tenantmig.server.identifiers import qualified, quote_ident
from tenantmig.server.reads import own_reads
from tenantmig.server.session import LOCK_NAMESPACE, lock_key

if TYPE_CHECKING:
    from tenantmig.schema.status import LastOutcome

P = ParamSpec("P")
R = TypeVar("R")

# Tenants looked up in the ledger per statement (see Ledger.last_outcomes).
_NAMES_CHUNK = 500

# Columns of the per-tenant table added after its first release (name -> type).
_ADDED_COLUMNS = {
    "backup_path": "text",
    "replayed": "boolean NOT NULL DEFAULT false",
    "target_revision": "text",  # Target.to_ledger(): a revision id, or "base"
    "database": "text",  # the directory's name of the tenant's database (NULL: control)
    "wave": "smallint",  # a rollout's wave, from 0 (NULL: not a rollout)
}
# Columns of the runs table added after its first release.
_ADDED_RUN_COLUMNS = {
    "reason": "text",  # why the run stopped before its end (it lost its run lock)
}


@dataclass(frozen=True)
class RunRecord:
    id: int
    command: str
    scope: str
    target: str
    host: str
    pid: int
    db_user: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    totals: dict[str, int]
    reason: str | None = None  # why it stopped before its end
    waves: list[WaveResult] | None = None  # a rollout's waves, with each one's outcome (run())

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.id,
            "command": self.command,
            "scope": self.scope,
            "target": self.target,
            "host": self.host,
            "pid": self.pid,
            "db_user": self.db_user,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "outcome": self.outcome,
            "totals": self.totals,
            "reason": self.reason,
            **({"waves": [w.to_json() for w in self.waves]} if self.waves is not None else {}),
        }


@dataclass(frozen=True)
class Selected:
    """A tenant as a run found it when it started: its schema and database then."""

    run_id: int
    tenant: str
    schema: str
    database: str


@dataclass(frozen=True)
class RolloutRow:
    """One tenant of a rollout as the ledger has it."""

    tenant: str
    schema: str
    database: str
    status: TenantStatus
    wave: int
    target: Target | None
    from_revision: str | None
    to_revision: str | None


@dataclass(frozen=True)
class RolloutState:
    """A rollout as recorded: its run, options and every tenant with its wave."""

    run_id: int
    command: str
    target: str
    outcome: str  # as runs show reads it: abandoned when its runner was killed
    options: Mapping[str, Any]
    rows: Sequence[RolloutRow]

    @property
    def unfinished(self) -> list[RolloutRow]:
        return [r for r in self.rows if not r.status.is_done]


# Rollouts in these states (abandoned: killed mid-run) can be resumed or cancelled, and keep
# another all-tenants run of the same command from starting while they have unfinished tenants.
OPEN_ROLLOUT = ("paused", "failed", "stopped", "interrupted", "abandoned")


@dataclass(frozen=True)
class Unfinished:
    """The tenants a run did not finish, and where it meant to take them.

    A run records every selected tenant when it starts (as not run), so its unfinished tenants
    are those not recorded as done. A run from before that (abandoned: killed) recorded only the
    tenants it got to: there, every tenant not recorded as done is unfinished.
    """

    run_id: int
    command: str
    target: str  # the run's target as given: head, a revision, -1...
    abandoned: bool
    done: frozenset[str] = frozenset()
    unfinished: frozenset[str] = frozenset()
    targets: Mapping[str, Target] = field(default_factory=dict)  # as resolved at its start

    def wants(self, tenant: str) -> bool:
        if self.abandoned:
            return tenant not in self.done
        return tenant in self.unfinished


def _committed(method: Callable[P, R]) -> Callable[P, R]:
    """Run a Ledger method in its own transaction on the ledger connection."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        ledger = args[0]
        assert isinstance(ledger, Ledger)
        with ledger.conn.begin():
            return method(*args, **kwargs)

    return wrapper


def _read(method: Callable[P, R]) -> Callable[P, R]:
    """Run a Ledger read in its own transaction on the ledger connection, bounded by the
    ledger's statement timeout rather than the role's (see server.reads)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        ledger = args[0]
        assert isinstance(ledger, Ledger)
        with own_reads(ledger.conn, ledger.statement_timeout_s):
            return method(*args, **kwargs)

    return wrapper


class Ledger:
    def __init__(
        self, conn: Connection, shared_schema: str, *, statement_timeout_s: float | None = None
    ) -> None:
        """``conn`` is the coordinator's own connection; every method commits before returning,
        so each write is durable at once and no transaction is left open between calls.
        ``statement_timeout_s`` bounds each statement of the reads (None: no limit)."""
        self.conn = conn
        self.statement_timeout_s = statement_timeout_s
        self.runs = qualified(shared_schema, RUNS)
        self.run_tenants = qualified(shared_schema, RUN_TENANTS)
        self.shared_schema = shared_schema

    def ready(self) -> bool:
        """The tables, every column and the index exist: nothing to create.

        Checked before any DDL: ``CREATE TABLE IF NOT EXISTS`` needs CREATE on the schema even
        when the table is there, and a role that may only write the ledger (set up once by an
        administrator with ``tenantmig grant``) has no such privilege.
        """
        with own_reads(self.conn, self.statement_timeout_s):
            row = self.conn.execute(
                sa.text(
                    "SELECT to_regclass(:runs) IS NOT NULL AND to_regclass(:index) IS NOT NULL"
                    " AND (SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass(:t)"
                    "  AND attname = ANY(:added) AND NOT attisdropped) = :n"
                    " AND (SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass(:runs)"
                    "  AND attname = ANY(:run_added) AND NOT attisdropped) = :run_n"
                ),
                {
                    "runs": self.runs,
                    "index": qualified(self.shared_schema, RUN_TENANTS_INDEX),
                    "t": self.run_tenants,
                    "added": list(_ADDED_COLUMNS),
                    "n": len(_ADDED_COLUMNS),
                    "run_added": list(_ADDED_RUN_COLUMNS),
                    "run_n": len(_ADDED_RUN_COLUMNS),
                },
            ).scalar()
        return bool(row)

    def ensure(self) -> None:
        """Create the ledger tables if missing.

        Two runners starting together would both try CREATE TABLE IF NOT EXISTS and one could
        fail on the catalog's unique index; a transaction advisory lock serialises them.
        """
        if self.ready():
            return
        with self.conn.begin():
            self.conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:ns, :key)"),
                {"ns": LOCK_NAMESPACE, "key": lock_key("tenantmig ledger ddl")},
            )
            self.conn.exec_driver_sql(self._create_runs_sql())
            self.conn.exec_driver_sql(self._create_run_tenants_sql())
            # Added after the first release: older ledgers get the columns on first use. Checked
            # first: ALTER TABLE takes ACCESS EXCLUSIVE even when IF NOT EXISTS finds the column,
            # which would block every reader of the ledger (`tenantmig runs`) on every run.
            for table, added in _added_columns(self.runs, self.run_tenants):
                present = set(
                    self.conn.execute(
                        sa.text(
                            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(:t)"
                            " AND attnum > 0 AND NOT attisdropped"
                        ),
                        {"t": table},
                    ).scalars()
                )
                for column, definition in added.items():
                    if column not in present:
                        self.conn.exec_driver_sql(_add_column_sql(table, column, definition))
            self.conn.exec_driver_sql(self._create_index_sql())

    def creation_sql(self) -> list[str]:
        """Every statement that makes the ledger, for an administrator to review or run
        (``tenantmig grant --sql``); each is a no-op where its object exists."""
        return [
            self._create_runs_sql(),
            self._create_run_tenants_sql(),
            *(
                _add_column_sql(table, c, d)
                for table, added in _added_columns(self.runs, self.run_tenants)
                for c, d in added.items()
            ),
            self._create_index_sql(),
        ]

    def _create_runs_sql(self) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {self.runs} ("
            " id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
            " command text NOT NULL, scope text NOT NULL, target text NOT NULL,"
            " host text NOT NULL, pid integer NOT NULL,"
            " db_user text NOT NULL DEFAULT current_user,"
            " options jsonb NOT NULL DEFAULT '{}'::jsonb,"
            " started_at timestamptz NOT NULL DEFAULT now(),"
            " finished_at timestamptz,"
            " outcome text NOT NULL DEFAULT 'running',"
            " totals jsonb NOT NULL DEFAULT '{}'::jsonb)"
        )

    def _create_run_tenants_sql(self) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {self.run_tenants} ("
            f" run_id bigint NOT NULL REFERENCES {self.runs} (id) ON DELETE CASCADE,"
            " tenant text NOT NULL, schema_name text NOT NULL,"
            " from_revision text, to_revision text, status text NOT NULL,"
            " attempts integer NOT NULL DEFAULT 0, duration_s double precision,"
            " error text, recorded_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (run_id, tenant))"
        )

    def _create_index_sql(self) -> str:
        return (
            f"CREATE INDEX IF NOT EXISTS {quote_ident(RUN_TENANTS_INDEX)} "
            f"ON {self.run_tenants} (tenant, run_id DESC)"
        )

    def _has_tables(self) -> bool:
        return bool(
            self.conn.execute(
                sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": self.run_tenants}
            ).scalar()
        )

    @_committed
    def start_run(self, command: str, scope: RunScope, target: str, options: dict[str, Any]) -> int:
        run_id = self.conn.execute(
            sa.text(
                f"INSERT INTO {self.runs} (command, scope, target, host, pid, options) "
                "VALUES (:command, :scope, :target, :host, :pid, CAST(:options AS jsonb)) "
                "RETURNING id"
            ),
            {
                "command": command,
                "scope": scope.value,
                "target": target,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "options": json.dumps(options),
            },
        ).scalar_one()
        return int(run_id)

    @_committed
    def record(
        self,
        run_id: int,
        outcomes: Sequence[TenantOutcome],
        targets: Mapping[str, Target] | None = None,
        waves: Mapping[str, int] | None = None,
    ) -> None:
        """Upsert outcomes (a tenant is recorded as not run at the start, then finished).

        ``targets``: where the run means to take each tenant, and ``waves``: a rollout's wave
        of each; both kept when a later upsert of the same tenant does not give them.
        """
        if not outcomes:
            return
        targets = targets or {}
        waves = waves or {}
        # One statement for the whole batch (arrays unnested), not one round trip per tenant:
        # a run records every tenant at its start, thousands at once. The last outcome of a
        # tenant wins, as with row-by-row upserts (ON CONFLICT may touch a row once).
        latest = list({o.name: o for o in outcomes}.values())
        columns = {
            "tenant": ("text", [o.name for o in latest]),
            "schema_name": ("text", [o.schema for o in latest]),
            "from_revision": ("text", [o.from_revision for o in latest]),
            "to_revision": ("text", [o.to_revision for o in latest]),
            "status": ("text", [o.status.value for o in latest]),
            "attempts": ("integer", [o.attempts for o in latest]),
            "duration_s": ("double precision", [o.duration_s for o in latest]),
            "error": ("text", [o.error for o in latest]),
            "backup_path": ("text", [o.backup for o in latest]),
            "replayed": ("boolean", [o.replayed for o in latest]),
            "target_revision": (
                "text",
                [targets[o.name].to_ledger() if o.name in targets else None for o in latest],
            ),
            "database": ("text", [None if o.database == CONTROL else o.database for o in latest]),
            "wave": ("smallint", [waves.get(o.name) for o in latest]),
        }
        arrays = ", ".join(f"CAST(:{name} AS {kind}[])" for name, (kind, _) in columns.items())
        self.conn.execute(
            sa.text(
                f"INSERT INTO {self.run_tenants} (run_id, {', '.join(columns)})"
                f" SELECT :run_id, * FROM unnest({arrays})"
                " ON CONFLICT (run_id, tenant) DO UPDATE"
                " SET from_revision = EXCLUDED.from_revision, to_revision = EXCLUDED.to_revision,"
                " status = EXCLUDED.status, attempts = EXCLUDED.attempts,"
                " duration_s = EXCLUDED.duration_s, error = EXCLUDED.error,"
                " backup_path = EXCLUDED.backup_path, replayed = EXCLUDED.replayed,"
                " database = EXCLUDED.database,"
                f" target_revision = coalesce(EXCLUDED.target_revision, {RUN_TENANTS}"
                f".target_revision), wave = coalesce(EXCLUDED.wave, {RUN_TENANTS}.wave),"
                " recorded_at = now()"
            ),
            {"run_id": run_id, **{name: values for name, (_, values) in columns.items()}},
        )

    @_committed
    def finish_run(
        self,
        run_id: int,
        outcome: RunOutcome,
        totals: dict[str, Any],
        *,
        reason: str | None = None,
    ) -> None:
        """``reason``: why the run stopped before its end (kept if written earlier)."""
        self.conn.execute(
            sa.text(
                f"UPDATE {self.runs} SET finished_at = now(), outcome = :outcome,"
                " totals = CAST(:totals AS jsonb), reason = coalesce(:reason, reason)"
                " WHERE id = :id"
            ),
            {
                "id": run_id,
                "outcome": outcome.value,
                "totals": json.dumps(totals),
                "reason": reason,
            },
        )

    @_committed
    def reopen(self, run_id: int) -> None:
        """A rollout resumed: running again, by this process (``runs show`` says who)."""
        self.conn.execute(
            sa.text(
                f"UPDATE {self.runs} SET outcome = 'running', finished_at = NULL, reason = NULL,"
                " host = :host, pid = :pid WHERE id = :id"
            ),
            {"id": run_id, "host": socket.gethostname(), "pid": os.getpid()},
        )

    @_committed
    def cancel(self, run_id: int, reason: str) -> None:
        self.conn.execute(
            sa.text(
                f"UPDATE {self.runs} SET outcome = 'cancelled', finished_at = now(),"
                " reason = :reason WHERE id = :id"
            ),
            {"id": run_id, "reason": reason},
        )

    @_read
    def rollout(self, run_id: int) -> RolloutState | None:
        """The rollout ``run_id`` with every tenant's wave, or None (no such run, or a run
        that is not a rollout)."""
        return self._rollout(run_id)

    def _rollout(self, run_id: int) -> RolloutState | None:
        if not self._has_tables():
            return None
        row = self.conn.execute(
            sa.text(f"SELECT * FROM {self.runs} WHERE id = :id"), {"id": run_id}
        ).first()
        if row is None or not (row.options or {}).get("waves"):
            return None
        tenants = self.conn.execute(
            sa.text(
                "SELECT tenant, schema_name, status, wave, target_revision, from_revision,"
                f" to_revision, database FROM {self.run_tenants} WHERE run_id = :id"
                " ORDER BY wave, tenant"
            ),
            {"id": run_id},
        ).all()
        return RolloutState(
            run_id=row.id,
            command=row.command,
            target=row.target,
            outcome=_run_record(row, live_runs(self.conn)).outcome,
            options=dict(row.options),
            rows=[
                RolloutRow(
                    t.tenant,
                    t.schema_name,
                    t.database or CONTROL,
                    TenantStatus(t.status),
                    t.wave if t.wave is not None else 0,
                    Target.from_ledger(t.target_revision) if t.target_revision else None,
                    t.from_revision,
                    t.to_revision,
                )
                for t in tenants
            ],
        )

    @_read
    def open_rollout(self, command: str) -> RolloutState | None:
        """The latest rollout of ``command`` that is paused, stopped, failed, interrupted or
        abandoned with tenants left to do: another all-tenants run must wait for it."""
        if not self._has_tables():
            return None
        run_id = self.conn.execute(
            sa.text(
                f"SELECT id FROM {self.runs} r WHERE command = :command AND options ? 'waves'"
                " AND outcome <> 'cancelled' AND outcome <> 'succeeded'"
                f" AND EXISTS (SELECT 1 FROM {self.run_tenants} t WHERE t.run_id = r.id"
                "  AND t.status NOT IN ('ok', 'skipped'))"
                " ORDER BY id DESC LIMIT 1"
            ),
            {"command": command},
        ).scalar()
        if run_id is None:
            return None
        state = self._rollout(int(run_id))
        return state if state is not None and state.outcome in OPEN_ROLLOUT else None

    @_committed
    def recorded_totals(self, run_id: int) -> dict[str, int]:
        """The run's tenants by status as the ledger has them (a resumed rollout's totals:
        every invocation's tenants, not only the last one's)."""
        rows = self.conn.execute(
            sa.text(
                f"SELECT status, count(*) AS n FROM {self.run_tenants} WHERE run_id = :id"
                " GROUP BY status"
            ),
            {"id": run_id},
        ).all()
        found = {r.status: int(r.n) for r in rows}
        totals = {status.value: found.get(status.value, 0) for status in TenantStatus}
        totals["total"] = sum(found.values())
        return totals

    @_committed
    def note_reason(self, run_id: int, reason: str) -> None:
        """Why a run is stopping, written as soon as it is known (the run is still running)."""
        self.conn.execute(
            sa.text(f"UPDATE {self.runs} SET reason = :reason WHERE id = :id"),
            {"id": run_id, "reason": reason},
        )

    @_read
    def last_outcomes(self, tenants: Iterable[str] | None = None) -> dict[str, LastOutcome]:
        """Each tenant's most recent recorded outcome (of every tenant in the ledger: None).

        Named tenants are read in chunks, each tenant's newest row found through the
        (tenant, run_id DESC) index: no statement grows with the fleet or with the ledger's
        history. (One DISTINCT ON over every row of 10,000 tenants with 50 runs each took
        0.2 s, and more with every run; a chunk of 500 takes a few milliseconds.)
        """
        from tenantmig.schema.status import LastOutcome  # status's only use here

        if not self._has_tables():
            return {}
        if tenants is None:
            rows = self.conn.execute(
                sa.text(
                    f"SELECT DISTINCT ON (tenant) tenant, run_id, status, error, recorded_at "
                    f"FROM {self.run_tenants} ORDER BY tenant, run_id DESC"
                )
            ).all()
        else:
            names = list(tenants)
            rows = []
            for start in range(0, len(names), _NAMES_CHUNK):
                rows += self.conn.execute(
                    sa.text(
                        "SELECT last.* FROM unnest(CAST(:names AS text[])) AS named(tenant)"
                        " CROSS JOIN LATERAL (SELECT tenant, run_id, status, error, recorded_at"
                        f" FROM {self.run_tenants} t WHERE t.tenant = named.tenant"
                        " ORDER BY t.run_id DESC LIMIT 1) AS last"
                    ),
                    {"names": names[start : start + _NAMES_CHUNK]},
                ).all()
        return {
            r.tenant: LastOutcome(
                r.tenant,
                r.run_id,
                r.status,
                r.error,
                r.recorded_at,
                failed=not TenantStatus(r.status).is_done,
            )
            for r in rows
        }

    @_read
    def unfinished_in_last_run(self, scopes: Sequence[RunScope], command: str) -> Unfinished | None:
        """What the latest run of this kind left to do, for ``--only-failed``.

        A finished run left its non-successful tenants. A run whose coordinator was killed
        (abandoned: still "running", nobody holds its live-run lock) recorded only the tenants
        it got to, so it left everything but the ones it recorded as done.
        """
        if not self._has_tables():
            return None
        rows = self.conn.execute(
            sa.text(
                f"SELECT id, outcome, target FROM {self.runs} WHERE command = :command"
                " AND scope = ANY(:scopes) ORDER BY id DESC LIMIT 50"
            ),
            {"command": command, "scopes": [scope.value for scope in scopes]},
        ).all()
        alive = live_runs(self.conn)
        running = RunOutcome.RUNNING.value
        last = next((r for r in rows if not (r.outcome == running and r.id in alive)), None)
        if last is None:
            return None
        recorded = self.conn.execute(
            sa.text(
                f"SELECT tenant, status, target_revision FROM {self.run_tenants}"
                " WHERE run_id = :id ORDER BY tenant"
            ),
            {"id": last.id},
        ).all()
        done = frozenset(r.tenant for r in recorded if TenantStatus(r.status).is_done)
        return Unfinished(
            run_id=last.id,
            command=command,
            target=last.target,
            abandoned=last.outcome == running,
            done=done,
            unfinished=frozenset(r.tenant for r in recorded) - done,
            targets={
                r.tenant: Target.from_ledger(r.target_revision)
                for r in recorded
                if r.target_revision is not None
            },
        )

    @_read
    def runs_list(self, limit: int = 20) -> list[RunRecord]:
        if not self._has_tables():
            return []
        rows = self.conn.execute(
            sa.text(f"SELECT * FROM {self.runs} ORDER BY id DESC LIMIT :limit"),
            {"limit": limit},
        ).all()
        alive = live_runs(self.conn)
        return [_run_record(r, alive) for r in rows]

    @_read
    def run(self, run_id: int) -> tuple[RunRecord, list[TenantOutcome]] | None:
        if not self._has_tables():
            return None
        row = self.conn.execute(
            sa.text(f"SELECT * FROM {self.runs} WHERE id = :id"),
            {"id": run_id},
        ).first()
        if row is None:
            return None
        tenants = self.conn.execute(
            sa.text(f"SELECT * FROM {self.run_tenants} WHERE run_id = :id ORDER BY tenant"),
            {"id": run_id},
        ).all()
        outcomes = [
            TenantOutcome(
                name=t.tenant,
                schema=t.schema_name,
                status=TenantStatus(t.status),
                from_revision=t.from_revision,
                to_revision=t.to_revision,
                attempts=t.attempts,
                duration_s=t.duration_s or 0.0,
                error=t.error,
                # A ledger from before these columns (read before any run added them).
                backup=getattr(t, "backup_path", None),
                replayed=bool(getattr(t, "replayed", False)),
                database=getattr(t, "database", None) or CONTROL,
            )
            for t in tenants
        ]
        record = _run_record(row, live_runs(self.conn))
        specs = (row.options or {}).get("waves")
        if specs:
            record = replace(record, waves=_waves(specs, tenants))
        return record, outcomes

    @_committed
    def last_selected_by(self, command: str, tenants: Sequence[str]) -> dict[str, Selected]:
        """The latest run of ``command`` that selected each of ``tenants``, whether it finished
        or not (a run records every tenant it selected before it changes anything)."""
        if not tenants or not self._has_tables():
            return {}
        rows = self.conn.execute(
            sa.text(
                # to_jsonb: a ledger from before the database column reads as NULL (control).
                "SELECT DISTINCT ON (t.tenant) t.tenant, t.run_id, t.schema_name,"
                " to_jsonb(t) ->> 'database' AS database"
                f" FROM {self.run_tenants} t JOIN {self.runs} r ON r.id = t.run_id"
                " WHERE r.command = :command AND t.tenant = ANY(:names)"
                " ORDER BY t.tenant, t.run_id DESC"
            ),
            {"command": command, "names": list(tenants)},
        ).all()
        return {
            r.tenant: Selected(r.run_id, r.tenant, r.schema_name, r.database or CONTROL)
            for r in rows
        }


def _waves(specs: Sequence[str], rows: Sequence[Any]) -> list[WaveResult]:
    """Each wave of a rollout with its tenants' statuses: finished when every one of its
    tenants is done, unfinished when some started, else not started (the run's reason says
    why a rollout stopped or paused)."""
    waves = [WaveResult(i, spec, 0) for i, spec in enumerate(specs)]
    for row in rows:
        index = getattr(row, "wave", None)
        if index is None or not 0 <= index < len(waves):
            continue
        wave = waves[index]
        wave.tenants += 1
        wave.counts[row.status] = wave.counts.get(row.status, 0) + 1
    for wave in waves:
        done = sum(n for status, n in wave.counts.items() if TenantStatus(status).is_done)
        started = sum(n for status, n in wave.counts.items() if status != "not_run")
        if wave.tenants and done == wave.tenants:
            wave.state = "finished"
        elif started:
            wave.state = "unfinished"
    return waves


def _run_record(row: Any, alive: set[int]) -> RunRecord:
    outcome = row.outcome
    if outcome == RunOutcome.RUNNING.value and row.id not in alive:
        outcome = RunOutcome.ABANDONED.value  # its coordinator's connection is gone: killed
    return RunRecord(
        id=row.id,
        command=row.command,
        scope=row.scope,
        target=row.target,
        host=row.host,
        pid=row.pid,
        db_user=row.db_user,
        started_at=row.started_at,
        finished_at=row.finished_at,
        outcome=outcome,
        totals=dict(row.totals or {}),
        reason=getattr(row, "reason", None),  # a ledger from before the column
    )


def _added_columns(runs: str, run_tenants: str) -> list[tuple[str, dict[str, str]]]:
    """(table, its columns added after the first release) for both ledger tables."""
    return [(runs, _ADDED_RUN_COLUMNS), (run_tenants, _ADDED_COLUMNS)]


def _add_column_sql(table: str, column: str, definition: str) -> str:
    return f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {quote_ident(column)} {definition}"
