"""Padded vocabularies: a teacher with more LM-head rows than its tokenizer has ids dumps its distribution over the real
ids, never stores a padding id and records the mass on them; one that puts real mass there is refused; a padded
student trains; tokenizers that differ are refused naming what differs. Over the tests' 2,048-id tokenizer padded to
2,112 rows, and over the real KoGPT2 tokenizer padded to 51,264 (skipped without ../shared)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import prepare_store
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from daram.cli import app
from daram.config import load_config
from daram.pipeline.models import gpt2
from daram.errors import DaramError
from daram.pipeline.dump.padded_vocab import PADDING_MASS_LIMIT, real_rows
from daram.pipeline.train.student_train import run_student_train
from daram.storage import Store

QUIET, LOUD = -50.0, 5.0  # padding logits: a checkpoint whose padding rows training pushed down, and one that did not


def padded_gpt2(out: Path, tokenizer_dir: Path, rows: int, padding_logit: float = QUIET, n_embd: int = 32) -> Path:
    """A new tiny GPT-2 whose (tied) embedding has ``rows`` rows over a tokenizer with fewer ids, saved with it.

    The final layer norm gets a bias of 1 and each padding row is the constant ``padding_logit / width``, so a
    padding id's logit is ``padding_logit`` at every position (the normalized hidden state sums to 0), against real
    logits near 0: at T = 2, QUIET puts ~1e-13 of each position on the 64 padding ids, LOUD about a quarter.
    """
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = gpt2(rows, n_embd=n_embd, n_head=2, n_layer=2, n_positions=64, tokenizer=tokenizer)
    with torch.no_grad():
        model.transformer.ln_f.bias.fill_(1.0)
        model.transformer.wte.weight[len(tokenizer):] = padding_logit / n_embd
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def dump(store: Path, teacher: Path, kind: str = "topk"):
    return CliRunner().invoke(app, [
        "teacher-dump", "--store", str(store), "--teacher", str(teacher), "--dtype", "float32", "--device", "cpu",
        "--kind", kind, *(["--top-k", "8"] if kind == "topk" else ["--draws", "16"]), "--temperature", "2",
        "--batch-size", "4", "--all",
    ])


def check_padded_dump(store_path: Path, teacher_dir: Path, vocab: int) -> None:
    """Stored ids are real ids, and their log-probs are the teacher's renormalized over the real ids."""
    store = Store.open(str(store_path))
    teacher = store.teacher_manifest()
    assert teacher.vocab_size == vocab
    model = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    tokens = torch.from_numpy(store.read_tokens(0, 0, 4).astype(np.int64))
    with torch.no_grad():
        reference = torch.log_softmax(model(tokens).logits[..., :vocab] / 2.0, -1)
    ids, logprobs = store.read_teacher(0, 0, 4)
    assert ids.max() < vocab
    ids = torch.from_numpy(ids.astype(np.int64))
    assert torch.allclose(torch.from_numpy(logprobs.astype(np.float32)), reference.gather(-1, ids), rtol=5e-4, atol=1e-4)  # float16
    assert torch.equal(ids[..., 0], reference.argmax(-1))
    stats = teacher.shards["0"]
    assert 0 <= stats["padding_mass_mean"] <= stats["padding_mass_max"] < 1e-9  # measured, and tiny


@pytest.fixture(scope="module")
def store(tmp_path_factory, tokenizer_dir, corpus_lines) -> Path:
    return prepare_store(tmp_path_factory.mktemp("padded"), tokenizer_dir, corpus_lines[:138], seq_len=32,
                         num_shards=2, rows_per_chunk=4)


@pytest.mark.parametrize("kind", ["topk", "draws"])
def test_a_padded_teacher_dumps_its_real_ids_and_measures_the_padding_mass(kind, store, tmp_path, tokenizer_dir):
    teacher = padded_gpt2(tmp_path / "teacher", tokenizer_dir, rows=2112)
    path = tmp_path / "store.zarr"
    shutil.copytree(store, path)
    result = dump(path, teacher, kind)
    assert result.exit_code == 0, result.output
    assert "mass on padding ids mean" in result.stderr
    if kind == "topk":
        check_padded_dump(path, teacher, 2048)
    else:
        ids = Store.open(str(path)).read_teacher(0)[0]
        assert ids.max() < 2048 and Store.open(str(path)).teacher_manifest().shards["0"]["padding_mass_max"] < 1e-9


def test_a_teacher_with_real_mass_on_padding_ids_is_refused(store, tmp_path, tokenizer_dir):
    teacher = padded_gpt2(tmp_path / "teacher", tokenizer_dir, rows=2112, padding_logit=LOUD)
    path = tmp_path / "store.zarr"
    shutil.copytree(store, path)
    result = dump(path, teacher)
    assert result.exit_code == 2
    assert "of a position's probability on padding ids (LM head rows >= 2,048" in result.stderr
    assert f"more than {PADDING_MASS_LIMIT:g} is refused" in result.stderr
    assert Store.open(str(path)).shard_state(0).chunks_done == 0  # nothing of the refused chunk was written


def test_a_padded_student_trains_and_exports(store, tmp_path, tokenizer_dir, tiny_teacher_dir):
    path = tmp_path / "store.zarr"
    shutil.copytree(store, path)
    assert dump(path, tiny_teacher_dir).exit_code == 0
    student = padded_gpt2(tmp_path / "student", tokenizer_dir, rows=2112, padding_logit=LOUD)
    cfg = load_config(overrides={
        "store.path": str(path), "train.out": str(tmp_path / "out"), "student.init_from": str(student),
        "train.shards": "0", "train.heldout_shard": 1, "train.batch_size": 4, "train.max_steps": 3,
        "train.eval_rows": 4, "train.loss_slice": 16, "train.device": "cpu",
    })
    summary = run_student_train(cfg)
    assert math.isfinite(summary["last"]["loss"]) and math.isfinite(summary["heldout"]["kl"])
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert exported.get_output_embeddings().weight.shape[0] == 2112


def test_a_student_with_another_tokenizer_is_refused_naming_what_differs(store, tmp_path, other_tokenizer_model,
                                                                         tiny_teacher_dir):
    path = tmp_path / "store.zarr"
    shutil.copytree(store, path)
    assert dump(path, tiny_teacher_dir).exit_code == 0
    result = CliRunner().invoke(app, [
        "student-train", "--store", str(path), "--out", str(tmp_path / "out"), "--device", "cpu",
        "--set", f"student.init_from={other_tokenizer_model}", "--shards", "0", "--set", "train.heldout_shard=-1",
    ])
    assert result.exit_code == 2
    assert "ids against 2,048" in result.stderr
    assert "out of scope" in result.stderr


@pytest.mark.slow
def test_a_kogpt2_teacher_padded_to_51264_rows(tmp_path, kogpt2_tokenizer_dir, korean_lines):
    """KoGPT2's 51,200 ids in 51,264 rows, as its checkpoints pad them, at a tiny width."""
    path = prepare_store(tmp_path, kogpt2_tokenizer_dir, korean_lines[:60], seq_len=32, num_shards=1, rows_per_chunk=4)
    teacher = padded_gpt2(tmp_path / "teacher", kogpt2_tokenizer_dir, rows=51_264, n_embd=16)
    result = dump(path, teacher)
    assert result.exit_code == 0, result.output
    check_padded_dump(path, teacher, 51_200)
    refused = padded_gpt2(tmp_path / "refused", kogpt2_tokenizer_dir, rows=51_264, padding_logit=LOUD + 3, n_embd=16)
    again = prepare_store(tmp_path, kogpt2_tokenizer_dir, korean_lines[:60], seq_len=32, num_shards=1, rows_per_chunk=4,
                          name="again.zarr")
    result = dump(again, refused)  # 64 rows at +8 among 51,200 near 0: about 12% at T = 2
    assert result.exit_code == 2 and "padding ids (LM head rows >= 51,200" in result.stderr


def test_padding_mass_is_the_softmax_mass_of_the_padding_rows_and_a_short_head_is_refused():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 100, bias=True)
    real, meter = real_rows(head, 90, temperature=2.0)
    hidden = torch.randn(5, 8)
    z = real(hidden, torch.empty(5, 90))
    dense = torch.softmax(head(hidden).detach() / 2.0, -1)
    assert torch.allclose(meter(hidden, z), dense[:, 90:].sum(-1), atol=1e-6)
    assert torch.allclose(torch.softmax(z, -1), dense[:, :90] / dense[:, :90].sum(-1, keepdim=True), atol=1e-6)
    assert real_rows(head, 100, 2.0)[1] is None  # nothing padded: nothing to measure
    with pytest.raises(DaramError, match="LM head has 100 outputs but its tokenizer .* has 120 ids"):
        real_rows(head, 120, 2.0)
