"""Usage errors a person can act on: the command's own usage, the nearest name it knows."""

from __future__ import annotations

import contextlib
import io

import pytest

from tenantmig.cli import main
from tenantmig.cli.parser import build_parser


def _usage_error(*args: str) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
        main(list(args))
    assert exited.value.code == 1  # a usage error, never 2 (drift found)
    return err.getvalue()


def test_a_mistyped_option_shows_the_commands_usage_and_the_nearest_option() -> None:
    text = _usage_error("upgrade", "--all-tenant")
    assert text.startswith("usage: tenantmig upgrade "), text
    assert "tenantmig upgrade: error: unrecognized arguments: --all-tenant" in text
    assert "did you mean --all-tenants?" in text


def test_a_mistyped_command_suggests_the_nearest_command() -> None:
    assert "did you mean upgrade?" in _usage_error("upgrad")
    text = _usage_error("tenants", "creat", "acme")
    assert text.startswith("usage: tenantmig tenants "), text
    assert "did you mean create?" in text


def test_nothing_close_suggests_nothing() -> None:
    assert "did you mean" not in _usage_error("upgrade", "--frobnicate-everything")


def test_db_psql_takes_every_argument_after_it_for_psql() -> None:
    parser = build_parser()
    args = parser.parse_args(["--config", "x.ini", "db", "psql", "-c", "select 1", "-X", "-h"])
    assert args.config == "x.ini"  # tenantmig's own options go before `db`
    assert args.psql_args == ["-c", "select 1", "-X", "-h"]


def test_runs_list_is_what_runs_prints() -> None:
    parser = build_parser()
    bare = parser.parse_args(["runs"])
    listed = parser.parse_args(["runs", "list"])
    assert (bare.limit, bare.json) == (listed.limit, listed.json) == (20, False)
    chosen = parser.parse_args(["runs", "list", "--limit", "3", "--json"])
    assert (chosen.runs_command, chosen.limit, chosen.json) == ("list", 3, True)


def test_tenants_help_names_every_action() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["--help"])
    top = " ".join(out.getvalue().split())
    assert "Create, register, list, move and drop tenants." in top
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["tenants", "--help"])
    text = " ".join(out.getvalue().split())
    for action in ("create", "register", "list", "move", "drop"):
        assert f"`{action}`" in text, action


@pytest.mark.parametrize(
    "argv",
    [
        ["upgrade", "--tenant", "acme", "-q"],
        ["--config", "x.ini", "upgrade", "--all-tenants", "-j", "4", "+1"],
        ["--shared-schema", "status", "upgrade", "--tenant", "acme"],  # a value like a command
        ["--shared-schema", "upgrade", "upgrade"],
        ["db", "psql", "-c", "select 1"],
        ["tenants", "create", "a", "b", "--no-migrate"],
        ["runs", "show", "7", "--json"],
        ["downgrade", "--tenant", "acme", "-1", "--yes"],
        ["drift", "--json", "--debug"],
    ],
)
def test_a_command_line_parses_as_the_full_parser_parses_it(argv: list[str]) -> None:
    """Start-up parses with a parser of the one command named; it must agree with the full
    parser on every command line, and fall back to it where it cannot decide."""
    from tenantmig.cli.parser import parse_arguments

    assert vars(parse_arguments(argv)) == vars(build_parser().parse_args(argv))


def test_errors_and_help_come_from_the_full_parser() -> None:
    """A usage error names every command it knows, whichever command line it came from."""
    text = _usage_error("--shared-schema", "upgrade", "frobnicate")
    assert "invalid choice: 'frobnicate'" in text and "'drift'" in text, text
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["upgrade", "--help"])
    assert out.getvalue().startswith("usage: tenantmig upgrade ")
