"""Triage: settle from one bulk version read what needs no worker; the rest become jobs.

Pure logic on what the coordinator read, no database: tested without a server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tenantmig.chains.scripts import ChainScripts, Direction
from tenantmig.run.results import TenantJob, TenantOutcome, TenantStatus
from tenantmig.schema.registry import Tenant
from tenantmig.schema.versions import SchemaVersion


@dataclass(frozen=True)
class Triage:
    settled: list[TenantOutcome]  # missing schemas and tenants already at the target
    jobs: list[TenantJob]  # everything a worker must look at under the tenant's lock


def triage(
    tenants: Sequence[Tenant],
    versions: Mapping[str, SchemaVersion],
    scripts: ChainScripts,
    direction: Direction,
    target: str | None,
    *,
    relative: bool,
) -> Triage:
    """Missing schemas and tenants already at an absolute ``target`` never reach a worker, so a
    run with nothing to do costs a few queries however many tenants there are. Anything unusual
    (unknown or diverged revisions, relative targets) goes to a worker, which decides under the
    tenant's lock with the same rule (``ChainScripts.already_there``).
    """
    settled: list[TenantOutcome] = []
    jobs: list[TenantJob] = []
    for tenant in tenants:
        version = versions.get(tenant.schema)
        if version is None or not version.schema_exists:
            settled.append(
                TenantOutcome(
                    tenant.name,
                    tenant.schema,
                    TenantStatus.MISSING,
                    error=f"schema {tenant.schema!r} does not exist",
                )
            )
            continue
        current = version.revision
        if (
            not relative
            and not version.diverged
            and scripts.knows(current)
            and scripts.already_there(direction, current, target)
        ):
            settled.append(
                TenantOutcome(tenant.name, tenant.schema, TenantStatus.SKIPPED, current, current)
            )
            continue
        jobs.append(TenantJob(tenant.name, tenant.schema, current, version.has_version_table))
    return Triage(settled, jobs)
