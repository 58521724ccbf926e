"""The student: built new or loaded from ``student.init_from``, wrapped with its loss, at a precision."""

from __future__ import annotations

import torch

from daram.errors import DaramError
from daram.pipeline.architectures import check_plain_head, new_student
from daram.pipeline.hf import check_store_tokenizer, load_causal_lm, load_tokenizer
from daram.pipeline.losses import Workspace, final_hidden, head_weight, sliced_distill_loss


def precision_for(name: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a grad scaler is needed) for train.precision."""
    if name == "auto":
        if device.type != "cuda":
            return None, False
        # P100 / T4 class: fp16 + scaler. Not torch's default answer, which counts bfloat16 emulated (slowly) there.
        name = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if name == "fp16" and device.type != "cuda":
        raise DaramError("train.precision fp16 needs a CUDA GPU (use bf16 or fp32 on CPU)")
    return {"fp32": (None, False), "bf16": (torch.bfloat16, False), "fp16": (torch.float16, True)}[name]


class StudentWithLoss(torch.nn.Module):
    """The student and its sliced loss as one module, so DDP sees the whole forward.

    The in-place rule of :mod:`daram.pipeline.losses`: the sliced loss computes its gradients in
    forward, into the reused ``workspace`` buffers, and saves them for backward. So every forward
    must be followed by its backward before the next forward: two forwards before one backward fail
    (autograd sees the saved gradient modified in place and raises). Gradient accumulation does
    forward, backward, forward, backward, which is fine; evaluation runs without gradients and uses
    no workspace.
    """

    def __init__(self, model, loss_slice: int, compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.loss_slice, self.compute_dtype = model, loss_slice, compute_dtype
        self.workspace = Workspace()  # the loss's buffers, reused from step to step

    def forward(self, tokens: torch.Tensor, objective):
        hidden = final_hidden(self.model, tokens)
        return sliced_distill_loss(
            hidden, head_weight(self.model), objective, self.loss_slice, self.compute_dtype, self.workspace
        )


def build_student(student, store, tokenizer):
    """A new student of ``student.arch`` and the configured shape, or ``student.init_from``, checked against the
    store's tokenizer; either way its logits must be ``hidden @ W^T`` (the fused loss computes them so)."""
    manifest = store.manifest
    if student.init_from:
        return _load_student(student.init_from, store)
    return new_student(student, manifest.tokenizer.vocab_size, max(manifest.seq_len, 1024), tokenizer)


def _load_student(source: str, store):
    info, seq_len = store.manifest.tokenizer, store.manifest.seq_len
    check_store_tokenizer(load_tokenizer(source), f"student.init_from {source!r}", store)
    model = load_causal_lm(source, "float32", "cpu")
    if model.config.vocab_size < info.vocab_size:
        raise DaramError(f"student.init_from {source!r}: vocab_size {model.config.vocab_size} < the store's {info.vocab_size}")
    positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 0)
    if positions < seq_len:
        raise DaramError(f"student.init_from {source!r}: {positions} positions < the store's seq_len {seq_len}")
    check_plain_head(model, f"student.init_from {source!r}")
    return model.train()
