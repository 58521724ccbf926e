"""models.gpt2 and models.train_small_teacher: the one GPT-2 builder and the one small-teacher recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from daram.errors import DaramError
from daram.pipeline.models import gpt2, train_small_teacher


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_gpt2_carries_the_tokenizers_special_ids_and_one_dropout(tokenizer):
    model = gpt2(len(tokenizer), n_embd=32, n_head=2, n_layer=3, n_positions=64, dropout=0.1, tokenizer=tokenizer)
    config = model.config
    # generate() and an exported student read these: a missing EOS would run every generation to max length
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (0, 1, 2)
    assert config.resid_pdrop == config.embd_pdrop == config.attn_pdrop == 0.1
    assert (config.n_layer, config.n_positions) == (3, 64)
    assert model.get_output_embeddings().weight.shape == (len(tokenizer), 32)
    assert gpt2(100, n_embd=16, n_head=2, n_layer=1).config.eos_token_id is None  # not English GPT-2's 50256


@pytest.mark.parametrize("shape", [dict(n_embd=30, n_head=4), dict(n_embd=32, n_head=0), dict(dropout=1.0)])
def test_gpt2_refuses_a_shape_it_cannot_build_in_one_line(shape):
    settings = dict(vocab_size=100, n_embd=32, n_head=2, n_layer=1) | shape
    with pytest.raises(DaramError, match=r"^cannot build a GPT-2 with .*n_embd a multiple of n_head") as error:
        gpt2(**settings)
    assert "\n" not in str(error.value)


def _rows(tokenizer, lines: list[str], seq_len: int = 32) -> np.ndarray:
    ids = [i for line in lines for i in tokenizer(line)["input_ids"] + [tokenizer.eos_token_id]]
    return np.array(ids[: len(ids) // seq_len * seq_len]).reshape(-1, seq_len)


def test_train_small_teacher_learns_and_is_seeded(tokenizer, corpus_lines):
    rows = _rows(tokenizer, corpus_lines[:400])
    curves, weights = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = gpt2(len(tokenizer), n_embd=32, n_head=2, n_layer=1, n_positions=32, tokenizer=tokenizer)
        curves.append([point["loss"] for point in train_small_teacher(model, rows, steps=30, batch_size=8, lr=1e-2)])
        weights.append(model.get_output_embeddings().weight.detach().clone())
        assert not model.training  # ready to dump or save
    assert curves[0] == curves[1] and torch.equal(weights[0], weights[1])  # same seed, same rows drawn, same run
    # From ln(2048) = 7.6 nats: a broken schedule (a zero rate, a warm-up that never ends) would not get here.
    assert len(curves[0]) == 30 and np.mean(curves[0][-5:]) < curves[0][0] - 1.0


def test_train_small_teacher_refuses_no_rows(tokenizer):
    model = gpt2(len(tokenizer), n_embd=16, n_head=2, n_layer=1, n_positions=32)
    with pytest.raises(DaramError, match="cannot train a teacher on 0 rows"):
        train_small_teacher(model, np.zeros((0, 32), dtype=np.int64), steps=5, batch_size=2, lr=1e-3)
