"""A trigger function and a trigger."""

from alembic import op

revision = "c23_trigger"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $fn$
        BEGIN NEW.updated_at := now(); RETURN NEW; END;
        $fn$
        """
    )
    op.execute(
        "CREATE TRIGGER trg_users_touch BEFORE UPDATE ON users "
        "FOR EACH ROW EXECUTE FUNCTION touch_updated_at()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER trg_users_touch ON users")
    op.execute("DROP FUNCTION touch_updated_at()")
