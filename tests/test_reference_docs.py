"""The documentation stays true: docs/reference.md is what the parser generates, every
environment variable the package reads is in it, the README stays a front door, and every
relative link in README.md and docs/ leads to a file (and heading) inside the repository.

No database: these tests read files and the argument parser only.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tenantmig.cli import docs
from tenantmig.cli.parser import build_parser

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REGENERATE = f".venv/bin/{docs.REGENERATE}"  # from the repository root

_VENV = "python3 -m venv .venv && .venv/bin/pip install -q -e "
README_COMMANDS = (
    _VENV + "'.[embedded]' && .venv/bin/tenantmig demo",
    _VENV + "'.[dev]' && .venv/bin/pytest",
)


def test_reference_is_generated_from_the_current_parser() -> None:
    expected = docs.render()
    current = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
    assert current == expected, (
        f"docs/reference.md is not current with src/tenantmig/cli/parser.py: regenerate it with "
        f"`{REGENERATE}` and commit the result"
    )


def test_every_environment_variable_the_package_reads_is_in_the_reference() -> None:
    names: set[str] = set()
    for path in (ROOT / "src" / "tenantmig").rglob("*.py"):
        names.update(re.findall(r"\bTENANTMIG_[A-Z_]*[A-Z]\b", path.read_text(encoding="utf-8")))
    reference = docs.render()
    missing = sorted(name for name in names if f"`{name}`" not in reference)
    assert not missing, (
        f"environment variables missing from the reference: {missing}; add them to CONFIG_KEYS "
        f"in src/tenantmig/cli/docs.py and run `{REGENERATE}`"
    )


def _all_options(parser: object) -> set[str]:
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    found: set[str] = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _all_options(sub)
    return found


def test_configuration_keys_name_options_the_parser_has() -> None:
    options = _all_options(build_parser())
    unknown = [key.flag for key in docs.CONFIG_KEYS if key.flag and key.flag not in options]
    assert not unknown, f"CONFIG_KEYS in src/tenantmig/cli/docs.py names unknown options: {unknown}"


def test_every_command_has_a_section_in_the_reference() -> None:
    import argparse

    parser = build_parser()
    reference = docs.render()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in subs.choices:
        assert f"### `tenantmig {name}`" in reference


def test_readme_is_a_front_door_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 250, (
        f"README.md has {len(lines)} lines; at most 250 (move the detail to docs/)"
    )
    for command in README_COMMANDS:
        assert command in lines, f"README.md must keep this command exactly: {command}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        match = None if in_fence else re.match(r"^#{1,6}\s+(.*?)\s*#*$", line)
        if match:
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # code blocks
    text = re.sub(r"`[^`\n]*`", "", text.replace("[`", "[").replace("`]", "]"))  # code spans
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files_and_headings_inside_the_repository(page: Path) -> None:
    broken: list[str] = []
    for link in _links(page):
        if re.match(r"^[a-z]+:", link):  # https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if ROOT not in path.parents and path != ROOT:
            broken.append(f"{link} (outside the repository)")
        elif not path.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{link} (no such heading in {path.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_docs_name_no_place_outside_the_repository() -> None:
    for page in PAGES:
        assert "../shared" not in page.read_text(encoding="utf-8"), page
