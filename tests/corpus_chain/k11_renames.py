"""Plain DDL: a table, a column and an index renamed."""

from alembic import op

revision = "k11_renames"
down_revision = "k10_invoice_columns"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.rename_table("sq_notes", "sq_memos")
    op.alter_column("users", "display_name", new_column_name="public_name")
    op.execute("ALTER INDEX ix_users_email_domain RENAME TO ix_users_domain")


def downgrade() -> None:
    op.execute("ALTER INDEX ix_users_domain RENAME TO ix_users_email_domain")
    op.alter_column("users", "public_name", new_column_name="display_name")
    op.rename_table("sq_memos", "sq_notes")
