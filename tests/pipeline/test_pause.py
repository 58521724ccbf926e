"""Clean pauses (daram/pipeline/pause.py): a signal or the time limit becomes a request, never a death."""

import signal
import time

from daram.pipeline.pause import Pause


def test_sigterm_and_sigint_become_a_request_and_the_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with Pause() as pause:
        assert not pause.requested()
        signal.raise_signal(signal.SIGTERM)  # without the handler this would end the test run
        assert pause.requested() and pause.reason == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before
    with Pause() as pause:
        signal.raise_signal(signal.SIGINT)
        assert pause.reason == "SIGINT"
        # a second Ctrl-C is not caught: it interrupts at once
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_time_limit_counts_the_next_unit_of_work():
    pause = Pause(time_limit_s=10.0, started=time.monotonic() - 6.0)
    assert not pause.requested(next_unit_s=3.0)  # 6 + 3 < 10: there is time for one more
    assert pause.requested(next_unit_s=5.0) and pause.reason == "time limit 10s"
    assert not Pause().requested(next_unit_s=1e9)  # no limit
