"""Where a name occurs in PostgreSQL SQL text, told apart by PostgreSQL's lexical rules.

Replay puts each tenant's schema name where the scratch schema's name stood in recorded SQL. That
is only the same as Alembic's SQL for the tenant when the name stood as an identifier (``name``,
``"name"``, ``name.table``). Anywhere else (inside a string literal, an ``E''`` string, a
``$$`` body, a comment, or as part of a longer name such as ``ix_name_users``) the SQL was built
from the name in a way a text substitution cannot be trusted to repeat, so the caller must not
replay it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_WORD_START = re.compile(r"[A-Za-z_\x80-\uffff]")
_WORD = re.compile(r"[A-Za-z0-9_$\x80-\uffff]*")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$")


@dataclass
class Mentions:
    """Occurrences of a name in SQL text."""

    identifiers: list[tuple[int, int]] = field(default_factory=list)  # spans, quotes included
    elsewhere: list[str] = field(default_factory=list)  # what kind of text held it otherwise


def find_mentions(sql: str, name: str) -> Mentions:
    """Spans where ``name`` is an identifier in ``sql`` (quoted or not, compared without case:
    the caller checks how it was written), and the kinds of text where it occurs otherwise
    (case-insensitively)."""
    lowered_name = name.lower()
    found = Mentions()

    def check(text: str, kind: str) -> None:
        if lowered_name in text.lower():
            found.elsewhere.append(kind)

    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            check(sql[i:end], "a comment")
            i = end
        elif sql.startswith("/*", i):
            end = _block_comment_end(sql, i)
            check(sql[i:end], "a comment")
            i = end
        elif c == "'":
            end = _string_end(sql, i, backslash_escapes=False)
            check(sql[i:end], "a string literal")
            i = end
        elif c == '"':
            end = _quoted_identifier_end(sql, i)
            content = sql[i + 1 : end - 1].replace('""', '"')
            if content.lower() == lowered_name:
                found.identifiers.append((i, end))
            else:
                check(content, "a longer name")
            i = end
        elif c == "$" and (i == 0 or not _WORD.fullmatch(sql[i - 1])):
            tag = _DOLLAR_TAG.match(sql, i)
            if tag is None:
                i += 1
                continue
            close = sql.find(tag.group(0), tag.end())
            end = n if close < 0 else close + len(tag.group(0))
            check(sql[tag.end() : end], "a dollar-quoted body")
            i = end
        elif _WORD_START.match(c):
            word = _WORD.match(sql, i)
            assert word is not None
            end = word.end()
            text = word.group(0)
            if text.lower() in ("e", "u&") and end < n and sql[end] == "'":
                # E'...' takes backslash escapes: \' does not end it.
                string_end = _string_end(sql, end, backslash_escapes=text.lower() == "e")
                check(sql[end:string_end], "a string literal")
                i = string_end
                continue
            if text.lower() == lowered_name:
                found.identifiers.append((i, end))  # unquoted: folded to lower case
            else:
                check(text, "a longer name")
            i = end
        else:
            i += 1
    return found


def _string_end(sql: str, start: int, *, backslash_escapes: bool) -> int:
    """Index just past the string literal opening at ``start`` ('' is an escaped quote)."""
    i, n = start + 1, len(sql)
    while i < n:
        c = sql[i]
        if backslash_escapes and c == "\\":
            i += 2
            continue
        if c == "'":
            if i + 1 < n and sql[i + 1] == "'":
                i += 2
                continue
            return i + 1
        i += 1
    return n


def _quoted_identifier_end(sql: str, start: int) -> int:
    i, n = start + 1, len(sql)
    while i < n:
        if sql[i] == '"':
            if i + 1 < n and sql[i + 1] == '"':
                i += 2
                continue
            return i + 1
        i += 1
    return n


def _block_comment_end(sql: str, start: int) -> int:
    """Block comments nest in PostgreSQL."""
    depth, i, n = 0, start, len(sql)
    while i < n:
        if sql.startswith("/*", i):
            depth += 1
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


def replace_spans(sql: str, spans: list[tuple[int, int]], replacement: str) -> str:
    """``sql`` with each span replaced (spans in order, not overlapping)."""
    parts, last = [], 0
    for start, end in spans:
        parts.append(sql[last:start])
        parts.append(replacement)
        last = end
    parts.append(sql[last:])
    return "".join(parts)
