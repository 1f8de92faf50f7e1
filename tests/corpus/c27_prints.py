"""A data migration that prints its progress."""

import sqlalchemy as sa
from alembic import op

revision = "c27_prints"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    print("c27: creating the archive table")
    op.create_table("archive", sa.Column("id", sa.Integer()))
    print("c27: done")


def downgrade() -> None:
    op.drop_table("archive")
