"""Processes that daram starts, or that a launcher starts for it, end with their parent.

prepare's workers and the ranks of a ``torchrun`` job would otherwise live on when their parent is
SIGKILLed (an out-of-memory kill, a preempted node): prepare's kept its work directory's lock, blocked on
a result pipe nobody reads; a rank waits in a collective for a peer that will never come.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_CHECK_S = 1.0  # without a parent-death signal: how often a process checks that its parent lives


def die_with_parent(parent: int) -> None:
    """SIGKILL this process as soon as ``parent`` (its parent's pid, taken in the parent) ends."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    else:  # pragma: no cover - no parent-death signal: a thread watches the parent, even while a write blocks
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(PARENT_CHECK_S)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="daram-parent-watch").start()
    if os.getppid() != parent:  # it ended before the signal was set
        os._exit(1)
