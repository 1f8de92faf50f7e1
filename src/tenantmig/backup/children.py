"""pg_dump, pg_restore and psql as children that never outlive tenantmig.

A client program that outlives tenantmig is a writer nobody watches: a ``psql
--single-transaction`` left running after tenantmig was killed goes on to COMMIT a restore (or
a move's copy) that tenantmig will never verify, record or clean up. So every child:

- runs in a process group of its own, so that a Ctrl-C on the terminal (sent to the foreground
  group) reaches tenantmig alone, which then ends its children itself, in order;
- gets a parent-death signal (Linux ``PR_SET_PDEATHSIG``): SIGKILL the moment tenantmig dies,
  however it dies, SIGKILL included. The child's server connection then closes before it could
  commit, and PostgreSQL rolls its open transaction back;
- is killed by :class:`Children` when the block that started it is left early (an error, an
  interrupt), before that block's caller sees the exception.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL the calling process when its parent dies (no-op elsewhere).

    The signal is sent when the *thread* that forked the child exits; tenantmig starts
    children from its main thread (or a worker process's), which lives as long as the process.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _child_setup(parent: int) -> None:
    """Runs in the child between fork and exec."""
    os.setpgid(0, 0)
    die_with_parent()
    # The parent may have died before prctl: then the signal never comes; end now.
    if os.getppid() != parent:
        os._exit(1)


def start(args: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Start a client program as a child that dies with tenantmig (see the module docstring)."""
    parent = os.getpid()
    return subprocess.Popen(list(args), preexec_fn=lambda: _child_setup(parent), **popen)


def run(args: Sequence[str], **popen: Any) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(capture_output=True, text=True)`` for a child that dies with tenantmig,
    killed if the caller is interrupted while it runs."""
    with Children() as children:
        child = children.start(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
        )
        out, err = child.communicate()
    return subprocess.CompletedProcess(list(args), child.returncode, out, err)


class Children:
    """Children started in a block; those still running when it is left early are killed.

    SIGKILL, not SIGTERM: psql answers SIGTERM by exiting too, but SIGKILL cannot be caught or
    delayed, and what matters is that the child's connection closes before any COMMIT is sent.
    """

    def __init__(self) -> None:
        self._started: list[subprocess.Popen[Any]] = []

    def start(self, args: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        child = start(args, **popen)
        self._started.append(child)
        return child

    def kill_all(self) -> None:
        for child in self._started:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)
        for child in self._started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=10)

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.kill_all()
