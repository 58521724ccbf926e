"""`daram eval`: metrics against scikit-learn, encoding, the fine-tuning loop, the report files, held-out fidelity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import save_tiny_gpt2, write_teacher_dump
from daram.cli import app
from daram.config import load_config
from daram.pipeline.downstream import TASKS, Example, load_split, subsample
from daram.pipeline.evaluate import (
    accuracy,
    collate,
    encode_examples,
    finetune_task,
    fit_lengths,
    macro_f1,
)

runner = CliRunner()

# --- metrics ------------------------------------------------------------------------------------

FIXED_PREDICTIONS = [
    ([1, 0, 1, 1, 0, 1, 0, 0], [1, 1, 1, 0, 0, 1, 0, 1]),  # binary
    ([0, 0, 0, 0, 0, 0], [0, 1, 0, 1, 0, 1]),  # class 1 never predicted: its F1 is 0
    ([2, 2, 2, 2], [0, 0, 1, 1]),  # a class only in the predictions
    ([0, 1, 2, 3, 3, 2, 1, 0, 0, 3, 2, 1], [0, 1, 2, 3, 2, 3, 0, 1, 0, 3, 1, 1]),  # four choices, HellaSwag-like
    ([1, 1, 1], [1, 1, 1]),  # perfect on one class
]


@pytest.mark.parametrize("predictions,labels", FIXED_PREDICTIONS)
def test_metrics_match_scikit_learn(predictions, labels) -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    assert macro_f1(predictions, labels) == pytest.approx(
        sklearn_metrics.f1_score(labels, predictions, average="macro", zero_division=0)
    )
    assert accuracy(predictions, labels) == pytest.approx(sklearn_metrics.accuracy_score(labels, predictions))


def test_metrics_refuse_mismatched_input() -> None:
    with pytest.raises(ValueError):
        macro_f1([0, 1], [0])
    with pytest.raises(ValueError):
        accuracy([], [])


# --- encoding -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lengths,budget,expected",
    [
        ([10, 5], 20, [10, 5]),  # fits: unchanged
        ([100, 5], 20, [15, 5]),  # the long paragraph is cut, the question kept whole
        ([10, 10], 7, [4, 3]),  # equal lengths share the budget
        ([1, 50, 30], 31, [1, 15, 15]),
        ([0, 3], 0, [0, 0]),
    ],
)
def test_fit_lengths(lengths, budget, expected) -> None:
    assert fit_lengths(lengths, budget) == expected


def test_fit_lengths_properties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        lengths = rng.integers(0, 300, size=rng.integers(1, 4)).tolist()
        budget = int(rng.integers(0, 400))
        kept = fit_lengths(lengths, budget)
        assert all(0 <= k <= n for k, n in zip(kept, lengths))
        assert sum(kept) == min(budget, sum(lengths))  # no token wasted, none over budget
        # a segment is only cut when it ends no shorter than every other kept segment, less one
        for k, n in zip(kept, lengths):
            if k < n:
                assert k >= max(kept) - 1


def test_encode_and_collate(tiny_teacher_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    question = "서울은 한국의 수도인가?"
    examples = [
        Example((("긴 본문이다. " * 40, question),), 1),
        Example((("맥락", "짧은 답"), ("맥락", "조금 더 긴 두 번째 답")), 0),
    ]
    split = encode_examples(tokenizer, examples[:1], 32, eos)
    (tokens,) = split.sequences[0]
    question_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
    assert len(tokens) == 32 and tokens[-1] == eos
    assert tokens[-1 - len(question_ids) - 1] == eos and tokens[-1 - len(question_ids) : -1] == question_ids

    choices = encode_examples(tokenizer, examples[1:], 32, eos)
    input_ids, attention_mask, last_index, labels = collate(choices, [0], pad)
    assert input_ids.shape[0] == 2 and labels.tolist() == [0]  # one row per choice
    for row, last in zip(input_ids, last_index):
        assert row[last] == eos and (row[last + 1 :] == pad).all()
    assert attention_mask.sum(dim=1).tolist() == [len(s) for s in choices.sequences[0]]


# --- fine-tuning --------------------------------------------------------------------------------


def test_finetune_is_seeded_and_learns(tiny_teacher_dir: Path, shared_data: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    task = TASKS["sentineg"]
    train = subsample(load_split(task, "train", str(shared_data)), 16, 0)
    test = subsample(load_split(task, "test", str(shared_data)), 16, 0)
    settings = load_config(overrides={
        "eval.epochs": 3, "eval.batch_size": 8, "eval.micro_batch_size": 4, "eval.max_length": 32,
        "eval.learning_rates": {"sentineg": 3e-3},
    }).eval
    runs = [
        finetune_task(str(tiny_teacher_dir), tokenizer, task, train, test, settings, torch.device("cpu"), "tiny")
        for _ in range(2)
    ]
    first, second = ([{k: v for k, v in e.items() if "seconds" not in k} for e in run["epochs"]] for run in runs)
    assert first == second  # same seed: same head, dropout and order, so the same numbers
    losses = [e["train_loss"] for e in first]
    assert losses[-1] < losses[0]  # 16 examples at a high rate: the loop fits them
    best = runs[0]
    assert best["f1"] == max(e["f1"] for e in first) and first[best["best_epoch"] - 1]["f1"] == best["f1"]
    assert best["seconds"] == pytest.approx(sum(e["seconds"] for e in best["epochs"]))


# --- the command and its report -----------------------------------------------------------------


def test_eval_every_task_writes_the_report(tiny_teacher_dir: Path, shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = [
        "eval", "--model", str(tiny_teacher_dir), "--model", str(tiny_teacher_dir), "--name", "kogpt2-like",
        "--name", "student", "--data", str(shared_data), "--out", str(out), "--max-train", "16", "--max-test", "16",
        "--epochs", "1", "--max-length", "64", "--batch-size", "8", "--lr", "wic=2e-6",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert list(report) == ["kogpt2-like", "student"]
    for name in report:
        assert list(report[name]) == list(TASKS)
        for task, entry in report[name].items():
            assert entry["metric"] == ("accuracy" if task == "nsmc" else "f1")
            assert 0 <= entry["f1"] <= 1 and 0 <= entry["accuracy"] <= 1 and entry["seconds"] > 0
            assert entry["best_epoch"] == 1 and len(entry["epochs"]) == 1
            assert (entry["train_examples"], entry["test_examples"], entry["max_length"]) == (16, 16, 64)
            assert entry["learning_rate"] == {"wic": 2e-6, "boolq": 5e-6}.get(task, entry["learning_rate"])
    # Same weights, same seed: the second model's scores equal the first's.
    for task in TASKS:
        a, b = report["kogpt2-like"][task], report["student"][task]
        assert (a["f1"], a["accuracy"]) == (b["f1"], b["accuracy"])

    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "| model | BoolQ | COPA | WiC | HellaSwag | SentiNeg | NSMC | mean |" in markdown
    assert "## Fine-tune seconds" in markdown
    student_scores = next(line for line in markdown.splitlines() if line.startswith("| student |"))
    assert student_scores.count("(100.0%)") == 7  # six tasks and the mean
    nsmc = report["student"]["nsmc"]
    assert f"| student | NSMC | {nsmc['f1']:.4f} | {nsmc['accuracy']:.4f} | 1 | 1 | 16 / 16 |" in markdown
    student_seconds = [line for line in markdown.splitlines() if line.startswith("| student |")][1]
    assert student_seconds.count("% less)") + student_seconds.count("% more)") == 7  # six tasks and the total

    png = (out / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


@pytest.mark.parametrize(
    "args,message",
    [
        (["--tasks", "boolq,kobest"], "unknown task 'kobest'"),
        (["--data", "/nonexistent/data"], "eval data directory not found"),
        (["--name", "only-one-name"], "eval.names has 1 name for 2 models"),
        (["--lr", "boolq"], "--lr expects task=rate"),
        (["--lr", "glue=1e-5"], "eval.learning_rates.glue: no such task"),
        (["--max-length", "4"], "eval.max_length must be >= 8"),
    ],
)
def test_eval_errors_are_one_line(tiny_teacher_dir: Path, shared_data: Path, tmp_path: Path, args, message) -> None:
    base = ["eval", "--model", str(tiny_teacher_dir), "--model", "other", "--data", str(shared_data),
            "--out", str(tmp_path / "eval")]
    result = runner.invoke(app, base + args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and message in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "eval").exists()


def test_eval_needs_a_model(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "--config", str(_empty_config(tmp_path)), "--data", str(tmp_path),
                                 "--set", "eval.models=[]"])
    assert result.exit_code == 2 and "no model to evaluate" in result.stderr


def _empty_config(tmp_path: Path) -> Path:
    path = tmp_path / "daram.toml"
    path.write_text("", encoding="utf-8")
    return path


# --- held-out fidelity --------------------------------------------------------------------------


def save_model_with_own_tokenizer(tmp_path: Path) -> Path:
    """A tiny GPT-2 whose tokenizer is a 300-id BPE trained here: not the store's vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from daram.pipeline.models import gpt2

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    bpe.train_from_iterator(["오늘은 날씨가 좋다.", "내일은 비가 온다."] * 10,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", unk_token="<unk>")
    out = tmp_path / "foreign"
    gpt2(len(tokenizer), n_embd=16, n_head=1, n_layer=1).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_heldout_against_a_stored_teacher(prepared_store: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    # Peaked random models (init std 1): a flat one would put nearly all its mass in the tail bucket,
    # where any two models look alike.
    teacher = save_tiny_gpt2(tmp_path / "tiny-0", tokenizer_dir, seed=0, init_std=1.0)
    other = save_tiny_gpt2(tmp_path / "tiny-1", tokenizer_dir, seed=1, init_std=1.0)
    out = tmp_path / "heldout"
    args = ["eval", "--heldout", "--store", str(prepared_store), "--model", str(teacher), "--out", str(out)]

    result = runner.invoke(app, args + ["--shards", "0"])
    assert result.exit_code == 2 and "has no teacher dump" in result.stderr

    write_teacher_dump(prepared_store, teacher)
    result = runner.invoke(app, args + ["--set", "train.heldout_shard=-1"])  # no --shards and no train.heldout_shard
    assert result.exit_code == 2 and "no held-out shard" in result.stderr

    foreign = save_model_with_own_tokenizer(tmp_path)
    result = runner.invoke(app, args + ["--model", str(foreign), "--shards", "0"])
    assert result.exit_code == 2 and "has another tokenizer (" in result.stderr

    result = runner.invoke(app, args + ["--model", str(other), "--name", "teacher", "--name", "other", "--shards", "0-1",
                                        "--heldout-rows", "16"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "heldout.json").read_text(encoding="utf-8"))
    assert list(results) == ["teacher", "other"] and all(list(r) == ["0", "1"] for r in results.values())
    from daram.storage import Store

    seq_len = Store.open(str(prepared_store)).manifest.seq_len
    for shard in ("0", "1"):
        itself, stranger = results["teacher"][shard], results["other"][shard]
        # The teacher scored against its own stored distribution: KL ~ 0 (float16 rounding), full agreement.
        assert itself["kl"] == pytest.approx(0, abs=1e-3) and itself["top1_agreement"] > 0.99
        assert stranger["kl"] > 0.1 and stranger["top1_agreement"] < 0.1
        for metrics in (itself, stranger):
            assert metrics["perplexity"] == pytest.approx(math.exp(metrics["ce"]))
            assert metrics["tokens"] == 16 * (seq_len - 1) and metrics["rows"] == 16
            assert 0 <= metrics["ece"] <= 1 and metrics["temperature"] == 2.0
    markdown = (out / "heldout.md").read_text(encoding="utf-8")
    assert "| teacher | 0 |" in markdown and "| other | 1 |" in markdown


@pytest.mark.slow
def test_eval_from_a_config_file_in_a_subprocess(tiny_teacher_dir: Path, shared_data: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    out = tmp_path / "eval"
    config = tmp_path / "daram.toml"
    config.write_text(
        f'[eval]\nmodels = ["{tiny_teacher_dir}"]\nnames = ["tiny"]\ntasks = ["copa", "nsmc"]\n'
        f'data = "{shared_data}"\nout = "{out}"\nepochs = 2\nbatch_size = 8\nmax_length = 512\n'
        "max_train = 24\nmax_test = 16\n\n[eval.learning_rates]\ncopa = 1e-4\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "daram", "eval", "--config", str(config)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tiny COPA 2/2" in done.stderr and "tiny NSMC 2/2" in done.stderr  # progress bars per model/task/epoch
    assert "256 positions" in done.stderr  # max_length 512 is cut to the tiny model's 256 positions
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    copa, nsmc = report["tiny"]["copa"], report["tiny"]["nsmc"]
    assert copa["learning_rate"] == 1e-4 and nsmc["learning_rate"] == 5e-6  # a config key replaces one default
    assert [e["epoch"] for e in copa["epochs"]] == [1, 2] and copa["max_length"] == 256
    assert (nsmc["train_examples"], nsmc["test_examples"]) == (24, 16)
    assert done.stdout.strip().splitlines()[-1].startswith("eval: 1 model x 2 tasks; wrote")
