"""`--follow` (daram/pipeline/job/follow.py): train in shard order while other machines dump; the student equals a
run over a complete dump."""

from __future__ import annotations

import time
import types

import pytest
import torch
from safetensors.torch import load_file

from conftest import prepare_store
from daram.config import load_config
from daram.pipeline.job import follow
from daram.pipeline.pause import Pause
from daram.pipeline.train.student_train import run_student_train
from daram.pipeline.dump.teacher_dump import run_teacher_dump
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
    from daram.pipeline.prepare.prepare import run_prepare

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
    pause = Pause(time_limit_s=3600)

    def session_ends(seconds):  # the session's clock runs out while the follower waits for shard 1
        pause.started = time.monotonic() - 3600

    monkeypatch.setattr(follow, "time", types.SimpleNamespace(perf_counter=time.perf_counter, time=time.time,
                                                              sleep=session_ends))
    with pause:
        summary = follow.run_follow(cfg, pause)
    assert summary["paused"] and summary["steps"] > 0
    err = capsys.readouterr().err
    assert "follow: waiting for shard 1: not dumped, not claimed yet" in err
    assert "paused at step" in err and "(time limit 1h00m)" in err


# --- many machines, one store: the end-to-end run ---------------------------------------------------------

MACHINES_CONFIG = """
[store]
path = "{store}"

[prepare]
tokenizer = "{tokenizer}"
seq_len = 32
num_shards = 6
rows_per_chunk = 8

[[prepare.sources]]
path = "{corpus}"
unit = "line"

[teacher]
model = "{teacher}"
kind = "draws"
draws = 8
device = "cpu"
dtype = "float32"
batch_size = 8
lease = "6s"

[student]
n_embd = 32
n_head = 2
n_layer = 1

[train]
out = "student"
shards = "1-5"
heldout_shard = 0
batch_size = 4
grad_accum = 2
warmup_steps = 2
eval_rows = 8
checkpoint_every = 0
eval_every = 0
log_every = 1
device = "cpu"
"""

# A worker (or the trainer) as its own process. role "kill": SIGKILL itself once the second chunk of its first
# shard is written (mid-shard); "freeze": SIGSTOP itself there (alive, but its heartbeat stops: its lease runs out).
MACHINE = """
import os, signal, sys
role = {role!r}
if role:
    from daram.storage import TeacherShard
    write = TeacherShard.write_chunk
    def interrupted(self, chunk, arrays, stats=None):
        write(self, chunk, arrays, stats)
        if chunk == 1 and not getattr(interrupted, "done", False):
            interrupted.done = True
            print(f"{{role}} at shard {{self.shard}}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL if role == "kill" else signal.SIGSTOP)
    TeacherShard.write_chunk = interrupted
from daram.pipeline.job import follow
follow.POLL_S = 0.5
from daram.cli import main
sys.argv = ["daram"] + {args!r}
main()
"""


def machine(cwd, role: str, *args: str):
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", MACHINE.format(role=role, args=list(args))], cwd=cwd, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def machines_workdir(path, store: str, tokenizer_dir, teacher, lines):
    path.mkdir()
    (path / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (path / "daram.toml").write_text(MACHINES_CONFIG.format(store=store, tokenizer=tokenizer_dir, corpus=path / "corpus.txt",
                                                            teacher=teacher), encoding="utf-8")
    return path


@pytest.mark.slow
def test_three_dump_machines_and_a_follower_on_s3_equal_one_machine(s3_url, tmp_path, tokenizer_dir, corpus_lines,
                                                                      tiny_teacher_dir):
    import signal

    lines = corpus_lines[:560]
    local = machines_workdir(tmp_path / "one", "store.zarr", tokenizer_dir, tiny_teacher_dir, lines)
    for command in (["prepare"], ["teacher-dump", "--all"], ["student-train"]):
        done = machine(local, "", *command)
        assert done.wait(timeout=600) == 0, done.stderr.read()[-3000:]

    shared = machines_workdir(tmp_path / "many", s3_url, tokenizer_dir, tiny_teacher_dir, lines)
    done = machine(shared, "", "prepare")
    assert done.wait(timeout=600) == 0, done.stderr.read()[-3000:]
    killed = machine(shared, "kill", "teacher-dump", "--all")
    frozen = machine(shared, "freeze", "teacher-dump", "--all")
    healthy = machine(shared, "", "teacher-dump", "--all")
    trainer = machine(shared, "", "run", "--follow")
    _, killed_err = killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed_err[-3000:]
    healthy_out, healthy_err = healthy.communicate(timeout=600)
    assert healthy.returncode == 0, healthy_err[-3000:]
    frozen.send_signal(signal.SIGCONT)  # back from its stop: it finds its shard taken over and finished
    frozen_out, frozen_err = frozen.communicate(timeout=600)
    assert frozen.returncode == 0, frozen_err[-3000:]
    trainer_out, trainer_err = trainer.communicate(timeout=600)
    assert trainer.returncode == 0, trainer_err[-3000:]

    killed_shard = int(killed_err.split("kill at shard ")[1].split()[0])
    frozen_shard = int(frozen_err.split("freeze at shard ")[1].split()[0])
    assert f"teacher shard {killed_shard} of {s3_url}: the claim's holder, pid {killed.pid} on " in healthy_err
    assert (f"teacher shard {frozen_shard} of {s3_url}: the claim's holder, pid {frozen.pid} on "
            in healthy_err + killed_err) and "stopped its heartbeat" in healthy_err + killed_err
    assert f"shard {killed_shard}: resuming: 2/" in healthy_err  # its written chunks were kept
    assert "teacher-dump: " in frozen_out  # it ended as a worker does, with its summary
    store = Store.open(s3_url)
    # every shard complete, each recorded exactly once (a record is created exclusively; none was rewritten)
    assert store.kv.list_dir("teacher/complete") == [f"shard-{s:05d}" for s in range(6)] + ["zarr.json"]
    assert [store.shard_state(s).state for s in range(6)] == ["complete"] * 6
    assert store.kv.list_dir("locks") == ["zarr.json"]  # every claim given back or cleared by its taker
    assert "follow: waited " in trainer_err and "for shards being dumped" in trainer_err
    ours, theirs = weights(shared / "student"), weights(local / "student")
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name
