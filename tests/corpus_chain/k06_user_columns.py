"""Plain DDL: columns the data migration after it fills."""

import sqlalchemy as sa
from alembic import op

revision = "k06_user_columns"
down_revision = "k05_trigger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("email_domain", sa.Text(), nullable=True))
    op.add_column("users", sa.Column("display_name", sa.Text(), nullable=True))
    op.add_column("inventory_items", sa.Column("slug", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("inventory_items", "slug")
    op.drop_column("users", "display_name")
    op.drop_column("users", "email_domain")
