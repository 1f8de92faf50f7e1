"""HTTP URLs safe to print."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def mask_url(url: str) -> str:
    """An HTTP URL safe to print: its password, and query values that look like secrets
    (token, key, password, secret, signature), replaced by ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    secret = ("token", "key", "pass", "secret", "sig")
    query = urlencode(
        [(k, "***" if any(s in k.lower() for s in secret) else v)
         for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe="*",
    )  # fmt: skip
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def error_text(exc: BaseException | None, url: str) -> str:
    """The first line of a failed request's error, with ``url`` masked in it."""
    text = str(exc).splitlines()[0] if exc is not None and str(exc) else type(exc).__name__
    return text.replace(url, mask_url(url))[:200]
