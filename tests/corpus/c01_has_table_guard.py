"""An inspector guard: create a table only where it is missing."""

import sqlalchemy as sa
from alembic import op

revision = "c01_has_table_guard"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None

corpus_replayed = False
corpus_setup = {"head_b": "CREATE TABLE legacy (id integer PRIMARY KEY, note text)"}


def upgrade() -> None:
    if not sa.inspect(op.get_bind()).has_table("legacy"):
        op.create_table("legacy", sa.Column("id", sa.Integer(), primary_key=True))


def downgrade() -> None:
    op.drop_table("legacy")
