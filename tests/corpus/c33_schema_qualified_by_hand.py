"""A schema-qualified name written into SQL by hand (an f-string, unquoted)."""

from alembic import op

revision = "c33_schema_qualified_by_hand"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None

# Alembic sends the name exactly as written (unquoted), which fails for a tenant whose name is
# a keyword. It fails in the second scratch schema, whose name needs quoting, so it is replayed
# only in tenants whose name needs no quoting, as every tenant here is; a tenant named like a
# keyword runs it through Alembic (tests/test_replay_chain_corpus.py tests one).
corpus_replayed = True


def upgrade() -> None:
    schema = op.get_context().version_table_schema
    op.execute(f"CREATE TABLE {schema}.handmade (id integer)")


def downgrade() -> None:
    op.execute("DROP TABLE handmade")
