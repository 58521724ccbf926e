"""benchmarks/draw_bytes.py: draw counts fixed before sampling keep the target unbiased, the exact head too,
the mean squared error it prints is the real one, and its layouts lose no draw."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from draw_bytes import (  # noqa: E402
    SENTINEL, allocate, allocate_per_new_id, distinct_ids, estimate, expected_distinct, sample, sorted_layout, variants,
)

VOCAB, REPEATS, WIDTH = 40, 3000, 16


def teacher(seed: int = 0) -> torch.Tensor:
    """Logits of 6 positions from sharp (top-1 near 0.97) to flat, as float32 like a dump's."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, VOCAB, generator=g) * torch.tensor([6.0, 4.0, 2.5, 1.5, 0.8, 0.2])[:, None]


def weights_and_cdf(z: torch.Tensor):
    top = z.argmax(-1)
    e = torch.exp(z - z.gather(1, top[:, None]))
    return e, e.cumsum(-1), (e / e.sum(-1, keepdim=True)).double().numpy(), top.numpy()


def largest_z(p_hat: np.ndarray, p: np.ndarray) -> float:
    """The largest |mean - p| / standard error over every (position, id), from REPEATS independent targets.

    An id too rare to be drawn in REPEATS tries has no sample variance: its floor is that of WIDTH draws.
    """
    per_repeat = p_hat.reshape(REPEATS, -1, VOCAB)
    variance = np.maximum(per_repeat.var(0, ddof=1), p * (1 - p) / WIDTH)
    return float(np.max(np.abs(per_repeat.mean(0) - p) / np.sqrt(variance / REPEATS)))


def repeated(z: torch.Tensor) -> torch.Tensor:
    return z.repeat(REPEATS, 1)  # REPEATS independent dumps of the same positions


@pytest.mark.parametrize("head", [False, True])
def test_counts_chosen_before_the_draws_keep_the_target_unbiased_and_the_printed_mse_exact(head):
    z = teacher()
    e, cdf, p, top = weights_and_cdf(repeated(z))
    sum_p2 = (p * p).sum(-1)
    p_top = p[np.arange(len(p)), top]
    rest_var = (1 - p_top) ** 2 - (sum_p2 - p_top**2)
    rng = np.random.default_rng(1)
    counts = allocate(np.sqrt(rest_var if head else 1 - sum_p2), 4.0, WIDTH, rng)  # 1 to 16 draws, mean 4
    assert counts.min() == 1 and counts.max() >= 6  # counts vary from position to position
    drawn = sample(e, cdf, torch.rand(len(p), WIDTH, generator=torch.Generator().manual_seed(2)), top if head else None)
    if head:
        assert not (drawn == top[:, None]).any()  # the rest never holds the head
        p_hat = estimate(drawn, counts, top, p_top, VOCAB)  # an exact head (float64 here: no rounding bias)
    else:
        p_hat = estimate(drawn, counts, vocab=VOCAB)
    np.testing.assert_allclose(p_hat.sum(-1), 1.0, rtol=1e-9)
    assert largest_z(p_hat, p[: len(z)]) < 5
    # the MSE the benchmark prints: (1 - sum p^2) / c, or (1 - p_h)^2 (1 - sum r^2) / c with the head
    printed = (rest_var if head else 1 - sum_p2) / counts
    empirical = ((p_hat - p) ** 2).sum(-1)
    assert empirical.mean() == pytest.approx(printed.mean(), rel=0.05)


def test_a_count_that_looks_at_the_draws_is_caught_as_biased():
    """The check above can fail: stop after one draw when it is the top id, else keep all 16."""
    z = teacher()
    e, cdf, p, top = weights_and_cdf(repeated(z))
    drawn = sample(e, cdf, torch.rand(len(p), WIDTH, generator=torch.Generator().manual_seed(3)))
    counts = np.where(drawn[:, 0] == top, 1, WIDTH)
    assert largest_z(estimate(drawn, counts, vocab=VOCAB), p[: len(z)]) > 10


def test_allocation_keeps_the_budget_and_follows_the_weights():
    rng = np.random.default_rng(0)
    w = np.concatenate([np.full(5000, 0.05), np.full(5000, 1.0), np.zeros(10)])
    counts = allocate(w, 6.0, 24, rng)
    assert counts.min() >= 1 and counts.max() <= 24
    assert counts.mean() == pytest.approx(6.0, abs=0.05)
    # zeros get the minimum, the low weights are clipped up to 1 and the rest share what is left
    assert (counts[-10:] == 1).all() and (counts[:5000] == 1).all()
    assert counts[5000:-10].mean() == pytest.approx((6.0 * w.size - 5010) / 5000, abs=0.05)
    with pytest.raises(ValueError, match="budget 30"):
        allocate(w, 30.0, 24, rng)


def test_layouts_keep_every_draw_and_pad_with_the_sentinel():
    drawn = np.array([[7, 3, 7, 9, 1, 1], [5, 5, 5, 5, 5, 5]])
    counts = np.array([4, 2])
    relabel = np.random.default_rng(0).permutation(10)
    plain = sorted_layout(drawn, counts, None, False)
    assert plain.tolist() == [[3, 7, 7, 9, SENTINEL, SENTINEL], [5, 5, SENTINEL, SENTINEL, SENTINEL, SENTINEL]]
    assert distinct_ids(plain).tolist() == [3, 1]
    coded = sorted_layout(drawn, counts, relabel, True).astype(np.int64)
    for row, want, c in zip(coded, drawn, counts):  # a reader: undo the differences, then the relabelling
        ranks = np.cumsum(row[:c])
        assert (row[c:] == SENTINEL).all()
        assert sorted(np.argsort(relabel)[ranks]) == sorted(want[:c])


def test_every_layout_has_its_own_name():
    """Two recipes of one name would append their arrays to one layout, whose repeats zstd would then halve."""
    names = [name for name, _ in variants([4.0, 8.0, 16.0])]
    assert len(set(names)) == len(names) and "draws-16 + freq + diff" in names


def test_per_new_id_allocation_spends_the_expected_distinct_ids_of_fixed_draws():
    k = 50
    uniform = np.full((1, k), 1 / k)
    table = expected_distinct(uniform, np.zeros(1), 8)
    np.testing.assert_allclose(table[0], k * (1 - (1 - 1 / k) ** np.arange(9)))
    # 200 positions from flat (top-1 0.02 of 50 ids) to sure (0.99); tails of 0
    top = np.linspace(0.02, 0.99, 200)[:, None]
    top_p = np.concatenate([top, np.repeat((1 - top) / (k - 1), k - 1, axis=1)], axis=1)
    table = expected_distinct(top_p, np.zeros(200), 32)
    counts = allocate_per_new_id(1 - (top_p**2).sum(1), table, 8)
    assert np.array_equal(counts, allocate_per_new_id(1 - (top_p**2).sum(1), table, 8))  # a function of p alone
    spent = table[np.arange(200), counts].mean()
    assert table[:, 8].mean() * 0.97 <= spent <= table[:, 8].mean()
    assert counts[-20:].min() > counts[:20].max()  # a sure position's draws are mostly free repeats
