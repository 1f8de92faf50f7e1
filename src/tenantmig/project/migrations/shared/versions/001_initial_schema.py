"""Initial shared schema: the tenant directory.

Revision ID: 001_initial_schema
Revises:
Create Date: 2025-01-10

UUIDs come from gen_random_uuid(), built into PostgreSQL 13+ and living in pg_catalog, so it
resolves whatever the search_path is (an extension such as uuid-ossp installs its functions into
one schema, which tenant schemas would then have to reach through their search_path).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "001_initial_schema"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Mirrors tenantmig.server.identifiers: lower-case identifier, at most 63 bytes, no pg_ prefix.
_IDENTIFIER = r"^[a-z_][a-z0-9_]{0,62}$"


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column(
            "id",
            postgresql.UUID(as_uuid=True),
            primary_key=True,
            server_default=sa.text("gen_random_uuid()"),
        ),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("schema_name", sa.Text(), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False, server_default="active"),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.UniqueConstraint("name", name="uq_tenants_name"),
        sa.UniqueConstraint("schema_name", name="uq_tenants_schema_name"),
        sa.CheckConstraint(
            f"name ~ '{_IDENTIFIER}' AND name !~ '^pg_'", name="ck_tenants_name_identifier"
        ),
        sa.CheckConstraint(
            f"schema_name ~ '{_IDENTIFIER}' AND schema_name !~ '^pg_'",
            name="ck_tenants_schema_name_identifier",
        ),
        sa.CheckConstraint(
            "status IN ('active', 'suspended', 'deleted')", name="ck_tenants_status"
        ),
    )
    op.create_index("ix_tenants_status", "tenants", ["status"])


def downgrade() -> None:
    op.drop_index("ix_tenants_status", table_name="tenants")
    op.drop_table("tenants")
