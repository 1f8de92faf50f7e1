"""Database URLs: checked once, before anything connects, with errors that never show a secret.

A URL comes from a flag, the environment, alembic.ini's ``sqlalchemy.url`` or the database
directory, and may hold a password. SQLAlchemy's ``make_url`` is lenient in ways that matter
here: a password holding ``@`` silently moves its tail into the host (where masking no longer
hides it), a ``:`` without an ``@`` after it turns the password into the port (and
``int()`` then quotes it in its error), and whitespace or a line break becomes part of the
database name. So a URL is checked before it is parsed, and every error names *where* the URL
came from and what is wrong with it, never the URL's text.

What is refused: whitespace and line breaks, control and other invisible characters, a ``%``
that does not begin a percent-encoded character, more than one ``@``, anything ``make_url``
cannot parse, a scheme other than PostgreSQL, and a port that is not a number from 1 to 65535.
Printable punctuation such as ``{ } | ^ "`` is accepted: libpq and SQLAlchemy take it as it is,
and generated passwords often hold it.
"""

from __future__ import annotations

import re
import unicodedata

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from tenantmig.errors import ConfigError

# How a URL is written, appended to every error: what to do matters more than what was wrong.
URL_FORM = (
    "expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE; in a user name or password write "
    "@ as %40, : as %3A, / as %2F, ; as %3B, % as %25 and a space as %20"
)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+]*://")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Host names, IPv4/IPv6 addresses (with a zone after %), and libpq's comma-separated host lists.
_HOST = re.compile(r"[\w.,:%~-]+")
_BACKENDS = ("postgresql", "postgres")
# Unicode categories that are never visible in a URL: controls, format characters (zero-width
# spaces), separators, surrogates, private use and unassigned code points.
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})


def _character_problem(url: str) -> str | None:
    """What is wrong with the URL's characters, without saying which ones they are."""
    if "\n" in url or "\r" in url:
        return (
            "the URL spans more than one line (in alembic.ini an indented line continues the "
            "value above it)"
        )
    if any(c.isspace() for c in url):
        return "the URL contains whitespace"
    if any(unicodedata.category(c) in _INVISIBLE for c in url):
        return "the URL contains a control or invisible character"
    if _PERCENT.search(url):
        return "the URL has a % that does not begin a percent-encoded character such as %40"
    if url.count("@") > 1:
        return "the URL has more than one @ (only the one before the host is written as @)"
    return None


def _parse(url: str) -> tuple[URL | None, str | None]:
    """make_url's result, or what is wrong (its own messages may quote the password)."""
    if not _SCHEME.match(url):
        return None, "the value is not a database URL"
    try:
        return make_url(url), None
    except ArgumentError:
        return None, "the value is not a database URL"
    except ValueError:  # int() of the port, whose text may be a password
        return None, "the URL's port is not a number"


def _parsed_problem(parsed: URL) -> str | None:
    if parsed.get_backend_name() not in _BACKENDS:
        return f"the URL is for {parsed.get_backend_name()!r}, not PostgreSQL"
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        return "the URL's port is not from 1 to 65535"
    if parsed.host is not None and not _HOST.fullmatch(parsed.host):
        return "the URL's host is not a host name or address"
    return None


def check_url(url: str, where: str) -> URL:
    """The parsed URL, or a ConfigError naming ``where`` (e.g. ``--database-url``) that does
    not contain the URL or any part of it."""
    problem = "the URL is empty" if not url else _character_problem(url)
    parsed: URL | None = None
    if problem is None:
        parsed, problem = _parse(url)
    if problem is None and parsed is not None:
        problem = _parsed_problem(parsed)
    if problem is not None or parsed is None:
        raise ConfigError(f"{where}: {problem}; {URL_FORM}")
    return parsed


def mask_url(url: str | URL) -> str:
    """The URL with its password (and any password in the query) replaced by ***, safe for
    logs, errors and the ledger; a URL that does not pass ``check_url`` is not shown at all."""
    if isinstance(url, str):
        try:
            url = check_url(url, "URL")
        except ConfigError:
            return "<malformed database URL>"
    hidden = {key for key in url.query if "password" in key.lower()}
    if hidden:
        url = url.update_query_dict({key: "***" for key in hidden})
    # The query is rendered percent-encoded; *** reads better than %2A%2A%2A.
    return url.render_as_string(hide_password=True).replace("=%2A%2A%2A", "=***")
