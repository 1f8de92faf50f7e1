"""Triage: settle from one bulk version read what needs no worker; the rest become jobs, each
with the revision this run means to take it to.

Pure logic on what the coordinator read, no database: tested without a server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tenantmig.chains.scripts import ChainScripts, Direction
from tenantmig.errors import UnknownRevision, some_names
from tenantmig.run.results import Target, TenantJob, TenantOutcome, TenantStatus
from tenantmig.schema.registry import Tenant
from tenantmig.schema.versions import SchemaVersion


@dataclass(frozen=True)
class Triage:
    settled: list[TenantOutcome]  # missing schemas and tenants already at their target
    jobs: list[TenantJob]  # everything a worker must look at under the tenant's lock

    @property
    def targets(self) -> dict[str, Target]:
        return {job.name: job.target for job in self.jobs if job.target is not None}


def triage(
    tenants: Sequence[Tenant],
    versions: Mapping[str, SchemaVersion],
    scripts: ChainScripts,
    direction: Direction,
    target: str,
    *,
    recorded: Mapping[str, Target] | None = None,
) -> Triage:
    """Resolve each tenant's target once (``recorded`` ones, from the run being finished, win)
    and settle missing schemas and tenants already there, so a run with nothing to do costs a
    few queries however many tenants there are.

    A relative ``target`` (-1, +2) is resolved from each tenant's revision in the bulk read;
    one that leads past head or below base for any tenant is refused (UnknownRevision) before
    anything changes. Tenants whose revision these scripts do not know, or that have several,
    go to a worker unresolved: it refuses them under the tenant's lock.
    """
    settled: list[TenantOutcome] = []
    jobs: list[TenantJob] = []
    out_of_range: list[str] = []
    for tenant in tenants:
        version = versions.get(tenant.schema)
        if version is None or not version.schema_exists:
            settled.append(
                TenantOutcome(
                    tenant.name,
                    tenant.schema,
                    TenantStatus.MISSING,
                    error=f"schema {tenant.schema!r} does not exist",
                    database=tenant.database,
                )
            )
            continue
        current = version.revision
        known = not version.diverged and scripts.knows(current)
        resolved: Target | None = (recorded or {}).get(tenant.name)
        if resolved is None and known:
            try:
                resolved = Target(scripts.resolve_target(target, current))
            except UnknownRevision:
                out_of_range.append(f"{tenant.name} (at {current or 'base'})")
                continue
        if (
            resolved is not None
            and known
            and scripts.already_there(direction, current, resolved.revision)
        ):
            settled.append(
                TenantOutcome(
                    tenant.name,
                    tenant.schema,
                    TenantStatus.SKIPPED,
                    current,
                    current,
                    database=tenant.database,
                )
            )
            continue
        jobs.append(
            TenantJob(
                tenant.name,
                tenant.schema,
                current,
                version.has_version_table,
                resolved,
                tenant.database,
            )
        )
    if out_of_range:
        raise UnknownRevision(
            f"{target} leads past the ends of the {scripts.chain} chain "
            f"({len(scripts.order)} revisions) for {len(out_of_range)} tenant(s): "
            f"{some_names(out_of_range)}; nothing was changed"
        )
    return Triage(settled, jobs)
