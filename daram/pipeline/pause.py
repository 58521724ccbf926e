"""Clean pauses: SIGTERM, SIGINT or a time limit become a request to stop at the next safe point.

Preempted notebooks and SLURM jobs get SIGTERM, and sessions are cut after a fixed time. Dying
there loses the chunk or step in flight and, worse, can leave a shard lock held until its
heartbeat expires. So long commands check :meth:`Pause.requested` between units of work (a
chunk, a step), finish the unit, release what they hold and exit 75 (EX_TEMPFAIL) with a "paused" line; the
same command run again continues where this one stopped.

A second SIGINT (Ctrl-C twice) is not caught: whoever presses it twice wants out now.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType

from daram.units import format_duration

class Pause:
    """``with Pause(time_limit_s) as pause: ... if pause.requested(next_unit_s): break``.

    Installs SIGTERM and SIGINT handlers for the duration of the block (main thread only; elsewhere
    it only watches the time limit) and restores the previous ones on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, time_limit_s: float = 0.0, started: float | None = None) -> None:
        self.time_limit_s = time_limit_s
        self.started = time.monotonic() if started is None else started
        self.reason = ""  # "SIGTERM", "SIGINT" or "time limit"; empty while no stop is requested
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "Pause":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.reason = signal.Signals(signum).name
        # Only the first one is a request; the next Ctrl-C interrupts at once.
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def requested(self, next_unit_s: float = 0.0) -> bool:
        """True once a signal came, or when the next unit of work (``next_unit_s``, a generous estimate)
        would not end before the time limit."""
        if not self.reason and self.time_limit_s and self.elapsed() + next_unit_s >= self.time_limit_s:
            self.reason = f"time limit {format_duration(self.time_limit_s)}"
        return bool(self.reason)
