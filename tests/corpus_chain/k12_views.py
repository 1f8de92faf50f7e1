"""Plain DDL: two views over what the chain built."""

from alembic import op

revision = "k12_views"
down_revision = "k11_renames"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE VIEW invoice_summary AS "
        "SELECT status, paid, count(*) AS invoices, sum(amount) AS total "
        "FROM sq_invoices GROUP BY status, paid"
    )
    op.execute(
        "CREATE VIEW public_users AS "
        "SELECT id, public_name, email_domain FROM users WHERE is_active"
    )


def downgrade() -> None:
    op.execute("DROP VIEW public_users")
    op.execute("DROP VIEW invoice_summary")
