"""Comments on a table and a column."""

import sqlalchemy as sa
from alembic import op

revision = "c24_comments"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table_comment("orders", "customer orders; one row each")
    op.alter_column("orders", "status", existing_type=sa.Text(), comment="pending, paid or shipped")


def downgrade() -> None:
    op.drop_table_comment("orders")
    op.alter_column("orders", "status", existing_type=sa.Text(), comment=None)
