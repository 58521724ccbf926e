"""The loss math: each KL against a direct dense computation, k = V against the full KL, the sampled
loss's gradient against full KD's, and the sliced fused loss against plain autograd on dense logits."""

from __future__ import annotations

import pytest
import torch

from daram.pipeline.losses import (
    DenseTarget,
    DistillObjective,
    SampledTarget,
    TopkTarget,
    full_kl,
    next_token_labels,
    sampled_kl,
    sliced_distill_loss,
    student_logq_at,
    topk_bucket_kl,
    topk_renormalized_kl,
)

T = 2.0


def _teacher(shape, vocab, seed=0, peak=3.0):
    """Teacher logits with some structure (a few likely ids per position) and their top-k."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, vocab, generator=g, dtype=torch.float64) * peak


def _topk(teacher_logits, k):
    logp = torch.log_softmax(teacher_logits / T, -1)
    values, ids = logp.topk(k, -1)  # sorted by probability, descending, like the store
    return ids, values


def _dense_bucket(log_q, ids, logp):
    """KL over K plus the tail bucket, with explicit masks over the vocabulary (no log-space tricks)."""
    in_k = torch.zeros_like(log_q, dtype=torch.bool).scatter_(-1, ids, True)
    p = torch.zeros_like(log_q).scatter_(-1, ids, logp.exp())
    q = log_q.exp()
    kl_k = torch.where(in_k, p * (p.clamp_min(1e-300).log() - log_q), torch.zeros_like(q)).sum(-1)
    p_tail = 1 - torch.where(in_k, p, 0.0).sum(-1)
    q_tail = torch.where(in_k, 0.0, q).sum(-1)
    return kl_k + p_tail * (p_tail.log() - q_tail.log())


@pytest.mark.parametrize("k", [1, 5, 40])
def test_bucket_kl_matches_a_dense_computation(k):
    student = _teacher((3, 7), 50, seed=1)
    ids, logp = _topk(_teacher((3, 7), 50), k)
    log_q = torch.log_softmax(student / T, -1)
    torch.testing.assert_close(topk_bucket_kl(log_q.gather(-1, ids), logp), _dense_bucket(log_q, ids, logp), rtol=1e-9, atol=1e-12)


def test_renormalized_kl_matches_a_dense_computation():
    student = _teacher((4, 6), 50, seed=1)
    ids, logp = _topk(_teacher((4, 6), 50), 8)
    log_q = torch.log_softmax(student / T, -1)
    p = logp.exp() / logp.exp().sum(-1, keepdim=True)
    q = log_q.gather(-1, ids).exp()
    q = q / q.sum(-1, keepdim=True)
    expected = (p * (p.log() - q.log())).sum(-1)
    torch.testing.assert_close(topk_renormalized_kl(log_q.gather(-1, ids), logp), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kl_fn", [topk_bucket_kl, topk_renormalized_kl])
def test_k_equal_to_vocab_gives_the_full_kl(kl_fn):
    teacher, student = _teacher((2, 5), 64), _teacher((2, 5), 64, seed=3)
    ids, logp = _topk(teacher, 64)
    log_q = torch.log_softmax(student / T, -1)
    full = full_kl(log_q, torch.log_softmax(teacher / T, -1))
    torch.testing.assert_close(kl_fn(log_q.gather(-1, ids), logp), full, rtol=1e-9, atol=1e-12)


def test_bucket_kl_is_zero_for_the_teacher_itself_and_positive_otherwise():
    teacher = _teacher((3, 4), 80)
    ids, logp = _topk(teacher, 10)
    same = topk_bucket_kl(torch.log_softmax(teacher / T, -1).gather(-1, ids), logp)
    assert same.abs().max() < 1e-12
    other = topk_bucket_kl(torch.log_softmax(_teacher((3, 4), 80, seed=5) / T, -1).gather(-1, ids), logp)
    assert (other > 0).all()
    # The bucketed KL never exceeds the full KL (coarse-graining loses information).
    full = full_kl(torch.log_softmax(_teacher((3, 4), 80, seed=5) / T, -1), torch.log_softmax(teacher / T, -1))
    assert (other <= full + 1e-12).all()


def test_bucket_kl_is_stable_in_float32_with_float16_logprobs_and_an_almost_empty_tail():
    teacher = torch.zeros(2, 3, 1000)
    teacher[..., 7] = 60.0  # nearly all the mass on one id: the tail is ~1e-10
    ids, logp = _topk(teacher.double(), 4)
    logp16 = logp.half().float()  # what the store keeps
    student = torch.randn(2, 3, 1000, requires_grad=True)
    kl = topk_bucket_kl(torch.log_softmax(student / T, -1).gather(-1, ids), logp16)
    kl.sum().backward()
    assert torch.isfinite(kl).all() and torch.isfinite(student.grad).all()


def test_sampled_kl_matches_its_definition_and_ignores_padding():
    log_q = torch.log_softmax(_teacher((2,), 30, seed=2) / T, -1)
    ids = torch.tensor([[3, 9, 4, 0, 0], [1, 2, 0, 0, 0]])
    counts = torch.tensor([[6.0, 3.0, 1.0, 0.0, 0.0], [9.0, 1.0, 0.0, 0.0, 0.0]])
    t = counts / 10
    expected = torch.stack([
        sum(t[r, i] * (t[r, i].log() - log_q[r, ids[r, i]]) for i in range(5) if counts[r, i] > 0) for r in range(2)
    ])
    torch.testing.assert_close(sampled_kl(log_q.gather(-1, ids), counts, 10), expected.to(log_q.dtype))


def test_sampled_kd_gradient_is_unbiased_for_the_full_kd_gradient():
    """Mean gradient over many independent draw sets = full-vocab KD gradient, within sampling error."""
    vocab, draws, trials = 40, 50, 4000
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(_teacher((), vocab, peak=1.5) / T, -1)
    student = torch.randn(vocab, generator=g, dtype=torch.float64)
    full_logits = student.clone().requires_grad_()
    full_kl(torch.log_softmax(full_logits / T, -1), p.log()).backward()

    # One draw set per trial: unique ids and their counts, padded with count 0, like a sampled store.
    samples = torch.multinomial(p.expand(trials, vocab), draws, replacement=True, generator=g)
    counts_dense = torch.zeros(trials, vocab, dtype=torch.float64).scatter_add_(1, samples, torch.ones_like(samples, dtype=torch.float64))
    counts, ids = counts_dense.sort(-1, descending=True)
    logits = student.expand(trials, vocab).clone().requires_grad_()
    sampled_kl(torch.log_softmax(logits / T, -1).gather(-1, ids), counts, draws).sum().backward()
    per_trial = logits.grad  # (trials, vocab)
    mean, stderr = per_trial.mean(0), per_trial.std(0) / trials**0.5
    assert ((mean - full_logits.grad).abs() <= 4 * stderr + 1e-12).all()
    # ... and it is not trivially so: one trial alone is far off.
    assert (per_trial[0] - full_logits.grad).abs().max() > 10 * stderr.max()


# --- the sliced, fused loss against plain autograd on the dense logits ---------------------------


def _setup(kind, batch=2, length=11, hidden=8, vocab=97, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, length), generator=g)
    h = torch.randn(batch, length, hidden, generator=g)
    w = torch.randn(vocab, hidden, generator=g) * 0.5
    teacher = torch.randn(batch, length, vocab, generator=g) * 2
    logp = torch.log_softmax(teacher / T, -1)
    if kind in ("bucket", "renormalize"):
        values, ids = logp.topk(6, -1)
        target = TopkTarget(ids, values.half().float(), tail=kind)
    elif kind == "sampled":
        draws = 20
        samples = torch.multinomial(logp.exp().flatten(0, 1), draws, replacement=True, generator=g)
        dense = torch.zeros(batch * length, vocab).scatter_add_(1, samples, torch.ones(samples.shape))
        counts, ids = dense.sort(-1, descending=True)
        target = SampledTarget(ids[:, :12].view(batch, length, 12), counts[:, :12].view(batch, length, 12), draws)
    elif kind == "dense":
        target = DenseTarget(lambda a, b: teacher[:, a:b], T)
    else:
        target = None
    return tokens, h, w, target


def _dense_reference(tokens, h, w, target, alpha_kd, alpha_ce):
    logits = h @ w.T
    log_q = torch.log_softmax(logits / T, -1)
    labels = next_token_labels(tokens)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    loss = alpha_ce * ce
    if alpha_kd:
        loss = loss + alpha_kd * T**2 * target.kl(student_logq_at(target, log_q, 0, tokens.shape[1]), 0, tokens.shape[1]).mean()
    return loss


@pytest.mark.parametrize("kind", ["bucket", "renormalize", "sampled", "dense", "ce-only"])
@pytest.mark.parametrize("loss_slice", [1, 4, 11, 64])
def test_sliced_loss_and_gradients_equal_dense_autograd(kind, loss_slice):
    tokens, h, w, target = _setup(kind)
    alpha_kd, alpha_ce = (0.0, 1.0) if kind == "ce-only" else (1.0, 0.1)
    h_ref, w_ref = h.clone().requires_grad_(), w.clone().requires_grad_()
    expected = _dense_reference(tokens, h_ref, w_ref, target, alpha_kd, alpha_ce)
    expected.backward()

    h_, w_ = h.clone().requires_grad_(), w.clone().requires_grad_()
    objective = DistillObjective(next_token_labels(tokens), target, T, alpha_kd, alpha_ce)
    loss, kd, ce = sliced_distill_loss(h_, w_, objective, loss_slice)
    (loss * 3).backward()  # an upstream factor (a grad scaler, say) must reach the gradients
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_.grad, 3 * h_ref.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(w_.grad, 3 * w_ref.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(loss, alpha_kd * T**2 * kd + alpha_ce * ce, rtol=1e-5, atol=1e-6)

    with torch.no_grad():  # evaluation takes the no-gradient path and gives the same numbers
        again = sliced_distill_loss(h, w, objective, loss_slice)
    torch.testing.assert_close(torch.stack(again), torch.stack([loss, kd, ce]).detach(), rtol=1e-5, atol=1e-6)


def test_ce_only_never_touches_the_target():
    class Exploding:
        def ids(self, *args):
            raise AssertionError("a CE-only loss read the teacher")

        kl = ids

    tokens, h, w, _ = _setup("ce-only")
    objective = DistillObjective(next_token_labels(tokens), Exploding(), T, 0.0, 1.0)
    loss, kd, _ = sliced_distill_loss(h.requires_grad_(), w, objective, 4)
    loss.backward()
    assert kd.item() == 0.0


def test_bfloat16_head_matmul_stays_close_to_float32():
    tokens, h, w, target = _setup("bucket", length=16)
    objective = DistillObjective(next_token_labels(tokens), target, T, 1.0, 0.1)
    h32, hb = h.clone().requires_grad_(), h.clone().requires_grad_()
    loss32, _, _ = sliced_distill_loss(h32, w, objective, 5)
    lossb, _, _ = sliced_distill_loss(hb, w, objective, 5, compute_dtype=torch.bfloat16)
    loss32.backward()
    lossb.backward()
    torch.testing.assert_close(lossb, loss32, rtol=2e-2, atol=1e-3)
    assert torch.nn.functional.cosine_similarity(hb.grad.flatten(), h32.grad.flatten(), dim=0) > 0.99


@pytest.mark.parametrize("temperature", [1.0, 2.0])  # T = 1 takes the no-pow path: softmax(z / T) is e1 itself
@pytest.mark.parametrize("kind", ["draws", "dense"])
def test_sliced_loss_at_each_temperature_equals_dense_autograd(kind, temperature):
    import numpy as np

    from daram.pipeline.losses import SparseTarget
    from daram.storage.draws import decode_draws

    g = torch.Generator().manual_seed(1)
    tokens, h, w, _ = _setup("ce-only")
    teacher = torch.randn(*tokens.shape, w.shape[0], generator=g) * 2
    if kind == "draws":  # 16 sorted draws per position, decoded by the store's own numpy decode
        drawn = torch.multinomial(torch.softmax(teacher / temperature, -1).flatten(0, 1), 16, replacement=True, generator=g)
        ids, p = decode_draws(np.sort(drawn.numpy(), -1).reshape(*tokens.shape, 16).astype(np.uint16))
        target = SparseTarget(torch.from_numpy(ids), torch.from_numpy(p))
    else:
        target = DenseTarget(lambda a, b: teacher[:, a:b], temperature)
    h_ref, w_ref = h.clone().requires_grad_(), w.clone().requires_grad_()
    logits = h_ref @ w_ref.T
    labels = next_token_labels(tokens)
    log_q = torch.log_softmax(logits / temperature, -1)
    kl = target.kl(student_logq_at(target, log_q, 0, tokens.shape[1]), 0, tokens.shape[1]).mean()
    expected = temperature**2 * kl + 0.1 * torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
    expected.backward()
    h_, w_ = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss, _, _ = sliced_distill_loss(h_, w_, DistillObjective(labels, target, temperature, 1.0, 0.1), 4)
    loss.backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_.grad, h_ref.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(w_.grad, w_ref.grad, rtol=1e-4, atol=1e-7)
