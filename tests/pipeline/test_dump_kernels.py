"""The dump's per-slice math against plain torch, on logits with a realistic (peaked, long-tailed) shape."""

import math

import pytest
import torch

from daram.pipeline.dump_kernels import TemperedHead, count_draws, sample_slice, topk_slice


def zipf_logits(rows: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Log of a shuffled Zipf distribution per row plus noise: a few likely ids, a long tail."""
    g = torch.Generator().manual_seed(seed)
    ranks = torch.stack([torch.randperm(vocab, generator=g) for _ in range(rows)]).float() + 1
    return -1.1 * ranks.log() + 0.3 * torch.randn(rows, vocab, generator=g)


def test_tempered_head_equals_linear_divided_by_t():
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 300, bias=True)
    hidden = torch.randn(7, 16)
    out = torch.empty(10, 300)
    z = TemperedHead.from_linear(linear, 1.7)(hidden, out)
    assert z.shape == (7, 300) and z.data_ptr() == out.data_ptr()  # written into the buffer, no new tensor
    torch.testing.assert_close(z, linear(hidden) / 1.7, rtol=1e-5, atol=1e-6)


def test_topk_slice_matches_log_softmax_topk_and_exact_entropy():
    z = zipf_logits(6, 5000) / 2.0
    reference = torch.log_softmax(z.double(), -1)
    ids, logprobs, entropy = topk_slice(z, torch.empty(8, 5000), 32)
    ref_values, ref_ids = reference.topk(32)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(logprobs.double(), ref_values, rtol=0, atol=2e-6)
    exact = -(reference.exp() * reference).sum(-1)
    torch.testing.assert_close(entropy.double(), exact, rtol=1e-5, atol=1e-5)
    assert (logprobs.diff(dim=-1) <= 0).all()


def test_count_draws_layout_and_truncation():
    drawn = torch.tensor([[5, 3, 5, 9, 5, 3], [7, 7, 7, 7, 7, 7], [4, 2, 8, 6, 1, 3]])
    ids, counts = count_draws(drawn, 6)
    assert ids.tolist() == [[5, 3, 9, 0, 0, 0], [7, 0, 0, 0, 0, 0], [1, 2, 3, 4, 6, 8]]  # ties: ascending id
    assert counts.tolist() == [[3, 2, 1, 0, 0, 0], [6, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]]
    ids, counts = count_draws(drawn, 2)  # too narrow: the most drawn ids are kept
    assert ids.tolist() == [[5, 3], [7, 0], [1, 2]] and counts.sum(-1).tolist() == [5, 6, 2]


def test_sampled_frequencies_match_the_tempered_softmax():
    """Pooled over many positions, draw frequencies are the softmax probabilities (within 4 sigma)."""
    vocab, rows, draws = 40, 400, 50
    z = zipf_logits(1, vocab).expand(rows, vocab).contiguous()
    uniforms = torch.rand(rows, draws, generator=torch.Generator().manual_seed(1))
    ids, counts, entropy = sample_slice(z.clone(), torch.empty(rows, vocab), uniforms, draws)
    assert (counts.sum(-1) == draws).all()
    frequency = torch.zeros(vocab, dtype=torch.float64).index_add_(0, ids.flatten(), counts.flatten().double())
    frequency /= rows * draws
    p = torch.softmax(z[0].double(), -1)
    sigma = (p * (1 - p) / (rows * draws)).sqrt()
    assert ((frequency - p).abs() <= 4 * sigma + 1e-9).all()
    assert math.isclose(float(entropy[0]), float(-(p * p.log()).sum()), rel_tol=1e-5)


def test_inverse_cdf_edges_never_draw_an_impossible_id():
    """Only ids 17 (p = 1/4) and 42 (p = 3/4) are possible; uniforms at 0, on the boundary and near 1."""
    z = torch.full((2, 100), -1e4)  # exp underflows to exactly 0, like a teacher's hopeless ids
    z[:, 17] = 0.0
    z[:, 42] = math.log(3.0)
    uniforms = torch.tensor([[0.0, 0.2499, 0.25, 0.9999999, 0.5]] * 2)
    ids, counts, entropy = sample_slice(z, torch.empty(2, 100), uniforms, 5)
    assert ids[0].tolist() == [42, 17, 0, 0, 0] and counts[0].tolist() == [3, 2, 0, 0, 0]
    assert math.isclose(float(entropy[0]), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), rel_tol=1e-5)


@pytest.mark.parametrize("k", [1, 7])
def test_topk_slice_with_a_single_slice_row(k):
    z = zipf_logits(1, 999)
    expected = torch.log_softmax(z, -1).topk(k).indices
    ids, logprobs, _ = topk_slice(z, torch.empty(1, 999), k)
    assert ids.shape == (1, k) and torch.equal(ids, expected)


def test_systematic_draws_give_each_id_its_expected_count_rounded_down_or_up():
    """Evenly spaced points: an id of probability p gets floor(D p) or ceil(D p) of D draws, at every position
    (independent draws would stray far from D p; the spread of the counts is the estimate's variance)."""
    from daram.pipeline.dump_kernels import draws_slice, systematic

    rows, vocab, draws = 500, 30, 6
    z = zipf_logits(rows, vocab, seed=3)
    uniforms = torch.rand(rows, draws, generator=torch.Generator().manual_seed(2))
    points = systematic(uniforms)
    assert ((points[:, 1:] - points[:, :-1] - 1 / draws).abs() < 1e-6).all() and (points < 1).all() and (points >= 0).all()
    drawn, _ = draws_slice(z.clone(), torch.empty(rows, vocab), points)
    counts = torch.zeros(rows, vocab).scatter_add_(1, drawn, torch.ones(rows, draws))
    expected = torch.softmax(z.double(), -1) * draws
    assert ((counts - expected).abs() < 1 + 1e-4).all()
    independent, _ = draws_slice(z.clone(), torch.empty(rows, vocab), uniforms)
    loose = torch.zeros(rows, vocab).scatter_add_(1, independent, torch.ones(rows, draws))
    assert ((loose - expected).abs() >= 1 + 1e-4).any()  # what the check above would catch
