"""What a person sees in a real terminal: a pseudo-terminal of a given size, rendered by a terminal
emulator (pyte), with Ctrl-C typed on the keyboard."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pyte
import pytest
import sqlalchemy as sa

from tenantmig import api
from tenantmig.server.config import Settings, load_settings

from .helpers import REPO, project_with

SLOW = '''"""slow"""
from alembic import op

revision = "004_slow"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None
tenantmig_replay = False  # every tenant runs it: a run that takes a while


def upgrade() -> None:
    op.execute("SELECT pg_sleep({seconds})")


def downgrade() -> None:
    pass
'''
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
BAR = "━"  # rich's bar


class Terminal:
    """``tenantmig ARGS`` with a pseudo-terminal of ``columns`` as its controlling terminal."""

    def __init__(self, config: Path, url: str, *args: str, columns: int, rows: int = 60) -> None:
        self.columns, self.rows = columns, rows
        primary, secondary = os.openpty()
        fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

        def controlling_terminal() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        env = {**os.environ, "TENANTMIG_DATABASE_URL": url, "TERM": "xterm-256color"}
        env.pop("COLUMNS", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tenantmig", "--config", str(config), *args],
            stdin=secondary, stdout=secondary, stderr=secondary, cwd=REPO, env=env,
            preexec_fn=controlling_terminal,
        )  # fmt: skip
        os.close(secondary)
        self.primary = primary
        self.raw = b""

    def read_until(self, done: Callable[[str], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done(self.raw.decode(errors="replace")):
            ready, _, _ = select.select([self.primary], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(self.primary, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                self.raw += chunk
            elif self.process.poll() is not None:
                return

    def finish(self) -> int:
        self.read_until(lambda _: False, timeout=120)
        code = self.process.wait(timeout=60)
        os.close(self.primary)
        return code

    def screen(self) -> list[str]:
        screen = pyte.Screen(self.columns, self.rows)
        stream = pyte.ByteStream(screen)
        stream.feed(self.raw.replace(b"\n", b"\r\n"))
        return [line.rstrip() for line in screen.display if line.strip()]

    def widest_line(self, containing: str = "") -> int:
        """The widest thing ever written on one line (escape sequences left out), among the
        lines holding ``containing``."""
        text = _ANSI.sub("", self.raw.decode(errors="replace"))
        return max(len(part) for part in re.split(r"[\r\n]", text) if containing in part)


def _slow_project(tmp_path: Path, database_url: str, seconds: float, tenants: int) -> Path:
    config = project_with(tmp_path, {"004_slow.py": SLOW.format(seconds=seconds)})
    settings: Settings = load_settings(config_file=config, database_url=database_url)
    assert api.upgrade(settings, api.Selection.shared_only()).succeeded
    names = [f"t{i:03d}" for i in range(tenants)]
    api.create_tenants(settings, names, migrate=False)
    api.upgrade(settings, api.Selection.all_tenants(), "003_add_inventory_tracking")
    return config


@pytest.mark.parametrize("columns", [70, 80, 120])
def test_progress_fits_the_terminal_and_ends_as_one_line(
    tmp_path: Path, database_url: str, columns: int
) -> None:
    config = _slow_project(tmp_path, database_url, 0.1, 24)
    terminal = Terminal(config, database_url, "upgrade", "--all-tenants", columns=columns)
    assert terminal.finish() == 0
    assert terminal.widest_line("done ·") <= columns  # the bar and its counts, while drawn
    text = terminal.raw.decode(errors="replace")
    assert text.count("done ·") > 2  # redrawn as tenants finished, in place
    screen = terminal.screen()
    assert not any(BAR in line for line in screen), screen  # the bar is gone at the end
    counts = [line for line in screen if "done ·" in line]
    assert len(counts) == 1 and counts[0].startswith("24/24 done · 0 failed"), screen
    assert any(line.startswith("run ") and "24 ok" in line for line in screen), screen


def test_ctrl_c_leaves_one_clean_line_with_the_true_counts(
    tmp_path: Path, database_url: str
) -> None:
    config = _slow_project(tmp_path, database_url, 0.4, 30)
    terminal = Terminal(config, database_url, "upgrade", "--all-tenants", columns=80)
    terminal.read_until(lambda seen: bool(re.search(r"\b[4-9]/30 done", seen)))
    os.write(terminal.primary, b"\x03")  # Ctrl-C, through the terminal driver
    assert terminal.finish() == 130
    screen = terminal.screen()
    assert not any(BAR in line for line in screen), screen
    counts = [line for line in screen if "done ·" in line]
    assert len(counts) == 1, screen
    found = re.match(r"(\d+)/30 done · (\d+) failed · .*interrupted, (\d+) not finished", counts[0])
    assert found, counts[0]
    done, failed, left = (int(g) for g in found.groups())
    assert done + failed + left == 30 and done >= 4
    # The true counts: the ledger agrees on how many tenants were migrated.
    settings = load_settings(config_file=config, database_url=database_url)
    record, outcomes = api.run_details(settings, api.runs(settings)[0].id)
    assert record.outcome == "interrupted"
    assert sum(1 for o in outcomes if o.status.value == "ok") == done


def _status_with_an_error(database_url: str, error: str, columns: int) -> Terminal:
    """`status` in a terminal of ``columns``, tenant acme's last run having failed with
    ``error`` (globex's went well); finished."""
    settings = load_settings(config_file=REPO / "alembic.ini", database_url=database_url)
    assert api.upgrade(settings, api.Selection.shared_only()).succeeded
    api.create_tenants(settings, ["acme", "globex"])
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE tenantmig_run_tenants SET status = 'failed', error = :e"
                " WHERE tenant = 'acme'"
            ),
            {"e": error},
        )
    engine.dispose()
    terminal = Terminal(REPO / "alembic.ini", database_url, "status", columns=columns)
    assert terminal.finish() == 0
    return terminal


def test_tables_fit_80_columns_and_wrap_long_errors(tmp_path: Path, database_url: str) -> None:
    terminal = _status_with_an_error(database_url, "Q" * 150, 80)
    assert terminal.widest_line() <= 80
    screen = "\n".join(terminal.screen())
    assert screen.count("Q") == 150  # wrapped inside its column, not cut
    assert "003_add_inventory_tracking" in screen  # revisions are never folded


def test_a_terminal_too_narrow_for_the_table_shows_each_tenant_as_a_block(
    database_url: str,
) -> None:
    """At 50 columns the revisions leave an error no room to wrap between words: each tenant
    is printed as a block, every word of its error whole."""
    error = (
        "canceling statement due to lock timeout while waiting for AccessExclusiveLock "
        "on relation orders of tenant acme"
    )
    terminal = _status_with_an_error(database_url, error, 50)
    assert terminal.widest_line() <= 50, terminal.screen()
    screen = terminal.screen()
    assert "acme" in screen and "globex" in screen  # each tenant heads its block
    shown = {word for line in screen for word in line.split()}
    assert set(error.split()) <= shown, screen
