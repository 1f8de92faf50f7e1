"""A statement whose last line is a -- comment, then another."""

import sqlalchemy as sa
from alembic import op

revision = "c07_trailing_line_comment"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("tier", sa.Text(), nullable=True))
    op.execute("UPDATE users SET tier = 'basic' -- backfill tier")
    op.execute("CREATE TABLE tier_log (n integer) -- the log")
    op.execute("INSERT INTO tier_log VALUES (1)")


def downgrade() -> None:
    op.drop_table("tier_log")
    op.drop_column("users", "tier")
