"""Block comments, nested, holding semicolons and quotes."""

from alembic import op

revision = "c08_block_comments"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("/* first; 'quoted /* nested; */ still */ CREATE TABLE notes (id integer /* ; */)")
    op.execute("INSERT INTO notes VALUES (1) /* trailing; comment */")


def downgrade() -> None:
    op.drop_table("notes")
