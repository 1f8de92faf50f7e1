"""Moves under way: ``<shared>.tenantmig_moves`` in the control database.

A move (``tenants move``) spans three databases' transactions: the copy committed in the
target, the source fenced, the directory switched. A move killed between any two of them leaves
state that only this row explains, so it is written (committed) before anything else and
deleted in the very transaction that switches the directory, or once the fenced source is gone.
While a row exists:

- ``status`` and ``drift`` show the tenant's move as unfinished, with the command that finishes
  it (re-running the same move);
- ``restore`` of the tenant is refused: it would restore into a copy about to be left behind;
- a new move of the tenant elsewhere is refused: the unfinished one is finished first.

Phases: ``copying`` (the source is live; a copy in the target, if any, is a leftover to
drop), ``fenced`` (the source schema was renamed to ``fence`` in the transaction that held its
locks: the copy in the target is the only live one), ``switched`` (the directory names the
target; only the fenced source is left to drop).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantmig.schema.owned import MOVES
from tenantmig.server.identifiers import qualified

MovePhase = Literal["copying", "fenced", "switched"]
FENCE_PREFIX = "tenantmig_moved_"


@dataclass(frozen=True)
class PendingMove:
    tenant: str
    schema: str
    source: str  # directory names
    target: str
    run_id: int
    phase: MovePhase

    @property
    def fence(self) -> str:
        """The source schema's name once fenced: tenantmig's own (schema globs never take a
        ``tenantmig_`` schema as a tenant), unique because run ids are."""
        return f"{FENCE_PREFIX}r{self.run_id}"

    def finish_command(self) -> str:
        return f"tenantmig tenants move {self.tenant} --to {self.target}"

    def describe(self) -> str:
        where = {
            "copying": f"its copy in database {self.target} is not live yet",
            "fenced": (
                f"its schema in database {self.source} is fenced (renamed {self.fence}) and "
                f"the copy in database {self.target} is not in the directory yet"
            ),
            "switched": (
                f"it lives in database {self.target}; its old copy in database "
                f"{self.source} ({self.fence}) is left to drop"
            ),
        }[self.phase]
        return (
            f"tenant {self.tenant}: move from database {self.source} to {self.target} "
            f"(run {self.run_id}) did not finish: {where}; finish it with "
            f"`{self.finish_command()}`"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "tenant": self.tenant,
            "schema": self.schema,
            "from": self.source,
            "to": self.target,
            "run_id": self.run_id,
            "phase": self.phase,
            "fence": self.fence,
            "finish": self.finish_command(),
        }


def moves_sql(shared_schema: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified(shared_schema, MOVES)} ("
        " tenant text PRIMARY KEY,"
        " schema_name text NOT NULL,"
        " source text NOT NULL,"
        " target text NOT NULL,"
        " run_id bigint NOT NULL,"
        " phase text NOT NULL,"
        " started_at timestamptz NOT NULL DEFAULT now())"
    )


def read_moves(
    conn: Connection, shared_schema: str, tenants: Iterable[str] | None = None
) -> dict[str, PendingMove]:
    """Unfinished moves by tenant (all of them, or of ``tenants``)."""
    table = qualified(shared_schema, MOVES)
    if not conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar():
        return {}
    where = "" if tenants is None else " WHERE tenant = ANY(:names)"
    rows = conn.execute(
        sa.text(
            f"SELECT tenant, schema_name, source, target, run_id, phase FROM {table}{where}"
            " ORDER BY tenant"
        ),
        {} if tenants is None else {"names": list(tenants)},
    ).all()
    return {
        r.tenant: PendingMove(r.tenant, r.schema_name, r.source, r.target, r.run_id, r.phase)
        for r in rows
    }


def begin_move(conn: Connection, shared_schema: str, move: PendingMove) -> None:
    """Record ``move`` (a re-run of an unfinished one takes it over with its own run id)."""
    conn.exec_driver_sql(moves_sql(shared_schema))
    conn.execute(
        sa.text(
            f"INSERT INTO {qualified(shared_schema, MOVES)}"
            " (tenant, schema_name, source, target, run_id, phase)"
            " VALUES (:tenant, :schema, :source, :target, :run_id, :phase)"
            " ON CONFLICT (tenant) DO UPDATE SET run_id = excluded.run_id,"
            " phase = excluded.phase, started_at = now()"
        ),
        {
            "tenant": move.tenant,
            "schema": move.schema,
            "source": move.source,
            "target": move.target,
            "run_id": move.run_id,
            "phase": move.phase,
        },
    )


def set_phase(conn: Connection, shared_schema: str, tenant: str, phase: MovePhase) -> None:
    conn.execute(
        sa.text(f"UPDATE {qualified(shared_schema, MOVES)} SET phase = :p WHERE tenant = :t"),
        {"p": phase, "t": tenant},
    )


def end_move(conn: Connection, shared_schema: str, tenant: str) -> None:
    conn.execute(
        sa.text(f"DELETE FROM {qualified(shared_schema, MOVES)} WHERE tenant = :t"), {"t": tenant}
    )
