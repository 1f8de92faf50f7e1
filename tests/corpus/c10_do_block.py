"""A DO block that decides on the server, with semicolons inside."""

from alembic import op

revision = "c10_do_block"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        DO $body$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM users WHERE role = 'owner') THEN
                CREATE TABLE ownerless_marker (since date); -- ; inside
            END IF;
        END
        $body$;
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS ownerless_marker")
