"""`--follow` (daram/pipeline/follow.py): train in shard order while other machines dump; the student equals a
run over a complete dump."""

from __future__ import annotations

import time
import types

import pytest
import torch
from safetensors.torch import load_file

from conftest import prepare_store
from daram.config import load_config
from daram.pipeline import follow
from daram.pipeline.pause import Pause
from daram.pipeline.student_train import run_student_train
from daram.pipeline.teacher_dump import run_teacher_dump
from daram.storage import Store
from daram.storage.cache import ShardCache

SETTINGS = {
    "teacher.device": "cpu", "teacher.dtype": "float32", "teacher.kind": "draws", "teacher.draws": 8,
    "student.n_embd": 32, "student.n_head": 2, "student.n_layer": 1, "train.shards": "0-2", "train.heldout_shard": 3,
    "train.batch_size": 4, "train.grad_accum": 2, "train.warmup_steps": 2, "train.eval_rows": 8,
    "train.checkpoint_every": 0, "train.eval_every": 0, "train.log_every": 1, "train.device": "cpu",
}


def config(url: str, teacher, out, **extra):
    return load_config(overrides={"store.path": url, "teacher.model": str(teacher), "train.out": str(out),
                                  **SETTINGS, **extra})


def weights(out) -> dict[str, torch.Tensor]:
    return load_file(out / "model.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tokenizer_dir, corpus_lines, tiny_teacher_dir):
    """The single-machine run: every shard dumped, then student-train."""
    tmp = tmp_path_factory.mktemp("reference")
    store = prepare_store(tmp, tokenizer_dir, corpus_lines[:220], seq_len=32, num_shards=4, rows_per_chunk=8)
    cfg = config(str(store), tiny_teacher_dir, tmp / "student")
    run_teacher_dump(cfg, all_shards=True)
    run_student_train(cfg)
    return tmp / "student"


def test_following_a_dump_on_s3_waits_names_the_holder_and_trains_the_same_student(
        reference, s3_url, tmp_path, tokenizer_dir, corpus_lines, tiny_teacher_dir, monkeypatch, capsys):
    from daram.pipeline.prepare import run_prepare

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(corpus_lines[:220]) + "\n", encoding="utf-8")
    run_prepare(load_config(overrides={
        "store.path": s3_url, "prepare.tokenizer": str(tokenizer_dir), "prepare.seq_len": 32, "prepare.num_shards": 4,
        "prepare.rows_per_chunk": 8, "prepare.sources": [{"path": str(corpus), "unit": "line"}]}))
    cfg = config(s3_url, tiny_teacher_dir, tmp_path / "student", **{"run.disk_budget": "1GB"})
    run_teacher_dump(cfg, shards="3,0")  # the held-out shard and the first training shard; the rest come later
    store = Store.open(s3_url, mode="r+")

    # Another machine: while the follower waits, it claims the next shard, then dumps it. Its work runs inside
    # the follower's sleeps, keeping torch's global generator as it was (training must not see it).
    others = {"claim": None, "dumped": []}

    def another_machine(seconds):
        needed = next(s for s in (1, 2) if s not in others["dumped"])
        if others["claim"] is None:
            others["claim"] = store.shard_lock(needed).acquire()
            others["claim"].refresh(progress="1/3 chunks")
            return
        others["claim"].release()
        others["claim"] = None
        rng = torch.get_rng_state()
        run_teacher_dump(cfg, shard=needed, pause=Pause(), how_to_continue="")
        torch.set_rng_state(rng)
        others["dumped"].append(needed)

    monkeypatch.setattr(follow, "time", types.SimpleNamespace(perf_counter=time.perf_counter, time=time.time,
                                                              sleep=another_machine))
    fetched, evicted = [], []
    fetch, evict = ShardCache.fetch, ShardCache.evict
    monkeypatch.setattr(ShardCache, "fetch", lambda self, name: fetched.append(name) or fetch(self, name))
    monkeypatch.setattr(ShardCache, "evict", lambda self, name: evicted.append(name) or evict(self, name))
    capsys.readouterr()
    with Pause() as pause:
        summary = follow.run_follow(cfg, pause)
    err = capsys.readouterr().err
    assert not summary["paused"] and others["dumped"] == [1, 2]
    assert "follow: waiting for shard 1: held by " in err and "1/3 chunks, heartbeat 0s ago" in err
    assert "follow: waiting for shard 2: not dumped, not claimed yet" in err
    assert fetched[:1] == ["shard-00000"] and "shard-00000" in evicted  # downloaded ahead, dropped once trained
    ours, theirs = weights(tmp_path / "student"), weights(reference)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def test_a_follower_pauses_at_its_time_limit_while_waiting(reference, tmp_path, tokenizer_dir, corpus_lines,
                                                            tiny_teacher_dir, monkeypatch, capsys):
    store = prepare_store(tmp_path, tokenizer_dir, corpus_lines[:220], seq_len=32, num_shards=4, rows_per_chunk=8)
    cfg = config(str(store), tiny_teacher_dir, tmp_path / "student")
    run_teacher_dump(cfg, shards="3,0")
    monkeypatch.setattr(follow, "POLL_S", 0.01)
    with Pause(time_limit_s=1.0) as pause:
        summary = follow.run_follow(cfg, pause)
    assert summary["paused"] and summary["steps"] > 0
    err = capsys.readouterr().err
    assert "follow: waiting for shard 1: not dumped, not claimed yet" in err
    assert "paused at step" in err and "(time limit 1s)" in err
