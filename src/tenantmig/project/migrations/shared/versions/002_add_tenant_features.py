"""Tenant features and settings, API key management, billing cycle tracking.

Revision ID: 002_add_tenant_features
Revises: 001_initial_schema
Create Date: 2025-01-10

API keys are never stored: only a SHA-256 hash (for lookup) and a short prefix (so a person can
recognise a key in a list).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "002_add_tenant_features"
down_revision: str | Sequence[str] | None = "001_initial_schema"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id() -> sa.Column[object]:
    return sa.Column(
        "id",
        postgresql.UUID(as_uuid=True),
        primary_key=True,
        server_default=sa.text("gen_random_uuid()"),
    )


def _tenant_fk() -> sa.Column[object]:
    return sa.Column(
        "tenant_id",
        postgresql.UUID(as_uuid=True),
        sa.ForeignKey("tenants.id", ondelete="CASCADE"),
        nullable=False,
    )


def _timestamp(name: str, nullable: bool = False) -> sa.Column[object]:
    default = None if nullable else sa.text("now()")
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=default)


def upgrade() -> None:
    op.create_table(
        "tenant_features",
        _id(),
        _tenant_fk(),
        sa.Column("feature_key", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column(
            "config", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.UniqueConstraint("tenant_id", "feature_key", name="uq_tenant_features_key"),
    )
    op.create_table(
        "tenant_settings",
        _id(),
        _tenant_fk(),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", postgresql.JSONB(), nullable=False),
        _timestamp("updated_at"),
        sa.UniqueConstraint("tenant_id", "key", name="uq_tenant_settings_key"),
    )
    op.create_table(
        "api_keys",
        _id(),
        _tenant_fk(),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("key_prefix", sa.String(12), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column(
            "scopes",
            postgresql.ARRAY(sa.Text()),
            nullable=False,
            server_default=sa.text("'{}'::text[]"),
        ),
        _timestamp("created_at"),
        _timestamp("last_used_at", nullable=True),
        _timestamp("expires_at", nullable=True),
        _timestamp("revoked_at", nullable=True),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
        sa.CheckConstraint("key_hash ~ '^[0-9a-f]{64}$'", name="ck_api_keys_hash_is_sha256"),
    )
    op.create_index("ix_api_keys_tenant_id", "api_keys", ["tenant_id"])
    op.create_index("ix_api_keys_key_prefix", "api_keys", ["key_prefix"])
    op.create_table(
        "billing_cycles",
        _id(),
        _tenant_fk(),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("period_end", sa.Date(), nullable=False),
        sa.Column("plan", sa.Text(), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("currency", sa.String(3), nullable=False, server_default="USD"),
        sa.Column("status", sa.Text(), nullable=False, server_default="open"),
        _timestamp("created_at"),
        sa.UniqueConstraint("tenant_id", "period_start", name="uq_billing_cycles_period"),
        sa.CheckConstraint("period_end > period_start", name="ck_billing_cycles_period"),
        sa.CheckConstraint("amount_cents >= 0", name="ck_billing_cycles_amount"),
        sa.CheckConstraint(
            "status IN ('open', 'invoiced', 'paid', 'void')", name="ck_billing_cycles_status"
        ),
    )


def downgrade() -> None:
    op.drop_table("billing_cycles")
    op.drop_index("ix_api_keys_key_prefix", table_name="api_keys")
    op.drop_index("ix_api_keys_tenant_id", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("tenant_settings")
    op.drop_table("tenant_features")
