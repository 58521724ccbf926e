"""The learning-rate schedule."""

from __future__ import annotations

import pytest

from daram.pipeline.schedule import lr_factor


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cosine = [lr_factor(s, 4, 20, 0.1, "cosine") for s in range(20)]
    assert cosine[:4] == [0.25, 0.5, 0.75, 1.0] and cosine[4] == 1.0
    assert all(a >= b for a, b in zip(cosine[4:], cosine[5:]))
    assert lr_factor(20, 4, 20, 0.1, "cosine") == pytest.approx(0.1)
    assert lr_factor(12, 4, 20, 0.1, "linear") == pytest.approx(0.1 + 0.9 * 0.5)
