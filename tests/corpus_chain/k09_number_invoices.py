"""Data migration: number the invoices and give items a slug, computed in Python."""

import re

import sqlalchemy as sa
from alembic import op

revision = "k09_number_invoices"
down_revision = "k08_user_domain_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    invoices = bind.execute(sa.text("SELECT id FROM sq_invoices ORDER BY id")).scalars().all()
    for n, invoice in enumerate(invoices, start=1):
        bind.execute(
            sa.text("UPDATE sq_invoices SET number = :number WHERE id = :id"),
            {"number": f"INV-{n:05d}", "id": invoice},
        )
    items = bind.execute(sa.text("SELECT id, name FROM inventory_items ORDER BY id")).all()
    for item in items:
        slug = re.sub(r"[^A-Z0-9]+", "-", item.name.upper()).strip("-")
        bind.execute(
            sa.text("UPDATE inventory_items SET slug = :slug WHERE id = :id"),
            {"slug": slug, "id": item.id},
        )


def downgrade() -> None:
    op.execute("UPDATE inventory_items SET slug = NULL")
    op.execute("UPDATE sq_invoices SET number = NULL")
