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
