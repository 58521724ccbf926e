"""`daram teacher-dump --kind draws` (format v2): sorted draws, the same draws as a sampled dump of the
same seed, read back as probabilities, checked by verify, plain Zarr, and trained on by student-train."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from daram.cli import app
from daram.config import load_config
from daram.errors import DaramError
from daram.pipeline.inspect import run_inspect, run_verify
from daram.storage import Store, TeacherManifest
from daram.storage.draws import decode_draws
from .test_dump_sampled import DRAWS, SEED, sampled, sampled_args, small_store  # noqa: F401 (fixture)


def dump_shard_0(path: Path, teacher: Path, kind: str) -> Path:
    """``teacher-dump --shard 0`` of the small store, as the sampled tests dump but of ``kind``."""
    result = CliRunner().invoke(app, [a if a != "sampled" else kind for a in sampled_args(path, teacher, "--shard", "0")])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def drawn(tmp_path_factory, tokenizer_dir, corpus_lines, tiny_teacher_dir) -> Path:
    return dump_shard_0(small_store(tmp_path_factory.mktemp("draws"), tokenizer_dir, corpus_lines), tiny_teacher_dir, "draws")


def test_layout_and_manifest(drawn):
    store = Store.open(str(drawn))
    teacher = store.teacher_manifest()
    assert (teacher.kind, teacher.draws, teacher.width, teacher.seed, teacher.format_version) == ("draws", DRAWS, DRAWS, SEED, 2)
    assert teacher.array_names == ("draw_ids",)
    raw = zarr.open_group(str(drawn), mode="r", use_consolidated=False)["teacher/shard-00000"]
    assert sorted(raw.array_keys()) == ["chunks_done", "draw_ids"]  # nothing but the ids
    draws = raw["draw_ids"][:]
    assert draws.dtype == np.uint16 and draws.shape == (*store.read_tokens(0).shape, DRAWS)
    assert (np.diff(draws.astype(int), axis=-1) >= 0).all()
    assert store.manifest.format_version == 2
    stats = teacher.shards["0"]  # every draw is kept: nothing is ever truncated
    unique = (decode_draws(draws)[1] > 0).sum(-1).mean()
    assert stats["truncated_positions"] == 0 and stats["unique_ids_mean"] == pytest.approx(float(unique))


def test_the_same_draws_as_a_sampled_dump_of_the_same_seed(drawn, sampled):  # noqa: F811
    """Both kinds draw from one stream of uniforms per (seed, shard, chunk): the multisets must agree."""
    draws = zarr.open_group(str(drawn), mode="r", use_consolidated=False)["teacher/shard-00000/draw_ids"][:]
    sample_ids, counts = Store.open(str(sampled)).read_teacher(0)
    expanded = [np.sort(np.repeat(i, c)) for i, c in zip(sample_ids.reshape(-1, DRAWS), counts.reshape(-1, DRAWS))]
    assert np.array_equal(draws.reshape(-1, DRAWS), np.stack(expanded))
    # read back as probabilities: count / draws at each distinct id, summing to 1
    ids, p = Store.open(str(drawn)).read_teacher_probs(0)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    assert np.array_equal(np.sort(p[p > 0] * DRAWS).round(), np.sort(counts[counts > 0]).astype(float))


def test_inspect_verify_and_block_checks(drawn, capsys):
    cfg = load_config(overrides={"store.path": str(drawn)})
    run_inspect(cfg, sample=False)
    assert f"draws (format v2), {DRAWS} sorted draws, seed {SEED}" in capsys.readouterr().out
    assert not run_verify(cfg)  # shard 1 is not dumped: exit 1, though every check passes on shard 0's chunks
    out = capsys.readouterr().out
    assert "BAD" not in out and "teacher: 1 complete, 0 incomplete, 1 not dumped, 0 released" in out
    teacher = TeacherManifest("t", "-", "float32", 1.0, "draws", 4, 100, "fp", 4, draws=4)
    assert teacher.format.check_block((np.array([[[3, 3, 7, 9]]], dtype=np.uint16),), teacher) == []
    assert teacher.format.check_block((np.array([[[3, 9, 7, 7]]], dtype=np.uint16),), teacher) == ["draws not sorted in ascending order"]
    assert teacher.format.check_block((np.array([[[3, 3, 7, 700]]], dtype=np.uint16),), teacher) == ["id 700 >= vocab 100"]


def test_stored_chunks_are_plain_zarr_with_a_standard_codec(drawn):
    meta = json.loads((drawn / "teacher" / "shard-00000" / "draw_ids" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "blosc", "crc32c"]
    assert meta["codecs"][1]["configuration"]["shuffle"] == "noshuffle"


def test_unknown_versions_are_refused_with_the_version_named(drawn, tmp_path):
    import shutil

    copy = tmp_path / "future.zarr"
    shutil.copytree(drawn, copy)
    meta_path = copy / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["daram"]["format_version"] = 3
    meta_path.write_text(json.dumps(meta))
    result = CliRunner().invoke(app, ["inspect", "--store", str(copy)])
    assert result.exit_code == 2 and "format_version 3 is not readable" in result.output


def test_student_train_reads_draws_as_probabilities(drawn, tmp_path, tiny_teacher_dir):
    from daram.pipeline.train.student_train import run_student_train

    def train(out, **settings):
        return run_student_train(load_config(overrides={
            "store.path": str(drawn), "train.out": str(tmp_path / out), "train.shards": "0", "train.heldout_shard": -1,
            "student.n_embd": 32, "student.n_head": 2, "student.n_layer": 2, "train.batch_size": 2, "train.max_steps": 2,
            "train.log_every": 1, "train.eval_every": 0, "train.checkpoint_every": 0, "train.loss_slice": 32,
            "train.device": "cpu", "train.lr": 3e-3, "train.warmup_steps": 1, **settings,
        }))

    summary = train("kd")
    # A fresh student is near uniform: KL(t || q) = log V - H(t), with H(t) between 0 and log(draws) when the
    # decoded probabilities t sum to 1 (a decode that lost or doubled counts would leave this band).
    log_v = np.log(Store.open(str(drawn)).manifest.tokenizer.vocab_size)
    assert summary["steps"] >= 1 and log_v - np.log(DRAWS) - 0.3 < summary["last"]["kd"] < log_v + 0.3, summary["last"]


@pytest.fixture(scope="module")
def ranked(tmp_path_factory, tokenizer_dir, corpus_lines, tiny_teacher_dir) -> Path:
    return dump_shard_0(small_store(tmp_path_factory.mktemp("draw-ranks"), tokenizer_dir, corpus_lines), tiny_teacher_dir,
                        "draw_ranks")


def test_draw_ranks_store_systematic_draws_of_the_teacher_as_frequency_ranks(ranked, drawn, tiny_teacher_dir, capsys):
    """Each id holds floor(D p) or ceil(D p) of the D draws of the teacher's own p (systematic draws), read back
    through a frequency table of the shard's own tokens and a byte-shuffled codec; verify is clean, and the
    shard is smaller than the independent draws stored as ids (this tiny teacher is nearly uniform: every
    draw a new id either way, so the ranks' steps make the difference)."""
    import torch

    from daram.pipeline.hf import load_causal_lm

    store, plain = Store.open(str(ranked)), Store.open(str(drawn))
    ids, p = store.read_teacher_probs(0)
    tokens = store.read_tokens(0)
    vocab = store.manifest.tokenizer.vocab_size
    with torch.no_grad():
        logits = load_causal_lm(str(tiny_teacher_dir), "float32", "cpu")(torch.from_numpy(tokens.astype(np.int64))).logits
    expected = torch.softmax(logits[..., :vocab].double(), -1).numpy() * DRAWS  # T = 1
    counts = np.zeros(expected.shape)
    rows, positions = np.indices(ids.shape[:2])
    np.add.at(counts, (rows[..., None], positions[..., None], ids), p * DRAWS)
    assert np.allclose(counts.sum(-1), DRAWS) and (np.abs(counts - expected) < 1 + 1e-3).all()
    raw = zarr.open_group(str(ranked), mode="r", use_consolidated=False)["teacher/shard-00000"]
    assert sorted(raw.array_keys()) == ["chunks_done", "draw_rank_steps", "rank_ids"]
    frequency = np.bincount(tokens.ravel(), minlength=vocab)
    assert (np.diff(frequency[raw["rank_ids"][:]]) <= 0).all()  # most frequent first
    meta = json.loads((ranked / "teacher" / "shard-00000" / "draw_rank_steps" / "zarr.json").read_text())
    assert meta["codecs"][1]["configuration"]["shuffle"] == "shuffle"
    unique = store.teacher_manifest().shards["0"]["unique_ids_mean"]
    assert unique == pytest.approx(float((p > 0).sum(-1).mean()))
    cfg = load_config(overrides={"store.path": str(ranked)})
    run_inspect(cfg, sample=False)
    assert f"draw ranks (systematic draws re-labelled by token frequency, delta-coded), {DRAWS} sorted draws" in capsys.readouterr().out
    run_verify(cfg)
    out = capsys.readouterr().out
    assert "BAD" not in out and "teacher: 1 complete, 0 incomplete, 1 not dumped, 0 released" in out
    assert store.teacher_bytes(0) < plain.teacher_bytes(0)


def test_a_missing_rank_table_is_refused_by_readers_and_rebuilt_by_the_dump(ranked, tmp_path, tiny_teacher_dir):
    import shutil

    copy = tmp_path / "damaged.zarr"
    shutil.copytree(ranked, copy)
    shutil.rmtree(copy / "teacher" / "shard-00000" / "rank_ids")
    with pytest.raises(DaramError, match=r"teacher/shard-00000/rank_ids is missing .*teacher-dump --shard 0"):
        Store.open(str(copy)).read_teacher_probs(0)
    assert Store.open(str(copy)).shard_state(0).state == "incomplete"
    dump_shard_0(copy, tiny_teacher_dir, "draw_ranks")
    assert np.array_equal(Store.open(str(copy)).read_teacher_probs(0)[1], Store.open(str(ranked)).read_teacher_probs(0)[1])


def test_the_rank_table_is_stored_byte_shuffled_in_a_fraction_of_its_raw_size(ranked):
    """A frequency-ordered permutation is mostly runs of consecutive ids (the ids a shard never uses keep id order):
    byte-shuffled zstd stores it in a fraction of 2 B per id, which unshuffled zstd cannot (about 100%)."""
    table = ranked / "teacher" / "shard-00000" / "rank_ids"
    meta = json.loads((table / "zarr.json").read_text())
    assert meta["codecs"][1]["configuration"]["shuffle"] == "shuffle"
    stored = sum(f.stat().st_size for f in (table / "c").rglob("*") if f.is_file())
    assert stored < 0.5 * 2 * meta["shape"][0]  # 34% with the session tokenizer's 2,048 ids
