"""Tenant labels: ``<shared>.tenantmig_labels`` in the control database.

Labels group tenants for selection (``--label canary``) and rollouts (``--waves label:canary``).
Like placements, the table is tenantmig's own: the application's registry is not altered, no
migration makes it, drift leaves it out, and a project that never labels a tenant never gets
it. With ``tenants_from = query: ...`` the query may return the labels itself, as a third
column ``labels`` (text[]); then the table is not used.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantmig.errors import ConfigError, some_names
from tenantmig.schema.owned import LABELS
from tenantmig.server.identifiers import qualified

LABEL = re.compile(r"[a-z][a-z0-9_-]{0,62}")


def check_labels(labels: Iterable[str]) -> tuple[str, ...]:
    """``labels`` as given, each checked (before anything is read or changed)."""
    checked = tuple(dict.fromkeys(labels))
    bad = [label for label in checked if not LABEL.fullmatch(label)]
    if bad:
        raise ConfigError(
            f"bad label(s): {some_names(bad)}; a label is a lower-case letter, then up to 62 "
            "lower-case letters, digits, _ or -"
        )
    return checked


def labels_sql(shared_schema: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified(shared_schema, LABELS)} ("
        " tenant text NOT NULL,"
        " label text NOT NULL,"
        " labelled_at timestamptz NOT NULL DEFAULT now(),"
        " PRIMARY KEY (tenant, label))"
    )


def _exists(conn: Connection, shared_schema: str) -> bool:
    table = qualified(shared_schema, LABELS)
    return bool(conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar())


def read_labels(conn: Connection, shared_schema: str) -> dict[str, tuple[str, ...]]:
    """Tenant name -> its labels (sorted), for the tenants that have any; one query."""
    if not _exists(conn, shared_schema):
        return {}
    rows = conn.execute(
        sa.text(
            f"SELECT tenant, array_agg(label ORDER BY label) AS labels "
            f"FROM {qualified(shared_schema, LABELS)} GROUP BY tenant"
        )
    ).all()
    return {r.tenant: tuple(r.labels) for r in rows}


def add_labels(
    conn: Connection, shared_schema: str, tenants: Sequence[str], labels: Sequence[str]
) -> int:
    """Give every one of ``tenants`` every one of ``labels``, in the caller's transaction;
    how many (tenant, label) pairs were new."""
    conn.exec_driver_sql(labels_sql(shared_schema))
    result = conn.execute(
        sa.text(
            f"INSERT INTO {qualified(shared_schema, LABELS)} (tenant, label) "
            "SELECT t, l FROM unnest(CAST(:t AS text[])) AS t, unnest(CAST(:l AS text[])) AS l "
            "ON CONFLICT (tenant, label) DO NOTHING"
        ),
        {"t": list(tenants), "l": list(labels)},
    )
    return int(result.rowcount or 0)


def remove_labels(
    conn: Connection, shared_schema: str, tenants: Sequence[str], labels: Sequence[str]
) -> int:
    """Take ``labels`` from ``tenants``, in the caller's transaction; how many pairs went."""
    if not _exists(conn, shared_schema):
        return 0
    result = conn.execute(
        sa.text(
            f"DELETE FROM {qualified(shared_schema, LABELS)} "
            "WHERE tenant = ANY(:t) AND label = ANY(:l)"
        ),
        {"t": list(tenants), "l": list(labels)},
    )
    return int(result.rowcount or 0)


def forget_labels(conn: Connection, shared_schema: str, tenants: Sequence[str]) -> None:
    """A dropped tenant's labels go with it (a new tenant of the same name starts without)."""
    if _exists(conn, shared_schema):
        conn.execute(
            sa.text(f"DELETE FROM {qualified(shared_schema, LABELS)} WHERE tenant = ANY(:t)"),
            {"t": list(tenants)},
        )


def known_labels(labels_of: Mapping[str, Sequence[str]]) -> list[str]:
    return sorted({label for labels in labels_of.values() for label in labels})
