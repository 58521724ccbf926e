"""benchmarks/gpu_suite.py in its CPU mode (tiny shapes): the JSON it writes holds every part with positive
figures, and `daram plan --measured` forecasts from it (and refuses a broken one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daram.cli import app

REPO = Path(__file__).resolve().parents[2]
COUNTS = {"dump_repeat.differing_positions"}  # a count that is 0 when all is well; every other number is a measured figure


@pytest.fixture(scope="module")
def suite_json(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpu_suite") / "suite.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "benchmarks/gpu_suite.py", "--cpu", "--tiny", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wrote {out}" in done.stdout and "dump float32" in done.stdout  # the table
    return out


def numbers(value, path=""):
    """(path, number) of every int or float leaf (booleans aside)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from numbers(item, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


def test_cpu_mode_measures_every_part_with_positive_figures(suite_json):
    result = json.loads(suite_json.read_text())
    assert result["suite"] == "daram-gpu-suite" and result["mode"] == "cpu" and result["tiny"] is True
    assert result["skipped"] == [] and result["failed"] == [] and "error" not in result  # every part ran
    assert result["dump_dtype"] == "float32" and set(result["dump"]) == {"float32"}  # no float16 dump on a CPU
    dump = result["dump"]["float32"]
    for key in ("tokens_per_s", "mfu", "bare_forward_tokens_per_s", "dump_over_bare", "peak_memory_bytes", "batch"):
        assert key in dump
    assert set(result["dump_split"]["seconds"]) == {"trunk", "head", "softmax_sampling", "copy_to_host", "write"}
    assert sum(result["dump_split"]["share"].values()) == pytest.approx(1.0)
    assert result["dump_repeat"]["identical"] is True and result["dump_repeat"]["differing_positions"] == 0
    batches = result["dump_memory"]["batches"]
    assert [b["batch"] for b in batches] == [1, 2, 4, 8]  # up to a chunk of the tiny store (8 rows)
    assert result["dump_memory"]["best_batch"] in {1, 2, 4, 8}
    train = result["train"]
    for key in ("tokens_per_s", "mfu", "kd_over_ce", "peak_memory_bytes", "precision", "micro_batch"):
        assert key in train
    assert train["precision"] == "fp32" and train["micro_batch"] == result["shapes"]["micro_batch"]
    assert result["peak_flops"]["source"].startswith("measured:")
    figures = dict(numbers(result))
    assert len(figures) > 40
    assert {path for path, value in figures.items() if not value > 0} <= COUNTS, figures
    assert 0 < dump["mfu"] < 1 and 0 < train["mfu"] < 1


def plan_args(tmp_path: Path, *extra: str) -> list[str]:
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes("가나다라마바사아자차\n".encode() * 2000)
    return ["plan", "--store", str(tmp_path / "none.zarr"), "--set", f'prepare.sources=[{{path="{corpus}"}}]',
            "--set", "prepare.seq_len=64", "--set", "prepare.num_shards=2", "--set", 'train.shards="0"',
            "--set", "train.heldout_shard=1", "--set", f"teacher.model={tmp_path / 'no-teacher'}", "--no-measure",
            "--json", *extra]


def test_plan_measured_replaces_the_assumed_mfu(suite_json, tmp_path):
    assumed = CliRunner().invoke(app, plan_args(tmp_path))
    measured = CliRunner().invoke(app, plan_args(tmp_path, "--measured", str(suite_json)))
    assert assumed.exit_code == 0 and measured.exit_code == 0, measured.output
    assumed, measured = json.loads(assumed.stdout), json.loads(measured.stdout)
    result = json.loads(suite_json.read_text())
    dump_mfu, train_mfu = result["dump"]["float32"]["mfu"], result["train"]["mfu"]
    assert measured["mfu"] == {"dump": dump_mfu, "train": train_mfu}
    assert any("MFU assumed, not measured" in note for note in assumed["notes"])
    note = next(note for note in measured["notes"] if "MFU measured by benchmarks/gpu_suite.py" in note)
    assert str(suite_json) in note and "not a GPU figure" in note and f"{dump_mfu:.1%} for the dump" in note
    # GPU-hours scale with 1 / MFU
    for gpu, hours in assumed["dump_gpu_hours"].items():
        assert measured["dump_gpu_hours"][gpu] == pytest.approx(hours * assumed["mfu"]["dump"] / dump_mfu, rel=1e-3)
        assert measured["train_gpu_hours"][gpu] == pytest.approx(
            assumed["train_gpu_hours"][gpu] * assumed["mfu"]["train"] / train_mfu, rel=1e-3)


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[: len(text) // 2], "not JSON"),
    (lambda text: json.dumps({**json.loads(text), "suite": "other-tool"}), "not a result of benchmarks/gpu_suite.py"),
    (lambda text: json.dumps({**json.loads(text), "version": 99}), "suite version 99"),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "train"}), "without 'train'"),
    (lambda text: text.replace('"mfu": ', '"mfu": 12', 1), "not a fraction in (0, 1]"),
])
def test_plan_refuses_a_broken_or_foreign_json_in_one_line(suite_json, tmp_path, damage, message):
    broken = tmp_path / "broken.json"
    broken.write_text(damage(suite_json.read_text()))
    result = CliRunner().invoke(app, plan_args(tmp_path, "--measured", str(broken)))
    assert result.exit_code == 2
    assert message in result.output and f"--measured {broken}" in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


def test_a_failing_part_is_recorded_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    """On a lent GPU one broken part must not cost the others their figures: the JSON is written, the failure
    is in it, the exit status says so, and the plan takes what was measured."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_suite

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")

    monkeypatch.setattr(gpu_suite, "measure_training", broken)
    out = tmp_path / "suite.json"
    monkeypatch.setattr(sys, "argv", ["gpu_suite.py", "--cpu", "--tiny", "--warmup", "0", "--out", str(out)])
    with pytest.raises(SystemExit, match="1 part\\(s\\) failed: training"):
        gpu_suite.main()
    result = json.loads(out.read_text())
    assert result["failed"] == [{"what": "training", "error": "RuntimeError: CUDA error: an illegal memory access was encountered"}]
    assert result["train"] is None and result["dump_split"] and result["dump_repeat"] and result["dump_memory"]
    assert "FAILED: training" in capsys.readouterr().out
    plan = CliRunner().invoke(app, plan_args(tmp_path, "--measured", str(out)))
    assert plan.exit_code == 0, plan.output
    notes = json.loads(plan.stdout)["notes"]
    assert any("30% for training (assumed: the suite did not measure it)" in note for note in notes)
