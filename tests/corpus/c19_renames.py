"""Renames of a table, a column and an index."""

import sqlalchemy as sa
from alembic import op

revision = "c19_renames"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("draft_notes", sa.Column("body", sa.Text()))
    op.create_index("ix_draft_notes_body", "draft_notes", ["body"])
    op.rename_table("draft_notes", "memos")
    op.alter_column("memos", "body", new_column_name="text")
    op.execute("ALTER INDEX ix_draft_notes_body RENAME TO ix_memos_text")


def downgrade() -> None:
    op.drop_table("memos")
