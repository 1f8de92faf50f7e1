"""An inspector guard on indexes."""

import sqlalchemy as sa
from alembic import op

revision = "c03_get_indexes_guard"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None

corpus_replayed = False
corpus_setup = {"old": "CREATE INDEX ix_users_full_name ON users (full_name)"}


def upgrade() -> None:
    indexes = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("users")}
    if "ix_users_full_name" not in indexes:
        op.create_index("ix_users_full_name", "users", ["full_name"])


def downgrade() -> None:
    op.drop_index("ix_users_full_name", table_name="users")
