"""The student with its loss: precision choices, and the in-place rule of the sliced loss."""

from __future__ import annotations

import pytest
import torch

from daram.errors import DaramError
from daram.pipeline.losses import DistillObjective, next_token_labels
from daram.pipeline.models import gpt2
from daram.pipeline.train.model import StudentWithLoss, precision_for


def test_precision_on_cpu():
    assert precision_for("auto", torch.device("cpu")) == (None, False)
    assert precision_for("bf16", torch.device("cpu")) == (torch.bfloat16, False)
    with pytest.raises(DaramError, match="fp16 needs a CUDA GPU"):
        precision_for("fp16", torch.device("cpu"))


@pytest.mark.parametrize("native, expected", [(True, (torch.bfloat16, False)), (False, (torch.float16, True))])
def test_auto_precision_on_cuda_counts_only_native_bfloat16(monkeypatch, native, expected):
    # torch's is_bf16_supported() says True on a P100 or T4 too (bfloat16 emulated, slowly): auto must take fp16 there
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert precision_for("auto", torch.device("cuda")) == expected


def _student_and_batch():
    torch.manual_seed(0)
    model = gpt2(64, n_embd=16, n_head=2, n_layer=1, n_positions=16).eval()  # no dropout: both computations see one network
    tokens = torch.randint(0, 64, (2, 8))
    objective = DistillObjective(next_token_labels(tokens), None, 1.0, 0.0, 1.0)
    return StudentWithLoss(model, loss_slice=4, compute_dtype=torch.float32), tokens, objective


def test_gradients_equal_the_models_own_cross_entropy():
    wrapped, tokens, objective = _student_and_batch()
    loss, _, ce = wrapped(tokens, objective)
    loss.backward()
    ours = [p.grad.clone() for p in wrapped.model.parameters()]
    wrapped.model.zero_grad()
    wrapped.model(tokens, labels=tokens).loss.backward()
    for mine, reference in zip(ours, (p.grad for p in wrapped.model.parameters())):
        torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-6)


def test_two_forwards_before_one_backward_fail_loudly():
    """The loss computes its gradients in forward into reused buffers: a second forward overwrites what the
    first one's backward needs. Autograd must notice (a silent wrong gradient would be far worse)."""
    wrapped, tokens, objective = _student_and_batch()
    first, _, _ = wrapped(tokens, objective)
    second, _, _ = wrapped(tokens.flip(0), objective)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        first.backward()
