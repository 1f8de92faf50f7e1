"""A squash of an older history: 30 tables, 130 indexes (partial, expression, JSONB GIN,
unique NULLS NOT DISTINCT), CHECK constraints and foreign keys, in one revision.

NULLS NOT DISTINCT needs PostgreSQL 15 or later, which is what the suite runs on.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "k02_squash"
down_revision = "k01_orders_index_concurrently"
branch_labels = None
depends_on = None

NOUNS = [
    "accounts", "addresses", "attachments", "budgets", "campaigns", "carts", "categories",
    "channels", "contacts", "contracts", "coupons", "deliveries", "devices", "discounts",
    "documents", "events", "invoices", "leads", "messages", "notes", "payments", "projects",
    "receipts", "refunds", "regions", "returns", "shipments", "subscriptions", "suppliers",
    "tickets",
]  # fmt: skip
TABLES = [f"sq_{noun}" for noun in NOUNS]


def upgrade() -> None:
    for i, table in enumerate(TABLES):
        parent = (
            [
                sa.Column(
                    "parent_id",
                    sa.BigInteger(),
                    sa.ForeignKey(f"{TABLES[i - 1]}.id", ondelete="SET NULL"),
                    nullable=True,
                )
            ]
            if i
            else []
        )
        op.create_table(
            table,
            sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
            *parent,
            sa.Column(
                "owner_id",
                postgresql.UUID(as_uuid=True),
                sa.ForeignKey("users.id", ondelete="CASCADE"),
                nullable=True,
            ),
            sa.Column("code", sa.Text(), nullable=True),
            sa.Column("name", sa.Text(), nullable=False),
            sa.Column("email", sa.Text(), nullable=True),
            sa.Column("status", sa.Text(), nullable=False, server_default="active"),
            sa.Column("amount", sa.Numeric(12, 2), nullable=False, server_default="0"),
            sa.Column(
                "data",
                postgresql.JSONB(),
                nullable=False,
                server_default=sa.text("'{}'::jsonb"),
            ),
            sa.Column(
                "created_at",
                sa.DateTime(timezone=True),
                nullable=False,
                server_default=sa.text("now()"),
            ),
            sa.CheckConstraint(
                "status IN ('active', 'archived', 'draft')", name=f"ck_{table}_status"
            ),
            sa.CheckConstraint("amount >= 0", name=f"ck_{table}_amount"),
            sa.CheckConstraint("length(name) <= 200", name=f"ck_{table}_name_length"),
        )
        op.create_index(
            f"ix_{table}_live",
            table,
            ["status", "created_at"],
            postgresql_where=sa.text("status <> 'archived'"),
        )
        op.create_index(f"ix_{table}_email_lower", table, [sa.text("lower(email)")])
        op.create_index(
            f"ix_{table}_data",
            table,
            ["data"],
            postgresql_using="gin",
            postgresql_ops={"data": "jsonb_path_ops"},
        )
        op.create_index(
            f"uq_{table}_code", table, ["code"], unique=True, postgresql_nulls_not_distinct=True
        )
        if i % 3 == 1:
            op.create_index(f"ix_{table}_parent_id", table, ["parent_id"])


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
