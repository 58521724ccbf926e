"""`daram teacher-dump --kind sampled`: unique drawn ids with counts; deterministic, resumable, checked."""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import prepare_store
from daram.cli import app
from daram.config import load_config
from daram.pipeline.inspect import run_inspect, run_verify
from daram.storage import Store, TeacherManifest
from .test_teacher_dump import TORN_WRITE, run_daram, shard_files

DRAWS, SEED = 20, 7


def sampled_args(store: Path, teacher: Path, *extra: str) -> list[str]:
    return ["teacher-dump", "--store", str(store), "--teacher", str(teacher), "--dtype", "float32", "--device", "cpu",
            "--kind", "sampled", "--draws", str(DRAWS), "--seed", str(SEED), "--batch-size", "3", *extra]


def dump(store: Path, teacher: Path, *extra: str):
    return CliRunner().invoke(app, sampled_args(store, teacher, *extra))


def small_store(tmp: Path, tokenizer_dir: Path, lines: list[str], name: str = "store.zarr") -> Path:
    return prepare_store(tmp, tokenizer_dir, lines[:138], seq_len=32, num_shards=2, rows_per_chunk=4, name=name)


@pytest.fixture(scope="module")
def sampled(tmp_path_factory, tokenizer_dir, corpus_lines, tiny_teacher_dir) -> Path:
    path = small_store(tmp_path_factory.mktemp("sampled"), tokenizer_dir, corpus_lines)
    result = dump(path, tiny_teacher_dir, "--shard", "0")
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def sharp_teacher(tmp_path_factory, tiny_teacher_dir) -> Path:
    """The tiny teacher with its (tied) embeddings scaled up: peaked distributions, a few ids per position."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir, dtype=torch.float32)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(30.0)
    out = tmp_path_factory.mktemp("sharp_teacher")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_teacher_dir).save_pretrained(out)
    return out


def test_layout_counts_and_manifest(sampled):
    store = Store.open(str(sampled))
    teacher = store.teacher_manifest()
    assert (teacher.kind, teacher.draws, teacher.width, teacher.seed) == ("sampled", DRAWS, DRAWS, SEED)
    ids, counts = store.read_teacher(0)
    assert ids.dtype == np.uint16 and counts.dtype == np.uint8 and ids.shape == (*store.read_tokens(0).shape, DRAWS)
    assert (counts.sum(-1) == DRAWS).all()  # width = draws: nothing is ever truncated
    assert (np.diff(counts.astype(int), axis=-1) <= 0).all() and (ids[counts == 0] == 0).all()
    assert teacher.format.check_block((ids, counts), teacher) == []
    stats = teacher.shards["0"]
    assert stats["truncated_positions"] == 0
    assert stats["unique_ids_mean"] == pytest.approx(float((counts > 0).sum(-1).mean()))
    assert stats["entropy_mean"] == pytest.approx(np.log(2048), rel=0.01)  # a random tiny teacher is nearly uniform


def test_inspect_and_verify_understand_the_kind(sampled, capsys):
    cfg = load_config(overrides={"store.path": str(sampled)})
    run_inspect(cfg, sample=False)
    out = capsys.readouterr().out
    assert f"sampled, {DRAWS} draws, width {DRAWS}, seed {SEED}" in out and "unique_ids_mean" in out
    assert not run_verify(cfg)  # shard 1 is not dumped: exit 1, though every content check passes on every chunk
    out = capsys.readouterr().out
    assert "BAD" not in out and "teacher: 1 complete, 0 incomplete, 1 not dumped, 0 released: intact but not complete" in out


def test_block_checks_name_each_problem():
    teacher = TeacherManifest("t", "-", "float32", 2.0, "sampled", 4, 100, "fp", 4, draws=5)
    ids = np.array([[[7, 3, 0, 0]]], dtype=np.uint16)
    counts = np.array([[[3, 2, 0, 0]]], dtype=np.uint8)
    assert teacher.format.check_block((ids, counts), teacher) == []
    assert teacher.format.check_block((np.array([[[7, 3, 9, 8]]], dtype=np.uint16), np.array([[[2, 1, 1, 0]]], dtype=np.uint8)), teacher) \
        == ["a padding slot (count 0) holds an id other than 0", "counts sum to 4, not draws=5"]
    assert teacher.format.check_block((np.array([[[7, 3, 5, 1]]], dtype=np.uint16), np.array([[[2, 1, 1, 1]]], dtype=np.uint8)), teacher) \
        == []  # every slot used, one draw dropped: truncation
    assert teacher.format.check_block((ids, np.array([[[2, 3, 0, 0]]], dtype=np.uint8)), teacher) \
        == ["counts not in descending order (or padding before a drawn id)"]
    assert teacher.format.check_block((np.array([[[7, 7, 0, 0]]], dtype=np.uint16), counts), teacher) == ["an id appears twice at one position"]
    assert teacher.format.check_block((np.array([[[700, 3, 0, 0]]], dtype=np.uint16), counts), teacher) == ["id 700 >= vocab 100"]


def test_the_seed_decides_the_draws(tmp_path, tokenizer_dir, corpus_lines, sampled, tiny_teacher_dir):
    again = small_store(tmp_path, tokenizer_dir, corpus_lines, name="same-seed.zarr")
    assert dump(again, tiny_teacher_dir, "--shard", "0", "--batch-size", "2").exit_code == 0
    same = Store.open(str(again)).read_teacher(0)
    reference = Store.open(str(sampled)).read_teacher(0)
    # another batch size, same draws: the uniforms belong to (seed, shard, chunk), not to a batch
    assert np.array_equal(same[0], reference[0]) and np.array_equal(same[1], reference[1])

    other = small_store(tmp_path, tokenizer_dir, corpus_lines, name="other-seed.zarr")
    assert CliRunner().invoke(app, sampled_args(other, tiny_teacher_dir, "--shard", "0") + ["--seed", "8"]).exit_code == 0
    assert not np.array_equal(Store.open(str(other)).read_teacher(0)[0], reference[0])


@pytest.mark.slow
def test_kill_then_resume_is_bit_identical(tmp_path, tokenizer_dir, corpus_lines, sampled, tiny_teacher_dir):
    path = small_store(tmp_path, tokenizer_dir, corpus_lines)
    process = run_daram(textwrap.dedent(TORN_WRITE).format(chunk=2, args=sampled_args(path, tiny_teacher_dir, "--shard", "0")))
    process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL
    store = Store.open(str(path))
    assert store.teacher_shard(0).flags().tolist()[:3] == [1, 1, 0]
    result = dump(path, tiny_teacher_dir, "--shard", "0")
    assert result.exit_code == 0 and "resuming: 2/7 chunks" in result.stderr
    assert shard_files(path, 0) == shard_files(sampled, 0)


def test_draws_follow_the_teacher_at_each_position(tmp_path, tokenizer_dir, corpus_lines, sharp_teacher):
    """Row t holds draws from softmax(logits[:, t] / T): the drawn share of each position's most likely id
    matches its probability, pooled over positions (within 4 sigma)."""
    from transformers import AutoModelForCausalLM

    path = small_store(tmp_path, tokenizer_dir, corpus_lines)
    assert dump(path, sharp_teacher, "--shard", "1", "--temperature", "2").exit_code == 0
    store = Store.open(str(path))
    ids, counts = store.read_teacher(1)
    model = AutoModelForCausalLM.from_pretrained(sharp_teacher, dtype=torch.float32).eval()
    with torch.inference_mode():
        logits = model(torch.from_numpy(store.read_tokens(1).astype(np.int64))).logits
    p_max, argmax = torch.softmax(logits.double() / 2.0, -1).max(-1)
    drawn_argmax = np.where(ids == argmax.numpy()[..., None], counts, 0).sum(-1)
    assert 0.3 < p_max.mean() < 0.97  # peaked, yet not degenerate: the test can tell positions apart
    expected, variance = DRAWS * p_max.sum(), (DRAWS * p_max * (1 - p_max)).sum()
    assert abs(drawn_argmax.sum() - float(expected)) < 4 * float(variance.sqrt())
    stats = store.teacher_manifest().shards["1"]
    assert stats["unique_ids_mean"] < DRAWS / 2


def test_a_narrow_width_truncates_and_counts_it(tmp_path, tokenizer_dir, corpus_lines, tiny_teacher_dir, capsys):
    path = small_store(tmp_path, tokenizer_dir, corpus_lines)
    assert dump(path, tiny_teacher_dir, "--shard", "1", "--sample-width", "4").exit_code == 0
    store = Store.open(str(path))
    _, counts = store.read_teacher(1)
    truncated = int((counts.sum(-1) < DRAWS).sum())
    assert truncated > 0 and store.teacher_manifest().shards["1"]["truncated_positions"] == truncated
    run_verify(load_config(overrides={"store.path": str(path)}))
    assert "BAD" not in capsys.readouterr().out  # truncated positions pass the checks


@pytest.mark.parametrize(
    "extra, message",
    [(["--draws", "300"], "at most 255"), (["--sample-width", "21"], "exceeds teacher.draws=20")],
)
def test_bad_sampled_settings(tmp_path, tokenizer_dir, corpus_lines, tiny_teacher_dir, extra, message):
    path = small_store(tmp_path, tokenizer_dir, corpus_lines)
    result = CliRunner().invoke(app, sampled_args(path, tiny_teacher_dir, "--shard", "0") + extra)
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1
