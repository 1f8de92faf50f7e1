"""SQL built from the schema name transformed (upper case)."""

from alembic import op

revision = "c29_schema_name_transformed"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None

corpus_replayed = False


def upgrade() -> None:
    schema = op.get_context().version_table_schema
    op.execute(f"COMMENT ON COLUMN users.email IS 'login at {schema.upper()}'")


def downgrade() -> None:
    op.execute("COMMENT ON COLUMN users.email IS NULL")
