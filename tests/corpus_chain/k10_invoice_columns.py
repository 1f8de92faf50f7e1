"""Plain DDL: columns, a partial unique index, a CHECK constraint."""

import sqlalchemy as sa
from alembic import op

revision = "k10_invoice_columns"
down_revision = "k09_number_invoices"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "sq_invoices",
        sa.Column("paid", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("sq_invoices", sa.Column("due_on", sa.Date(), nullable=True))
    op.create_index(
        "uq_sq_invoices_number",
        "sq_invoices",
        ["number"],
        unique=True,
        postgresql_where=sa.text("number IS NOT NULL"),
    )
    op.create_index(
        "uq_inventory_items_slug",
        "inventory_items",
        ["slug"],
        unique=True,
        postgresql_where=sa.text("slug IS NOT NULL"),
    )
    op.create_check_constraint(
        "ck_sq_invoices_number", "sq_invoices", "number IS NULL OR number LIKE 'INV-%'"
    )


def downgrade() -> None:
    op.drop_constraint("ck_sq_invoices_number", "sq_invoices", type_="check")
    op.drop_index("uq_inventory_items_slug", table_name="inventory_items")
    op.drop_index("uq_sq_invoices_number", table_name="sq_invoices")
    op.drop_column("sq_invoices", "due_on")
    op.drop_column("sq_invoices", "paid")
