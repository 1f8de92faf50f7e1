"""executemany through the connection: one statement, several rows."""

import sqlalchemy as sa
from alembic import op

revision = "c06_executemany"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tags", sa.Column("id", sa.Integer(), primary_key=True), sa.Column("label", sa.Text())
    )
    op.get_bind().execute(
        sa.text("INSERT INTO tags (id, label) VALUES (:id, :label)"),
        [{"id": 1, "label": "red"}, {"id": 2, "label": "green; blue"}, {"id": 3, "label": None}],
    )


def downgrade() -> None:
    op.drop_table("tags")
