"""benchmarks/harness.py: the order rotates, warm-up calls are not counted, ratios are of the medians."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from harness import compare  # noqa: E402


def test_sides_alternate_after_untimed_warm_up_and_ratios_are_of_medians(capsys):
    calls = []
    # Sides that report their own seconds: the figures are exact, whatever the machine's load.
    seconds = {"base": iter([9.0, 1.0, 1.2, 0.8]), "other": iter([9.0, 2.0, 3.0, 2.2])}

    def side(name):
        def run():
            calls.append(name)
            return next(seconds[name])
        return run

    result = compare({"base": side("base"), "other": side("other")}, rounds=3, warmup=1)
    # warm-up A B, then A B / B A / A B: a load that rises during the run falls on both sides alike
    assert calls == ["base", "other", "base", "other", "other", "base", "base", "other"]
    assert result.times("base") == [1.0, 1.2, 0.8]  # the warm-up's 9.0 is not among them
    assert result.ratio("other") == pytest.approx(2.2 / 1.0)  # median 2.2 over median 1.0
    assert result.round_ratios("other") == pytest.approx([2.0, 2.5, 2.75])
    out = capsys.readouterr().out
    assert "other / base (time) = 2.200 (same-round ratios: median 2.500, min 2.000, max 2.750)" in out
    assert "median 1 s (min 0.8, max 1.2; range 40% of the median; 3 rounds)" in out


def test_three_sides_rotate_and_fewer_than_three_rounds_are_refused():
    calls = []
    sides = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    compare(sides, rounds=3, warmup=0, quiet=True)
    assert calls == list("abc" "bca" "cab")
    with pytest.raises(SystemExit, match="at least 3 rounds"):
        compare(sides, rounds=2)
