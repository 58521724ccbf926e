"""`daram student-train --online-teacher DIR`: the seed project's recipe (teacher in the loop, full logits),
kept as the baseline that stored formats are judged against."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import prepare_store
from daram.cli import app


@pytest.fixture(scope="module")
def undumped_store(tmp_path_factory, tokenizer_dir, corpus_lines) -> Path:
    return prepare_store(tmp_path_factory.mktemp("online"), tokenizer_dir, corpus_lines[:300], seq_len=32,
                         num_shards=2, rows_per_chunk=8)


def train_args(store: Path, out: Path, *extra: str) -> list[str]:
    return ["student-train", "--store", str(store), "--out", str(out), "--shards", "0", "--heldout-shard", "1",
            "--n-embd", "32", "--n-head", "2", "--n-layer", "2", "--batch-size", "4", "--max-steps", "2",
            "--device", "cpu", "--set", "train.loss_slice=16", "--set", "train.eval_rows=4", *extra]


def test_online_teacher_needs_no_dump_and_scores_against_the_model(undumped_store, tmp_path, tiny_teacher_dir):
    result = CliRunner().invoke(app, train_args(undumped_store, tmp_path / "out", "--online-teacher", str(tiny_teacher_dir),
                                                "--temperature", "2"))
    assert result.exit_code == 0, result.output
    # the summary names the mode, and the held-out KL is the exact one against the teacher model
    assert "student-train (online): 2 steps" in result.output and "held-out KL" in result.output


def test_online_teacher_without_a_temperature_is_one_line_error(undumped_store, tmp_path, tiny_teacher_dir):
    result = CliRunner().invoke(app, train_args(undumped_store, tmp_path / "out", "--online-teacher", str(tiny_teacher_dir)))
    assert result.exit_code == 2
    assert result.output.strip() == "error: train.online_teacher needs train.temperature > 0 (the seed project used 2)"


def test_online_teacher_with_another_tokenizer_is_refused(undumped_store, tmp_path, tiny_teacher_dir):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    other = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    out = tmp_path / "other-teacher"
    AutoModelForCausalLM.from_pretrained(tiny_teacher_dir).save_pretrained(out)
    PreTrainedTokenizerFast(tokenizer_object=other).save_pretrained(out)
    result = CliRunner().invoke(app, train_args(undumped_store, tmp_path / "out", "--online-teacher", str(out),
                                                "--temperature", "2"))
    assert result.exit_code == 2 and "has another tokenizer" in result.output
