"""One training process per train.out: a second is refused in one line naming the first; the lock dies with it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daram.errors import DaramError
from daram.pipeline.train.out_lock import claim_out

HOLD = "import sys, time; from daram.pipeline.train.out_lock import claim_out; claim_out(sys.argv[1]); print('held', flush=True); time.sleep(60)"


def test_a_second_process_is_refused_until_the_first_ends(tmp_path):
    # Catches two `daram run` (or `student-train --resume`) on one out training side by side: they interleaved
    # checkpoints and lost metrics lines.
    out = tmp_path / "student"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DaramError, match=rf"^train.out {out} is in use by pid {holder.pid} on "):
            claim_out(out)
    finally:
        holder.kill()  # SIGKILL: nothing of it runs, the kernel drops its lock
        holder.wait()
    claim_out(out)
    claim_out(out)  # re-entrant within a process: setting up the same out again is not a conflict


def test_an_out_that_cannot_be_created_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DaramError, match=rf"^train.out {blocker / 'out'}: cannot write there"):
        claim_out(blocker / "out")
