"""One training process per ``train.out``: two runs resumed into one directory would interleave their
checkpoints and metrics (a second `daram run` beside a running one did, losing metrics lines).

The lock is ``flock`` on ``OUT/.train.lock``: the kernel drops it when the process ends, however it ends
(SIGKILL included), so it never goes stale. It is held for the rest of the process and is re-entrant
within it (a caller may set up a run in the same directory again).
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from pathlib import Path

from daram.errors import DaramError

LOCK_FILE = ".train.lock"
_held: dict[Path, int] = {}  # resolved out -> the open descriptor that holds its lock


def claim_out(out: Path) -> None:
    """Hold ``out``'s training lock, or refuse in one line naming the process that holds it."""
    out = Path(out).resolve()
    if out in _held:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DaramError(f"train.out {out}: cannot write there ({exc.strerror or type(exc).__name__})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise DaramError(
            f"train.out {out} is in use by {holder}; wait for it to end (or pause it with SIGTERM), or choose another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} ({' '.join(['daram', *sys.argv[1:]])[:200]})".encode(), 0)
    _held[out] = fd
