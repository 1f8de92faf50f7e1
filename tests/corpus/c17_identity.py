"""An identity column with options, filled by an insert."""

import sqlalchemy as sa
from alembic import op

revision = "c17_identity"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True, start=10, increment=10)),
        sa.Column("kind", sa.Text(), nullable=False),
    )
    op.execute("INSERT INTO events (kind) VALUES ('created'), ('migrated')")


def downgrade() -> None:
    op.drop_table("events")
