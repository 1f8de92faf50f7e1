"""What migrations print goes to the run log, never to tenantmig's stdout.

Data migrations often ``print()`` progress. tenantmig's stdout carries its own result (one JSON
document with ``--json``), so while a chain runs, ``sys.stdout`` and ``sys.stderr`` point at a
writer that logs each line to the run log with the schema it came from, and, when asked (a
terminal, not ``--json``), echoes it to the real stderr.

Only in the main thread: redirecting ``sys.stdout`` is process-wide, and two threads swapping it
at once can leave it pointing at the wrong place for good. tenantmig migrates in the main thread
of each process (the coordinator, or a worker); an application embedding the API in a thread
keeps its own stdout. Worker processes also point file descriptor 1 at 2 (``executor``), so even
output written below Python (a subprocess a migration starts) cannot reach stdout.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from typing import TextIO

from tenantmig.logs import LOGGER_NAME


class _LineLogger(io.TextIOBase):
    def __init__(self, schema: str, echo_to: TextIO | None) -> None:
        super().__init__()
        self.schema = schema
        self.echo_to = echo_to
        self.log = logging.getLogger(LOGGER_NAME)
        self.pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        if self.pending:
            self._emit(self.pending)
            self.pending = ""

    def _emit(self, line: str) -> None:
        if not line.strip():
            return
        self.log.info("migration output: %s", line, extra={"tenant": self.schema})
        if self.echo_to is not None:
            # On a terminal the coordinator may have drawn a progress line: clear it first (it
            # is drawn again with the next outcome).
            clear = "\r\x1b[K" if self.echo_to.isatty() else ""
            self.echo_to.write(f"{clear}{self.schema}: {line}\n")
            self.echo_to.flush()


@contextmanager
def migration_output(schema: str, *, echo: bool = False) -> Iterator[None]:
    """Send what is printed inside the block to the run log (and stderr when ``echo``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    writer = _LineLogger(schema, sys.stderr if echo else None)
    try:
        with redirect_stdout(writer), redirect_stderr(writer):
            yield
    finally:
        writer.flush()
