"""The report's model table: parameters counted here beside the seed's counts, with the gap explained."""

from __future__ import annotations

from pathlib import Path

import pytest

from daram.pipeline.eval.report import model_facts, safetensors_bytes


def _meta_gpt2(n_embd: int, n_head: int, n_layer: int, n_positions: int = 1024):
    """A GPT-2 of the given shape over 51,200 ids on the meta device: shapes without memory or init time."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        return GPT2LMHeadModel(GPT2Config(vocab_size=51200, n_embd=n_embd, n_head=n_head, n_layer=n_layer,
                                          n_positions=n_positions))


@pytest.mark.parametrize(
    "shape,ours,seed,explained",
    [
        ((768, 12, 12), 125_164_032, 125_164_800, "GPT2ForSequenceClassification"),  # KoGPT2
        ((768, 8, 4), 68_461_056, 67_656_960, "not derivable from the stated shape"),  # the seed's student
    ],
)
def test_parameters_beside_the_seed_count(shape, ours, seed, explained) -> None:
    facts = model_facts(_meta_gpt2(*shape), "/nowhere/model")
    assert facts["parameters"] == ours  # transformers' own count: the tied LM head once
    assert facts["seed_parameters"] == seed and facts["seed_difference"]["ours_minus_seed"] == ours - seed
    assert explained in facts["seed_difference"]["why"]
    assert facts["parameters_split"] == {"token_embeddings": 51200 * 768, "position_embeddings": 1024 * 768,
                                         "blocks_and_final_norm": ours - 51200 * 768 - 1024 * 768}
    assert (facts["n_embd"], facts["heads"], facts["layers"], facts["vocab"]) == (*shape, 51200)
    assert facts["safetensors_bytes"] is None  # nothing on disk to measure


def test_a_different_position_table_is_not_given_the_seed_explanation() -> None:
    facts = model_facts(_meta_gpt2(768, 12, 12, n_positions=512), "x")
    assert "GPT2ForSequenceClassification" not in facts["seed_difference"]["why"]


def test_safetensors_bytes_of_a_directory(tmp_path: Path) -> None:
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"x" * 5)
    (tmp_path / "pytorch_model.bin").write_bytes(b"x" * 100)  # not counted
    assert safetensors_bytes(str(tmp_path)) == 15
    assert safetensors_bytes(str(tmp_path / "empty")) is None
