"""Objects tenantmig itself owns in the shared schema: the run ledger, the placements, the
moves under way and the tenants' labels.

No migration makes them, so drift leaves them out of the shared schema's comparison.
"""

RUNS = "tenantmig_runs"
RUN_TENANTS = "tenantmig_run_tenants"
RUN_TENANTS_INDEX = "tenantmig_run_tenants_tenant_idx"
PLACEMENTS = "tenantmig_placements"  # the database of each tenant outside the control one
PLACEMENTS_KEY = "tenantmig_placements_pkey"
MOVES = "tenantmig_moves"  # moves under way (schema/moves.py)
MOVES_KEY = "tenantmig_moves_pkey"
LABELS = "tenantmig_labels"  # tenant labels (schema/labels.py)
LABELS_KEY = "tenantmig_labels_pkey"
OWNED = (
    RUNS,
    RUN_TENANTS,
    RUN_TENANTS_INDEX,
    PLACEMENTS,
    PLACEMENTS_KEY,
    MOVES,
    MOVES_KEY,
    LABELS,
    LABELS_KEY,
)
