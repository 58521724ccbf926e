"""The per-slice math of a teacher dump: LM head at temperature T, full-vocabulary statistics, top-k or draws.

A batch's hidden states are pushed through the LM head a slice of positions at a time, so float32
logits over the full vocabulary exist only for one slice: the dump's memory is bounded by the slice, not
by the batch. Two preallocated float32 buffers of
``[slice, vocab]`` are reused for every slice: allocating 100 MB tensors afresh costs page faults
on every call (a fresh ``F.linear`` output was 25% slower than ``mm(out=...)`` here).

Everything is float32 after the LM head, whatever the teacher's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Bytes of one float32 [slice, vocab] buffer (two are held). The LM head's matrix product wants many
# rows per call: on a 2-core CPU with a 768 x 51200 head, 1,024 positions per call cost 1.14 ms per
# position, 327 cost 1.47 and 64 cost 3.0 (the weight is re-packed every call); 1,024 x 51,200 float32
# is 200 MiB.
SLICE_BYTES = {"cpu": 200 << 20, "cuda": 1 << 30}


def slice_positions(vocab_size: int, device: torch.device) -> int:
    """Positions per LM-head slice for this vocabulary and device."""
    return max(1, SLICE_BYTES.get(device.type, SLICE_BYTES["cpu"]) // (4 * vocab_size))


@dataclass(frozen=True)
class TemperedHead:
    """The teacher's LM head with 1/T folded in: ``logits / T = (h / T) @ W.T + b / T``.

    Scaling the [n, hidden] input instead of the [n, vocab] output saves one pass over the logits.
    """

    weight: Tensor  # [vocab, hidden], the model's dtype
    bias: Tensor | None  # [vocab], already divided by T, float32
    temperature: float

    @classmethod
    def from_linear(cls, head: torch.nn.Linear, temperature: float) -> "TemperedHead":
        bias = None if head.bias is None else head.bias.detach().float() / temperature
        return cls(head.weight.detach(), bias, temperature)

    def __call__(self, hidden: Tensor, out: Tensor) -> Tensor:
        """``logits / T`` of ``hidden`` [n, hidden] as float32, written into ``out[:n]``."""
        z = out[: hidden.shape[0]]
        scaled = hidden / self.temperature
        if self.weight.dtype == torch.float32:
            torch.mm(scaled, self.weight.t(), out=z)
        else:  # half-precision teacher: the head runs in its dtype (as the model's own forward does)
            z.copy_(torch.mm(scaled, self.weight.t()))
        if self.bias is not None:
            z.add_(self.bias)
        return z


def _exp_shifted(z: Tensor, row_max: Tensor, scratch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``e = exp(z - max)`` in ``scratch``, its row sums, and the entropy of ``softmax(z)`` (nats).

    ``entropy = logsumexp(z) - sum(softmax(z) * z)``, computed from ``e`` without a log pass.
    ``z`` is consumed: it holds the products ``e * z`` afterwards (an in-place multiply and a sum
    took 40% less CPU than a batched dot product here).
    """
    e = scratch[: z.shape[0]]
    torch.sub(z, row_max, out=e)
    e.exp_()
    total = e.sum(-1)
    lse = row_max.squeeze(-1) + total.log()
    return e, lse, lse - z.mul_(e).sum(-1) / total


def topk_slice(z: Tensor, scratch: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k of ``log_softmax(z)`` over the full vocabulary, sorted descending.

    ``z`` [n, vocab] holds ``logits / T`` (float32, overwritten); ``scratch`` is a buffer at least as large.
    Returns (ids [n, k] int64, log-probs [n, k] float32, entropy [n] float32). Top-k runs on ``z``
    (same order as the log-probs) and only the k kept values are shifted by ``logsumexp``, instead
    of writing a full ``log_softmax``.
    """
    top_z, ids = torch.topk(z, k)
    _, lse, entropy = _exp_shifted(z, top_z[:, :1], scratch)
    return ids, top_z - lse.unsqueeze(-1), entropy


def sample_slice(z: Tensor, scratch: Tensor, uniforms: Tensor, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Draw ``uniforms.shape[1]`` ids per row from ``softmax(z)`` by inverse CDF; count them.

    ``z`` [n, vocab] holds ``logits / T`` (float32, overwritten); the CDF is built in ``scratch``.
    ``uniforms`` [n, draws] in [0, 1) come from a seeded CPU generator, so the draws do not depend
    on the device's random stream. Returns (ids [n, width], counts [n, width], entropy [n]); see
    :func:`count_draws` for the layout.
    """
    e, _, entropy = _exp_shifted(z, z.amax(-1, keepdim=True), scratch)
    ids, counts = count_draws(_inverse_cdf(e, uniforms), width)
    return ids, counts, entropy


def _inverse_cdf(e: Tensor, uniforms: Tensor) -> Tensor:
    """Draws [n, draws] from the unnormalised weights ``e`` [n, vocab] (consumed: it holds their CDF)."""
    cdf = e.cumsum_(-1)  # unnormalised; the last column is the total
    targets = uniforms.to(cdf.device) * cdf[:, -1:]
    # First id whose cumulative mass exceeds the target; ids of zero probability are never hit.
    return torch.searchsorted(cdf, targets, right=True).clamp_(max=cdf.shape[1] - 1)


def draws_slice(z: Tensor, scratch: Tensor, uniforms: Tensor) -> tuple[Tensor, Tensor]:
    """Format v2's ``draws``: ``uniforms.shape[1]`` ids per row from ``softmax(z)``, sorted ascending.

    ``z`` [n, vocab] holds ``logits / T`` (float32, overwritten). Sorting puts repeats side by side, so
    the counts need no array of their own. Returns (draws [n, draws] int64, entropy [n]).
    """
    e, _, entropy = _exp_shifted(z, z.amax(-1, keepdim=True), scratch)
    drawn, _ = _inverse_cdf(e, uniforms).sort(-1)
    return drawn, entropy


def systematic(uniforms: Tensor) -> Tensor:
    """Systematic sampling's points: row r's j-th draw at ``(j + u_r) / D`` of the CDF, one uniform ``u_r`` (its
    first) per row, for ``D = uniforms.shape[1]`` draws.

    Unbiased: the j-th point is uniform on ``[j/D, (j+1)/D)``, so it lands on id i with probability D times
    the part of i's CDF interval inside that stratum; summed over the D strata, an id's expected count is
    ``D p_i``, and ``count / D`` estimates ``p_i`` as independent draws do. Each count is ``D p_i`` rounded
    down or up (an interval of length ``p_i`` holds that many of the evenly spaced points), so its variance is
    ``f (1 - f)`` for ``f`` the fraction of ``D p_i``, against ``D p_i (1 - p_i)`` for independent draws: a
    sure teacher's draws repeat its top id exactly, and the estimate's summed variance is 43% lower for a
    peaked small teacher and 10% lower for a flat one at 6 draws (docs/benchmarks.md, "Draws where they matter").
    """
    draws = uniforms.shape[1]
    return (torch.arange(draws, device=uniforms.device, dtype=uniforms.dtype) + uniforms[:, :1]) / draws


def count_draws(drawn: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Unique ids of each row of ``drawn`` [n, draws] with their counts, most drawn first.

    Ties keep ascending id order, so the layout is a pure function of the draws. Rows are padded
    with id 0 / count 0 up to ``width``; a row with more than ``width`` unique ids keeps the
    ``width`` most drawn (its counts then sum to less than draws). Returns (ids, counts).
    """
    n, draws = drawn.shape
    ordered, _ = drawn.sort(-1)
    is_new = torch.ones_like(ordered, dtype=torch.bool)
    is_new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    slot = is_new.cumsum(-1) - 1  # which unique id of its row each draw is
    counts = torch.zeros(n, draws, dtype=torch.int64, device=drawn.device).scatter_add_(1, slot, torch.ones_like(slot))
    ids = torch.zeros_like(ordered).scatter_(1, slot, ordered)
    counts, order = counts.sort(dim=-1, descending=True, stable=True)
    ids = ids.gather(1, order)
    return ids[:, :width], counts[:, :width]
