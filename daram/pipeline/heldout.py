"""Held-out metrics of a causal LM on one store shard, against the real next tokens and the teacher.

Shared by ``student-train`` (periodic evaluation) and ``daram eval --heldout``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from daram.errors import DaramError
from daram.pipeline.batches import check_teacher_shards
from daram.pipeline.dump_kinds import dump_kind
from daram.pipeline.losses import IGNORE, DenseTarget, final_hidden, head_weight, next_token_labels, student_logq_at
from daram.storage import Store

ECE_BINS = 15
EVAL_SLICE = 128  # positions per slice: bounds the float32 logits held at once


@torch.no_grad()
def heldout_metrics(
    model,
    store: Store,
    shard: int,
    temperature: float | None = None,
    max_rows: int | None = None,
    batch_size: int = 8,
    device="cpu",
    teacher_model=None,
) -> dict:
    """Metrics of ``model`` (already on ``device``) on rows ``[0, max_rows)`` of ``shard``.

    Positions: a row of L tokens has L teacher positions (position t holds the distribution of
    token t+1) and L-1 next-token positions (the last token has no label in the row).

    - ``ce``: mean cross-entropy (nats) of the student at T = 1 against the real next token, over
      the next-token positions; ``perplexity`` = exp(ce); ``tokens`` = their count.
    - ``kl``: mean over teacher positions of KL(teacher || student) at temperature T (the store's
      T unless ``temperature`` is given). Top-k stores: the ``bucket`` form (the k stored ids plus
      one bucket for the rest; a lower bound of the full KL, exact when k = V). Sampled stores:
      ``KL(t || q)`` with ``t = counts / draws``: its cross-entropy part ``-sum t log q`` is
      unbiased, but ``sum t log t`` overestimates ``sum p log p`` (by up to ``log V - log draws``
      for a flat teacher), so it ranks students fairly on one store while its level sits above
      the true KL. With ``teacher_model``: the exact full-vocabulary KL from that model's logits,
      and the store's teacher arrays are not read.
      ``kl_tokens`` = the number of teacher positions.
    - ``top1_agreement``: share of teacher positions where the student's most probable id equals
      the teacher's (top-k: the first stored id; sampled: the id drawn most often, the first on
      ties; teacher model: its argmax).
    - ``ece``: expected calibration error of the student's next-token prediction at T = 1:
      confidence = max softmax probability, correct = argmax == the real next token; positions
      are put into 15 equal-width confidence bins and ``ece = sum_b n_b / N * |acc_b - conf_b|``.
    """
    manifest = store.manifest
    store.check_shard(shard)
    teacher = store.teacher_manifest()
    if teacher_model is None:
        check_teacher_shards(store, teacher, [shard], f"held-out shard {shard}")
    if temperature is None:
        if teacher is None:
            raise DaramError("heldout_metrics: no temperature given and the store has no teacher dump to take it from")
        temperature = teacher.temperature
    rows = manifest.rows_per_shard[shard] if max_rows is None else min(max_rows, manifest.rows_per_shard[shard])
    if rows < 1:
        raise DaramError(f"heldout_metrics: max_rows must be >= 1, got {max_rows}")

    was_training = model.training
    model.eval()
    sums = _Sums(temperature)
    weight = head_weight(model)
    for lo in range(0, rows, batch_size):
        hi = min(lo + batch_size, rows)
        tokens = torch.from_numpy(store.read_tokens(shard, lo, hi).astype(np.int64)).to(device)
        labels = next_token_labels(tokens)
        hidden = final_hidden(model, tokens)
        target, teacher_top1 = _teacher_side(store, teacher, teacher_model, shard, lo, hi, tokens, temperature, device)
        for start in range(0, tokens.shape[1], EVAL_SLICE):  # one slice of float32 logits at a time
            stop = min(start + EVAL_SLICE, tokens.shape[1])
            logits = (hidden[:, start:stop] @ weight.to(hidden.dtype).T).float()
            if not torch.isfinite(logits).all():  # broken weights: no metric of them means anything
                raise DaramError(
                    f"held-out shard {shard}: the model's logits on rows {lo}-{hi - 1} are not finite: its weights are "
                    f"broken (a learning rate far too large, or a damaged checkpoint)"
                )
            sums.add(logits, labels[:, start:stop], target, teacher_top1[:, start:stop], start, stop)
    model.train(was_training)
    return {**sums.result(), "rows": rows, "temperature": temperature,
            "teacher": "model" if teacher_model is not None else teacher.kind}


class _Sums:
    """Running sums of the metrics over slices of positions; :meth:`result` turns them into means."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.ce = self.kl = self.top1 = 0.0
        self.tokens = self.kl_tokens = 0
        self.bin_count, self.bin_conf, self.bin_correct = (np.zeros(ECE_BINS) for _ in range(3))

    def add(self, logits, label, target, teacher_top1, start: int, stop: int) -> None:
        log_p1 = torch.log_softmax(logits, -1)
        has_label = label != IGNORE
        ce = -log_p1.gather(-1, label.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        self.ce += float(ce[has_label].sum())
        self.tokens += int(has_label.sum())

        conf, pred = log_p1.max(-1)
        conf, correct = conf.exp()[has_label], (pred == label)[has_label]
        bins = (conf * ECE_BINS).long().clamp_max(ECE_BINS - 1).cpu().numpy()
        self.bin_count += np.bincount(bins, minlength=ECE_BINS)
        self.bin_conf += np.bincount(bins, weights=conf.double().cpu().numpy(), minlength=ECE_BINS)
        self.bin_correct += np.bincount(bins, weights=correct.double().cpu().numpy(), minlength=ECE_BINS)

        logq = student_logq_at(target, torch.log_softmax(logits / self.temperature, -1), start, stop)
        kl = target.kl(logq, start, stop)
        self.kl += float(kl.double().sum())
        self.top1 += float((pred == teacher_top1).sum())
        self.kl_tokens += kl.numel()

    def result(self) -> dict:
        ce = self.ce / self.tokens
        return {
            "ce": ce,
            "perplexity": math.exp(ce),
            "kl": self.kl / self.kl_tokens,
            "top1_agreement": self.top1 / self.kl_tokens,
            "ece": float(np.abs(self.bin_correct - self.bin_conf).sum() / self.bin_count.sum()),
            "tokens": self.tokens,
            "kl_tokens": self.kl_tokens,
        }


def _teacher_side(store, teacher, teacher_model, shard, lo, hi, tokens, temperature, device):
    """(a KL target for rows lo:hi, the teacher's top-1 id per position)."""
    if teacher_model is not None:
        teacher_hidden = final_hidden(teacher_model, tokens)
        teacher_weight = head_weight(teacher_model)

        def teacher_logits(start: int, stop: int) -> torch.Tensor:
            return (teacher_hidden[:, start:stop] @ teacher_weight.to(teacher_hidden.dtype).T).float()

        top1 = torch.cat([teacher_logits(a, min(a + EVAL_SLICE, tokens.shape[1])).argmax(-1)
                          for a in range(0, tokens.shape[1], EVAL_SLICE)], dim=1)
        return DenseTarget(teacher_logits, temperature), top1
    ids, values = store.read_teacher(shard, lo, hi)
    ids = torch.from_numpy(ids.astype(np.int64)).to(device)
    values = torch.from_numpy(values.astype(np.float32)).to(device)
    # the teacher's top-1: the first of the largest values (top-k: the first stored id, its log-probs are sorted)
    top = values.argmax(-1, keepdim=True)
    return dump_kind(teacher.kind).target(ids, values, teacher, "bucket"), ids.gather(-1, top).squeeze(-1)
