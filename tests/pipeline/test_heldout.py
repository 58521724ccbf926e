"""Held-out metrics against references computed another way: HF's own loss, a teacher equal to the student."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from daram.pipeline.heldout import heldout_metrics
from daram.storage import Store


def test_metrics_of_a_model_against_itself_and_against_hf_loss(prepared_store, tiny_teacher_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir).eval()
    store = Store.open(str(prepared_store))
    result = heldout_metrics(model, store, 1, temperature=2.0, max_rows=6, batch_size=4, teacher_model=model)
    tokens = torch.from_numpy(store.read_tokens(1, 0, 6).astype(np.int64))
    with torch.no_grad():
        reference_ce = model(tokens, labels=tokens).loss.item()  # mean over the 6 x 63 next-token positions
    assert result["ce"] == pytest.approx(reference_ce, rel=1e-5)
    assert result["tokens"] == 6 * 63 and result["kl_tokens"] == 6 * 64 and result["rows"] == 6
    assert abs(result["kl"]) < 1e-6 and result["top1_agreement"] == 1.0  # a model is its own perfect student
    assert 0 <= result["ece"] <= 1 and result["perplexity"] == pytest.approx(np.exp(result["ce"]))


def test_a_model_with_broken_weights_is_one_error_naming_the_shard(prepared_store, tiny_teacher_dir):
    # A learning rate of 1e30 left weights this large after one step: the held-out pass crashed in np.bincount
    # (a traceback, after the checkpoint) instead of saying what is wrong.
    from transformers import AutoModelForCausalLM

    from daram.errors import DaramError

    model = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir).eval()
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.mul_(1e30)
    store = Store.open(str(prepared_store))
    with pytest.raises(DaramError, match=r"^held-out shard 1: the model's logits on rows 0-3 are not finite"):
        heldout_metrics(model, store, 1, temperature=2.0, max_rows=6, batch_size=4, teacher_model=model)
