"""`daram run`: windows of dump + train + release under a disk budget, one training run, clean pauses."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import sigkill_alone, survivors
from daram.cli import app
from daram.storage import Store

REPO = Path(__file__).resolve().parents[3]
# 5 shards of ~40 rows x 32 tokens; shard 4 held out; 13 steps of 3 x 4 rows over shards 0-3.
CONFIG = """
[store]
path = "store.zarr"
[prepare]
tokenizer = "{tokenizer}"
seq_len = 32
num_shards = 5
rows_per_chunk = 8
[[prepare.sources]]
path = "corpus.txt"
unit = "line"
[teacher]
model = "{teacher}"
kind = "sampled"
draws = 8
device = "cpu"
batch_size = 8
[student]
n_embd = 32
n_head = 2
n_layer = 1
[train]
out = "student"
shards = "0-3"
heldout_shard = 4
batch_size = 4
grad_accum = 3
warmup_steps = 2
eval_rows = 8
checkpoint_every = 4
eval_every = 0
log_every = 1
device = "cpu"
"""


def workdir(tmp_path: Path, name: str, tokenizer: Path, teacher: Path, lines: list[str]) -> Path:
    path = tmp_path / name
    path.mkdir()
    (path / "corpus.txt").write_text("\n".join(lines[:560]) + "\n", encoding="utf-8")
    (path / "daram.toml").write_text(CONFIG.format(tokenizer=tokenizer, teacher=teacher), encoding="utf-8")
    return path


def daram(cwd: Path, *args: str) -> subprocess.Popen:
    """The CLI in its own process, one thread (the same float reductions in every run)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "daram", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finished(process: subprocess.Popen, timeout: float = 300, paused_ok: bool = False) -> tuple[str, str]:
    """Its output once it exits 0 (complete), or 75 (paused: run it again) where ``paused_ok``."""
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode in ((0, 75) if paused_ok else (0,)), stderr[-3000:]
    assert (process.returncode == 75) == ("run: paused (" in stdout), stdout[-3000:]
    return stdout, stderr


def teacher_bytes(store: Path) -> int:
    """What the teacher shards take on disk now (files vanish under our feet while a release runs)."""
    total = 0
    for root, _, files in os.walk(store / "teacher"):
        if "shard-" not in root:
            continue
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


class DiskPoll:
    """Polls the teacher shards' size every few milliseconds in a thread and keeps the peak."""

    def __init__(self, store: Path) -> None:
        self.store, self.peak, self.done = store, 0, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.done.is_set():
            if (self.store / "teacher").is_dir():
                self.peak = max(self.peak, teacher_bytes(self.store))
            time.sleep(0.005)

    def __enter__(self) -> "DiskPoll":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def logged_steps(path: Path) -> int:
    """The last training step in metrics.jsonl (0 before the first); a line being written is skipped."""
    try:
        lines = (path / "student" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "split" not in record:
            steps.append(record["step"])
    return steps[-1]


def released(store: Path) -> dict:
    try:
        return Store.open(str(store)).teacher_manifest().released
    except Exception:  # not prepared or not dumped yet, or the manifest is being rewritten
        return {}


def metrics(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line and "split" not in json.loads(line)]


@pytest.fixture(scope="module")
def unbounded(tmp_path_factory, tokenizer_dir, tiny_teacher_dir, corpus_lines) -> Path:
    """The reference: prepare, teacher-dump --all, student-train, each as its own command."""
    path = workdir(tmp_path_factory.mktemp("unbounded"), "w", tokenizer_dir, tiny_teacher_dir, corpus_lines)
    for command in (["prepare"], ["teacher-dump", "--all"], ["student-train"]):
        finished(daram(path, *command))
    return path


def assert_same_student(path: Path, reference: Path) -> None:
    ours, theirs = load_file(path / "student" / "model.safetensors"), load_file(reference / "student" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name  # equal weights, not close ones


def assert_one_schedule(path: Path, reference: Path) -> None:
    """Every step logged once, in order, with the unbounded run's learning rate and loss: one LR schedule."""
    ours, theirs = metrics(path / "student"), metrics(reference / "student")
    steps = [r["step"] for r in theirs]
    assert [r["step"] for r in ours] == steps == list(range(1, len(steps) + 1)) and len(steps) > 10
    assert [r["lr"] for r in ours] == [r["lr"] for r in theirs]
    assert [r["loss"] for r in ours] == [r["loss"] for r in theirs]


def budget_for_two_shards(reference: Path) -> int:
    """The held-out shard and two training shards: smaller than the whole dump (five shards)."""
    store = Store.open(str(reference / "store.zarr"))
    sizes = [store.teacher_bytes(s) for s in range(5)]
    return int((sizes[4] + 2 * max(sizes[:4])) * 1.06)


@pytest.mark.slow
def test_run_under_a_budget_equals_student_train_over_a_complete_dump(
    tmp_path, unbounded, tokenizer_dir, tiny_teacher_dir, corpus_lines
):
    path = workdir(tmp_path, "run", tokenizer_dir, tiny_teacher_dir, corpus_lines)
    budget = budget_for_two_shards(unbounded)
    with DiskPoll(path / "store.zarr") as poll:
        stdout, stderr = finished(daram(path, "run", "--disk-budget", str(budget)))
    assert "run: no store at store.zarr: preparing it" in stderr and "run: complete" in stderr
    windows = [line.split(" | ")[1] for line in stderr.splitlines() if line.startswith("run: dump |")]
    # step 7 reads the end of shard 1 and the start of shard 2, so shard 1 stays for the second window
    assert windows == ["window 1: shards 0,1", "window 2: shards 1,2", "window 3: shard 3"]
    assert 0 < poll.peak <= budget
    teacher = Store.open(str(path / "store.zarr")).teacher_manifest()
    assert sorted(teacher.released) == ["0", "1", "2"] and teacher.is_complete(4)  # the held-out shard stays
    assert_same_student(path, unbounded)
    assert_one_schedule(path, unbounded)

    # Idempotent: the same command again finds the run complete and changes nothing.
    before = (path / "student" / "model.safetensors").read_bytes()
    stdout, stderr = finished(daram(path, "run", "--disk-budget", str(budget)))
    assert "run: complete" in stderr and (path / "student" / "model.safetensors").read_bytes() == before


@pytest.mark.slow
def test_run_killed_at_random_moments_and_paused_by_sigterm_ends_as_the_unbounded_run(
    tmp_path, unbounded, tokenizer_dir, tiny_teacher_dir, corpus_lines
):
    path = workdir(tmp_path, "run", tokenizer_dir, tiny_teacher_dir, corpus_lines)
    budget = budget_for_two_shards(unbounded)
    command = ("run", "--disk-budget", str(budget))
    store = path / "store.zarr"
    # Each kill waits for a point of the run (a busy machine makes wall-clock delays meaningless), then a
    # random few hundred milliseconds more: mid-dump of the first window, mid-training, after the first
    # release, and (SIGTERM) while the last window is dumped or trained.
    moments = [
        (signal.SIGKILL, lambda: any((store / "teacher" / "shard-00001" / "chunks_done").rglob("c/*"))),
        (signal.SIGKILL, lambda: logged_steps(path) >= 3),
        (signal.SIGKILL, lambda: "0" in released(store)),
        (signal.SIGTERM, lambda: (store / "teacher" / "shard-00003").is_dir()),
    ]
    jitter = random.Random(13)
    progress = []  # the last logged step when each process ended: the kills land in the middle of the run
    with DiskPoll(store) as poll:
        for kill, reached in moments:
            process = daram(path, *command)
            deadline = time.time() + 240
            while process.poll() is None and not reached() and time.time() < deadline:
                time.sleep(0.02)
            time.sleep(jitter.uniform(0, 0.4))
            if kill == signal.SIGKILL:
                assert survivors(sigkill_alone(process)) == []
            else:
                process.send_signal(kill)
            stdout, stderr = process.communicate(timeout=120)
            progress.append(logged_steps(path))
            if kill == signal.SIGTERM:
                # a clean pause: the chunk or step in flight finishes, a checkpoint, how to continue, exit 75
                assert process.returncode in (75, 0), stderr[-3000:]
                assert ("run: paused (SIGTERM)" in stdout) if process.returncode == 75 else ("run: complete" in stderr)
            else:
                assert process.returncode in (-signal.SIGKILL, 0), stderr[-3000:]
        # a session cut by run.time_limit stops cleanly before it, exit 75, and says how to continue
        stdout, stderr = finished(daram(path, *command, "--time-limit", "12s"), paused_ok=True)
        assert "run: paused (time limit 12s)" in stdout or "run: complete" in stderr
        stdout, stderr = finished(daram(path, *command))
    assert "run: complete" in stderr
    assert any(0 < step < metrics(unbounded / "student")[-1]["step"] for step in progress), progress
    assert 0 < poll.peak <= budget
    assert not list((path / "store.zarr" / "locks").glob("teacher-*"))
    assert_same_student(path, unbounded)
    assert_one_schedule(path, unbounded)


def test_a_budget_too_small_for_one_shard_is_refused_before_training(tmp_path, tokenizer_dir, tiny_teacher_dir,
                                                                     corpus_lines, monkeypatch):
    path = workdir(tmp_path, "small", tokenizer_dir, tiny_teacher_dir, corpus_lines)
    monkeypatch.chdir(path)
    result = CliRunner().invoke(app, ["run", "--disk-budget", "30kB"])
    assert result.exit_code == 2, result.output
    error = result.stderr.splitlines()[-1]
    assert error.startswith("error: run.disk_budget 30 kB is too small: step 1 needs the teacher arrays of shard 0")
    assert "`daram plan` shows what fits" in error
    assert not (path / "student" / "checkpoints").exists() or not any((path / "student" / "checkpoints").iterdir())


def test_a_released_shard_is_dumped_again_bit_identical(tmp_path, tokenizer_dir, corpus_lines, tiny_teacher_dir):
    """What lets `daram run` release a shard: its statistics stay, teacher-dump brings it back byte for byte."""
    from conftest import prepare_store

    store_path = prepare_store(tmp_path, tokenizer_dir, corpus_lines[:138], seq_len=32, num_shards=2, rows_per_chunk=4)
    dump = ["teacher-dump", "--store", str(store_path), "--teacher", str(tiny_teacher_dir), "--kind", "sampled",
            "--draws", "8", "--device", "cpu", "--all"]
    assert CliRunner().invoke(app, dump).exit_code == 0
    shard_dir = store_path / "teacher" / "shard-00000"
    before = {p.relative_to(shard_dir): p.read_bytes() for p in shard_dir.rglob("*") if p.is_file() and "c" in p.parts}
    store = Store.open(str(store_path), mode="r+")
    stats = store.teacher_manifest().shards["0"]
    store.release_shard(0)
    teacher = store.teacher_manifest()
    assert not teacher.is_complete(0) and teacher.shards["0"] == stats and teacher.released["0"]["to"] == ""
    assert not shard_dir.exists()
    inspected = CliRunner().invoke(app, ["inspect", "--store", str(store_path), "--no-sample"])
    assert inspected.exit_code == 0 and "teacher released" in inspected.stdout
    result = CliRunner().invoke(app, dump)
    assert result.exit_code == 0 and "1 shard dumped, 1 already complete" in result.stdout
    after = {p.relative_to(shard_dir): p.read_bytes() for p in shard_dir.rglob("*") if p.is_file() and "c" in p.parts}
    assert after == before
    teacher = store.teacher_manifest()
    assert teacher.is_complete(0) and not teacher.released


def test_run_dumps_only_the_shards_training_reaches(tmp_path, tokenizer_dir, tiny_teacher_dir, corpus_lines, monkeypatch):
    """--max-steps 2 reads 6 micro-batches of 4 rows, all in shard 0: shards 1-3 are never dumped."""
    path = workdir(tmp_path, "short", tokenizer_dir, tiny_teacher_dir, corpus_lines)
    monkeypatch.chdir(path)
    result = CliRunner().invoke(app, ["run", "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert "run: complete" in result.stderr and (path / "student" / "model.safetensors").is_file()
    teacher = Store.open(str(path / "store.zarr")).teacher_manifest()
    assert sorted(teacher.shards) == ["0", "4"] and not teacher.released  # shard 0 and the held-out one
    assert [r["step"] for r in metrics(path / "student")] == [1, 2]
