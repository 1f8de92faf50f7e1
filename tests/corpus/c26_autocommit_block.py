"""CREATE INDEX CONCURRENTLY in an autocommit block."""

from tenantmig import ops

revision = "c26_autocommit_block"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None

corpus_replayed = False
corpus_plain_alembic = False  # plain Alembic runs the tenant in one transaction: cannot commit


def upgrade() -> None:
    ops.create_index_concurrently("ix_orders_status_c26", "orders", ["status"])


def downgrade() -> None:
    ops.drop_index_concurrently("ix_orders_status_c26")
