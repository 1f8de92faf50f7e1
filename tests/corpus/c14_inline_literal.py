"""An update built with op.inline_literal."""

import sqlalchemy as sa
from alembic import op

revision = "c14_inline_literal"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    users = sa.table("users", sa.column("role", sa.Text()))
    op.execute(
        users.update()
        .where(users.c.role == op.inline_literal("member"))
        .values({"role": op.inline_literal("viewer")})
    )


def downgrade() -> None:
    users = sa.table("users", sa.column("role", sa.Text()))
    op.execute(
        users.update()
        .where(users.c.role == op.inline_literal("viewer"))
        .values({"role": op.inline_literal("member")})
    )
