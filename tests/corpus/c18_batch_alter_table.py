"""batch_alter_table (plain ALTERs on PostgreSQL)."""

import sqlalchemy as sa
from alembic import op

revision = "c18_batch_alter_table"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inventory_items") as batch:
        batch.add_column(sa.Column("weight_kg", sa.Numeric(8, 3), nullable=True))
        batch.alter_column("description", existing_type=sa.Text(), nullable=True)
        batch.create_check_constraint("ck_weight_positive", "weight_kg > 0")


def downgrade() -> None:
    with op.batch_alter_table("inventory_items") as batch:
        batch.drop_constraint("ck_weight_positive", type_="check")
        batch.drop_column("weight_kg")
