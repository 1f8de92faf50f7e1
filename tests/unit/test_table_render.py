"""Tables: what fits on its lines is drawn without rich's layout, and looks the same.

`status` and `runs show` of 100,000 tenants print 100,000 rows; laying them out through rich
took half a minute and hundreds of MB. Where nothing wraps, a plain layout draws the same
text; where something must wrap (a narrow terminal), rich still draws it, and where the
columns that wrap would be too narrow to wrap between words, each row is drawn as a block.
"""

from __future__ import annotations

import random

import pytest

from tenantmig.cli import render

HEADERS = ["tenant", "database", "status", "from", "to", "error"]
WORDS = ["acme", "ünïcode", "日本語", "x", "", None, "a much longer cell than the others", 42]


def _rich(monkeypatch: pytest.MonkeyPatch, rows: list[list[object]], width: str) -> str:
    with monkeypatch.context() as patch:
        patch.setattr(render, "_unwrapped", lambda *args: None)
        patch.setenv("COLUMNS", width)
        return render.table(HEADERS, rows, keep=("status",))


@pytest.mark.parametrize("seed", range(30))
def test_a_table_that_fits_is_what_rich_draws(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    pick = random.Random(seed)
    rows = [[pick.choice(WORDS) for _ in HEADERS] for _ in range(pick.randint(1, 12))]
    if seed % 3 == 0:  # an error with its DETAIL on a second line
        rows[0][-1] = "duplicate key value\nDETAIL:  Key (id)=(1) already exists."
    monkeypatch.setenv("COLUMNS", "500")
    plain = render._unwrapped
    drawn_plainly: list[str | None] = []
    monkeypatch.setattr(
        render, "_unwrapped", lambda *args: drawn_plainly.append(plain(*args)) or drawn_plainly[0]
    )
    drawn = render.table(HEADERS, rows, keep=("status",))
    assert drawn_plainly[0] is not None
    assert drawn == _rich(monkeypatch, rows, "500")


def test_what_must_wrap_or_holds_a_tab_is_left_to_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    rows: list[list[object]] = [["acme", "", "failed", "base", "001", "word " * 30]]
    monkeypatch.setenv("COLUMNS", "60")
    narrow = render.table(HEADERS, rows, keep=("status",))
    assert max(len(line) for line in narrow.splitlines()) <= 60
    assert narrow == _rich(monkeypatch, rows, "60")
    assert len(narrow.splitlines()) > 3  # the error wrapped inside its column
    tabbed: list[list[object]] = [["acme", "", "failed", "base", "001", "a\tb"]]
    assert render._unwrapped(HEADERS, [[str(c) for c in tabbed[0]]], 500) is None


def test_piped_output_of_many_rows_is_drawn_without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    rows: list[list[object]] = [[f"t{i:06d}", "", "ok", "base", "001", ""] for i in range(20000)]
    drawn = render.table(HEADERS, rows, keep=("status",)).splitlines()
    assert len(drawn) == 20002 and drawn[0].split() == ["tenant", "status", "from", "to"]
    assert drawn[2] == "t000000  ok      base  001"


def test_a_terminal_too_narrow_for_the_columns_gets_each_row_as_a_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At 50 columns the revisions, kept whole, leave the error a few cells: rich folded it a
    character or two per line. Each row becomes a block instead, words kept whole."""
    error = (
        "canceling statement due to lock timeout while waiting for AccessExclusiveLock "
        "on relation orders\nDETAIL:  process 4242 holds it"
    )
    rows: list[list[object]] = [
        ["acme", "", "failed", "003_add_inventory_tracking", "k12_views", error],
        ["globex", "", "ok", "003_add_inventory_tracking", "k12_views", ""],
    ]
    monkeypatch.setenv("COLUMNS", "50")
    drawn = render.table(HEADERS, rows, keep=("status", "from", "to"))
    lines = drawn.splitlines()
    assert max(len(line) for line in lines) <= 50
    assert lines[:4] == [
        "acme",
        "  status  failed",
        "  from    003_add_inventory_tracking",
        "  to      k12_views",
    ]
    # Wrapped between words, its DETAIL on a line of its own; an empty cell left out.
    assert lines[4:8] == [
        "  error   canceling statement due to lock timeout",
        "          while waiting for AccessExclusiveLock on",
        "          relation orders",
        "          DETAIL:  process 4242 holds it",
    ]
    assert lines[8:] == ["", "globex", "  status  ok", *lines[2:4]]
    # Wide enough for the wrapped columns to wrap between words: still a table.
    monkeypatch.setenv("COLUMNS", "120")
    wide = render.table(HEADERS, rows, keep=("status", "from", "to"))
    assert wide.splitlines()[0].split() == ["tenant", "status", "from", "to", "error"]
