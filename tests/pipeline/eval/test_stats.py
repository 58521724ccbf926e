"""Scores and their uncertainty: metrics against scikit-learn, mean ± std, the bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest

from daram.pipeline.eval.stats import _batched_scores, accuracy, bootstrap_interval, macro_f1, mean_std

FIXED_PREDICTIONS = [
    ([1, 0, 1, 1, 0, 1, 0, 0], [1, 1, 1, 0, 0, 1, 0, 1]),  # binary
    ([0, 0, 0, 0, 0, 0], [0, 1, 0, 1, 0, 1]),  # class 1 never predicted: its F1 is 0
    ([2, 2, 2, 2], [0, 0, 1, 1]),  # a class only in the predictions
    ([0, 1, 2, 3, 3, 2, 1, 0, 0, 3, 2, 1], [0, 1, 2, 3, 2, 3, 0, 1, 0, 3, 1, 1]),  # four choices, HellaSwag-like
    ([1, 1, 1], [1, 1, 1]),  # perfect on one class
]


@pytest.mark.parametrize("predictions,labels", FIXED_PREDICTIONS)
def test_metrics_match_scikit_learn(predictions, labels) -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    assert macro_f1(predictions, labels) == pytest.approx(
        sklearn_metrics.f1_score(labels, predictions, average="macro", zero_division=0)
    )
    assert accuracy(predictions, labels) == pytest.approx(sklearn_metrics.accuracy_score(labels, predictions))


def test_metrics_refuse_mismatched_input() -> None:
    with pytest.raises(ValueError):
        macro_f1([0, 1], [0])
    with pytest.raises(ValueError):
        accuracy([], [])


@pytest.mark.parametrize("metric", ["f1", "accuracy"])
def test_vectorised_scores_equal_the_plain_metrics(metric) -> None:
    # The bootstrap's batched metric must be the report's metric on every resample, classes absent from a
    # resample included (they must drop out of the macro mean, not count as F1 = 0).
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 60)
    predictions = np.where(rng.random(60) < 0.5, labels, rng.integers(0, 4, 60))
    draws = rng.integers(0, 12, size=(40, 60))  # indices into the first 12 examples only: classes go missing
    batched = _batched_scores(metric, predictions[draws], labels[draws], 4)
    plain = {"f1": macro_f1, "accuracy": accuracy}[metric]
    assert batched == pytest.approx([plain(predictions[d].tolist(), labels[d].tolist()) for d in draws])


def test_mean_std_is_the_sample_std() -> None:
    assert mean_std([0.5, 0.7, 0.9]) == pytest.approx((0.7, 0.2))
    assert mean_std([0.4]) == (0.4, 0.0)


def test_bootstrap_interval_brackets_the_score_and_narrows_with_examples() -> None:
    rng = np.random.default_rng(1)

    def runs(n: int) -> tuple[list[list[int]], list[int]]:
        labels = rng.integers(0, 2, n)
        return [np.where(rng.random(n) < 0.8, labels, 1 - labels).tolist() for _ in range(3)], labels.tolist()

    small, small_labels = runs(100)
    large, large_labels = runs(2000)
    low, high = bootstrap_interval("accuracy", small, small_labels)
    mean = np.mean([accuracy(r, small_labels) for r in small])
    assert low < mean < high and 0.05 < high - low < 0.25  # about 4 standard errors of 0.8 at n = 100 (0.04)
    wide = high - low
    low, high = bootstrap_interval("accuracy", large, large_labels)
    assert high - low < wide / 3  # sqrt(20) times narrower, less resampling noise
    assert bootstrap_interval("f1", small, small_labels) == bootstrap_interval("f1", small, small_labels)  # seeded


def test_bootstrap_interval_checks_its_input() -> None:
    with pytest.raises(ValueError, match="metric must be one of"):
        bootstrap_interval("auc", [[0, 1]], [0, 1])
    with pytest.raises(ValueError, match="as long as labels"):
        bootstrap_interval("f1", [[0, 1, 1]], [0, 1])
