"""The tenant's own schema name inside a string literal."""

from alembic import op

revision = "c11_literal_with_schema_name"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None

corpus_replayed = False


def upgrade() -> None:
    schema = op.get_context().version_table_schema
    op.execute(f"COMMENT ON TABLE users IS 'the users of {schema}'")


def downgrade() -> None:
    op.execute("COMMENT ON TABLE users IS NULL")
