"""Tenant-name validation and identifier quoting.

This is the only module where a schema name becomes SQL text. Names are validated first (so a
hostile name never reaches the database) and quoted anyway (so a valid name that happens to be a
keyword, like ``user`` or ``order``, still works).
"""

from __future__ import annotations

import re

from sqlalchemy.dialects import postgresql

from tenantmig.errors import InvalidTenantName

MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL silently truncates longer names
_TENANT_NAME = re.compile(r"[a-z_][a-z0-9_]*")
RESERVED_SCHEMAS = frozenset({"public", "information_schema"})


def validate_tenant_name(name: str, *, shared_schema: str = "public") -> str:
    """Return ``name`` if it is a safe tenant/schema name, else raise InvalidTenantName.

    Rules: lower-case ASCII letters, digits and underscores, not starting with a digit (unquoted
    PostgreSQL identifier rules, without case folding surprises), at most 63 bytes (longer names
    are silently truncated by PostgreSQL, so two tenants could collide), no ``pg_`` prefix
    (reserved for system schemas), and not public, information_schema or the shared schema.
    """
    if not isinstance(name, str) or name == "":
        raise InvalidTenantName("tenant name must not be empty")
    shown = ascii(name)
    if len(name.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        raise InvalidTenantName(
            f"tenant name {shown} is {len(name.encode('utf-8'))} bytes long; "
            f"PostgreSQL identifiers hold at most {MAX_IDENTIFIER_BYTES} bytes"
        )
    if not _TENANT_NAME.fullmatch(name):
        raise InvalidTenantName(
            f"tenant name {shown} is not allowed: use lower-case letters a-z, digits and "
            "underscores, starting with a letter or underscore"
        )
    if name.startswith("pg_"):
        raise InvalidTenantName(f"tenant name {shown} is not allowed: the pg_ prefix is reserved")
    if name in RESERVED_SCHEMAS or name == shared_schema:
        raise InvalidTenantName(
            f"tenant name {shown} is not allowed: it names a reserved or the shared schema"
        )
    return name


def validate_schema_name(name: str) -> str:
    """Validate a configured (shared) schema name: same character rules, public allowed."""
    if name == "public":
        return name
    return validate_tenant_name(name, shared_schema="")


def quote_ident(name: str) -> str:
    """Quote an identifier for PostgreSQL (double quotes, embedded quotes doubled).

    Callers pass names that were validated already; quoting is the second line of defence.
    """
    if "\x00" in name:
        raise InvalidTenantName("identifier contains a NUL byte")
    return '"' + name.replace('"', '""') + '"'


_PREPARER = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]


def quote_as_alembic(name: str) -> str:
    """``name`` as SQLAlchemy (and so Alembic) renders it: quoted only when it must be, for a
    keyword such as ``user`` or ``order``. Replay puts a tenant's schema into SQL that Alembic
    rendered for another schema; rendering it the same way keeps the SQL byte-for-byte what
    Alembic would have sent (string literals that carry the name included)."""
    if "\x00" in name:
        raise InvalidTenantName("identifier contains a NUL byte")
    return str(_PREPARER.quote_schema(name))


def qualified(schema: str, table: str) -> str:
    """``"schema"."table"``, both parts quoted."""
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def quote_literal(text: str) -> str:
    """A standard-conforming SQL string literal (embedded quotes doubled), for the few
    statements tenantmig writes into a script file rather than sending with parameters."""
    if "\x00" in text:
        raise InvalidTenantName("text contains a NUL byte")
    return "'" + text.replace("'", "''") + "'"
