"""Property-based checks of tenant names: accepted names are safe and round-trip through the
database; rejected names change nothing."""

from __future__ import annotations

import re

import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tenantmig import api
from tenantmig.errors import InvalidTenantName, TenantExists
from tenantmig.server.config import Settings
from tenantmig.server.identifiers import validate_tenant_name
from tests.helpers import schemas, tenant_rows

SAFE = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# Names near the rules' edges: identifier-ish text, SQL metacharacters, unicode look-alikes,
# long strings (byte length vs character length).
names = st.one_of(
    st.from_regex(r"[a-z_][a-z0-9_]{0,70}", fullmatch=True),
    st.text(alphabet=st.sampled_from("aAz_9\"';-. \u00e9\u0435\u200b\x00$"), max_size=70),
    st.text(max_size=40),
    st.sampled_from(["pg_x", "public", "information_schema", "a" * 63, "a" * 64, "\u00e9" * 32]),
)


@given(names)
@example("pg_toast")
@example("drop table x;--")
def test_every_accepted_name_is_a_plain_safe_identifier(name: str) -> None:
    try:
        accepted = validate_tenant_name(name)
    except InvalidTenantName:
        return
    assert accepted == name
    assert SAFE.fullmatch(name)
    assert len(name.encode()) <= 63
    assert not name.startswith("pg_") and name not in ("public", "information_schema")


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=names)
def test_names_round_trip_or_change_nothing(
    name: str, settings: Settings, engine: sa.Engine
) -> None:
    api.upgrade(settings, api.Selection.shared_only())
    before_schemas, before_rows = schemas(engine), tenant_rows(engine)
    try:
        api.create_tenants(settings, [name], migrate=False)
    except (InvalidTenantName, TenantExists):
        assert schemas(engine) == before_schemas
        assert tenant_rows(engine) == before_rows
        return
    assert name in schemas(engine) and name in tenant_rows(engine)
    assert api.upgrade(settings, api.Selection.named([name])).succeeded
    with engine.connect() as conn:
        found = conn.execute(
            sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = :s AND tablename = 'users'"),
            {"s": name},
        ).scalar()
    assert found == 1
    api.drop_tenants(settings, [name])
    assert schemas(engine) == before_schemas
    assert tenant_rows(engine) == before_rows
