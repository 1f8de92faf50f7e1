"""Objects tenantmig itself owns in the shared schema: the run ledger's tables and index.

No migration makes them, so drift leaves them out of the shared schema's comparison.
"""

RUNS = "tenantmig_runs"
RUN_TENANTS = "tenantmig_run_tenants"
RUN_TENANTS_INDEX = "tenantmig_run_tenants_tenant_idx"
OWNED = (RUNS, RUN_TENANTS, RUN_TENANTS_INDEX)
