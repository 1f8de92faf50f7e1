"""Data migration: read the users into Python, compute, write each row back."""

import sqlalchemy as sa
from alembic import op

revision = "k07_fill_user_columns"
down_revision = "k06_user_columns"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, email, full_name FROM users ORDER BY id")).all()
    for row in rows:
        domain = row.email.rpartition("@")[2].lower()
        name = " ".join(part.capitalize() for part in (row.full_name or "").split()) or None
        bind.execute(
            sa.text("UPDATE users SET email_domain = :d, display_name = :n WHERE id = :id"),
            {"d": domain, "n": name, "id": row.id},
        )


def downgrade() -> None:
    op.execute("UPDATE users SET email_domain = NULL, display_name = NULL")
