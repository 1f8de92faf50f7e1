"""A plpgsql function whose $$ body holds semicolons and comments."""

from alembic import op

revision = "c09_function_body"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION order_total(o uuid) RETURNS numeric LANGUAGE plpgsql AS $$
        DECLARE t numeric; -- running total; with a comment
        BEGIN
            SELECT coalesce(sum(quantity * unit_price), 0) INTO t
            FROM order_items WHERE order_id = o;
            RETURN t; /* done; */
        END;
        $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION order_total(uuid)")
