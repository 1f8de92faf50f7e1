"""Early in history: an index built concurrently (tenantmig.ops, an autocommit block)."""

from tenantmig import ops

revision = "k01_orders_index_concurrently"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ops.create_index_concurrently("ix_orders_user_status", "orders", ["user_id", "status"])


def downgrade() -> None:
    ops.drop_index_concurrently("ix_orders_user_status")
