"""examples/: the Hugging Face ``Trainer`` example trains from a store, and at the same batch and weights its loss is
`student-train`'s."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from conftest import REPO
from test_data import dumped_store
from transformers import AutoModelForCausalLM, AutoTokenizer

from daram.config import load_config
from daram.pipeline.models import gpt2
from daram.pipeline.train.student_train import read_metrics, run_student_train


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["topk", "draws"])
def test_hf_trainer_example_trains_with_student_train_loss(kind, tmp_path, tokenizer_dir, corpus_lines,
                                                           trained_tiny_teacher_dir):
    store = dumped_store(tmp_path, tokenizer_dir, corpus_lines, trained_tiny_teacher_dir, kind)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    init = tmp_path / "init"
    gpt2(len(tokenizer), n_embd=32, n_head=2, n_layer=2, n_positions=64, tokenizer=tokenizer).save_pretrained(init)
    tokenizer.save_pretrained(init)
    weights = {"alpha_kd": 0.7, "alpha_ce": 0.3}

    cfg = load_config(overrides={
        "store.path": str(store), "train.out": str(tmp_path / "daram"), "student.init_from": str(init),
        "train.shards": "0-1", "train.heldout_shard": -1, "train.shuffle": False, "train.batch_size": 4,
        "train.grad_accum": 1, "train.max_steps": 3, "train.log_every": 1, "train.loss_slice": 8, "train.device": "cpu",
        **{f"train.{k}": v for k, v in weights.items()},
    })
    run_student_train(cfg)
    daram_losses = [r["loss"] for r in read_metrics(tmp_path / "daram") if "loss" in r and r.get("split") != "heldout"]

    example = load_example("hf_trainer_distill")
    trainer = example.main(["--store", str(store), "--student", str(init), "--out", str(tmp_path / "hf"),
                            "--batch-size", "4", "--max-steps", "3", "--alpha-kd", "0.7", "--alpha-ce", "0.3"])
    hf_losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(hf_losses) == 3 and all(math.isfinite(x) for x in hf_losses)
    # Step 1: the same rows and the same initial weights (the optimizers differ after it).
    assert hf_losses[0] == pytest.approx(daram_losses[0], rel=1e-5, abs=1e-6)
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert not torch.equal(trained.lm_head.weight, AutoModelForCausalLM.from_pretrained(init).lm_head.weight)
