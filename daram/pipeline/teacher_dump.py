"""Phase one, ``daram teacher-dump``: run the teacher over token shards and store its tempered distributions.

For every chunk of rows of ``tokens/shard-N``: a batched forward through the teacher's body, then
its LM head a slice of positions at a time (:mod:`daram.pipeline.dump_kernels`), keeping either
the top-k ids with ``log_softmax(logits / T)`` over the full vocabulary (kind ``topk``) or the ids
drawn ``draws`` times from ``softmax(logits / T)`` with their counts (kind ``sampled``), or those
draws themselves, sorted (kind ``draws``, format v2). Row t of
the stored arrays is the distribution from ``logits[:, t]``, i.e. for the token at t + 1.

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
import hashlib
import math
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daram.config import Config, TeacherConfig, parse_shards
from daram.errors import DaramError
from daram.pipeline.hf import (
    check_store_tokenizer, load_causal_lm, load_tokenizer, loaded_commit, resolve_device, resolved_source,
)
from daram.pipeline.parent_death import die_with_parent
from daram.pipeline.pause import Pause
from daram.storage import (
    COMPLETE, RELEASED, ClaimLost, LockHeld, Store, TeacherManifest, TeacherShard, check_same_teacher, fingerprint_bytes, shard_name,
    teacher_format,
)
from daram.text import plural
from daram.units import parse_duration

CPU_BATCH_TOKENS = 4096  # automatic batch size on CPU: rows of about this many tokens per forward
HELD_POLL_S = 2.0  # --all: how often to look at shards other processes hold
MASS_BINS = 10_000  # resolution of the captured-mass percentile
DRAWN = ("sampled", "draws")  # kinds whose ids are drawn from a seeded stream of uniforms
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@dataclass
class ChunkResult:
    ids: np.ndarray  # [rows, seq_len, width]
    values: np.ndarray | None  # top-k log-probs (float16) or draw counts (uint8), same shape; None for draws
    entropy_sum: float  # sum over positions of the teacher's entropy at T (nats)
    seconds: float = 0.0


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
    width = dump_width(cfg, store)
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
        draws=settings.draws if settings.kind in DRAWN else 0,
        seed=settings.seed if settings.kind in DRAWN else 0,
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
        check_tokens(store, s)
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


def resolve_dtype(dtype: str, device) -> str:
    """``auto``: float16 on CUDA (the GPU's fast path), float32 elsewhere (float16 matmuls are slow on CPUs)."""
    if dtype != "auto":
        if device.type == "cpu" and dtype != "float32":
            print(f"note: {dtype} on CPU is slow; --dtype float32 (or auto) is faster there", file=sys.stderr)
        return dtype
    return "float16" if device.type == "cuda" else "float32"


def check_tokens(store: Store, shard: int) -> None:
    """Refuse a tokens shard whose chunks no longer hash to the fingerprint prepare recorded
    (a chunk lost, replaced or damaged): a teacher dump over it would be recorded as a dump of other text."""
    digest = hashlib.sha256()
    for lo, hi in store.chunk_ranges(shard):
        try:
            digest.update(fingerprint_bytes(store.read_tokens(shard, lo, hi)))
        except DaramError:
            raise
        except Exception as exc:  # a checksum or decompression failure
            raise DaramError(
                f"{store.url}: tokens/{shard_name(shard)} rows {lo}-{hi} cannot be read ({type(exc).__name__}); "
                "the token shards are damaged: rebuild the store with `daram prepare --overwrite`"
            ) from None
    if digest.hexdigest() != store.manifest.shard_fingerprints[shard]:
        raise DaramError(
            f"{store.url}: tokens/{shard_name(shard)} does not match its fingerprint in the manifest (a chunk lost or "
            "changed); refusing to dump over it: rebuild the store with `daram prepare --overwrite`"
        )


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


def dump_width(cfg: Config, store: Store) -> int:
    """The width of the teacher arrays (k, or S for sampled), after checking the settings against the store."""
    settings = cfg.teacher
    vocab = store.manifest.tokenizer.vocab_size
    if settings.kind == "topk":
        if settings.top_k > vocab:
            raise DaramError(f"teacher.top_k={settings.top_k} exceeds the vocabulary of {store.url} ({vocab:,} ids)")
        return settings.top_k
    if settings.kind == "draws":
        return settings.draws  # every draw is stored (sorted), so the width is the number of draws
    if settings.draws > 255:
        raise DaramError(f"teacher.draws={settings.draws}: at most 255 (counts are stored as uint8)")
    width = settings.sample_width or settings.draws
    if width > min(settings.draws, vocab):
        raise DaramError(
            f"teacher.sample_width={width} exceeds teacher.draws={settings.draws} (or the vocabulary); "
            f"a position has at most `draws` unique ids"
        )
    return width


def _local_device(device: str) -> str:
    """Under torchrun, ``auto`` / ``cuda`` mean this rank's local GPU."""
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{local_rank}"
    return device


class TeacherRunner:
    """The teacher's body and tempered LM head, run over one chunk of rows at a time."""

    def __init__(self, model, kind: str, width: int, temperature: float, device, batch_size: int, manifest) -> None:
        import torch

        from daram.pipeline.dump_kernels import TemperedHead, slice_positions

        head = model.get_output_embeddings()
        if not isinstance(head, torch.nn.Linear):
            raise DaramError(f"teacher's output layer is a {type(head).__name__}; daram expects a Linear LM head")
        vocab = head.out_features
        if vocab != manifest.tokenizer.vocab_size:
            raise DaramError(
                f"teacher's LM head has {vocab:,} outputs but its tokenizer (and the store) has "
                f"{manifest.tokenizer.vocab_size:,} ids"
            )
        context = getattr(model.config, "max_position_embeddings", None)
        if context is not None and manifest.seq_len > context:
            raise DaramError(f"the store's rows hold {manifest.seq_len} tokens; the teacher's context is {context}")
        self.model = model
        self.body = model.base_model
        self.head = TemperedHead.from_linear(head, temperature)
        self.kind, self.width, self.device = kind, width, device
        self.auto_batch = batch_size == 0
        if self.auto_batch:  # CPU: about CPU_BATCH_TOKENS per forward; CUDA: a whole chunk, halved on OOM
            batch_size = max(1, CPU_BATCH_TOKENS // manifest.seq_len) if device.type == "cpu" else manifest.rows_per_chunk
        self.batch_size = min(batch_size, manifest.rows_per_chunk)  # batches never cross chunks
        self.slice = min(slice_positions(vocab, device), self.batch_size * manifest.seq_len)
        self.buffers = [torch.empty(self.slice, vocab, dtype=torch.float32, device=device) for _ in range(2)]
        self.token_dtype = np.dtype(manifest.token_dtype)
        arrays = teacher_format(kind).arrays  # ids, then log-probs or counts as stored; a draws dump has ids only
        self.value_dtype = np.dtype(arrays[1].dtype) if len(arrays) > 1 else None
        self.device_name = str(device) if device.type != "cuda" else f"{device} ({torch.cuda.get_device_name(device)})"
        self.dtype_name = str(head.weight.dtype).removeprefix("torch.")
        self._check_head_path()

    def hidden_states(self, input_ids):
        return self.body(input_ids=input_ids, use_cache=False).last_hidden_state

    def _check_head_path(self) -> None:
        """The body + head path must give the model's own logits (refuses models that rescale or cap them)."""
        import torch

        with torch.inference_mode():
            probe = torch.arange(8, device=self.device).unsqueeze(0)
            expected = self.model(input_ids=probe, use_cache=False).logits[0].float() / self.head.temperature
            if not torch.isfinite(expected).all():
                raise DaramError(
                    f"teacher {type(self.model).__name__} gives non-finite logits on a probe of 8 tokens "
                    f"(dtype {self.dtype_name}); its weights are damaged or overflow this dtype"
                )
            ours = self.head(self.hidden_states(probe)[0], self.buffers[0])
            if not torch.allclose(ours, expected, rtol=1e-2, atol=1e-2 * float(expected.abs().max()) + 1e-4):
                raise DaramError(
                    f"teacher {type(self.model).__name__} post-processes its logits after the LM head; "
                    f"daram's sliced dump does not support it"
                )

    def run_chunk(self, tokens: np.ndarray, uniforms=None) -> ChunkResult:
        """The teacher's distributions for one chunk of rows; on CUDA with batch_size 0, halve on OOM."""
        import torch

        while True:
            try:
                return self._run_chunk(tokens, uniforms)
            except torch.OutOfMemoryError:
                if not self.auto_batch or self.batch_size == 1 or self.device.type != "cuda":
                    raise DaramError(
                        f"out of memory on {self.device_name} at batch size {self.batch_size} "
                        f"(rows of {tokens.shape[1]} tokens); lower --batch-size"
                    ) from None
                self.batch_size //= 2
                torch.cuda.empty_cache()
                print(f"out of memory: batch size -> {self.batch_size}", file=sys.stderr)

    def _run_chunk(self, tokens: np.ndarray, uniforms) -> ChunkResult:
        import torch

        from daram.pipeline.dump_kernels import draws_slice, sample_slice, topk_slice

        rows, seq_len = tokens.shape
        ids = np.empty((rows * seq_len, self.width), dtype=self.token_dtype)
        values = None if self.value_dtype is None else np.empty((rows * seq_len, self.width), dtype=self.value_dtype)
        logits, scratch = self.buffers
        entropy_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        batch_ids = torch.from_numpy(tokens.astype(np.int64))
        for lo in range(0, rows, self.batch_size):
            hidden = self.hidden_states(batch_ids[lo : lo + self.batch_size].to(self.device))
            hidden = hidden.reshape(-1, hidden.shape[-1])
            base = lo * seq_len  # flat position of this batch's first token within the chunk
            for start in range(0, hidden.shape[0], self.slice):
                z = self.head(hidden[start : start + self.slice], logits)
                at = slice(base + start, base + start + z.shape[0])
                if self.kind == "topk":
                    top_ids, top_values, entropy = topk_slice(z, scratch, self.width)
                    top_values = top_values.to(torch.float16)
                elif self.kind == "sampled":
                    top_ids, top_values, entropy = sample_slice(z, scratch, uniforms[at], self.width)
                    top_values = top_values.to(torch.uint8)
                else:
                    top_ids, entropy = draws_slice(z, scratch, uniforms[at])
                ids[at] = top_ids.cpu().numpy()
                if values is not None:
                    values[at] = top_values.cpu().numpy()
                entropy_sum += entropy.sum(dtype=torch.float64)
        shape = (rows, seq_len, self.width)
        return ChunkResult(ids.reshape(shape), None if values is None else values.reshape(shape), float(entropy_sum))


def chunk_uniforms(seed: int, shard: int, chunk: int, positions: int, draws: int):
    """The uniforms behind a chunk's draws: a pure function of (seed, shard, chunk), drawn on the CPU."""
    import torch

    state = np.random.SeedSequence([seed, shard, chunk]).generate_state(2, np.uint32)
    generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.rand(positions, draws, generator=generator)


class ChunkWriter:
    """Writes finished chunks on a background thread, so compression and I/O overlap the next forward.

    At most one write is in flight (two chunks' arrays in memory). A chunk's statistics are saved
    before its arrays and its done flag, so a flagged chunk always has them.
    """

    def __init__(self, shard: TeacherShard) -> None:
        self.shard = shard
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="daram-writer")
        self.pending: Future | None = None

    def submit(self, chunk: int, result: ChunkResult) -> None:
        self.wait()
        self.pending = self.pool.submit(self._write, chunk, result)

    def _write(self, chunk: int, result: ChunkResult) -> None:
        stats = {
            "positions": int(result.ids.shape[0] * result.ids.shape[1]),
            "entropy_sum": result.entropy_sum,
            "seconds": result.seconds,
        }
        arrays = (result.ids,) if result.values is None else (result.ids, result.values)  # a draws dump: ids only
        self.shard.write_chunk(chunk, arrays, stats)

    def wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            try:
                pending.result()  # a failed write surfaces here
            except OSError as exc:
                raise DaramError(f"{self.shard.store.url}: writing a teacher chunk failed: {exc}") from None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.pool.shutdown()


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
                uniforms = None
                if teacher.kind in DRAWN:
                    uniforms = chunk_uniforms(teacher.seed, shard, chunk, tokens.size, teacher.draws)
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
    print(_summary_line(shard, stats, wall), file=sys.stderr)
    return stats


def shard_stats(store: Store, target: TeacherShard) -> dict[str, Any]:
    """Per-shard statistics: entropy and speed from the forward's per-chunk sums, the rest from the stored arrays."""
    shard, chunk_stats = target.shard, target.chunk_stats()
    positions = sum(c["positions"] for c in chunk_stats.values())
    seconds = sum(c["seconds"] for c in chunk_stats.values())
    return {
        "rows": store.shard_rows(shard),
        "tokens": positions,
        "shard_fingerprint": store.manifest.shard_fingerprints[shard],
        "entropy_mean": sum(c["entropy_sum"] for c in chunk_stats.values()) / positions,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(positions / max(seconds, 1e-9), 1),
        **stored_stats(target),
    }


def stored_stats(target: TeacherShard) -> dict[str, Any]:
    """What the stored arrays say, read back chunk by chunk: the top-k's captured probability mass
    (mean and 5th percentile), or the unique ids per position and the truncated positions of a sampled dump."""
    store, shard, teacher = target.store, target.shard, target.teacher
    stored = [target.format.arrays[-1].name]  # log-probs, counts, or (draws) the sorted draws themselves
    positions = 0
    if teacher.kind == "topk":
        hist, total = np.zeros(MASS_BINS, dtype=np.int64), 0.0
        for lo, hi in store.chunk_ranges(shard):
            mass = np.exp(target.read_rows(lo, hi, stored)[0].astype(np.float32)).sum(-1).ravel()
            positions += mass.size
            total += float(mass.sum(dtype=np.float64))
            hist += np.bincount(np.minimum((mass * MASS_BINS).astype(np.int64), MASS_BINS - 1), minlength=MASS_BINS)
        p5_bin = int(np.searchsorted(np.cumsum(hist), 0.05 * positions))
        return {"captured_mass_mean": total / positions, "captured_mass_p5": (p5_bin + 0.5) / MASS_BINS}
    unique, truncated = 0, 0
    for lo, hi in store.chunk_ranges(shard):
        block = target.read_rows(lo, hi, stored)[0]
        counts = np.rint(target.format.decode(block)[1] * teacher.draws) if target.format.decode else block
        positions += counts.shape[0] * counts.shape[1]
        unique += int((counts > 0).sum())
        truncated += int((counts.sum(-1, dtype=np.int64) < teacher.draws).sum())
    return {"unique_ids_mean": unique / positions, "truncated_positions": truncated}


def _summary_line(shard: int, stats: dict, wall: float) -> str:
    if "captured_mass_mean" in stats:
        kept = f"top-k mass mean {stats['captured_mass_mean']:.3g} (p5 {stats['captured_mass_p5']:.3g})"
    else:
        kept = f"{stats['unique_ids_mean']:.1f} unique ids per position, {stats['truncated_positions']} truncated"
    return (
        f"shard {shard}: {stats['tokens']:,} tokens ({stats['tokens_computed']:,} this run) in {wall:.1f}s, "
        f"{stats['tokens_per_s']:,.0f} tokens/s on {stats['device']}; {kept}; entropy {stats['entropy_mean']:.3f} nats"
    )


def _ranges(shards: list[int]) -> str:
    return ",".join(str(s) for s in shards)
