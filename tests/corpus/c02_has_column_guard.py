"""An inspector guard on columns: add a column only where it is missing."""

import sqlalchemy as sa
from alembic import op

revision = "c02_has_column_guard"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None

corpus_replayed = False
corpus_setup = {"head_b": "ALTER TABLE users ADD COLUMN nickname text"}


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("users")}
    if "nickname" not in columns:
        op.add_column("users", sa.Column("nickname", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("users", "nickname")
