"""The command line as a person meets it: help everywhere, no abbreviations, one exit-code table."""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Iterator

import pytest

from tenantmig.cli import main
from tenantmig.cli.parser import build_parser


def _parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ("tenantmig",)
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_command_has_a_description_and_every_option_help() -> None:
    missing = []
    for path, parser in _parsers(build_parser()):
        if len(path) > 1 and not parser.description:
            missing.append(" ".join(path))
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue  # a command list: each command is checked itself
            if not action.help:
                missing.append(f"{' '.join(path)} {action.option_strings or action.dest}")
    assert missing == []


def _help(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*args, "--help"])
    return out.getvalue()


def test_the_exit_code_table_is_in_the_top_level_help_only() -> None:
    assert "130  interrupted" in _help()
    for command in (["upgrade"], ["tenants", "create"], ["drift"], ["db", "url"]):
        text = _help(*command)
        assert "130" not in text and "see `tenantmig --help`" in text


def test_abbreviated_options_are_refused() -> None:
    for path, parser in _parsers(build_parser()):
        assert parser.allow_abbrev is False, path
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
        main(["upgrade", "--all-tenants", "--lock", "3"])
    assert exited.value.code == 1
    assert "unrecognized arguments: --lock" in err.getvalue()
