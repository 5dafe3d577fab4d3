"""Child processes that do not outlive their parent (no orphaned servers when a launcher is killed)."""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Sequence


def dies_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv` run so that it gets SIGTERM when this process dies (Linux: util-linux's setpriv sets
    PR_SET_PDEATHSIG, which survives the exec).

    Not a preexec_fn: running Python in the child between fork and exec is unsafe once the parent
    has threads (gRPC's pollers): a server restarted from a running mesh died of SIGSEGV before its
    exec. Linux ties the death signal to the thread that forks, so it is only armed from the main
    thread, whose end is the process's end (a worker thread's exit would kill the child early)."""
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return list(argv)
    return [setpriv, "--pdeathsig", "TERM", "--", *argv]
