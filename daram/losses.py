"""The distillation loss for your own trainer: ``kd_loss(student_logits, batch, temperature, alpha_kd, alpha_ce)``.

Public API (semantic versioning, see the README): the names in ``__all__``, their arguments and the batch keys.

``batch`` is what :class:`daram.data.StoreBatches` yields, a mapping of tensors for ``B`` rows of ``L`` tokens
with ``W`` teacher slots per position (every teacher kind in one form):

- ``input_ids`` ``(B, L)`` int64: the tokens; the next-token labels are ``input_ids`` shifted by one;
- ``teacher_ids`` ``(B, L, W)`` int64: vocabulary ids of the teacher's distribution at position t;
- ``teacher_probs`` ``(B, L, W)`` float32: the teacher's probabilities at T at those ids (0 = a padding slot);
- ``teacher_tail`` ``(B, L)`` float32: the teacher's mass outside the ids (top-k; 0 for sampled and draws).

``student_logits`` ``(B, L, V)``: the student's logits at every position (``V`` >= every teacher id; a padded
vocabulary is fine). The loss is ``student-train``'s objective, computed by the same code
(:class:`daram.pipeline.losses.DistillObjective`):
``alpha_kd * T^2 * mean_t KL(p_t || softmax(z_t / T)) + alpha_ce * mean_t CE(z_t, input_ids[t + 1])``,
KL over all ``B * L`` positions (the top-k tail as one bucket), CE over the ``B * (L - 1)`` with a next token.
Its gradient with respect to the logits comes from the same fused pass, one slice of positions at a time.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from daram.errors import DaramError
from daram.pipeline.losses import DistillObjective, TailTarget, next_token_labels

__all__ = ["BATCH_KEYS", "kd_loss", "kd_loss_terms"]

BATCH_KEYS = ("input_ids", "teacher_ids", "teacher_probs", "teacher_tail")


def kd_loss(student_logits: torch.Tensor, batch: Mapping[str, torch.Tensor], temperature: float,
            alpha_kd: float = 1.0, alpha_ce: float = 0.0) -> torch.Tensor:
    """The distillation loss of one batch, a differentiable scalar (see the module docstring for the shapes)."""
    return kd_loss_terms(student_logits, batch, temperature, alpha_kd, alpha_ce)[0]


def kd_loss_terms(student_logits: torch.Tensor, batch: Mapping[str, torch.Tensor], temperature: float,
                  alpha_kd: float = 1.0, alpha_ce: float = 0.0, loss_slice: int = 256
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, mean KL, mean CE)``: :func:`kd_loss` and the two terms for logging (not differentiable).

    ``loss_slice`` positions are computed at a time: it bounds the float32 working memory, not the result.
    """
    objective = _objective(student_logits, batch, temperature, alpha_kd, alpha_ce)
    if loss_slice < 1:
        raise DaramError(f"kd_loss: loss_slice must be >= 1, not {loss_slice}")
    if not student_logits.requires_grad:
        return _terms(student_logits, objective, loss_slice, None)[:3]
    return _LogitsLoss.apply(student_logits, objective, loss_slice)


def _objective(logits: torch.Tensor, batch: Mapping[str, torch.Tensor], temperature: float, alpha_kd: float,
               alpha_ce: float) -> DistillObjective:
    if temperature <= 0 or alpha_kd < 0 or alpha_ce < 0 or alpha_kd + alpha_ce == 0:
        raise DaramError(f"kd_loss: temperature {temperature} must be > 0, alpha_kd {alpha_kd} and alpha_ce "
                         f"{alpha_ce} >= 0 and not both 0")
    tokens = batch["input_ids"]
    if logits.dim() != 3 or tokens.shape != logits.shape[:2]:
        raise DaramError(f"kd_loss: student_logits {tuple(logits.shape)} must be (B, L, V) over input_ids "
                         f"{tuple(tokens.shape)}")
    target = None
    if alpha_kd > 0:
        missing = [key for key in BATCH_KEYS if key not in batch]
        if missing:
            raise DaramError(f"kd_loss: the batch lacks {', '.join(missing)} (alpha_kd > 0 needs the teacher's targets)")
        ids, probs, tail = batch["teacher_ids"], batch["teacher_probs"], batch["teacher_tail"]
        if ids.shape[:2] != tokens.shape or probs.shape != ids.shape or tail.shape != tokens.shape:
            raise DaramError(f"kd_loss: teacher_ids {tuple(ids.shape)}, teacher_probs {tuple(probs.shape)} and "
                             f"teacher_tail {tuple(tail.shape)} must be (B, L, W), (B, L, W) and (B, L) over input_ids "
                             f"{tuple(tokens.shape)}")
        if ids.numel() and int(ids.max()) >= logits.shape[-1]:
            raise DaramError(f"kd_loss: teacher id {int(ids.max())} is outside the student's {logits.shape[-1]} logits: "
                             "the student's vocabulary must cover the store's tokenizer")
        target = TailTarget(ids.long(), probs.float(), tail.float())
    return DistillObjective(next_token_labels(tokens.long()), target, temperature, alpha_kd, alpha_ce)


def _terms(logits: torch.Tensor, objective: DistillObjective, loss_slice: int, grad: torch.Tensor | None):
    """(loss, mean KL, mean CE, gradient) slice by slice; the gradient goes into ``grad`` when given."""
    kd_sum = ce_sum = torch.zeros((), device=logits.device)
    for start in range(0, logits.shape[1], loss_slice):
        stop = min(start + loss_slice, logits.shape[1])
        z = logits[:, start:stop].detach().to(torch.float32, copy=True)  # slice_terms overwrites its logits
        kd, ce, g = objective.slice_terms(z, start, stop, grad_scale=None if grad is None else 1.0)
        if grad is not None:
            grad[:, start:stop] = g
        kd_sum, ce_sum = kd_sum + kd, ce_sum + ce
    loss, kd_mean, ce_mean = objective.summarize(kd_sum, ce_sum)
    return torch.as_tensor(loss, device=logits.device), kd_mean, ce_mean, grad


class _LogitsLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, objective: DistillObjective, loss_slice: int):
        grad = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
        loss, kd_mean, ce_mean, grad = _terms(logits, objective, loss_slice, grad)
        ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        ctx.mark_non_differentiable(kd_mean, ce_mean)
        return loss, kd_mean, ce_mean

    @staticmethod
    def backward(ctx, grad_loss, _grad_kd, _grad_ce):
        (grad,) = ctx.saved_tensors
        return (grad * grad_loss).to(ctx.logits_dtype), None, None
