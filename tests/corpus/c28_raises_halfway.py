"""A revision that fails after some DDL: every tenant rolls back."""

import sqlalchemy as sa
from alembic import op

revision = "c28_raises_halfway"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None

corpus_replayed = False
corpus_fails = True


def upgrade() -> None:
    op.create_table("half_done", sa.Column("id", sa.Integer()))
    op.add_column("users", sa.Column("half", sa.Text()))
    raise RuntimeError("c28: the migration fails half way")


def downgrade() -> None:
    pass
