"""E'' strings with escaped quotes, and a dollar-quoted literal."""

import sqlalchemy as sa
from alembic import op

revision = "c31_escape_strings"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("quotes", sa.Column("q", sa.Text()))
    op.execute(r"INSERT INTO quotes VALUES (E'it\'s; -- not a comment\\')")
    op.execute("INSERT INTO quotes VALUES ($q$dollar; 'quoted' $$ text$q$)")


def downgrade() -> None:
    op.drop_table("quotes")
