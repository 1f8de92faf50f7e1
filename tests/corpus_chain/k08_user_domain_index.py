"""Plain DDL between the two data migrations."""

import sqlalchemy as sa
from alembic import op

revision = "k08_user_domain_index"
down_revision = "k07_fill_user_columns"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_users_email_domain", "users", ["email_domain"])
    op.add_column("sq_invoices", sa.Column("number", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("sq_invoices", "number")
    op.drop_index("ix_users_email_domain", table_name="users")
