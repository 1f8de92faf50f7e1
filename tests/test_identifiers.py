import pytest

from tenantmig.errors import InvalidTenantName
from tenantmig.server.identifiers import qualified, quote_ident, validate_tenant_name


@pytest.mark.parametrize("name", ["acme", "a", "_x", "tenant_42", "user", "order", "a" * 63])
def test_accepts_safe_names(name: str) -> None:
    assert validate_tenant_name(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("Acme", "lower-case"),
        ("acme corp", "lower-case"),
        ("acme;drop schema public cascade", "lower-case"),
        ('ac"me', "lower-case"),
        ("ac'me", "lower-case"),
        ("1acme", "starting with a letter"),
        ("acme-corp", "lower-case"),
        ("a" * 64, "63 bytes"),
        ("\u00e9" * 32, "63 bytes"),  # 64 bytes in UTF-8, 32 characters
        ("acm\u0435", "lower-case"),  # Cyrillic 'e' looks like Latin 'e'
        ("acme\x00", "lower-case"),
        ("pg_acme", "pg_ prefix"),
        ("public", "reserved"),
        ("information_schema", "reserved"),
    ],
)
def test_rejects_unsafe_names(name: str, reason: str) -> None:
    with pytest.raises(InvalidTenantName, match=reason):
        validate_tenant_name(name)


def test_rejects_the_configured_shared_schema() -> None:
    with pytest.raises(InvalidTenantName, match="shared"):
        validate_tenant_name("core", shared_schema="core")


def test_quoting_doubles_embedded_quotes() -> None:
    assert quote_ident('we"ird') == '"we""ird"'
    assert qualified("acme", "users") == '"acme"."users"'
