"""Phase one, ``daram teacher-dump``: run the teacher over token shards and store its tempered distributions.

The recipe: setup (every check, instant) -> dump shard by shard -> finish (one summary). Its parts:
``runner.py`` runs the teacher over one chunk of rows (its body, then its LM head a slice of
positions at a time through the kind's kernel, ``pipeline/dump_kinds.py``), ``uniforms.py`` seeds the
draws, ``writer.py`` writes chunks on a background thread, ``stats.py`` sums up a shard.
What a kind stores is its own (``daram/storage/formats.py``): the top-k ids with ``log_softmax(logits / T)``
over the full vocabulary (``topk``), the ids drawn ``draws`` times from ``softmax(logits / T)`` with their
counts (``sampled``), or those draws themselves, sorted (``draws``, format v2). Row t of the stored arrays
is the distribution from ``logits[:, t]``, i.e. for the token at t + 1. ``--top-k`` without ``--kind``
dumps ``topk`` (a setting only one kind reads picks it) and says so first; a setting the kind does not
read is refused.

Safe to kill at any moment: chunks are written whole and flagged done afterwards, a rerun of the
same command skips flagged chunks, and each chunk is computed on its own (batches never cross
chunk boundaries; sampled draws come from a generator seeded with (seed, shard, chunk)), so a
resumed shard is bit-identical to an uninterrupted one on CPU. On GPUs the kernels may pick
different algorithms between runs; resumed chunks then differ from a fresh run within float16
rounding of the log-probs (top-k ids can swap where two probabilities tie to that precision).

Every check comes before the teacher loads, so a refusal is instant: the settings against the store's
dump (the dtype is not part of a dump's identity, see docs/store-format.md), complete shards (skipped),
each pending shard's tokens against its fingerprint, the teacher's tokenizer, and the shard locks.
SIGTERM, SIGINT and ``run.time_limit`` pause the dump cleanly after the chunk in flight: the lock
is released, a "paused" line says how to continue, and the command exits 75 (see ``pause.py``).

One process per shard, enforced by a lock in the store; a stale lock of a dead process is taken
over. Shards are independent work units:

- one GPU, many shards:  ``daram teacher-dump --all`` (complete shards are skipped)
- ``torchrun --nproc-per-node 8 -m daram teacher-dump --all``: rank r of w takes shards r, r+w, ...
  of the selection, each on its local GPU (no process group is needed)
- a SLURM job array, one shard per task::

      #!/bin/bash
      #SBATCH --job-name=daram-dump --array=0-63%16 --gres=gpu:1 --cpus-per-task=8 --time=04:00:00
      #SBATCH --output=logs/dump-%A_%a.out --requeue
      daram teacher-dump --config daram.toml --shard "$SLURM_ARRAY_TASK_ID"

  A preempted or failed task resumes where it stopped when requeued or resubmitted
  (``sbatch --array=<failed ids>``); ``daram inspect`` shows which shards are complete.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daram.config import Config, TeacherConfig, parse_shards
from daram.errors import DaramError
from daram.pipeline.dump.runner import TeacherRunner, resolve_dtype
from daram.pipeline.dump.stats import shard_stats, summary_line
from daram.pipeline.dump.uniforms import chunk_uniforms
from daram.pipeline.dump.writer import ChunkWriter
from daram.pipeline.hf import check_store_tokenizer, load_causal_lm, load_tokenizer, loaded_commit, resolve_device, resolved_source
from daram.pipeline.dump.padded_vocab import check_padding_mass
from daram.pipeline.parent_death import die_with_parent
from daram.pipeline.pause import Pause
from daram.storage import (
    COMPLETE, RELEASED, ClaimLost, LockHeld, Store, TeacherManifest, check_same_teacher, choose_kind, teacher_format,
)
from daram.text import plural
from daram.units import parse_duration

HELD_POLL_S = 2.0  # --all: how often to look at shards other processes hold
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@dataclass
class DumpJob:
    """What setup checked and decided, before the teacher loads: everything a refusal needs."""

    store: Store
    settings: TeacherConfig
    selection: list[int]  # this process's shards, in order
    complete: list[int]  # of those, already complete when setup looked
    todo: list[int]  # the rest, their tokens checked against the store's fingerprints
    held: list[int]  # of todo, locked by another live process when setup looked
    wanted: TeacherManifest  # the dump's identity (commit filled in once the teacher loads)
    device: Any  # torch.device
    pause: Pause
    lease: float = 0.0  # seconds without a heartbeat after which a shard's claim is taken over


@dataclass
class DumpOutcome:
    completed: list[dict[str, Any]] = field(default_factory=list)  # stats of the shards this run completed
    skipped: list[int] = field(default_factory=list)  # complete before this run got to them
    held: list[int] = field(default_factory=list)  # another process is writing them (only left when paused)
    by_others: list[int] = field(default_factory=list)  # completed by other processes while this run waited
    paused: str = ""  # why the run stopped early ("SIGTERM", "time limit 11h30m"); empty when it did not
    seconds: float = 0.0
    device_name: str = ""


def run_teacher_dump(
    cfg: Config, shard: int | None = None, shards: str | None = None, all_shards: bool = False,
    pause: Pause | None = None, how_to_continue: str = "run the same command again to continue", worker: str | None = None,
) -> DumpOutcome:
    """Dump the selected shards: setup (every check, instant) -> run (the teacher) -> finish (one summary).

    Without ``pause``, SIGTERM / SIGINT and ``run.time_limit`` pause the dump cleanly after the current chunk.
    A caller with its own pause (``daram run``) passes ``how_to_continue=""`` and says it itself.
    """
    if pause is None:
        cfg = teacher_settings(cfg, "teacher-dump")
        with Pause(parse_duration(cfg.run.time_limit)) as own:
            return run_teacher_dump(cfg, shard, shards, all_shards, own, how_to_continue, worker)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a torchrun rank ends with its launcher, which can no longer stop it
        die_with_parent(os.getppid())
    job = setup_dump(cfg, shard, shards, all_shards, pause, worker)
    for s in job.complete:
        print(f"shard {s}: already complete, skipped", file=sys.stderr)
    if not job.selection:
        print(f"teacher-dump: rank {os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')}: no shards to dump")
        return DumpOutcome()
    outcome = dump_shards(job) if job.todo else DumpOutcome(skipped=list(job.complete))
    return finish_dump(job, outcome, how_to_continue)


def teacher_settings(cfg: Config, command: str, file=None) -> Config:
    """``cfg`` with ``teacher.kind`` resolved: a setting that only some kinds read (``--top-k``) picks the kind when
    none was given, and a contradiction (``--kind draws --top-k 32``) is refused (:func:`daram.storage.choose_kind`).
    A kind picked this way is the command's first line."""
    given = sorted(key.removeprefix("teacher.") for key in cfg.given if key.startswith("teacher."))
    kind, why = choose_kind(cfg.teacher.kind, cfg.was_given("teacher.kind"), given)
    if not why:
        return cfg
    print(f"{command}: {why}", file=file or sys.stdout)
    return dataclasses.replace(cfg.replace("teacher", kind=kind), given=cfg.given | {"teacher.kind"})


def setup_dump(cfg: Config, shard: int | None, shards: str | None, all_shards: bool, pause: Pause,
               worker: str | None = None) -> DumpJob:
    """Check the selection, settings, store, tokens, tokenizer and claims, without loading the teacher."""
    settings = cfg.teacher
    lease = parse_duration(settings.lease, "teacher.lease")
    if lease <= 0:
        raise DaramError(f"teacher.lease {settings.lease!r}: give a duration, e.g. 15m")
    store = Store.open(cfg.store.path, mode="r+", options=cfg.store.options)
    selection = select_shards(store, shard, shards, all_shards, worker)
    for s in selection:
        store.check_tokens_layout(s)  # a missing or damaged tokens shard fails now, before the teacher loads
    fmt = teacher_format(settings.kind)
    width = fmt.width(settings, store.manifest.tokenizer.vocab_size, store.url)
    device = resolve_device(_local_device(settings.device))
    wanted = TeacherManifest(
        teacher=resolved_source(settings.model),
        teacher_given=settings.model,
        revision=settings.revision,
        dtype=resolve_dtype(settings.dtype, device),
        temperature=settings.temperature,
        kind=settings.kind,
        width=width,
        vocab_size=store.manifest.tokenizer.vocab_size,
        tokens_fingerprint=store.manifest.tokens_fingerprint,
        rows_per_chunk=store.manifest.rows_per_chunk,
        draws=settings.draws if fmt.drawn else 0,
        seed=settings.seed if fmt.drawn else 0,
    )
    existing = store.teacher_manifest()
    if existing is not None:
        check_same_teacher(store.url, existing, wanted)
    # complete is judged from the chunk flags and files, not the manifest alone: a lost chunk is dumped again
    complete = [s for s in selection if existing is not None and store.shard_state(s, existing).state == COMPLETE]
    todo = [s for s in selection if s not in complete]
    job = DumpJob(store, settings, selection, complete, todo, [], wanted, device, pause, lease)
    if not todo:
        return job
    for s in todo:
        store.check_tokens_fingerprint(s)
    _check_teacher_tokenizer(settings.model, store)
    job.held = [s for s in todo if _held_by_another(store, s, lease)]
    if job.held and len(selection) == 1:
        store.shard_lock(selection[0], lease).acquire()  # raises LockHeld, naming the holder
    return job


def dump_shards(job: DumpJob) -> DumpOutcome:
    """Load the teacher and dump ``job.todo`` shard by shard, pausing cleanly when asked."""
    import torch

    settings, store = job.settings, job.store
    model = load_causal_lm(settings.model, job.wanted.dtype, str(job.device), settings.revision)
    runner = TeacherRunner(
        model, settings.kind, job.wanted.width, settings.temperature, job.device, settings.batch_size, store.manifest
    )
    teacher = store.init_teacher(dataclasses.replace(job.wanted, commit=loaded_commit(model)))
    outcome = DumpOutcome(skipped=list(job.complete), device_name=runner.device_name)
    started = time.perf_counter()
    with torch.inference_mode():
        for s in job.todo:
            if job.pause.requested():
                break
            if store.shard_state(s).state == COMPLETE:  # fresh: another process may have finished it
                print(f"shard {s}: already complete, skipped", file=sys.stderr)
                outcome.skipped.append(s)
                continue
            try:
                stats = dump_shard(store, s, teacher, runner, job.pause, job.lease)
            except (LockHeld, ClaimLost) as exc:
                if len(job.selection) == 1 and isinstance(exc, LockHeld):
                    raise
                print(f"shard {s}: held by another process, back to it after the others ({exc})", file=sys.stderr)
                outcome.held.append(s)
                continue
            if stats is None:
                outcome.skipped.append(s)
            elif stats.get("paused"):
                break
            else:
                outcome.completed.append(stats)
        _wait_for_others(store, teacher, runner, job.pause, outcome, job.lease)
    outcome.paused = job.pause.reason
    outcome.seconds = time.perf_counter() - started
    return outcome


def _wait_for_others(store: Store, teacher: TeacherManifest, runner, pause: Pause, outcome: DumpOutcome,
                     lease: float) -> None:
    """Shards another process was writing: wait until each is complete, or finish one whose writer stopped
    (its lock freed or stale). Two ``--all`` runs share the work this way."""
    import random

    if outcome.held:
        print(f"waiting for shards {_ranges(outcome.held)}, held by other processes", file=sys.stderr)
    while outcome.held and not pause.requested():
        time.sleep(HELD_POLL_S * random.uniform(0.5, 1.5))
        for s in list(outcome.held):
            try:
                stats = dump_shard(store, s, teacher, runner, pause, lease)
            except (LockHeld, ClaimLost):
                continue  # still being written
            if stats is not None and stats.get("paused"):
                return
            outcome.held.remove(s)
            if stats is None:
                outcome.by_others.append(s)
            else:
                outcome.completed.append(stats)  # its writer stopped before the end; this run finished it


def finish_dump(job: DumpJob, outcome: DumpOutcome, how_to_continue: str) -> DumpOutcome:
    """One summary line; a clean pause says how to continue."""
    tokens = sum(st["tokens_computed"] for st in outcome.completed)
    line = (
        f"teacher-dump: {job.store.url}: {plural(len(outcome.completed), 'shard')} dumped, "
        f"{len(outcome.skipped)} already complete"
        + (f", {plural(len(outcome.by_others), 'shard')} dumped by other processes ({_ranges(outcome.by_others)})" if outcome.by_others else "")
        + (f", {plural(len(outcome.held), 'shard')} held by other processes ({_ranges(outcome.held)})" if outcome.held else "")
    )
    if outcome.completed:
        line += (
            f"; {tokens:,} tokens in {outcome.seconds:.1f}s ({tokens / max(outcome.seconds, 1e-9):,.0f} tokens/s) "
            f"on {outcome.device_name}"
        )
    print(line)
    if outcome.paused:
        left = [s for s in job.todo if job.store.shard_state(s).state != COMPLETE]
        print(
            f"teacher-dump: paused ({outcome.paused}) with {plural(len(left), 'shard')} left ({_ranges(left)}); "
            "every written chunk is kept and the shard locks are released" + (f": {how_to_continue}" if how_to_continue else "")
        )
    return outcome


def _check_teacher_tokenizer(model: str, store: Store) -> None:
    """The teacher's tokenizer must be the store's: same ids for the same text."""
    local = Path(model)
    if local.is_dir() and not any((local / name).is_file() for name in TOKENIZER_FILES):
        raise DaramError(
            f"teacher {model!r} has no tokenizer ({' / '.join(TOKENIZER_FILES)}); save the teacher's "
            f"tokenizer beside its weights so daram can check that it matches the store's"
        )
    try:
        tokenizer = load_tokenizer(model)
    except DaramError as exc:
        raise DaramError(f"cannot load teacher {model!r}: its tokenizer: {exc}") from None
    check_store_tokenizer(tokenizer, f"teacher {model!r}", store)

def _held_by_another(store: Store, shard: int, lease: float) -> bool:
    lock = store.shard_lock(shard, lease)
    holder = lock.holder()
    return holder is not None and not lock.is_stale(holder)


def parse_worker(text: str) -> tuple[int, int]:
    """``--worker I/N`` -> (I, N), 0 <= I < N."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        sep = ""
    if not sep or n < 1 or not 0 <= i < n:
        raise DaramError(f"--worker expects I/N with 0 <= I < N (e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT); got {text!r}")
    return i, n


def select_shards(store: Store, shard: int | None, shards: str | None, all_shards: bool, worker: str | None = None) -> list[int]:
    """The shards this process dumps: the selection, split across static workers (``--worker I/N``: I, I+N, ...)
    or torchrun ranks (r, r+w, ...)."""
    if sum((shard is not None, shards is not None, all_shards)) != 1:
        raise DaramError("say which shards to dump: --shard N, --shards 0-7 or --all (exactly one)")
    if worker is not None and shard is not None:
        raise DaramError("--worker I/N splits a selection of shards (--shards or --all); --shard N is one already")
    if shard is not None:
        store.check_shard(shard)
        selection = [shard]
    elif shards is not None:
        selection = parse_shards(shards, store.manifest.num_shards, "--shards")
    else:
        selection = list(range(store.manifest.num_shards))
    if worker is not None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise DaramError("--worker I/N and torchrun's ranks both split the shards; use one of them")
        index, count = parse_worker(worker)
        return selection[index::count]
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    return selection[rank::world]


def _local_device(device: str) -> str:
    """Under torchrun, ``auto`` / ``cuda`` mean this rank's local GPU."""
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{local_rank}"
    return device


def dump_shard(store: Store, shard: int, teacher: TeacherManifest, runner: TeacherRunner, pause: Pause,
               lease: float = 15 * 60.0) -> dict | None:
    """Dump (or finish, or repair) one shard under its claim; returns its stats, None when it was already
    complete, or ``{"paused": True}`` when ``pause`` stopped it between chunks (the claim is released either way).
    Raises ``ClaimLost`` when another process took the claim over (this one's heartbeat went stale).
    The chunks dumped are those not done by the store's judgement (flag set and files present), so a shard
    recorded complete that lost a chunk or a flag gets exactly those chunks again."""
    from tqdm import tqdm

    seq_len = store.manifest.seq_len
    with store.shard_lock(shard, lease) as lock:
        state = store.shard_state(shard, store.teacher_manifest())
        if state.state == COMPLETE:  # finished by another process since we looked
            return None
        target = store.teacher_shard(shard, teacher, create=True)
        done = target.chunk_states()
        ranges = store.chunk_ranges(shard)
        rows = ranges[-1][1]
        resumed = int(sum((hi - lo) for (lo, hi), d in zip(ranges, done) if d)) * seq_len
        if state.state == RELEASED:
            print(f"shard {shard}: {state.describe()}; dumping it again", file=sys.stderr)
        elif state.recorded and not done.all():
            print(f"shard {shard}: recorded complete, but {plural(int((~done).sum()), 'chunk')} "
                  f"({_ranges([int(c) for c in np.flatnonzero(~done)])}) lost a file or its done flag: dumping "
                  "them again", file=sys.stderr)
        elif done.any():
            print(f"shard {shard}: resuming: {int(done.sum())}/{len(done)} chunks already written", file=sys.stderr)
        target.clear_flags([int(c) for c in np.flatnonzero(~done & target.flags())])  # redone: not done meanwhile
        started = time.perf_counter()
        writer = ChunkWriter(target)
        bar = tqdm(
            total=rows * seq_len, initial=resumed, unit="tok", unit_scale=True, desc=f"teacher-dump shard {shard}",
            dynamic_ncols=True, file=sys.stderr,
        )
        slowest_chunk = 0.0  # what the next chunk may take, for the time limit
        written = int(done.sum())  # for those waiting on the shard: how far it got
        try:
            for chunk, (lo, hi) in enumerate(ranges):
                if done[chunk]:
                    continue
                if pause.requested(next_unit_s=2 * slowest_chunk):
                    break
                chunk_started = time.perf_counter()
                tokens = store.read_tokens(shard, lo, hi)
                uniforms = chunk_uniforms(teacher.seed, shard, chunk, tokens.size, teacher.draws) if target.format.drawn else None
                result = runner.run_chunk(tokens, uniforms)
                result.seconds = time.perf_counter() - chunk_started
                slowest_chunk = max(slowest_chunk, result.seconds)
                if not math.isfinite(result.entropy_sum):  # NaN/inf logits: nothing of this chunk is written
                    raise DaramError(
                        f"teacher {teacher.teacher_given or teacher.teacher!r} gave non-finite logits on shard {shard}, "
                        f"rows {lo}-{hi} (dtype {runner.dtype_name}"
                        + ("; float16 can overflow: try --dtype float32 or bfloat16)" if runner.dtype_name == "float16" else ")")
                    )
                lock.check()  # another process took the shard over: write nothing more
                if result.padding:
                    check_padding_mass(result.padding["padding_mass_max"], teacher.teacher_given or teacher.teacher,
                                       shard, (lo, hi), teacher.vocab_size)
                writer.submit(chunk, result)
                bar.update(tokens.size)
                written += 1
                lock.refresh(progress=f"{written}/{len(ranges)} chunks")
        finally:
            bar.close()
            writer.close()
        wall = time.perf_counter() - started
        done = target.chunk_states()
        if pause.reason and not done.all():
            print(f"shard {shard}: paused ({pause.reason}) after {int(done.sum())}/{len(ranges)} chunks", file=sys.stderr)
            return {"paused": True}

        if not done.all():
            raise DaramError(f"{store.url}: teacher shard {shard}: some chunks were not flagged done after writing")
        stats = shard_stats(store, target)
        stats.update(
            device=runner.device_name, dtype=runner.dtype_name, batch_size=runner.batch_size,
            tokens_computed=rows * seq_len - resumed,
        )
        lock.check()
        if not store.record_teacher_shard(shard, stats):
            print(f"shard {shard}: recorded complete already (its first record is kept)", file=sys.stderr)
    print(summary_line(target, stats, wall), file=sys.stderr)
    return stats


def _ranges(shards: list[int]) -> str:
    return ",".join(str(s) for s in shards)
