"""``student-train`` under ``torchrun --nproc_per_node 2`` on CPU (gloo): ranks read disjoint rows, DDP averages
their gradients, rank 0 writes."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import prepare_store, sigkill_alone, survivors, write_teacher_dump

from daram.pipeline.train.student_train import read_metrics
from daram.storage import Store


@pytest.mark.slow
def test_two_process_ddp_run_on_cpu(tmp_path, tokenizer_dir, corpus_lines, tiny_teacher_dir):
    store = prepare_store(tmp_path, tokenizer_dir, corpus_lines[:656], seq_len=64, num_shards=3, rows_per_chunk=16)
    write_teacher_dump(store, tiny_teacher_dir, width=16)
    out = tmp_path / "student"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "daram",
        "student-train", "--store", str(store), "--out", str(out), "--shards", "0-1", "--heldout-shard", "2",
        "--n-embd", "32", "--n-head", "2", "--n-layer", "2", "--batch-size", "2", "--max-steps", "4", "--device", "cpu",
        "--set", "train.grad_accum=2", "--set", "train.log_every=1", "--set", "train.eval_rows=8",
        "--set", "train.checkpoint_every=2", "--set", "train.loss_slice=64",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [r for r in read_metrics(out) if r.get("split") != "heldout"]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # rank 0 alone writes
    summary = [line for line in result.stderr.splitlines() if line.startswith("student-train (topk)")]
    # 4 steps x 2 micro-batches x 2 rows x 64 tokens on each of the 2 ranks.
    assert len(summary) == 1 and "4 steps, 2,048 tokens" in summary[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    assert sorted(p.name for p in (out / "checkpoints" / "step-00000004").iterdir()) == ["rng-rank0.pt", "rng-rank1.pt", "settings.json", "state.pt"]
    assert (Path(out) / "model.safetensors").is_file()

    # Each step's gradient must be the mean over both ranks' micro-batches. Without DDP (or with each rank's
    # gradient kept to itself) rank 0 would step on its own rows only: other gradient norms, other weights.
    from safetensors.torch import load_file

    norms, weights = _two_ranks_in_one_process(store, steps=4, grad_accum=2, batch_size=2)
    assert [r["grad_norm"] for r in records] == pytest.approx(norms, rel=1e-4)
    trained = load_file(out / "model.safetensors")
    for name, value in weights.items():
        if name in trained:  # the tied LM head is saved once
            torch.testing.assert_close(trained[name], value, rtol=0, atol=1e-4, msg=name)


@pytest.mark.slow
def test_killed_torchrun_takes_its_ranks_with_it_and_the_run_resumes(tmp_path, tokenizer_dir, corpus_lines, tiny_teacher_dir):
    # SIGKILL torchrun's agent alone (an out-of-memory kill): before, its ranks trained on without it, with
    # parent 1, and a rerun was refused while rank 0 held train.out.
    store = prepare_store(tmp_path, tokenizer_dir, corpus_lines[:656], seq_len=64, num_shards=3, rows_per_chunk=16)
    write_teacher_dump(store, tiny_teacher_dir, width=16)
    out = tmp_path / "student"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "daram",
        "student-train", "--store", str(store), "--out", str(out), "--shards", "0-1", "--heldout-shard", "2",
        "--n-embd", "32", "--n-head", "2", "--n-layer", "2", "--batch-size", "2", "--device", "cpu",
        "--set", "train.epochs=30", "--set", "train.log_every=1", "--set", "train.eval_rows=8", "--set", "train.checkpoint_every=10",
    ]
    agent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not (out / "checkpoints").is_dir() or not any((out / "checkpoints").iterdir()):
        assert agent.poll() is None and time.monotonic() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    time.sleep(random.Random(18).uniform(0, 1.0))
    ranks = sigkill_alone(agent)
    assert len(ranks) >= 2 and survivors(ranks, grace=3.0) == []  # with about 30 epochs still to train
    assert not (out / "model.safetensors").exists()
    result = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model.safetensors").is_file()


def _two_ranks_in_one_process(store_path: Path, steps: int, grad_accum: int, batch_size: int):
    """What the torchrun job above must compute, in one process: both ranks' micro-batches of each step, each
    rank's in its own data order, their gradients averaged, one AdamW step. Returns (grad norms, weights)."""
    from daram.config import load_config
    from daram.pipeline.batches import BatchPlan, iter_batches
    from daram.pipeline.hf import load_tokenizer
    from daram.pipeline.losses import DistillObjective, next_token_labels
    from daram.pipeline.train.model import StudentWithLoss, build_student
    from daram.pipeline.train.optim import build_optimizer
    from daram.pipeline.train.targets import StoredTargets

    cfg = load_config(overrides={"student.n_embd": 32, "student.n_head": 2, "student.n_layer": 2,
                                 "train.batch_size": batch_size, "train.grad_accum": grad_accum})
    store = Store.open(str(store_path))
    teacher = store.teacher_manifest()
    torch.manual_seed(cfg.train.seed)
    model = build_student(cfg.student, store, load_tokenizer(store.manifest.tokenizer.name_or_path))
    optimizer, scheduler = build_optimizer(model, cfg.train, steps)
    student = StudentWithLoss(model, 64, torch.float32)
    targets = StoredTargets(teacher, cfg.train.tail, torch.device("cpu"))
    streams = [
        iter_batches(store, BatchPlan({s: store.chunk_ranges(s) for s in (0, 1)}, [0, 1], 1, batch_size,
                                      True, cfg.train.seed, rank, 2))
        for rank in (0, 1)
    ]
    norms = []
    for _ in range(steps):
        for stream in streams:
            for _ in range(grad_accum):
                batch = next(stream)
                tokens = torch.from_numpy(batch.tokens)
                objective = DistillObjective(next_token_labels(tokens), targets(batch, tokens), teacher.temperature,
                                             cfg.train.alpha_kd, cfg.train.alpha_ce)
                loss, _, _ = student(tokens, objective)
                (loss / grad_accum / 2).backward()  # the mean over this rank's micro-batches, then over the ranks
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)))
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    return norms, model.state_dict()


@pytest.mark.slow
def test_a_run_checkpointed_on_two_ranks_resumes_on_one_with_the_same_global_batch(tmp_path, tokenizer_dir,
                                                                                     corpus_lines, tiny_teacher_dir):
    """Elastic resume: 2 ranks x grad_accum 2 to a checkpoint, then 1 rank x grad_accum 4 to the end, equals one rank
    throughout. Same micro-batches in the same order and the same schedule; only float sums are grouped otherwise
    (DDP's all-reduce of two ranks' gradients against one process accumulating four), which moves float32 weights by
    rounding, ~1e-7 per step: the weights agree to 1e-4, as the DDP run above agrees with its one-process model."""
    from safetensors.torch import load_file

    store = prepare_store(tmp_path, tokenizer_dir, corpus_lines[:656], seq_len=64, num_shards=3, rows_per_chunk=16)
    write_teacher_dump(store, tiny_teacher_dir, width=16)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = ["student-train", "--store", str(store), "--shards", "0-1", "--heldout-shard", "2", "--n-embd", "32",
              "--n-head", "2", "--n-layer", "2", "--batch-size", "2", "--max-steps", "4", "--device", "cpu",
              "--set", "train.log_every=1", "--set", "train.eval_rows=8", "--set", "train.checkpoint_every=2"]
    one, elastic = tmp_path / "one", tmp_path / "elastic"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "daram"]
    for command in ([sys.executable, "-m", "daram", *common, "--out", str(one), "--set", "train.grad_accum=4"],
                    [*torchrun, *common, "--out", str(elastic), "--set", "train.grad_accum=2"]):
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    # the two-rank run, taken back to its checkpoint of step 2, goes on on one rank
    import shutil

    shutil.rmtree(elastic / "checkpoints" / "step-00000004")
    (elastic / "model.safetensors").unlink()
    resumed = subprocess.run([sys.executable, "-m", "daram", "student-train", "--resume", "--out", str(elastic)],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "--resume on 1 rank(s): train.grad_accum 2 -> 4, the same 8 rows per step" in resumed.stderr
    ours = [r for r in read_metrics(elastic) if r.get("split") != "heldout"]
    theirs = [r for r in read_metrics(one) if r.get("split") != "heldout"]
    assert [r["step"] for r in ours] == [r["step"] for r in theirs] == [1, 2, 3, 4]
    assert [r["lr"] for r in ours] == [r["lr"] for r in theirs]  # one schedule
    assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in theirs], rel=1e-5)
    trained, reference = load_file(elastic / "model.safetensors"), load_file(one / "model.safetensors")
    for name, value in reference.items():
        torch.testing.assert_close(trained[name], value, rtol=0, atol=1e-4, msg=name)
