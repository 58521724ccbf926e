"""Scores of ``daram eval`` and their uncertainty: accuracy, macro-F1, mean ± std over fine-tuning seeds and a
percentile bootstrap interval over the test examples."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    if len(predictions) != len(labels) or not labels:
        raise ValueError("predictions and labels must be non-empty and of equal length")
    return sum(int(p == y) for p, y in zip(predictions, labels)) / len(labels)


def macro_f1(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Unweighted mean of per-class F1 over the classes seen in labels or predictions.

    Per class, F1 = 2TP / (2TP + FP + FN), which is 0 when TP = 0; this is scikit-learn's
    ``f1_score(labels, predictions, average="macro")``.
    """
    if len(predictions) != len(labels) or not labels:
        raise ValueError("predictions and labels must be non-empty and of equal length")
    scores = []
    for c in sorted(set(labels) | set(predictions)):
        tp = sum(1 for p, y in zip(predictions, labels) if p == c and y == c)
        fp = sum(1 for p, y in zip(predictions, labels) if p == c and y != c)
        fn = sum(1 for p, y in zip(predictions, labels) if p != c and y == c)
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


METRICS = {"f1": macro_f1, "accuracy": accuracy}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the std of a single value is 0."""
    if not values:
        raise ValueError("no values")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _batched_scores(metric: str, predictions: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """``metric`` of every row of ``predictions`` / ``labels`` (both (resamples, n)), vectorised."""
    if metric == "accuracy":
        return (predictions == labels).mean(axis=1)
    # per-class TP, FP, FN by counting (row, class) pairs; classes seen in neither labels nor predictions of a
    # row are left out of its mean, as macro_f1 leaves them out
    offset = (np.arange(len(predictions)) * classes)[:, None]
    size = len(predictions) * classes

    def count(index: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        flat = (index + offset).ravel()
        return np.bincount(flat if where is None else flat[where.ravel()], minlength=size).reshape(-1, classes)

    hit, predicted, actual = count(predictions, predictions == labels), count(predictions), count(labels)
    seen = (predicted + actual) > 0
    f1 = np.divide(2 * hit, predicted + actual, out=np.zeros(hit.shape), where=seen)
    return (f1 * seen).sum(axis=1) / seen.sum(axis=1)


def bootstrap_interval(
    metric: str,
    runs: Sequence[Sequence[int]],
    labels: Sequence[int],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the seed-mean ``metric`` ("f1" or "accuracy") over the test examples.

    ``runs`` holds one prediction list per fine-tuning seed, all over the same ``labels``. Each resample draws
    the test examples with replacement, scores every run on that same draw and averages the runs: the
    interval covers the test set's sampling error of the number the report prints (the mean over seeds).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    predictions = np.asarray(runs, dtype=np.int64)
    truth = np.asarray(labels, dtype=np.int64)
    if predictions.ndim != 2 or predictions.shape[1] != len(truth) or not len(truth):
        raise ValueError("runs must be non-empty prediction lists as long as labels")
    classes = int(max(predictions.max(), truth.max())) + 1
    rng = np.random.default_rng(seed)
    block = max(1, 2_000_000 // len(truth))  # resamples per step: NSMC's 50,000 examples stay in ~100 MB
    means = []
    for start in range(0, resamples, block):
        draws = rng.integers(0, len(truth), size=(min(block, resamples - start), len(truth)))
        means.append(np.mean([_batched_scores(metric, run[draws], truth[draws], classes) for run in predictions], axis=0))
    means = np.concatenate(means)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)
