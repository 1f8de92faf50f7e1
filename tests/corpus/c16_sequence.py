"""A sequence and a column that draws from it."""

import sqlalchemy as sa
from alembic import op

revision = "c16_sequence"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sa.schema.CreateSequence(sa.Sequence("ticket_no", start=1000, increment=5)))
    op.create_table(
        "tickets",
        sa.Column("no", sa.BigInteger(), server_default=sa.text("nextval('ticket_no')")),
    )
    op.execute("INSERT INTO tickets DEFAULT VALUES")


def downgrade() -> None:
    op.drop_table("tickets")
    op.execute(sa.schema.DropSequence(sa.Sequence("ticket_no")))
