"""Work on many tenants that is not a migration (dropping them), in bounded batches.

One transaction for thousands of tenants does not fit the server's lock table: DROP SCHEMA
CASCADE takes a lock on every object of the schema, and the lock table holds
max_locks_per_transaction x max_connections entries (6,400 by default), shared by all sessions
("out of shared memory"). Batches keep each transaction small; each batch is atomic, and a stop
part way says what was done.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from sqlalchemy.exc import DBAPIError

from tenantmig.errors import BulkStopped, ExitCode, some_names
from tenantmig.schema.registry import Tenant, drop_schema, drop_tenant, forget_tenant
from tenantmig.server.config import TenantSource
from tenantmig.server.database import Database
from tenantmig.server.directory import CONTROL
from tenantmig.server.errorcodes import first_line
from tenantmig.server.session import Timeouts

# Tenants per transaction: a tenant schema of a few dozen objects takes as many locks.
BATCH = 25

BatchCallback = Callable[[int, int], None]  # (tenants done, tenants in all)


def drop_in_batches(
    database: Database,
    source: TenantSource,
    tenants: Sequence[Tenant],
    timeouts: Timeouts,
    on_batch: BatchCallback | None = None,
    members: Mapping[str, Database] | None = None,
) -> None:
    """Drop ``tenants`` (schemas and registry rows), BATCH per transaction.

    Each tenant's advisory lock is taken first (a migration of it waits, or makes this wait at
    most lock_timeout), so a tenant is never dropped under a runner migrating it. A tenant of
    another database (``members``, by directory name) has its schema dropped there first, then
    its registry row here: a failure between the two leaves a registered tenant whose schema
    is gone (status says missing_schema), and running the drop again finishes it.
    """
    done = 0
    try:
        for start in range(0, len(tenants), BATCH):
            batch = tenants[start : start + BATCH]
            for name in dict.fromkeys(t.database for t in batch):
                if name == CONTROL:
                    continue
                member = (members or {})[name]
                with member.engine.begin() as conn:
                    for tenant in batch:
                        if tenant.database == name:
                            member.flavour.prepare_migration(
                                conn, tenant.schema, timeouts, verify=False
                            )
                            drop_schema(conn, tenant)
            with database.engine.begin() as conn:
                for tenant in batch:
                    if tenant.database == CONTROL:
                        database.flavour.prepare_migration(
                            conn, tenant.schema, timeouts, verify=False
                        )
                        drop_tenant(conn, source, tenant)
                    else:
                        forget_tenant(conn, source, tenant)
            done += len(batch)
            if on_batch is not None:
                on_batch(done, len(tenants))
    except DBAPIError as exc:
        raise _stopped(
            tenants,
            done,
            f"a batch failed and was rolled back: {first_line(exc)}",
            ExitCode.TENANTS_FAILED,
        ) from exc
    except KeyboardInterrupt as exc:
        raise _stopped(tenants, done, "interrupted", ExitCode.INTERRUPTED) from exc


def _stopped(tenants: Sequence[Tenant], done: int, why: str, code: ExitCode) -> BulkStopped:
    dropped = [t.name for t in tenants[:done]]
    left = [t.name for t in tenants[done:]]
    return BulkStopped(
        f"{why}; dropped {done} of {len(tenants)} tenant(s)"
        + (f" ({some_names(dropped)})" if dropped else "")
        + f"; still registered and untouched: {some_names(left)}",
        code,
    )
