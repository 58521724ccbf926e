"""`daram eval`: the fine-tuning recipe, the runs' summary, protocols, the command and its report, held-out fidelity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import save_tiny_gpt2, write_teacher_dump
from daram.cli import app
from daram.config import DEFAULT_EVAL_LEARNING_RATES, EVAL_PROTOCOLS, load_config
from daram.pipeline.eval.downstream import TASKS, Example, load_split, subsample
from daram.pipeline.eval.evaluate import summarise_runs
from daram.pipeline.eval.finetune import (
    TaskData,
    best_test_epoch,
    collate,
    dev_selected_epoch,
    encode_examples,
    finetune_task,
    fit_lengths,
)

runner = CliRunner()

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


# --- choosing the epoch -------------------------------------------------------------------------


def _epoch(n: int, dev: float, test: float) -> dict:
    return {"epoch": n, "dev": {"f1": dev, "accuracy": dev}, "test": {"f1": test, "accuracy": test}}


def test_the_two_rules_choose_different_epochs() -> None:
    history = [_epoch(1, 0.60, 0.55), _epoch(2, 0.70, 0.58), _epoch(3, 0.65, 0.62), _epoch(4, 0.70, 0.50)]
    assert best_test_epoch(history, "f1")["epoch"] == 3  # the seed's rule looks at test
    assert dev_selected_epoch(history, "f1")["epoch"] == 2  # ours looks at dev; the tie with epoch 4 goes earlier


# --- fine-tuning --------------------------------------------------------------------------------


def _sentineg(shared_data: Path, n: int) -> TaskData:
    task = TASKS["sentineg"]
    return TaskData(*(subsample(load_split(task, split, str(shared_data)), n, 0) for split in ("train", "dev", "test")))


def test_finetune_is_seeded_and_learns(tiny_teacher_dir: Path, shared_data: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    data = _sentineg(shared_data, 16)
    settings = load_config(overrides={
        "eval.epochs": 3, "eval.batch_size": 8, "eval.micro_batch_size": 4, "eval.max_length": 32,
        "eval.learning_rates": {"sentineg": 3e-3},
    }).eval
    cpu = torch.device("cpu")
    runs = [finetune_task(str(tiny_teacher_dir), tokenizer, TASKS["sentineg"], data, settings, seed, cpu, "tiny")
            for seed in (0, 0, 1)]
    first, second, other = ([{k: v for k, v in e.items() if "seconds" not in k} for e in run["epochs"]] for run in runs)
    assert first == second  # same seed: same head, dropout and order, so the same numbers
    assert first != other  # another seed: another head and order
    losses = [e["train_loss"] for e in first]
    assert losses[-1] < losses[0]  # 16 examples at a high rate: the loop fits them
    run = runs[0]
    chosen = first[run["dev_selected"]["epoch"] - 1]
    assert run["dev_selected"]["dev"] == max(e["dev"]["f1"] for e in first) == chosen["dev"]["f1"]
    assert run["dev_selected"]["f1"] == chosen["test"]["f1"]  # the test score of the dev-chosen epoch
    assert run["seed_rule"]["f1"] == max(e["test"]["f1"] for e in first)
    assert len(run["dev_selected_predictions"]) == 16 and run["examples"] == {"train": 16, "dev": 16, "test": 16}
    assert run["seconds"] == pytest.approx(sum(e["seconds"] for e in run["epochs"]))


def test_summarise_runs_over_seeds() -> None:
    labels = [0, 1, 0, 1, 1, 0, 1, 0]
    runs = []
    for seed, (predictions, seed_rule_f1, seconds) in enumerate(
        [([0, 1, 0, 1, 1, 0, 1, 1], 0.9, 10.0), ([0, 1, 1, 1, 1, 0, 0, 0], 0.8, 14.0), ([0, 0, 0, 1, 1, 0, 1, 0], 0.95, 12.0)]
    ):
        from daram.pipeline.eval.stats import accuracy, macro_f1

        f1 = macro_f1(predictions, labels)
        runs.append({"seed": seed, "dev_selected": {"epoch": 2, "dev": 0.7, "f1": f1, "accuracy": accuracy(predictions, labels)},
                     "seed_rule": {"epoch": 3, "f1": seed_rule_f1, "accuracy": 0.5}, "seconds": seconds,
                     "dev_selected_predictions": predictions})
    summary = summarise_runs(TASKS["copa"], runs, labels)
    f1s = [r["dev_selected"]["f1"] for r in runs]
    assert summary["dev_selected"]["score"] == pytest.approx([np.mean(f1s), np.std(f1s, ddof=1)])
    assert summary["seed_rule"]["score"] == pytest.approx([np.mean([0.9, 0.8, 0.95]), np.std([0.9, 0.8, 0.95], ddof=1)])
    assert summary["seconds"] == pytest.approx([12.0, 2.0])
    low, high = summary["dev_selected"]["interval"]
    assert low < np.mean(f1s) < high
    assert all("dev_selected_predictions" not in r for r in summary["runs"])


# --- protocols ----------------------------------------------------------------------------------


def test_protocols_layer_under_the_settings(tmp_path: Path) -> None:
    seed = load_config().eval
    assert (seed.protocol, seed.epochs, seed.batch_size, seed.max_length) == ("seed", 20, 64, 512)
    assert seed.learning_rates == DEFAULT_EVAL_LEARNING_RATES and seed.protocol_departures() == {}
    quick = load_config(overrides={"eval.protocol": "quick"}).eval
    for key, value in EVAL_PROTOCOLS["quick"].items():
        assert getattr(quick, key) == value
    # a setting of its own wins over the preset, and the report can name it; one rate replaces one task's
    changed = load_config(overrides={"eval.protocol": "quick", "eval.epochs": 1, "eval.learning_rates": {"copa": 1e-4}}).eval
    assert changed.epochs == 1 and changed.batch_size == EVAL_PROTOCOLS["quick"]["batch_size"]
    assert changed.learning_rates == {**EVAL_PROTOCOLS["quick"]["learning_rates"], "copa": 1e-4}
    assert changed.protocol_departures() == {"epochs": 1, "learning_rates": changed.learning_rates}
    # a file's protocol is layered the same way
    config = tmp_path / "daram.toml"
    config.write_text('[eval]\nprotocol = "quick"\nmax_test = 7\n', encoding="utf-8")
    from_file = load_config(config).eval
    assert from_file.max_test == 7 and from_file.epochs == EVAL_PROTOCOLS["quick"]["epochs"]


def test_init_writes_the_seed_protocol(tmp_path: Path) -> None:
    target = tmp_path / "daram.toml"
    assert runner.invoke(app, ["init", str(target)]).exit_code == 0
    settings = load_config(target).eval
    assert settings.protocol == "seed" and settings.protocol_departures() == {}
    # the keys a protocol sets are commented out there, so changing the protocol alone takes effect
    text = target.read_text(encoding="utf-8").replace('protocol = "seed"', 'protocol = "quick"')
    target.write_text(text, encoding="utf-8")
    quick = load_config(target).eval
    assert quick.protocol_departures() == {} and quick.epochs == EVAL_PROTOCOLS["quick"]["epochs"]


# --- the command and its report -----------------------------------------------------------------


def test_eval_every_task_writes_the_report(tiny_teacher_dir: Path, shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = [
        "eval", "--model", str(tiny_teacher_dir), "--model", str(tiny_teacher_dir), "--name", "kogpt2-like",
        "--name", "student", "--data", str(shared_data), "--out", str(out), "--max-train", "16", "--max-dev", "8",
        "--max-test", "16", "--epochs", "1", "--runs", "2", "--max-length", "64", "--batch-size", "8",
        "--lr", "wic=2e-6", "--lr", "nsmc=7e-6",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    protocol = report["protocol"]
    assert protocol["name"] == "seed" and protocol["seeds"] == [42, 43]
    assert protocol["departures"] == {"epochs": 1, "batch_size": 8, "max_length": 64, "max_train": 16, "max_dev": 8,
                                      "max_test": 16}
    # every task's rate: the seed's, except the two set here
    expected_rates = {**DEFAULT_EVAL_LEARNING_RATES, "wic": 2e-6, "nsmc": 7e-6}
    assert {t: r["rate"] for t, r in protocol["learning_rates"].items()} == expected_rates
    assert protocol["learning_rates"]["wic"]["source"] == "set for this run"
    assert protocol["learning_rates"]["boolq"]["source"] == "the seed (KoBEST paper)"

    tiny = report["models"]["student"]
    weights = tiny_teacher_dir / "model.safetensors"
    assert tiny["safetensors_bytes"] == weights.stat().st_size
    assert (tiny["n_embd"], tiny["heads"], tiny["layers"]) == (32, 2, 2) and "seed_parameters" not in tiny
    assert sum(tiny["parameters_split"].values()) == tiny["parameters"]

    assert list(report["finetune"]) == ["kogpt2-like", "student"]
    for name, per_task in report["finetune"].items():
        assert list(per_task) == list(TASKS)
        for task, entry in per_task.items():
            assert entry["metric"] == ("accuracy" if task == "nsmc" else "f1")
            assert [run["seed"] for run in entry["runs"]] == [42, 43]
            for run in entry["runs"]:
                assert run["learning_rate"] == expected_rates[task]
                assert run["examples"] == {"train": 16, "dev": 8, "test": 16} and run["max_length"] == 64
                assert run["dev_selected"]["epoch"] == run["seed_rule"]["epoch"] == 1 and run["seconds"] > 0
            low, high = entry["dev_selected"]["interval"]
            assert 0 <= low <= entry["dev_selected"]["score"][0] <= high <= 1
    # Same weights, same seeds: the second model's scores equal the first's.
    for task in TASKS:
        a, b = report["finetune"]["kogpt2-like"][task], report["finetune"]["student"][task]
        assert a["dev_selected"]["score"] == b["dev_selected"]["score"]

    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "Protocol **seed**, changed here: epochs = 1, batch_size = 8" in markdown
    assert ("Learning rates: 5e-06 for boolq (the seed (KoBEST paper)); 5e-06 for copa, hellaswag, sentineg (ours: the "
            "seed's BoolQ rate, no rate given); 2e-06 for wic (set for this run); 7e-06 for nsmc (set for this run).") in markdown
    assert "## Scores: test at the epoch chosen on dev (ours)" in markdown
    assert "## Scores under the seed's rule: the best test epoch" in markdown
    assert "| skt/ko-gpt-trinity-1.2B-v0.5 (cited) | 0.7177 | 0.6866 | 0.7873 | – | – | – | – |" in markdown
    student_scores = [line for line in markdown.splitlines() if line.startswith("| student |")]
    assert student_scores[1].count("(100.0%)") == 7  # dev-selected table: six tasks and the mean
    assert student_scores[3].count("% less)") + student_scores[3].count("% more)") == 7  # seconds: tasks and total
    for png in ("report.png", "seconds.png"):
        data = (out / png).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000


def test_eval_shots_only_scores_kobest_without_finetuning(tiny_teacher_dir: Path, shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = ["eval", "--model", str(tiny_teacher_dir), "--data", str(shared_data), "--out", str(out), "--no-finetune",
            "--shots", "0,1", "--tasks", "copa,nsmc", "--max-test", "8"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["finetune"] == {} and list(report["shots"][str(tiny_teacher_dir)]) == ["copa"]  # NSMC: no prompt
    assert set(report["shots"][str(tiny_teacher_dir)]["copa"]) == {"0", "1"}
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "## Zero- and few-shot" in markdown and "| skt/ko-gpt-trinity-1.2B-v0.5 (cited) | 5 | 0.6477 |" in markdown
    assert (out / "report.png").is_file() and not (out / "seconds.png").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--tasks", "boolq,kobest"], "unknown task 'kobest'"),
        (["--data", "/nonexistent/data"], "eval data directory not found"),
        (["--name", "only-one-name"], "eval.names has 1 name for 2 models"),
        (["--lr", "boolq"], "--lr expects task=rate"),
        (["--lr", "glue=1e-5"], "eval.learning_rates.glue: no such task"),
        (["--max-length", "4"], "eval.max_length must be >= 8"),
        (["--protocol", "fast"], "eval.protocol must be one of seed, quick, custom"),
        (["--shots", "0,five"], "--shots expects comma-separated numbers"),
        (["--shots", "5,5"], "eval.shots must be distinct numbers >= 0"),
        (["--no-finetune"], "nothing to evaluate"),
        (["--runs", "0"], "eval.runs must be > 0"),
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


def test_heldout_against_a_stored_teacher(prepared_store: Path, tokenizer_dir: Path, other_tokenizer_model: Path,
                                          tmp_path: Path) -> None:
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

    result = runner.invoke(app, args + ["--model", str(other_tokenizer_model), "--shards", "0"])
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
        "max_train = 24\nmax_dev = 16\nmax_test = 16\nruns = 1\n\n[eval.learning_rates]\ncopa = 1e-4\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "daram", "eval", "--config", str(config)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tiny COPA seed 42 2/2" in done.stderr and "tiny NSMC seed 42 2/2" in done.stderr  # progress bars per model/task/epoch
    assert "256 positions" in done.stderr  # max_length 512 is cut to the tiny model's 256 positions
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    copa, nsmc = report["finetune"]["tiny"]["copa"]["runs"][0], report["finetune"]["tiny"]["nsmc"]["runs"][0]
    assert copa["learning_rate"] == 1e-4 and nsmc["learning_rate"] == 5e-6  # a config key replaces one default
    assert [e["epoch"] for e in copa["epochs"]] == [1, 2] and copa["max_length"] == 256
    assert nsmc["examples"] == {"train": 24, "dev": 16, "test": 16}
    assert done.stdout.strip().splitlines()[-1].startswith("eval: 1 model x 2 tasks; wrote")
