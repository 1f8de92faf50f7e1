"""op.execute with bound parameters holding SQL-looking text."""

import sqlalchemy as sa
from alembic import op

revision = "c13_bound_parameters"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("labels", sa.Column("id", sa.Integer()), sa.Column("text", sa.Text()))
    op.execute(
        sa.text("INSERT INTO labels VALUES (:id, :text)").bindparams(
            id=7, text="it's; -- not a comment /* nor this */ $$ 100%"
        )
    )


def downgrade() -> None:
    op.drop_table("labels")
