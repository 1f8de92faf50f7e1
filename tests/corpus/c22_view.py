"""A view over tenant tables."""

from alembic import op

revision = "c22_view"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE VIEW active_users AS SELECT id, email, is_active FROM users WHERE is_active "
        "WITH CASCADED CHECK OPTION"
    )


def downgrade() -> None:
    op.execute("DROP VIEW active_users")
