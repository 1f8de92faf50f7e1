"""A schema-qualified name written into SQL by hand (an f-string, unquoted)."""

from alembic import op

revision = "c33_schema_qualified_by_hand"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None

# Alembic would send the name exactly as written (unquoted), which fails for a tenant whose
# name is a keyword; replay quotes names where needed, so it must not be used here.
corpus_replayed = False
# It fails in the second scratch schema, whose name needs quoting: the revision runs through
# Alembic, and the revisions before it in a step are replayed.


def upgrade() -> None:
    schema = op.get_context().version_table_schema
    op.execute(f"CREATE TABLE {schema}.handmade (id integer)")


def downgrade() -> None:
    op.execute("DROP TABLE handmade")
