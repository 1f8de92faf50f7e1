"""A new table with many indexed columns: Alembic creates its indexes in set order."""

import sqlalchemy as sa
from alembic import op

revision = "c34_indexes_in_set_order"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None

# Alembic iterates Table.indexes, a set: two compilations of this revision list the sixteen
# CREATE INDEX statements in different orders. Their order cannot change the schema, so the
# step is replayed (the first compilation's order), and the result is Alembic's.
COLUMNS = [f"c{i:02d}" for i in range(16)]


def upgrade() -> None:
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("tenant_user", sa.Uuid(), sa.ForeignKey("users.id"), index=True),
        *[sa.Column(name, sa.Integer(), index=True, unique=name == "c00") for name in COLUMNS],
    )


def downgrade() -> None:
    op.drop_table("metrics")
