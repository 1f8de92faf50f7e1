"""Enum types created with a table and on their own, and one dropped."""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "c15_enums"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None

# SQLAlchemy creates an enum type only after asking the catalog whether it exists
# (checkfirst): a read, so the step runs through Alembic. c32 is the replayable way.
corpus_replayed = False


def upgrade() -> None:
    op.create_table(
        "invoices",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("state", sa.Enum("draft", "sent", "paid", name="invoice_state"), nullable=False),
    )
    postgresql.ENUM("low", "high", name="priority").create(op.get_bind())
    temporary = postgresql.ENUM("a", "b", name="scratch_kind")
    temporary.create(op.get_bind())
    temporary.drop(op.get_bind())


def downgrade() -> None:
    op.drop_table("invoices")
    op.execute("DROP TYPE invoice_state")
    op.execute("DROP TYPE priority")
