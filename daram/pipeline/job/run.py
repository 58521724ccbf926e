"""``daram run``: the whole job from ``daram.toml`` on one machine with little disk, across time-boxed sessions.

prepare (when the store is missing) -> the held-out shard's teacher dump -> windows of [dump the next
training shards that fit ``run.disk_budget`` -> train through them -> release them] -> export.

Training is **one** run of :mod:`daram.pipeline.train.student_train`: one schedule over every training step, one
optimizer, one data order. The window only decides which teacher shards are on disk; ``fit`` stops before a
step that needs a shard that is not, and goes on exactly there once it is. So the final student is the one
``student-train`` gives over a complete dump (equal weights on CPU, tested).

Idempotent and safe to kill: everything it knows lives in the store (which shards are complete or released)
and in ``train.out`` (the checkpoint). A shard is released only after a checkpoint past its last step, so a
kill never loses a shard that training still needs. SIGTERM, SIGINT and ``run.time_limit`` pause cleanly
(after the chunk or step in flight, with a checkpoint) and running the same command continues.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from daram.config import Config
from daram.errors import DaramError
from daram.pipeline.pause import Pause
from daram.pipeline.job.plan import DISK_MARGIN
from daram.storage import Store
from daram.units import format_duration, format_size, parse_duration, parse_size

if TYPE_CHECKING:  # student_train imports torch; daram run loads it only once training is set up
    from daram.pipeline.train.student_train import Training


@dataclass
class Job:
    """What ``daram run`` holds between its phases."""

    cfg: Config
    store: Store
    pause: Pause
    budget: int  # bytes of teacher shards on disk at most; 0 = no limit
    heldout: int  # -1 = none
    training: Training | None = None  # the one training run, once it is set up
    window: list[int] = field(default_factory=list)  # training shards on disk for the current window
    windows: int = 0  # windows started in this session
    peak_teacher_bytes: int = 0  # the most teacher bytes seen on disk in this session
    dump_seconds: float = 0.0
    dumped_tokens: int = 0

    def say(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)


def run_job(cfg: Config) -> dict:
    """setup -> windows -> finish, under one :class:`Pause` (SIGTERM, SIGINT, ``run.time_limit``)."""
    from daram.pipeline.dump.teacher_dump import teacher_settings

    cfg = teacher_settings(cfg, "run")
    with Pause(parse_duration(cfg.run.time_limit)) as pause:
        job = setup_job(cfg, pause)
        if job.training is not None:
            run_windows(job)
        return finish_job(job)


# --- setup ------------------------------------------------------------------------------------------------


def setup_job(cfg: Config, pause: Pause) -> Job:
    """The store (prepared when missing), the held-out shard's dump, then the one training run (resumed when
    ``train.out`` holds its checkpoint)."""
    from daram.pipeline.train.student_train import setup
    from daram.pipeline.train.checkpoint import latest_checkpoint

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DaramError(
            "daram run is one process on one device; under torchrun use `daram teacher-dump` and `daram student-train`"
        )
    budget = parse_size(cfg.run.disk_budget)
    if cfg.train.epochs != 1 and budget:
        # Later epochs would dump every released shard again: allowed, but say what it costs.
        print(f"note: {cfg.train.epochs} epochs under a disk budget dump each training shard {cfg.train.epochs} times",
              file=sys.stderr)
    if not Store.exists(cfg.store.path, cfg.store.options):
        from daram.pipeline.prepare.prepare import run_prepare

        print(f"run: no store at {cfg.store.path}: preparing it", file=sys.stderr)
        run_prepare(cfg)
    store = Store.open(cfg.store.path, mode="r+", options=cfg.store.options)
    train_shards, heldout = cfg.train.split(store.manifest.num_shards)
    job = Job(cfg, store, pause, budget, heldout)

    # Training's setup reads the dump's settings (and evaluates on the held-out shard): dump that one first.
    first = heldout if heldout >= 0 else train_shards[0]
    if not _dump(job, [first]):
        return job
    resume = latest_checkpoint(Path(cfg.train.out)) is not None
    job.training = setup(cfg, resume=resume, check_dumps=False, pause=pause)
    if resume:
        job.say(f"run: continuing the training run in {cfg.train.out} at step {job.training.step}")
    return job


# --- windows ----------------------------------------------------------------------------------------------


def run_windows(job: Job) -> None:
    """Window after window: release what training is done with, dump what fits, train through it."""
    from daram.pipeline.train.student_train import checkpoint, fit

    training = job.training
    while True:
        ahead = shards_to_train(training)
        if not ahead:  # resumed at the very end: fit only says which limit ended the run
            fit(training, available=set())
            return
        window = next_window(job, ahead)
        _release_all_but(job, keep=set(window))
        job.window = window
        job.windows += 1
        show_progress(job, "dump")
        if not _dump(job, window):
            return
        show_progress(job, "train")
        stop = fit(training, available=set(window))
        if stop.kind != "shards":
            return
        checkpoint(training)  # past every step of the shards about to be released


def shards_to_train(training: Training) -> list[int]:
    """The training shards the rest of the run reads, in order, each once; none past ``train.max_steps``."""
    end = min(training.plan.total_batches, training.total_steps * training.train.grad_accum)
    index, within = training.plan.locate(training.micro)
    start, shards = training.micro - within, []
    for shard_pass in training.plan.passes[index:]:
        if start >= end:
            break
        if shard_pass.batches:
            shards.append(shard_pass.shard)
        start += shard_pass.batches
    return _unique(shards)


def next_window(job: Job, ahead: list[int]) -> list[int]:
    """The next training shards, in the order training reads them, whose teacher arrays fit the budget beside
    the held-out shard's. At least the shards of the next step (several when it straddles shards)."""
    training = job.training
    needed = _unique([training.plan.shard_of(m) for m in training.next_step_micro_batches()])
    if not job.budget:
        return ahead
    room = job.budget / DISK_MARGIN - _shard_bytes(job, job.heldout)
    window: list[int] = []
    for shard in ahead:
        cost = _shard_bytes(job, shard)
        if window and sum(_shard_bytes(job, s) for s in window) + cost > room and shard not in needed:
            break
        window.append(shard)
    used = sum(_shard_bytes(job, s) for s in window)
    if used > room:
        raise DaramError(
            f"run.disk_budget {format_size(job.budget)} is too small: step {training.step + 1} needs the teacher "
            f"arrays of shard{'s' if len(needed) > 1 else ''} {','.join(map(str, needed))} (about {format_size(used)})"
            + (f" beside held-out shard {job.heldout}'s" if job.heldout >= 0 else "")
            + "; `daram plan` shows what fits"
        )
    return window


def _shard_bytes(job: Job, shard: int) -> int:
    """A shard's teacher bytes on disk when complete; else its tokens at the bytes per token of those dumped."""
    if shard < 0:
        return 0
    store = job.store
    teacher = store.teacher_manifest()
    if teacher is not None and teacher.is_complete(shard):
        return store.teacher_bytes(shard)
    done = [int(s) for s in teacher.shards if teacher.is_complete(int(s))] if teacher is not None else []  # on disk
    per_token = sum(store.teacher_bytes(s) for s in done) / max(
        1, sum(store.shard_rows(s) for s in done) * store.manifest.seq_len
    )
    return int(store.shard_rows(shard) * store.manifest.seq_len * per_token)


def _release_all_but(job: Job, keep: set[int]) -> None:
    """Release the complete training shards outside ``keep``: behind the checkpoint, or needed only later."""
    store = job.store
    teacher = store.teacher_manifest()
    for shard in sorted(int(s) for s in teacher.shards):  # released ones too: finishes a release a kill interrupted
        if shard != job.heldout and shard not in keep:
            store.release_shard(shard)


def _dump(job: Job, shards: list[int]) -> bool:
    """Dump the shards not complete yet; False when a pause stopped it."""
    import torch

    from daram.pipeline.dump.teacher_dump import run_teacher_dump

    teacher = job.store.teacher_manifest()
    todo = [s for s in shards if teacher is None or not teacher.is_complete(s)]
    if not todo:
        return not job.pause.requested()
    # Loading the teacher draws from torch's global generator; training must not see it (dropout, equal weights).
    rng = torch.get_rng_state()
    started = time.perf_counter()
    # run's own pause line says how to continue: the user typed `daram run`, not teacher-dump
    outcome = run_teacher_dump(job.cfg, shards=",".join(map(str, todo)), pause=job.pause, how_to_continue="")
    torch.set_rng_state(rng)
    job.dump_seconds += time.perf_counter() - started
    job.dumped_tokens += sum(s["tokens_computed"] for s in outcome.completed)
    _note_disk(job)
    return not outcome.paused


def _note_disk(job: Job) -> int:
    used = job.store.teacher_bytes()
    job.peak_teacher_bytes = max(job.peak_teacher_bytes, used)
    return used


def _unique(shards: list[int]) -> list[int]:
    return list(dict.fromkeys(s for s in shards if s is not None))


# --- progress and finish ----------------------------------------------------------------------------------


def show_progress(job: Job, phase: str) -> None:
    """One line for the whole run: phase, window, shards done / released / remaining, disk against the budget,
    steps, ETA."""
    training, store = job.training, job.store
    teacher = store.teacher_manifest()
    train_shards = set(training.shards)
    ahead = set(shards_to_train(training))
    complete = {int(s) for s in teacher.shards if teacher.is_complete(int(s))} & train_shards
    released = {int(s) for s in teacher.released} & train_shards
    trained = train_shards - ahead
    used = _note_disk(job)
    budget = f" of {format_size(job.budget)}" if job.budget else ""
    job.say(
        f"run: {phase} | window {job.windows}: shard{'s' if len(job.window) > 1 else ''} "
        f"{_span(job.window)} | training shards: {len(trained)} trained, {len(complete)} dumped, "
        f"{len(released)} released, {len(ahead)} to go | teacher disk {format_size(used)}{budget} | "
        f"step {training.step}/{training.total_steps} | ETA {eta(job)}"
    )


def eta(job: Job) -> str:
    """What is left, at this session's measured dump and step rates ("?" until both are measured)."""
    training = job.training
    if not training.step_seconds or not job.dumped_tokens:
        return "?"
    teacher = job.store.teacher_manifest()
    undumped = [s for s in shards_to_train(training) if not teacher.is_complete(s)]
    tokens_left = sum(job.store.shard_rows(s) for s in undumped) * job.store.manifest.seq_len
    dump_left = tokens_left * job.dump_seconds / job.dumped_tokens
    steps_left = (training.total_steps - training.step) * sum(training.step_seconds[-50:]) / len(training.step_seconds[-50:])
    return format_duration(dump_left + steps_left)


def finish_job(job: Job) -> dict:
    """A finished run: the student's finish (held-out evaluation, export). A paused one: a checkpoint and how
    to continue."""
    from daram.pipeline.train.student_train import Stop, checkpoint, finish

    training = job.training
    if training is not None and training.stop is not None and training.stop.finished:
        summary = finish(training)
        job.say(f"run: complete: student in {training.out}; peak teacher disk this session "
                     f"{format_size(job.peak_teacher_bytes)}")
        return {**summary, "paused": False, "peak_teacher_bytes": job.peak_teacher_bytes}
    if training is not None:
        training.stop = training.stop or Stop("paused", job.pause.reason)
        checkpoint(training)
    where = f"at step {training.step} of {training.total_steps}" if training is not None else "before training started"
    print(
        f"run: paused ({job.pause.reason or 'stopped'}) {where}; every finished chunk and step is kept: "
        "run the same command again to continue"
    )
    return {"paused": True, "steps": training.step if training is not None else 0, "peak_teacher_bytes": job.peak_teacher_bytes}


def _span(shards: list[int]) -> str:
    if not shards:
        return "-"
    if shards == list(range(shards[0], shards[-1] + 1)) and len(shards) > 2:
        return f"{shards[0]}-{shards[-1]}"
    return ",".join(map(str, shards))
