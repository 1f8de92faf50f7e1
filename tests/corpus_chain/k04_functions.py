"""Two functions as alembic_utils entities: a plpgsql trigger function and a SQL function.

alembic_utils writes every entity schema-qualified and needs the schema's name. A tenant
revision takes it from ``op.get_context().version_table_schema``: the tenant's schema, as the
tenant chain's env.py configures it, known without asking the database (reading
``current_schema()`` would work too, but a read keeps a revision from being replayed).

alembic_utils always quotes the name (``"acme"."order_total"``) where SQLAlchemy would write
``acme``; tenantmig takes that for a name written by hand and runs this revision through
Alembic: correct, only not replayed.
"""

from alembic import op
from alembic_utils.pg_function import PGFunction

revision = "k04_functions"
down_revision = "k03_invoices_index_concurrently"
branch_labels = None
depends_on = None


def _functions() -> list[PGFunction]:
    schema = op.get_context().version_table_schema
    return [
        PGFunction(
            schema=schema,
            signature="users_normalise_email()",
            definition="""
            RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                NEW.email := lower(btrim(NEW.email));
                RETURN NEW;
            END;
            $$
            """,
        ),
        PGFunction(
            schema=schema,
            signature="order_total(p_order uuid)",
            definition="""
            RETURNS numeric LANGUAGE sql STABLE AS $$
                SELECT coalesce(sum(quantity * unit_price), 0)
                FROM order_items WHERE order_id = p_order
            $$
            """,
        ),
    ]


def upgrade() -> None:
    for function in _functions():
        op.create_entity(function)


def downgrade() -> None:
    for function in reversed(_functions()):
        op.drop_entity(function)
