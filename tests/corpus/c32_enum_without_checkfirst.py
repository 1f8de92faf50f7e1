"""An enum type created and used without asking the catalog first (replayable)."""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "c32_enum_without_checkfirst"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'glad')")
    op.add_column(
        "users",
        sa.Column(
            "mood",
            postgresql.ENUM("sad", "ok", "glad", name="mood", create_type=False),
            nullable=False,
            server_default="ok",
        ),
    )
    op.execute("ALTER TYPE mood ADD VALUE 'ecstatic' AFTER 'glad'")


def downgrade() -> None:
    op.drop_column("users", "mood")
    op.execute("DROP TYPE mood")
