"""``daram student-train``: outputs, the export round trip, exact resume, bad inputs, and KD vs CE-only."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import prepare_store, write_teacher_dump
from typer.testing import CliRunner

from daram.cli import app
from daram.config import load_config
from daram.errors import DaramError
from daram.pipeline.pause import Pause
from daram.pipeline.train.student_train import finish, fit, read_metrics, run_student_train, setup
from daram.storage import Store

PROMPT = "오늘 날씨가 정말"


@pytest.fixture(scope="module")
def kd_store(tmp_path_factory, tokenizer_dir, corpus_lines, tiny_teacher_dir) -> Path:
    """~120 rows of 64 session-tokenizer tokens in 3 shards of 16-row chunks, with the tiny teacher's top-16 at T = 2."""
    return _store_with_dump(tmp_path_factory.mktemp("kd_store"), tokenizer_dir, corpus_lines, tiny_teacher_dir)


def _store_with_dump(tmp: Path, tokenizer_dir: Path, lines: list[str], teacher_dir: Path, **dump) -> Path:
    path = prepare_store(tmp, tokenizer_dir, lines[:656], seq_len=64, num_shards=3, rows_per_chunk=16)
    write_teacher_dump(path, teacher_dir, **dump)
    return path


def train_config(store: Path, out: Path, **settings):
    """A tiny student (2 layers, 32 wide) on shards 0-1, held-out shard 2; ``settings`` use ``section__key``."""
    overrides = {
        "store.path": str(store), "train.out": str(out), "train.shards": "0-1", "train.heldout_shard": 2,
        "student.n_embd": 32, "student.n_head": 2, "student.n_layer": 2,
        "train.batch_size": 4, "train.grad_accum": 1, "train.lr": 3e-3, "train.warmup_steps": 2, "train.alpha_ce": 0.1,
        "train.log_every": 1, "train.eval_every": 0, "train.checkpoint_every": 0, "train.eval_rows": 8,
        "train.loss_slice": 32, "train.device": "cpu",
    }
    overrides.update({k.replace("__", "."): v for k, v in settings.items()})
    return load_config(overrides=overrides)


def test_bf16_autocast_trains_on_cpu(kd_store, tmp_path):
    summary = run_student_train(train_config(kd_store, tmp_path / "bf16", train__precision="bf16", train__max_steps=2))
    assert math.isfinite(summary["last"]["loss"]) and math.isfinite(summary["heldout"]["kl"])


# --- one short run, checked from every side -----------------------------------------------------------


@pytest.fixture(scope="module")
def short_run(kd_store, tmp_path_factory):
    """6 steps with dropout (so RNG state matters), checkpoints and held-out evaluation every 3 steps."""
    out = tmp_path_factory.mktemp("short_run") / "student"
    cfg = train_config(kd_store, out, train__max_steps=6, train__checkpoint_every=3, train__eval_every=3,
                       student__dropout=0.1, train__grad_accum=2)
    run = setup(cfg)  # the recipe's parts, so the trained model in memory can be compared with the export
    fit(run)
    return cfg, finish(run), run.model


# Losses, KL, CE and gradient norms of short_run's 6 steps, recorded on CPU (torch 2.13; runs on 1 and 2 threads
# agree to 1e-7 relative, the tolerance is 1e-4). The session tokenizer and corpus come from seeds, so they hold on
# any clone. The tiny teacher is random, so KL is small; CE and the gradient norm carry most of the check. A change
# of data order, schedule, loss scaling, dropout or accumulation moves them by far more than the tolerance; an
# intended change must record them again (print read_metrics(out) and paste it here).
RECORDED = [  # loss, KL, CE, grad norm
    [0.76310578, 0.0001119705, 7.6265788, 0.11959992],
    [0.75937214, 0.00011223883, 7.5892317, 0.10291992],
    [0.75115696, 0.00011635377, 7.5069153, 0.087889187],
    [0.74672991, 0.00012579232, 7.4622672, 0.079015233],
    [0.74218124, 0.00013239714, 7.4165163, 0.073134713],
    [0.73845959, 0.00013986867, 7.3790011, 0.074479081],
]
PINNED_RTOL = 1e-4


def test_short_run_losses_match_the_recorded_values(short_run):
    cfg, _, _ = short_run
    records = [r for r in read_metrics(Path(cfg.train.out)) if r.get("split") != "heldout"]
    got = [[r["loss"], r["kd"], r["ce"], r["grad_norm"]] for r in records]
    for step, (values, recorded) in enumerate(zip(got, RECORDED, strict=True), 1):
        assert values == pytest.approx(recorded, rel=PINNED_RTOL), f"step {step}: loss, KL, CE, grad norm"


def test_run_writes_metrics_curve_checkpoints_and_summary(short_run):
    cfg, summary, _ = short_run
    out = Path(cfg.train.out)
    records = read_metrics(out)
    steps = [r for r in records if r.get("split") != "heldout"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    for r in steps:
        assert {"loss", "kd", "ce", "lr", "tokens_per_s", "grad_norm"} <= set(r)
        assert r["loss"] == pytest.approx(2.0**2 * r["kd"] + 0.1 * r["ce"], rel=1e-5)
    heldout = [r for r in records if r.get("split") == "heldout"]
    assert [r["step"] for r in heldout] == [3, 6]
    assert {"ce", "perplexity", "kl", "top1_agreement", "ece", "tokens"} <= set(heldout[0])
    assert summary["steps"] == 6 and summary["tokens"] == 6 * 2 * 4 * 64 and summary["heldout"]["kl"] > 0
    assert (out / "loss_curve.png").stat().st_size > 10_000
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]


def test_export_reloads_to_the_trained_model(short_run, kd_store):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from daram.pipeline.hf import vocab_sha256

    cfg, _, trained = short_run
    out = Path(cfg.train.out)
    assert (out / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert vocab_sha256(tokenizer) == Store.open(str(kd_store)).manifest.tokenizer.vocab_sha256
    assert (model.config.n_embd, model.config.n_layer, model.config.vocab_size) == (32, 2, len(tokenizer))
    # The exported weights are the trained ones (the last checkpoint's).
    state = torch.load(out / "checkpoints" / "step-00000006" / "state.pt", weights_only=True)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, state["model"][name], rtol=0, atol=0)
    # The reloaded model computes what the trained one computes, on the exported tokenizer's ids.
    inputs = tokenizer(PROMPT, return_tensors="pt")
    trained.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, trained(**inputs).logits, rtol=0, atol=0)
    generated = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated[0].tolist() == trained.generate(**inputs, max_new_tokens=8, do_sample=False,
                                                     pad_token_id=tokenizer.pad_token_id)[0].tolist()


def test_resume_after_a_kill_continues_exactly(short_run, tmp_path):
    """Kill after the step-3 checkpoint, in the middle of writing step 6's: the resumed steps 4-6 equal the
    uninterrupted run's exactly (losses, gradient norms, learning rates, final weights)."""
    cfg, _, _ = short_run
    first = Path(cfg.train.out)
    second = tmp_path / "student"
    shutil.copytree(first, second)
    shutil.rmtree(second / "checkpoints" / "step-00000006")
    torn = second / "checkpoints" / ".step-00000006.tmp"
    torn.mkdir()
    (torn / "state.pt").write_bytes((first / "checkpoints" / "step-00000006" / "state.pt").read_bytes()[:1000])
    (second / "model.safetensors").unlink()

    resumed = run_student_train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out=str(second))), resume=True)
    assert resumed["steps"] == 6
    assert read_metrics(second) == _without_timing(read_metrics(first), read_metrics(second))
    after = torch.load(second / "checkpoints" / "step-00000006" / "state.pt", weights_only=True)["model"]
    before = torch.load(first / "checkpoints" / "step-00000006" / "state.pt", weights_only=True)["model"]
    for name in before:
        assert torch.equal(after[name], before[name]), name


def _without_timing(expected: list[dict], actual: list[dict]) -> list[dict]:
    """``expected`` with the throughput figures of ``actual`` (wall-clock, never equal); all else must match."""
    assert len(expected) == len(actual)
    return [{**e, **({"tokens_per_s": a["tokens_per_s"]} if "tokens_per_s" in e else {})} for e, a in zip(expected, actual)]


def test_resume_refuses_other_settings_and_a_new_run_refuses_a_used_out(short_run):
    cfg, _, _ = short_run
    changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=1e-3))
    with pytest.raises(DaramError, match="train.lr was 0.003"):
        run_student_train(changed, resume=True)
    with pytest.raises(DaramError, match="already holds a run; pass --resume"):
        run_student_train(cfg)


def test_a_checkpoint_from_before_the_student_settings_resumes_at_their_defaults(short_run, tmp_path):
    # Catches every run checkpointed by an older daram refused on --resume: its signature has no student.arch,
    # student.n_kv_head, ... (settings added later), which the check read as "changed".
    cfg, _, _ = short_run
    out = tmp_path / "student"
    shutil.copytree(Path(cfg.train.out), out)
    shutil.rmtree(out / "checkpoints" / "step-00000006")
    (out / "model.safetensors").unlink()
    path = out / "checkpoints" / "step-00000003" / "state.pt"
    state = torch.load(path, weights_only=True)
    new_keys = ("student.arch", "student.n_kv_head", "student.intermediate_size", "student.tie_embeddings")
    state["signature"] = json.dumps({k: v for k, v in json.loads(state["signature"]).items() if k not in new_keys})
    torch.save(state, path)
    untied = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out=str(out)),
                                 student=dataclasses.replace(cfg.student, tie_embeddings=False))
    with pytest.raises(DaramError, match="student.tie_embeddings was True in the checkpointed run and is False now"):
        run_student_train(untied, resume=True)
    assert run_student_train(dataclasses.replace(untied, student=cfg.student), resume=True)["steps"] == 6


def test_resume_without_a_checkpoint_is_an_error(kd_store, tmp_path):
    with pytest.raises(DaramError, match="no checkpoint"):
        run_student_train(train_config(kd_store, tmp_path / "none"), resume=True)


def test_fit_stops_where_the_shards_end_or_when_asked_and_continues_exactly(kd_store, tmp_path):
    """What `daram run` builds on: fit() over only the shards on disk, stopped on request, paused to a checkpoint
    and resumed in a new run, gives the same losses and weights as one uninterrupted run."""
    settings = {"train__grad_accum": 4, "student__dropout": 0.1}  # steps straddle the shard boundary; RNG matters
    whole_out, windows_out = tmp_path / "whole", tmp_path / "windows"
    whole = run_student_train(train_config(kd_store, whole_out, **settings))
    assert not whole["paused"] and whole["ended"].startswith("train.epochs = 1: the data ended after 5 steps (1 epoch of 2 shards)")

    run = setup(train_config(kd_store, windows_out, **settings))
    assert run.shards_ahead() == [0, 1]
    stop = fit(run, available={0})
    # 9 micro-batches per shard: the 3rd step would read micro-batches 8-11, and 9 is shard 1's first.
    assert (stop.kind, run.step, run.micro) == ("shards", 2, 8) and stop.message == "step 3 needs shard 1, which is not available yet"
    stop = fit(run, should_stop=lambda r: r.step == 4)
    assert (stop.kind, run.step, run.shards_ahead()) == ("paused", 4, [1])
    paused = finish(run)
    assert paused["paused"] and not (windows_out / "model.safetensors").exists()

    resumed = run_student_train(train_config(kd_store, windows_out, **settings), resume=True)
    assert resumed["steps"] == 5 and resumed["tokens_this_run"] == 2 * 4 * 64  # the last step has 2 micro-batches
    assert read_metrics(windows_out) == _without_timing(read_metrics(whole_out), read_metrics(windows_out))
    for name, value in _weights(whole_out).items():
        assert torch.equal(_weights(windows_out)[name], value), name


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "model.safetensors")


# --- bad inputs: refused before anything is written ------------------------------------------------


def _copy_store(store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store.zarr"
    shutil.copytree(store, copy)
    return copy


def test_an_undumped_or_incomplete_shard_is_refused(kd_store, tmp_path, tokenizer_dir):
    store_path = _copy_store(kd_store, tmp_path)
    store = Store.open(str(store_path), mode="r+")
    teacher = store.teacher_manifest()
    store.teacher_shard(1, teacher).clear_flags([1])  # a done flag lost after the shard was recorded
    with pytest.raises(DaramError, match=r"lacks 1 shard \(incomplete: 1 \(2/3 chunks\)\); run `daram teacher-dump --shards 1`"):
        run_student_train(train_config(store_path, tmp_path / "out"))
    assert not (tmp_path / "out").exists()

    fresh = prepare_store(tmp_path, tokenizer_dir, ["안녕하세요. 반갑습니다."] * 400,
                          seq_len=64, num_shards=3, name="partial.zarr")
    write_teacher_dump(fresh, teacher.teacher, width=4, shards=[2])
    # Every missing shard in one message, and a shard never started is "not dumped", not "incomplete (0/n)".
    with pytest.raises(DaramError, match=r"lacks 2 shards \(not dumped: 0-1\); run `daram teacher-dump --shards 0-1` "
                                         r"to dump them$"):
        run_student_train(train_config(fresh, tmp_path / "out"))


@pytest.mark.parametrize("array, error", [
    ("tokens/shard-00000/c/1/0", r"tokens/shard-00000 chunk 1 \(rows 16-32 of shard 0\) is missing.*prepare --overwrite"),
    ("teacher/shard-00000/topk_logprobs/c/1/0/0", r"lacks 1 shard \(incomplete: 0 \(2/3 chunks\)\)"),
])
def test_a_deleted_chunk_file_is_refused_not_trained_on_as_zeros(kd_store, tmp_path, array, error):
    store_path = _copy_store(kd_store, tmp_path)
    (store_path / array).unlink()  # zarr would read the absent chunk as zeros
    with pytest.raises(DaramError, match=error):
        run_student_train(train_config(store_path, tmp_path / "out", train__max_steps=2))


def test_a_temperature_other_than_the_stores_needs_the_allowance(kd_store, tmp_path):
    with pytest.raises(DaramError, match="train.temperature 3.0 differs from the teacher dump's 2.0"):
        run_student_train(train_config(kd_store, tmp_path / "out", train__temperature=3.0))
    summary = run_student_train(train_config(kd_store, tmp_path / "out", train__temperature=3.0,
                                             train__allow_temperature_mismatch=True, train__max_steps=1))
    assert summary["heldout"]["temperature"] == 3.0


def test_a_heldout_shard_inside_the_training_shards_is_refused(kd_store, tmp_path):
    with pytest.raises(DaramError, match="train.heldout_shard 1 is also in train.shards"):
        run_student_train(train_config(kd_store, tmp_path / "out", train__heldout_shard=1))


def test_init_from_a_model_with_another_tokenizer_is_refused(kd_store, tmp_path, other_tokenizer_model):
    with pytest.raises(DaramError, match=r"student.init_from .* has another tokenizer \(\d+ ids.*2,048 ids"):
        run_student_train(train_config(kd_store, tmp_path / "out", student__init_from=str(other_tokenizer_model)))


def test_a_store_whose_tokenizer_changed_is_refused(kd_store, tmp_path, other_tokenizer_model):
    store_path = _copy_store(kd_store, tmp_path)
    store = Store.open(str(store_path), mode="r+")
    info = dataclasses.replace(store.manifest.tokenizer, name_or_path=str(other_tokenizer_model))
    store.write_manifest(dataclasses.replace(store.manifest, tokenizer=info))
    with pytest.raises(DaramError, match="changed since `prepare`, has another tokenizer"):
        run_student_train(train_config(store_path, tmp_path / "out"))


def test_init_from_an_existing_model_with_the_stores_tokenizer(kd_store, tmp_path, tiny_teacher_dir):
    summary = run_student_train(train_config(kd_store, tmp_path / "out", student__init_from=str(tiny_teacher_dir),
                                             train__max_steps=2, train__lr=1e-4))
    # Starting from the teacher itself, the held-out KL to it is already near 0 (float16 log-probs, T = 2).
    assert summary["heldout"]["kl"] < 1e-2


def test_cli_errors_are_one_line_with_exit_code_2(kd_store, tmp_path):
    result = CliRunner().invoke(app, ["student-train", "--store", str(kd_store), "--shards", "0-5", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: train.shards: shard 3 is out of range; the store has shards 0-2"]
    result = CliRunner().invoke(app, ["student-train", "--store", str(kd_store), "--shards", "0-1", "--heldout-shard", "7",
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: train.heldout_shard: shard 7 is out of range; the store has shards 0-2"]


@pytest.mark.parametrize("num_shards, line", [
    (2, "student-train: training shards 0; held-out shard 1 (the store's last; train.heldout_shard)"),
    (1, "student-train: training shards 0; no held-out shard (a one-shard store)"),
])
def test_the_default_heldout_shard_is_the_stores_last_resolved_and_printed(
        tmp_path, tokenizer_dir, corpus_lines, tiny_teacher_dir, num_shards, line):
    store = prepare_store(tmp_path, tokenizer_dir, corpus_lines[:300], seq_len=64, num_shards=num_shards, rows_per_chunk=16)
    write_teacher_dump(store, tiny_teacher_dir)
    result = CliRunner().invoke(app, [  # neither --shards nor --heldout-shard: the defaults fit any store
        "student-train", "--store", str(store), "--out", str(tmp_path / "out"), "--n-embd", "32", "--n-head", "2",
        "--n-layer", "2", "--batch-size", "4", "--grad-accum", "1", "--max-steps", "1", "--device", "cpu",
        "--set", "train.eval_rows=4"])
    assert result.exit_code == 0, result.output
    assert line in result.output.splitlines()
    records = [r for r in read_metrics(tmp_path / "out") if r.get("split") == "heldout"]
    assert bool(records) == (num_shards > 1)  # evaluated on the held-out shard only when there is one


def test_ce_only_never_needs_the_teacher_dump_and_says_what_its_loss_is(tmp_path, tokenizer_dir, corpus_lines):
    store = prepare_store(tmp_path, tokenizer_dir, corpus_lines[:205], seq_len=64, num_shards=2)
    assert Store.open(str(store)).teacher_manifest() is None
    out = tmp_path / "ce"
    result = CliRunner().invoke(app, [
        "student-train", "--store", str(store), "--out", str(out), "--shards", "0-1", "--heldout-shard", "-1",
        "--alpha-kd", "0", "--alpha-ce", "0.1",
        "--n-embd", "32", "--n-head", "2", "--n-layer", "2", "--batch-size", "4", "--max-steps", "2",
        "--set", "train.grad_accum=1", "--set", "train.log_every=1", "--set", "train.loss_slice=64",
    ])
    assert result.exit_code == 0, result.output
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2] and all(r["kd"] is None for r in records)
    # The CE-only baseline's "loss" is alpha_ce x CE (here 0.1 x CE), and says so.
    assert all(r["objective"] == "0.1 x CE" and r["loss"] == pytest.approx(0.1 * r["ce"]) for r in records)
    assert "student-train (ce-only): 2 steps" in result.output and "(= 0.1 x CE)" in result.output


def test_the_console_says_which_limit_ended_the_run_and_what_follows_the_bar(kd_store, tmp_path):
    def train(out, *flags):
        result = CliRunner().invoke(app, [
            "student-train", "--store", str(kd_store), "--out", str(tmp_path / out), "--shards", "0", "--heldout-shard", "2",
            "--n-embd", "32", "--n-head", "2", "--n-layer", "2", "--batch-size", "4", "--set", "train.grad_accum=4",
            "--set", "train.loss_slice=64", "--set", "train.eval_rows=4", *flags,
        ])
        assert result.exit_code == 0, result.output
        return result.output

    output = train("capped", "--max-steps", "1", "--set", "train.eval_rows=1000")
    assert "stopped at --max-steps 1 (train.max_steps)" in output
    rows = Store.open(str(kd_store)).manifest.rows_per_shard[2]
    assert f"held-out evaluation on shard 2 ({rows} rows) ..." in output  # the rows scored, not train.eval_rows
    # Shard 0 holds 9 micro-batches of 4 rows: 3 steps of 4 accumulated ones, the last with 1.
    output = train("epochs", "--max-steps", "5")
    assert "train.epochs = 1: the data ended after 3 steps (1 epoch of 1 shard); --max-steps 5 was not reached" in output
    # After the progress bar, every slow step is announced as it starts and reported when done.
    lines = output.splitlines()
    order = [next(i for i, line in enumerate(lines) if line.startswith(start)) for start in (
        "checkpoint of step 3 ...", "held-out evaluation on shard 2 (4 rows) ...", "export of the model to",
        "loss curve ...", "student-train (topk): 3 steps")]
    assert order == sorted(order)
    assert lines[order[0] + 1].startswith("  done in") and " MB)" in lines[order[0] + 1]


# --- failures: one line naming what is wrong, nothing written or exported ---------------------------------


def test_a_non_finite_loss_stops_training_naming_the_step_and_shard(kd_store, tmp_path):
    store_path = _copy_store(kd_store, tmp_path)
    store = Store.open(str(store_path), mode="r+")
    teacher = store.teacher_manifest()
    values = store.teacher_shard(1, teacher).arrays[teacher.array_names[1]]  # the store is open for writing
    values[0:16] = float("nan")  # what a teacher dumped at T = inf left behind (dumps now refuse it)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "student-train", "--store", str(store_path), "--out", str(out), "--shards", "0-1", "--heldout-shard", "2",
        "--n-embd", "32", "--n-head", "2", "--n-layer", "2", "--batch-size", "4", "--set", "train.grad_accum=1",
        "--set", "train.shuffle=false", "--set", "train.checkpoint_every=2",
    ])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "error: step 10: the loss is nan (KL nan, CE 7.616) on shard 1; training stopped and nothing was exported (the "
        "last checkpoint, if any, is intact). Check the teacher dump (`daram verify`, its temperature) and train.lr")
    assert not (out / "model.safetensors").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000006", "step-00000008"]


def test_token_arrays_whose_shape_or_dtype_changed_are_refused(kd_store, tmp_path):
    import json

    for field, value, shown in (("shape", [16, 64], "(16, 64)"), ("data_type", "int32", "int32")):
        store_path = tmp_path / field / "store.zarr"
        shutil.copytree(kd_store, store_path)
        meta_path = store_path / "tokens" / "shard-00001" / "zarr.json"
        meta = json.loads(meta_path.read_text())
        meta[field] = value
        meta_path.write_text(json.dumps(meta))
        with pytest.raises(DaramError, match=rf"tokens/shard-00001 is .*{re.escape(shown)}.*, but the manifest says .*daram prepare --overwrite"):
            run_student_train(train_config(store_path, tmp_path / field / "out"))
        assert not (tmp_path / field / "out").exists()


@pytest.mark.parametrize("blocked", ["a file in the way", "read-only directory"])
def test_an_out_that_cannot_be_written_is_one_line_before_training(kd_store, tmp_path, blocked):
    import os

    if blocked == "a file in the way":
        (tmp_path / "taken").write_text("")
        out = tmp_path / "taken" / "student"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories")
        (tmp_path / "ro").mkdir(mode=0o555)
        out = tmp_path / "ro" / "student"
    result = CliRunner().invoke(app, [
        "student-train", "--store", str(kd_store), "--out", str(out), "--shards", "0", "--heldout-shard", "-1",
        "--n-embd", "32", "--n-head", "2", "--n-layer", "2",
    ])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: train.out {out}: cannot write there ("
                                                   + ("Not a directory)" if blocked == "a file in the way" else "Permission denied)")]


# --- sessions: a clean pause, and --resume from the checkpoint's own settings ---------------------------------


def _cli(*args):
    return CliRunner().invoke(app, ["student-train", *args])


def test_time_limit_pauses_and_resume_needs_only_out_and_refuses_a_contradicting_flag(kd_store, tmp_path, monkeypatch):
    # A clock of 0.25 s per check, so the 1 s limit falls within the first steps on any machine, quiet or loaded.
    def elapsed(pause):
        pause.checks = getattr(pause, "checks", 0) + 1
        return 0.25 * pause.checks

    monkeypatch.setattr(Pause, "elapsed", elapsed)
    out = tmp_path / "student"
    paused = _cli("--store", str(kd_store), "--out", str(out), "--shards", "0-1", "--heldout-shard", "2",
                  "--n-embd", "32", "--n-head", "2", "--n-layer", "2", "--batch-size", "4", "--lr", "0.003",
                  "--epochs", "4", "--max-steps", "40", "--time-limit", "1s",
                  "--set", "train.grad_accum=1", "--set", "train.log_every=1", "--set", "train.eval_rows=4")
    assert paused.exit_code == 75, paused.output
    line = next(line for line in paused.output.splitlines() if line.startswith("paused at step"))
    step = int(line.split()[3])
    assert 0 < step < 40 and line == (f"paused at step {step} of 40 (time limit 1s); continue with: "
                                      f"daram student-train --resume --out {out}")
    assert not (out / "model.safetensors").exists() and (out / "checkpoints" / f"step-{step:08d}").is_dir()

    refused = _cli("--resume", "--out", str(out), "--lr", "0.01")
    assert refused.exit_code == 2
    assert refused.output.strip().splitlines() == [
        "error: --resume: train.lr is 0.01 here but 0.003 in the checkpointed run; --resume reads the run's settings "
        "from its checkpoint, so leave it out (or start a new run in another --out)"]

    # The store may have moved between sessions (another mount): its fingerprint is what must match.
    moved = _copy_store(kd_store, tmp_path)
    again = _cli("--resume", "--out", str(out), "--store", str(moved), "--time-limit", "1s")
    assert again.exit_code == 75, again.output
    # Everything else (the store, shards, shape, schedule) comes from the checkpoint.
    resumed = _cli("--resume", "--out", str(out))
    assert resumed.exit_code == 0, resumed.output
    assert "stopped at --max-steps 40 (train.max_steps)" in resumed.output
    assert [r["step"] for r in read_metrics(out) if r.get("split") != "heldout"] == list(range(1, 41))
    assert (out / "model.safetensors").is_file()

    # Rerunning the finished run writes nothing: no second held-out record, no second export.
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name not in (".train.lock", "metrics.jsonl")}
    metrics = (out / "metrics.jsonl").read_text()
    again = _cli("--resume", "--out", str(out))
    assert again.exit_code == 0 and f"already complete at step 40: the student is in {out}" in again.output
    assert (out / "metrics.jsonl").read_text() == metrics
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name not in (".train.lock", "metrics.jsonl")} == written


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_pauses_cleanly_after_the_step(kd_store, tmp_path, signum):
    """A real process gets a real signal mid-run: it finishes the step, checkpoints, says how to go on, exits 75."""
    out = tmp_path / "student"
    command = [sys.executable, "-m", "daram", "student-train", "--store", str(kd_store), "--out", str(out),
               "--shards", "0-1", "--heldout-shard", "2", "--n-embd", "32", "--n-head", "2", "--n-layer", "2",
               "--batch-size", "4", "--epochs", "1000", "--set", "train.grad_accum=1", "--set", "train.log_every=1",
               "--device", "cpu"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text():
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.2)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr[-2000:]
    line = next(line for line in stderr.splitlines() if line.startswith("paused at step"))
    step = int(line.split()[3])
    assert f"({signal.Signals(signum).name}); continue with: daram student-train --resume --out {out}" in line
    assert (out / "checkpoints" / f"step-{step:08d}").is_dir() and not (out / "model.safetensors").exists()
    assert max(r["step"] for r in read_metrics(out)) == step  # the step in flight was finished and logged


# --- distillation works: a short run lowers the held-out KL to the teacher well below CE-only ----------------


TOPK_ON_A_FLAT_TEACHER = pytest.mark.xfail(strict=True, reason=(
    "top-16 of 2,048 ids holds about 6% of this weak teacher's mass at T = 2, and the bucket tail says nothing about "
    "how the rest is spread: measured after 15 steps, KD's own stored top-k KL is lower than CE-only's (0.008 vs "
    "0.021) while the full KL at T = 1 is higher (0.97 vs 0.83), held-out CE too (6.58 vs 6.41) and top-1 agreement "
    "far lower (0.21 vs 0.68). Strict: when top-k KD starts winning here, this test says so."))


@pytest.mark.slow
@pytest.mark.parametrize("kind", [pytest.param("topk", marks=TOPK_ON_A_FLAT_TEACHER), "sampled"])
def test_kd_brings_the_student_closer_to_the_teacher_than_ce_only(kind, tmp_path, tokenizer_dir, corpus_lines,
                                                                 trained_tiny_teacher_dir):
    """Judged on the exact full-vocabulary KL(teacher || student) at T = 1 from the teacher model itself: not the
    stored top-k KL at T = 2 that top-k KD minimises directly (and that would reward matching 16 ids and
    nothing else), and not a sampled store's KL estimate, which carries an entropy bias."""
    from transformers import AutoModelForCausalLM

    from daram.pipeline.heldout import heldout_metrics

    dump = {"kind": "topk", "width": 16} if kind == "topk" else {"kind": "sampled", "width": 50, "draws": 50}
    store = _store_with_dump(tmp_path, tokenizer_dir, corpus_lines, trained_tiny_teacher_dir, **dump)
    teacher = AutoModelForCausalLM.from_pretrained(trained_tiny_teacher_dir).eval()
    full_kl = {}
    for name, alpha_kd, alpha_ce in (("kd", 1.0, 0.1), ("ce", 0.0, 1.0)):
        summary = run_student_train(train_config(
            store, tmp_path / name, train__alpha_kd=alpha_kd, train__alpha_ce=alpha_ce, train__max_steps=15,
            train__lr=3e-2, train__eval_rows=16, train__log_every=5,
        ))
        assert summary["heldout"]["teacher"] == kind  # the kind comes from the store's manifest
        student = AutoModelForCausalLM.from_pretrained(tmp_path / name)
        full_kl[name] = heldout_metrics(student, Store.open(str(store)), 2, temperature=1.0, max_rows=16,
                                        teacher_model=teacher)["kl"]
    # Measured after 15 steps: CE-only 0.83; KD from 50 draws 0.40 (0.48 of it); from top-16, see the xfail.
    assert full_kl["kd"] < 0.6 * full_kl["ce"], full_kl


def test_a_second_training_process_on_one_out_is_refused(kd_store, tmp_path):
    # Catches a second `daram run` / `student-train --resume` training beside a running one into the same out:
    # their checkpoints interleaved and metrics lines were lost.
    out = tmp_path / "out"
    hold = "import sys, time; from daram.pipeline.train.out_lock import claim_out; claim_out(sys.argv[1]); print('held', flush=True); time.sleep(60)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = CliRunner().invoke(app, ["student-train", "--store", str(kd_store), "--out", str(out), "--shards", "0-1",
                                          "--heldout-shard", "2", "--n-embd", "32", "--n-head", "2", "--n-layer", "2"])
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: train.out {out.resolve()} is in use by pid {holder.pid} on {socket.gethostname()} (daram {str(out)}); wait "
        "for it to end (or pause it with SIGTERM), or choose another --out"]
