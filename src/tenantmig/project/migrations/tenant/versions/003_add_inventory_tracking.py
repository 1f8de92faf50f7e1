"""Inventory tracking: locations, SKU and barcode, reorder points, transaction history.

Revision ID: 003_add_inventory_tracking
Revises: 001_initial_schema
Create Date: 2025-01-10

(Revision 002 of the original single chain belongs to the shared chain, so the tenant chain goes
from 001 to 003; the ids are kept so existing notes and scripts still name the right revision.)
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "003_add_inventory_tracking"
down_revision: str | Sequence[str] | None = "001_initial_schema"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "locations",
        sa.Column(
            "id",
            postgresql.UUID(as_uuid=True),
            primary_key=True,
            server_default=sa.text("gen_random_uuid()"),
        ),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("address", sa.Text(), nullable=True),
        sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.UniqueConstraint("code", name="uq_locations_code"),
    )

    # Nullable columns without volatile defaults: adding them is a catalog-only change, so the
    # ACCESS EXCLUSIVE lock on inventory_items is held for milliseconds, not a table rewrite.
    op.add_column("inventory_items", sa.Column("sku", sa.Text(), nullable=True))
    op.add_column("inventory_items", sa.Column("barcode", sa.Text(), nullable=True))
    op.add_column("inventory_items", sa.Column("reorder_point", sa.Integer(), nullable=True))
    op.add_column("inventory_items", sa.Column("reorder_quantity", sa.Integer(), nullable=True))
    op.add_column(
        "inventory_items",
        sa.Column(
            "location_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey(
                "locations.id", name="fk_inventory_items_location_id", ondelete="SET NULL"
            ),
            nullable=True,
        ),
    )
    op.create_index("ix_inventory_items_sku", "inventory_items", ["sku"], unique=True)
    op.create_index("ix_inventory_items_barcode", "inventory_items", ["barcode"])
    op.create_check_constraint(
        "ck_inventory_items_reorder",
        "inventory_items",
        "reorder_point IS NULL OR reorder_point >= 0",
    )

    op.create_table(
        "inventory_transactions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column(
            "item_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("inventory_items.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "location_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("locations.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column(
            "user_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("users.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("transaction_type", sa.Text(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("reference", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.CheckConstraint("quantity <> 0", name="ck_inventory_transactions_quantity"),
        sa.CheckConstraint(
            "transaction_type IN ('receipt', 'shipment', 'adjustment', 'transfer', 'return')",
            name="ck_inventory_transactions_type",
        ),
    )
    op.create_index(
        "ix_inventory_transactions_item_created",
        "inventory_transactions",
        ["item_id", "created_at"],
    )
    op.create_index(
        "ix_inventory_transactions_location_id", "inventory_transactions", ["location_id"]
    )


def downgrade() -> None:
    op.drop_table("inventory_transactions")
    op.drop_constraint("ck_inventory_items_reorder", "inventory_items", type_="check")
    op.drop_index("ix_inventory_items_barcode", table_name="inventory_items")
    op.drop_index("ix_inventory_items_sku", table_name="inventory_items")
    op.drop_constraint("fk_inventory_items_location_id", "inventory_items", type_="foreignkey")
    for column in ("location_id", "reorder_quantity", "reorder_point", "barcode", "sku"):
        op.drop_column("inventory_items", column)
    op.drop_table("locations")
