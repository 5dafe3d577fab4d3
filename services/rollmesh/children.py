"""Child processes that do not outlive their parent (no orphaned servers when a launcher is killed)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

_LIBC: Any = None
if sys.platform == "linux":
    with contextlib.suppress(OSError):
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _child_setup(parent_pid: int) -> None:
    """In the child before exec: SIGTERM when the parent dies."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for subprocess.Popen, or None where it cannot be armed. Linux ties the death
    signal to the thread that forks, so it is only armed from the main thread, whose end is the
    process's end (a worker thread's exit would kill the child early)."""
    if _LIBC is None or threading.current_thread() is not threading.main_thread():
        return None
    pid = os.getpid()
    return lambda: _child_setup(pid)
