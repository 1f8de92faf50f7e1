"""The schema name as part of a longer identifier."""

from alembic import op

revision = "c30_schema_name_in_index_name"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None

corpus_replayed = False


def upgrade() -> None:
    schema = op.get_context().version_table_schema
    op.create_index(f"ix_{schema}_users_role", "users", ["role"])


def downgrade() -> None:
    pass
