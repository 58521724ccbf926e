"""Distillation losses as small, separately tested pieces.

Every KL function takes the student's tempered log-probabilities ``log q = log_softmax(z / T)``
at the teacher target's ids only (``logq_k``, shape ``(..., k)``; the whole vocabulary for a
dense target) and returns one KL per position, shape ``(...)``:

- :func:`topk_bucket_kl` — the stored top-k set K plus one bucket for the rest of the vocabulary
  (exact KL between the two coarse-grained distributions; equals the full KL when k = V);
- :func:`topk_renormalized_kl` — p and q renormalized over K (what most tools do; biased);
- :func:`sampled_kl` — ``KL(t || q)`` with ``t = counts / draws``, an unbiased estimate of the
  teacher (its gradient ``(q - t) / T`` has expectation ``(q - p) / T``); :class:`SparseTarget` is
  the same with the probabilities given (format v2's decoded rows);
- :func:`full_kl` — the dense reference, for a teacher in the loop.

The targets (:class:`TopkTarget`, :class:`SampledTarget`, :class:`SparseTarget`, :class:`DenseTarget`) hold a
micro-batch's teacher side and hand out one slice of positions at a time.

:func:`sliced_distill_loss` is the training objective
``alpha_kd * T^2 * mean_t KL_t + alpha_ce * mean_t CE_t``, with means over valid positions
(KL at every position, CE at the first ``seq_len - 1``, whose label is the next token). It runs
the LM head slice by slice and computes each slice's gradients in the same pass (the "fused
linear loss" pattern), so the float32 logits of a whole micro-batch never exist at once and the
head is not recomputed in backward.

Within a slice the loss depends on the logits z only through the two log-normalizers
``lse_T = logsumexp(z / T)`` and ``lse_1 = logsumexp(z)``, the logits at the target's ids and
the logits at the labels. Autograd runs on those small tensors; the chain rule then gives
``dL/dz = dL/dlse_T * softmax(z / T) / T + dL/dlse_1 * softmax(z) + (sparse terms at the ids)``,
built in place in two vocabulary-sized buffers (a plain autograd graph over z allocates about
seven and makes twice the passes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

IGNORE = -100  # CE label of the last position (no next token in the row)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for x < 0, accurate on both sides of -ln 2 (Mächler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def topk_bucket_kl(logq_k: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """``sum_K p (log p - log q) + P_tail (log P_tail - log Q_tail)`` per position.

    ``logp``: ``(..., k)`` stored full-vocabulary tempered teacher log-probs of the top-k ids;
    ``logq_k``: the student's at the same ids. ``Q_tail``, the student's mass outside K, comes from
    ``logsumexp`` over K in log space; ``P_tail`` is clamped at 0 because float16 log-probs can sum
    to slightly over 1, and the tail term vanishes when ``P_tail`` is 0 (k = V).
    """
    p = logp.exp()
    kl = (p * (logp - logq_k)).sum(-1)
    p_tail = (1.0 - p.sum(-1)).clamp_min(0.0)
    # The student's in-K mass is < 1 in exact arithmetic; keep it strictly below 1 in float32 too.
    log_q_in = torch.logsumexp(logq_k, -1).clamp_max(-1e-7)
    return kl + torch.xlogy(p_tail, p_tail) - p_tail * _log1mexp(log_q_in)


def topk_renormalized_kl(logq_k: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """``KL(p_K || q_K)`` with both renormalized over the stored set K (ignores the tail)."""
    logq_k = torch.log_softmax(logq_k, -1)
    logp_k = torch.log_softmax(logp, -1)
    return (logp_k.exp() * (logp_k - logq_k)).sum(-1)


def sampled_kl(logq_k: torch.Tensor, counts: torch.Tensor, draws: int) -> torch.Tensor:
    """``KL(t || q) = sum t log t - sum t log q`` with ``t = counts / draws`` over the sampled ids.

    Padding slots have count 0 and contribute nothing, whatever id they hold.
    """
    t = counts / draws
    return torch.xlogy(t, t).sum(-1) - (t * logq_k).sum(-1)


def full_kl(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` over the whole vocabulary from two log-prob tensors."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


class Target(Protocol):
    """The teacher side of a micro-batch of rows ``(B, L)``, handed out a slice of positions at a time."""

    def ids(self, start: int, stop: int) -> torch.Tensor | None:
        """The vocabulary ids ``(B, S, k)`` the KL reads the student at; None = all of them."""

    def kl(self, logq_k: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """KL per position ``(B, S)`` from the student's tempered log-probs at :meth:`ids`."""


def student_logq_at(target: Target, log_q: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """The full log-probs ``log_q`` ``(B, S, V)`` read at the target's ids."""
    ids = target.ids(start, stop)
    return log_q if ids is None else log_q.gather(-1, ids)


@dataclass
class TopkTarget:
    topk_ids: torch.Tensor  # (B, L, k) int64
    logprobs: torch.Tensor  # (B, L, k) float32
    tail: str = "bucket"  # bucket | renormalize

    def ids(self, start: int, stop: int) -> torch.Tensor:
        return self.topk_ids[:, start:stop]

    def kl(self, logq_k: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        kl_fn = topk_bucket_kl if self.tail == "bucket" else topk_renormalized_kl
        return kl_fn(logq_k, self.logprobs[:, start:stop])


@dataclass
class SampledTarget:
    sample_ids: torch.Tensor  # (B, L, S) int64
    counts: torch.Tensor  # (B, L, S) float32; 0 = padding
    draws: int

    def ids(self, start: int, stop: int) -> torch.Tensor:
        return self.sample_ids[:, start:stop]

    def kl(self, logq_k: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return sampled_kl(logq_k, self.counts[:, start:stop], self.draws)


@dataclass
class SparseTarget:
    """An estimate of the teacher at T as probabilities ``(B, L, S)`` at ids ``(B, L, S)``, summing to 1.

    Format v2's decoded rows (distinct draws with count / draws, or an exact head plus sampled tail).
    Slots of probability 0 are padding and contribute nothing, whatever id they hold.
    """

    sparse_ids: torch.Tensor  # (B, L, S) int64
    probs: torch.Tensor  # (B, L, S) float32

    def ids(self, start: int, stop: int) -> torch.Tensor:
        return self.sparse_ids[:, start:stop]

    def kl(self, logq_k: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        t = self.probs[:, start:stop]
        return torch.xlogy(t, t).sum(-1) - (t * logq_k).sum(-1)


@dataclass
class DenseTarget:
    """A teacher in the loop: its full log-probs at T, computed per slice from its final hidden states."""

    teacher_logits: Callable[[int, int], torch.Tensor]  # (start, stop) -> (B, stop - start, V) float32
    temperature: float

    def ids(self, start: int, stop: int) -> None:
        return None

    def log_probs(self, start: int, stop: int) -> torch.Tensor:
        return torch.log_softmax(self.teacher_logits(start, stop) / self.temperature, -1)

    def kl(self, logq_k: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return full_kl(logq_k, self.log_probs(start, stop))


def next_token_labels(tokens: torch.Tensor) -> torch.Tensor:
    """CE labels ``(B, L)``: ``tokens[t + 1]`` at t, :data:`IGNORE` at the last position."""
    labels = torch.full_like(tokens, IGNORE)
    labels[:, :-1] = tokens[:, 1:]
    return labels


@dataclass
class DistillObjective:
    """``alpha_kd * T^2 * mean KL + alpha_ce * mean CE`` over one micro-batch, summed slice by slice.

    ``target`` may be None when ``alpha_kd`` is 0 (a CE-only run never reads the teacher).
    CE is always computed so it can be logged; with ``alpha_ce`` 0 it carries no gradient.
    """

    labels: torch.Tensor  # (B, L) from next_token_labels
    target: Target | None
    temperature: float
    alpha_kd: float
    alpha_ce: float

    @property
    def kd_positions(self) -> int:
        return self.labels.numel()

    @property
    def ce_positions(self) -> int:
        return int((self.labels != IGNORE).sum())

    def combine(self, kd_sum: torch.Tensor, ce_sum: torch.Tensor) -> torch.Tensor:
        """The loss from the two sums (terms with a zero weight are left out, not multiplied by 0)."""
        kd = self.alpha_kd * self.temperature**2 * kd_sum / self.kd_positions if self.alpha_kd > 0 else 0.0
        ce = self.alpha_ce * ce_sum / self.ce_positions if self.alpha_ce > 0 else 0.0
        return kd + ce

    def summarize(self, kd_sum: torch.Tensor, ce_sum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, mean KL, mean CE) of a whole micro-batch."""
        return self.combine(kd_sum, ce_sum), kd_sum / self.kd_positions, ce_sum / self.ce_positions

    def slice_terms(
        self, z: torch.Tensor, start: int, stop: int, grad_scale: float | None = None, scratch: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(sum of KL, sum of CE, gradient) over one slice; ``z`` is float32 logits ``(B, S, V)``.

        With ``grad_scale``, the gradient is ``d(grad_scale * combine(kd, ce)) / dz``; without, it
        is None. ``z`` itself is overwritten (its memory holds the gradient). ``scratch``, a buffer
        shaped like z, saves allocating one per slice (on CPU a fresh one costs page faults).
        """
        T = self.temperature
        labels = self.labels[:, start:stop]
        has_label = labels != IGNORE
        label_ids = labels.clamp_min(0).unsqueeze(-1)
        shift = z.amax(-1, keepdim=True)  # for stable exponentials
        small = {"z_label": z.gather(-1, label_ids).squeeze(-1)}
        dense_p = None
        if self.alpha_kd > 0:
            ids = self.target.ids(start, stop)
            if ids is None:
                # A dense teacher: KL = sum p log p - (p . z) / T + lse_T is linear in z given lse_T, so the
                # small tensors are (p . z) and lse_T, and d/dz of (p . z) is p: no copy of z, no autograd over V.
                log_p = self.target.log_probs(start, stop)
                dense_p = log_p.exp()
                small["p_dot_z"] = torch.linalg.vecdot(dense_p, z)
                p_log_p = torch.linalg.vecdot(dense_p, log_p)
            else:
                small["z_k"] = z.gather(-1, ids)
        e1 = z.sub_(shift).exp_()  # softmax(z) before normalizing, in z's memory (z is not needed any more)
        s1 = e1.sum(-1)
        small["lse1"] = shift.squeeze(-1) + s1.log()
        if self.alpha_kd > 0:
            # softmax(z / T) before normalizing: exp((z - shift) / T) = e1 ** (1 / T), one pass instead of three.
            # Ids whose e1 underflowed (z more than 87 below the maximum) have tempered mass below e^-87/T: negligible.
            # At T = 1 (format v2's default) it is e1 itself: no pass, no buffer.
            eT = e1 if T == 1 else torch.pow(e1, 1.0 / T, out=scratch)
            sT = s1 if T == 1 else eT.sum(-1)
            small["lseT"] = shift.squeeze(-1) / T + sT.log()

        # The losses as functions of the small tensors; autograd differentiates them there.
        with torch.enable_grad():
            leaves = {name: value.detach().requires_grad_(grad_scale is not None) for name, value in small.items()}
            ce = torch.where(has_label, leaves["lse1"] - leaves["z_label"], 0.0).sum()
            kd = z.new_zeros(())
            if dense_p is not None:
                kd = (p_log_p - leaves["p_dot_z"] / T + leaves["lseT"]).sum()
            elif self.alpha_kd > 0:
                logq_k = leaves["z_k"] / T - leaves["lseT"].unsqueeze(-1)
                kd = self.target.kl(logq_k, start, stop).sum()
            if grad_scale is None:
                return kd.detach(), ce.detach(), None
            names = [n for n in leaves if self.alpha_kd > 0 or n in ("lse1", "z_label")]
            grads = torch.autograd.grad(self.combine(kd, ce) * grad_scale, [leaves[n] for n in names], allow_unused=True)
        g = {n: (torch.zeros_like(leaves[n]) if d is None else d) for n, d in zip(names, grads)}

        # dL/dz = dL/dlse_1 * softmax(z) [+ dL/dlse_T * softmax(z / T) / T] + sparse terms at the ids.
        if self.alpha_kd > 0 and T == 1:  # softmax(z / T) is softmax(z): one scaling of e1 carries both terms
            grad = e1.mul_(((g["lse1"] + g["lseT"]) / s1).unsqueeze(-1))
        else:
            grad = e1.mul_((g["lse1"] / s1).unsqueeze(-1))
        if self.alpha_kd > 0:
            if T != 1:
                grad.addcmul_(eT, (g["lseT"] / (T * sT)).unsqueeze(-1))
            if dense_p is not None:
                grad.addcmul_(dense_p, g["p_dot_z"].unsqueeze(-1))
            else:
                grad.scatter_add_(-1, ids, g["z_k"])
        grad.scatter_add_(-1, label_ids, g["z_label"].unsqueeze(-1))
        return kd.detach(), ce.detach(), grad


class Workspace:
    """Float32 buffers kept from one call to the next: on CPU every fresh buffer of this size (hundreds of MB)
    costs page faults and zeroing; CUDA's caching allocator makes it a no-op there."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, numel: int, device: torch.device) -> torch.Tensor:
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.device != device:
            buffer = self.buffers[name] = torch.empty(numel, dtype=torch.float32, device=device)
        return buffer[:numel]


class _SlicedHeadLoss(torch.autograd.Function):
    """Loss and its gradients w.r.t. the final hidden states and the head weight, slice by slice.

    Per slice: logits = h W^T in float32, the objective's sums and d(loss)/d(logits), then
    grad_h = g W and grad_W += g^T h. Only one slice's logits and their gradient are alive at a
    time. The gradient is taken of ``loss * positions`` and divided back in float32, so the
    half-precision matmul inputs stay O(1) instead of O(1 / positions).
    """

    @staticmethod
    def forward(ctx, hidden, weight, objective: DistillObjective, loss_slice: int, compute_dtype, workspace: Workspace):
        batch, length, _ = hidden.shape
        scale = float(batch * length)  # undone after the matmuls (see the class docstring)
        w = weight.to(compute_dtype)
        grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
        grad_weight = workspace.get("grad_weight", weight.numel(), weight.device).view(weight.shape).zero_()
        kd_sum = ce_sum = torch.zeros((), device=hidden.device)
        # Two slice-sized float32 buffers, reused by every slice: the logits (then their gradient) and a scratch.
        size = batch * min(loss_slice, length) * weight.shape[0]
        logits_buffer = workspace.get("logits", size, hidden.device)
        scratch_buffer = workspace.get("scratch", size, hidden.device) if objective.alpha_kd > 0 and objective.temperature != 1 else None
        for start in range(0, length, loss_slice):
            stop = min(start + loss_slice, length)
            shape = (batch, stop - start, weight.shape[0])
            h = hidden[:, start:stop].to(compute_dtype)
            z = logits_buffer[: math.prod(shape)].view(shape)
            if compute_dtype == torch.float32:
                torch.matmul(h, w.T, out=z)
            else:
                z.copy_(h @ w.T)
            scratch = None if scratch_buffer is None else scratch_buffer[: z.numel()].view(shape)
            kd, ce, g = objective.slice_terms(z, start, stop, grad_scale=scale, scratch=scratch)
            g = g.to(compute_dtype)
            grad_hidden[:, start:stop] = (g @ w).float()
            grad_weight += (g.flatten(0, 1).T @ h.flatten(0, 1)).float()
            kd_sum, ce_sum = kd_sum + kd, ce_sum + ce
            del g
        ctx.save_for_backward(grad_hidden.div_(scale), grad_weight.div_(scale))
        ctx.dtypes = (hidden.dtype, weight.dtype)
        loss, kd_mean, ce_mean = objective.summarize(kd_sum, ce_sum)
        ctx.mark_non_differentiable(kd_mean, ce_mean)
        return torch.as_tensor(loss, device=hidden.device), kd_mean, ce_mean

    @staticmethod
    def backward(ctx, grad_loss, _grad_kd, _grad_ce):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        return (grad_hidden * grad_loss).to(hidden_dtype), (grad_weight * grad_loss).to(weight_dtype), None, None, None, None


def sliced_distill_loss(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    objective: DistillObjective,
    loss_slice: int,
    compute_dtype: torch.dtype = torch.float32,
    workspace: Workspace | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, mean KL, mean CE)`` from final hidden states ``(B, L, H)`` and the LM head ``(V, H)``.

    ``loss`` is differentiable w.r.t. ``hidden`` and ``head_weight``; the two means are for
    logging (mean KL is 0 when ``alpha_kd`` is 0). ``compute_dtype`` is the head matmul's dtype
    (bf16/fp16 under mixed precision); the softmax and the loss are always float32. Pass the same
    ``workspace`` to every call of a training loop to reuse its buffers.
    """
    if not (hidden.requires_grad or head_weight.requires_grad):  # evaluation: no gradients to build
        return _sliced_loss_no_grad(hidden, head_weight, objective, loss_slice, compute_dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        return _SlicedHeadLoss.apply(hidden, head_weight, objective, loss_slice, compute_dtype, workspace or Workspace())


@torch.no_grad()
def _sliced_loss_no_grad(hidden, head_weight, objective, loss_slice, compute_dtype):
    w = head_weight.to(compute_dtype)
    kd_sum = ce_sum = torch.zeros((), device=hidden.device)
    for start in range(0, hidden.shape[1], loss_slice):
        stop = min(start + loss_slice, hidden.shape[1])
        kd, ce, _ = objective.slice_terms((hidden[:, start:stop].to(compute_dtype) @ w.T).float(), start, stop)
        kd_sum, ce_sum = kd_sum + kd, ce_sum + ce
    return objective.summarize(kd_sum, ce_sum)


def head_weight(model) -> torch.Tensor:
    """The LM head weight ``(V, H)`` of a Hugging Face causal LM whose logits are ``hidden @ W^T``."""
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError(f"{type(model).__name__}: an LM head with a bias is not supported")
    return head.weight


def final_hidden(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The hidden states the LM head reads (after the final layer norm), ``(B, L, H)``."""
    return model.base_model(input_ids=input_ids).last_hidden_state
