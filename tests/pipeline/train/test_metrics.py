"""Metrics: the objective named as it is computed, resume trimming, the curve, plurals in the summary."""

from __future__ import annotations

import pytest

from daram.pipeline.train.metrics import MetricsLog, objective_formula, plot_curves, read_metrics, summary_line


def test_objective_formula_says_what_the_loss_is():
    assert objective_formula(0.0, 0.1, 2.0) == "0.1 x CE"  # the CE-only baseline's "loss" is a tenth of its CE
    assert objective_formula(0.0, 1.0, 2.0) == "CE"
    assert objective_formula(1.0, 0.1, 2.0) == "4 x KL + 0.1 x CE"  # alpha_kd * T^2
    assert objective_formula(1.0, 0.0, 1.0) == "1 x KL"


def test_trim_drops_records_after_the_checkpoint_and_the_curve_is_drawn(tmp_path):
    log = MetricsLog(tmp_path)
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 0.1 * step, "kd": None, "ce": step, "objective": "0.1 x CE"})
    log.write({"step": 3, "split": "heldout", "ce": 3.0, "kl": 0.5, "temperature": 2.0})
    log.trim(2)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    MetricsLog(tmp_path, main=False).write({"step": 9})  # other ranks never write
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert plot_curves(tmp_path).stat().st_size > 10_000


@pytest.mark.parametrize("steps, text", [(1, "1 step,"), (2, "2 steps,")])
def test_summary_line_plurals_and_formula(steps, text):
    summary = {"steps": steps, "tokens": 10, "tokens_this_run": 10, "seconds": 1.0, "heldout": None, "out": "o",
               "last": {"loss": 0.5, "kd": None, "ce": 5.0, "objective": "0.1 x CE"}}
    line = summary_line(summary, "ce-only")
    assert text in line and "loss 0.5000 (= 0.1 x CE), CE 5.0000" in line
