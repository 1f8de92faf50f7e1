"""Early in history: a partial index built concurrently, written by hand in an autocommit
block."""

from alembic import op

revision = "k03_invoices_index_concurrently"
down_revision = "k02_squash"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_sq_invoices_open_amount "
            "ON sq_invoices (amount) WHERE status = 'active'"
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_sq_invoices_open_amount")
