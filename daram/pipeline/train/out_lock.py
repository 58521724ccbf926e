"""One training process per ``train.out``: two runs resumed into one directory would interleave their
checkpoints and metrics (a second `daram run` beside a running one did, losing metrics lines).

The lock is a :class:`~daram.storage.FileLock` on ``OUT/.train.lock``: the kernel drops it when the
process ends, however it ends (SIGKILL included), and one left held by a holder that is gone is taken
over. It is held for the rest of the process and is re-entrant within it (a caller may set up a run in
the same directory again).
"""

from __future__ import annotations

from pathlib import Path

from daram.errors import DaramError
from daram.storage import FileLock

LOCK_FILE = ".train.lock"
_held: dict[Path, FileLock] = {}  # resolved out -> the lock this process holds on it


def claim_out(out: Path) -> None:
    """Hold ``out``'s training lock, or refuse in one line naming the process that holds it."""
    out = Path(out).resolve()
    if out in _held:
        return
    lock = FileLock(out / LOCK_FILE, f"train.out {out}", lambda holder: (
        f"train.out {out} is in use by {holder}; wait for it to end (or pause it with SIGTERM), or choose another --out"))
    try:
        out.mkdir(parents=True, exist_ok=True)
        _held[out] = lock.acquire()
    except OSError as exc:
        raise DaramError(f"train.out {out}: cannot write there ({exc.strerror or type(exc).__name__})") from None
