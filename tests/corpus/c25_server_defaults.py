"""Columns added with server_default expressions."""

import sqlalchemy as sa
from alembic import op

revision = "c25_server_defaults"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "users",
        sa.Column("locale", sa.Text(), nullable=False, server_default=sa.text("lower('EN')")),
    )
    op.add_column(
        "inventory_items",
        sa.Column("pack", sa.Integer(), nullable=False, server_default=sa.text("(2 * 6)")),
    )


def downgrade() -> None:
    op.drop_column("inventory_items", "pack")
    op.drop_column("users", "locale")
