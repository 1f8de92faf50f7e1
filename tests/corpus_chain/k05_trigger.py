"""A trigger as an alembic_utils entity, on the trigger function of k04.

alembic_utils writes the table of a trigger as ``schema.table`` with the schema's name
unquoted, in both CREATE TRIGGER and DROP TRIGGER (whatever quoting it is given). Alembic runs
it in a tenant whose name is not a keyword (a tenant named ``order`` would fail), but
tenantmig's second compilation, in a scratch schema whose name has capitals, fails on it: this
revision is replayed only in tenants whose name needs no quoting, and runs through Alembic in
the others.
"""

from alembic import op
from alembic_utils.pg_trigger import PGTrigger

revision = "k05_trigger"
down_revision = "k04_functions"
branch_labels = None
depends_on = None


def _trigger() -> PGTrigger:
    schema = op.get_context().version_table_schema
    return PGTrigger(
        schema=schema,
        signature="trg_users_normalise_email",
        on_entity=f"{schema}.users",
        definition=(
            "BEFORE INSERT OR UPDATE OF email ON users "
            "FOR EACH ROW EXECUTE FUNCTION users_normalise_email()"
        ),
    )


def upgrade() -> None:
    op.create_entity(_trigger())


def downgrade() -> None:
    op.drop_entity(_trigger())
