"""A data migration whose write depends on what it read."""

import sqlalchemy as sa
from alembic import op

revision = "c04_read_drives_write"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None

corpus_replayed = False


def upgrade() -> None:
    op.create_table("user_stats", sa.Column("users", sa.Integer(), nullable=False))
    count = op.get_bind().execute(sa.text("SELECT count(*) FROM users")).scalar()
    op.execute(sa.text("INSERT INTO user_stats (users) VALUES (:n)").bindparams(n=count))


def downgrade() -> None:
    op.drop_table("user_stats")
