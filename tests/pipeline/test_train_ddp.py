"""``student-train`` under ``torchrun --nproc_per_node 2`` on CPU (gloo): ranks read disjoint rows, rank 0 writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import prepare_store, write_teacher_dump

from daram.pipeline.student_train import read_metrics


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
    assert sorted(p.name for p in (out / "checkpoints" / "step-00000004").iterdir()) == ["rng-rank0.pt", "rng-rank1.pt", "state.pt"]
    assert (Path(out) / "model.safetensors").is_file()
