"""Percent signs in literals, comments and a LIKE pattern."""

import sqlalchemy as sa
from alembic import op

revision = "c12_percent_signs"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("promos", sa.Column("note", sa.Text()))
    op.execute("INSERT INTO promos VALUES ('50% off') -- 100% sure")
    op.execute("ALTER TABLE promos ADD CONSTRAINT ck_promo CHECK (note NOT LIKE '%free%')")


def downgrade() -> None:
    op.drop_table("promos")
