"""Helpers for revisions that must not hold one long transaction (``from tenantmig import ops``).

The public import path revision files use; the helpers live in ``tenantmig.chains.ops``.
"""

from tenantmig.chains.ops import (
    create_index_concurrently,
    drop_index_concurrently,
    update_in_batches,
)

__all__ = ["create_index_concurrently", "drop_index_concurrently", "update_in_batches"]
