"""Every revision's downgrade undoes its upgrade exactly: compared on catalog contents."""

from __future__ import annotations

import sqlalchemy as sa

from tenantmig import api
from tenantmig.server.config import Settings
from tests.helpers import SHARED_HEAD, TENANT_HEAD, snapshot, version


def _tenant(settings: Settings, name: str = "acme") -> None:
    api.upgrade(settings, api.Selection.shared_only())
    api.create_tenants(settings, [name], migrate=False)


def test_tenant_chain_up_down_up_leaves_identical_catalog(
    settings: Settings, engine: sa.Engine
) -> None:
    _tenant(settings)
    one = api.Selection.named(["acme"])
    snapshots: dict[str | None, dict[str, dict[str, str]]] = {}
    snapshots[None] = snapshot(engine, "acme")
    for rev in ("001_initial_schema", TENANT_HEAD):
        result = api.upgrade(settings, one, rev)
        assert result.succeeded and version(engine, "acme") == rev
        snapshots[rev] = snapshot(engine, "acme")
    # the catalog really changes between revisions (so equality below means something)
    assert snapshots["001_initial_schema"] != snapshots[TENANT_HEAD]
    assert "column" in snapshots[TENANT_HEAD]
    assert "inventory_items.sku" in snapshots[TENANT_HEAD]["column"]

    for rev in ("001_initial_schema", None):
        result = api.downgrade(settings, one, "-1")
        assert result.succeeded and version(engine, "acme") == rev
        after = snapshot(engine, "acme")
        if rev is None:
            # base: only the (now empty) version table remains
            assert set(after.get("table", {})) == {"alembic_version"}
        else:
            assert after == snapshots[rev]

    assert api.upgrade(settings, one).succeeded
    assert snapshot(engine, "acme") == snapshots[TENANT_HEAD]


def test_shared_chain_up_down_up_leaves_identical_catalog(
    settings: Settings, engine: sa.Engine
) -> None:
    shared = api.Selection.shared_only()
    assert api.upgrade(settings, shared, "001_initial_schema").succeeded
    first = snapshot(engine, "public")
    assert api.upgrade(settings, shared).succeeded
    head = snapshot(engine, "public")
    assert version(engine, "public") == SHARED_HEAD
    assert api.downgrade(settings, shared, "-1").succeeded
    # the ledger tables were created meanwhile; compare the application's tables only
    strip = _without_ledger
    assert strip(snapshot(engine, "public")) == strip(first)
    assert api.upgrade(settings, shared).succeeded
    assert strip(snapshot(engine, "public")) == strip(head)


def _without_ledger(snap: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    return {
        kind: {k: v for k, v in objs.items() if "tenantmig_" not in k and "tenantmig_" not in v}
        for kind, objs in snap.items()
    }


def test_two_tenants_migrated_alike_have_identical_snapshots(
    settings: Settings, engine: sa.Engine
) -> None:
    api.upgrade(settings, api.Selection.shared_only())
    api.create_tenants(settings, ["acme", "globex"])
    assert snapshot(engine, "acme") == snapshot(engine, "globex")
