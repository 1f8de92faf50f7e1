"""Check, deferrable unique and foreign-key constraints."""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "c21_constraints"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "memberships",
        sa.Column("user_id", postgresql.UUID(), nullable=False),
        sa.Column("seats", sa.Integer(), nullable=False),
        sa.CheckConstraint("seats BETWEEN 1 AND 500", name="ck_seats"),
        sa.UniqueConstraint("user_id", name="uq_membership_user", deferrable=True),
    )
    op.create_foreign_key(
        "fk_membership_user", "memberships", "users", ["user_id"], ["id"], ondelete="CASCADE"
    )


def downgrade() -> None:
    op.drop_table("memberships")
