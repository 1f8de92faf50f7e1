"""op.bulk_insert of reference rows."""

import sqlalchemy as sa
from alembic import op

revision = "c05_bulk_insert"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    plans = op.create_table(
        "plans",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("price", sa.Numeric(10, 2), nullable=False),
    )
    op.bulk_insert(
        plans,
        [
            {"id": 1, "name": "free", "price": 0},
            {"id": 2, "name": "pro; -- plus", "price": 9.99},
            {"id": 3, "name": "it's 100% more", "price": 19.5},
        ],
    )


def downgrade() -> None:
    op.drop_table("plans")
