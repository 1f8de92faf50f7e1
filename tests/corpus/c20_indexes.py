"""Partial, unique (on an expression) and GIN indexes."""

import sqlalchemy as sa
from alembic import op

revision = "c20_indexes"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_users_active_email", "users", ["email"], postgresql_where=sa.text("is_active")
    )
    op.create_index("ux_users_lower_email", "users", [sa.text("lower(email)")], unique=True)
    op.create_index("ix_audit_changes", "audit_logs", ["changes"], postgresql_using="gin")


def downgrade() -> None:
    op.drop_index("ix_audit_changes", table_name="audit_logs")
    op.drop_index("ux_users_lower_email", table_name="users")
    op.drop_index("ix_users_active_email", table_name="users")
