"""Phase one, ``daram teacher-dump``: run the teacher over token shards and store its tempered distributions.

For every chunk of rows of ``tokens/shard-N``: a batched forward through the teacher's body, then
its LM head a slice of positions at a time (:mod:`daram.pipeline.dump_kernels`), keeping either
the top-k ids with ``log_softmax(logits / T)`` over the full vocabulary (kind ``topk``) or the ids
drawn ``draws`` times from ``softmax(logits / T)`` with their counts (kind ``sampled``). Row t of
the stored arrays is the distribution from ``logits[:, t]``, i.e. for the token at t + 1.

Safe to kill at any moment: chunks are written whole and flagged done afterwards, a rerun of the
same command skips flagged chunks, and each chunk is computed on its own (batches never cross
chunk boundaries; sampled draws come from a generator seeded with (seed, shard, chunk)), so a
resumed shard is bit-identical to an uninterrupted one on CPU. On GPUs the kernels may pick
different algorithms between runs; resumed chunks then differ from a fresh run within float16
rounding of the log-probs (top-k ids can swap where two probabilities tie to that precision).

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

import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from daram.config import Config, parse_shards
from daram.errors import DaramError
from daram.storage import LockHeld, Store, TeacherManifest, shard_name
from daram.storage.store import CHUNKS_DONE

CHUNK_STATS_ATTR = "daram_chunk_stats"  # on teacher/shard-N: per-chunk sums that only the forward can see
CPU_BATCH_TOKENS = 4096  # automatic batch size on CPU: rows of about this many tokens per forward
MASS_BINS = 10_000  # resolution of the captured-mass percentile
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@dataclass
class ChunkResult:
    ids: np.ndarray  # [rows, seq_len, width]
    values: np.ndarray  # top-k log-probs (float16) or draw counts (uint8), same shape
    entropy_sum: float  # sum over positions of the teacher's entropy at T (nats)
    seconds: float = 0.0


def run_teacher_dump(
    cfg: Config, shard: int | None = None, shards: str | None = None, all_shards: bool = False
) -> list[dict[str, Any]]:
    """Dump the selected shards; returns the stats of the shards this run completed."""
    settings = cfg.teacher
    store = Store.open(cfg.store.path, mode="r+")
    manifest = store.manifest
    selection = select_shards(store, shard, shards, all_shards)
    if not selection:
        print(f"teacher-dump: rank {os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')}: no shards to dump")
        return []
    for s in selection:
        store.token_array(s)  # a missing tokens shard fails now, before the teacher loads
    width = _check_settings(cfg, store)

    import torch

    from daram.pipeline.hf import check_store_tokenizer, load_causal_lm, load_tokenizer, resolve_device

    local = Path(settings.model)
    if local.is_dir() and not any((local / name).is_file() for name in TOKENIZER_FILES):
        raise DaramError(
            f"teacher {settings.model!r} has no tokenizer ({' / '.join(TOKENIZER_FILES)}); save the teacher's "
            f"tokenizer beside its weights so daram can check that it matches the store's"
        )
    try:
        tokenizer = load_tokenizer(settings.model)
    except DaramError as exc:
        raise DaramError(f"cannot load teacher {settings.model!r}: its tokenizer: {exc}") from None
    check_store_tokenizer(tokenizer, f"teacher {settings.model!r}", store)
    device = resolve_device(_local_device(settings.device))
    if device.type == "cpu" and settings.dtype != "float32":
        print(f"note: {settings.dtype} on CPU is slow; --dtype float32 is faster there", file=sys.stderr)
    model = load_causal_lm(settings.model, settings.dtype, str(device), settings.revision)
    runner = TeacherRunner(model, settings.kind, width, settings.temperature, device, settings.batch_size, manifest)

    teacher = store.init_teacher(
        TeacherManifest(
            teacher=settings.model,
            revision=settings.revision,
            dtype=settings.dtype,
            temperature=settings.temperature,
            kind=settings.kind,
            width=width,
            vocab_size=manifest.tokenizer.vocab_size,
            tokens_fingerprint=manifest.tokens_fingerprint,
            rows_per_chunk=manifest.rows_per_chunk,
            draws=settings.draws if settings.kind == "sampled" else 0,
            seed=settings.seed if settings.kind == "sampled" else 0,
        )
    )

    started = time.perf_counter()
    completed, skipped, held = [], [], []
    with torch.inference_mode():
        for s in selection:
            if store.teacher_manifest().is_complete(s):  # fresh: another process may have finished it
                print(f"shard {s}: already complete, skipped", file=sys.stderr)
                skipped.append(s)
                continue
            try:
                stats = dump_shard(store, s, teacher, runner)
            except LockHeld as exc:
                if len(selection) == 1:
                    raise
                print(f"shard {s}: skipped: {exc}", file=sys.stderr)  # another process is on it; go on with the rest
                held.append(s)
                continue
            if stats is None:
                skipped.append(s)
            else:
                completed.append(stats)

    seconds = time.perf_counter() - started
    tokens = sum(st["tokens_computed"] for st in completed)
    print(
        f"teacher-dump: {store.url}: {len(completed)} shards dumped, {len(skipped)} already complete"
        + (f", {len(held)} held by other processes ({_ranges(held)})" if held else "")
        + f"; {tokens:,} tokens in {seconds:.1f}s ({tokens / max(seconds, 1e-9):,.0f} tokens/s) on {runner.device_name}"
    )
    if held:
        raise DaramError(f"other processes are writing shards {_ranges(held)}; rerun later to finish them")
    return completed


def select_shards(store: Store, shard: int | None, shards: str | None, all_shards: bool) -> list[int]:
    """The shards this process dumps: the selection, split across torchrun ranks (r, r+w, ...)."""
    if sum((shard is not None, shards is not None, all_shards)) != 1:
        raise DaramError("say which shards to dump: --shard N, --shards 0-7 or --all (exactly one)")
    if shard is not None:
        store.check_shard(shard)
        selection = [shard]
    elif shards is not None:
        selection = parse_shards(shards, store.manifest.num_shards, "--shards")
    else:
        selection = list(range(store.manifest.num_shards))
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    return selection[rank::world]


def _check_settings(cfg: Config, store: Store) -> int:
    """Settings that must agree with the store; returns the width of the teacher arrays."""
    settings = cfg.teacher
    vocab = store.manifest.tokenizer.vocab_size
    if settings.kind == "topk":
        if settings.top_k > vocab:
            raise DaramError(f"teacher.top_k={settings.top_k} exceeds the vocabulary of {store.url} ({vocab:,} ids)")
        return settings.top_k
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
        self.value_dtype = np.dtype("float16" if kind == "topk" else "uint8")
        self.device_name = str(device) if device.type != "cuda" else f"{device} ({torch.cuda.get_device_name(device)})"
        self._check_head_path()

    def hidden_states(self, input_ids):
        return self.body(input_ids=input_ids, use_cache=False).last_hidden_state

    def _check_head_path(self) -> None:
        """The body + head path must give the model's own logits (refuses models that rescale or cap them)."""
        import torch

        with torch.inference_mode():
            probe = torch.arange(8, device=self.device).unsqueeze(0)
            expected = self.model(input_ids=probe, use_cache=False).logits[0].float() / self.head.temperature
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

        from daram.pipeline.dump_kernels import sample_slice, topk_slice

        rows, seq_len = tokens.shape
        ids = np.empty((rows * seq_len, self.width), dtype=self.token_dtype)
        values = np.empty((rows * seq_len, self.width), dtype=self.value_dtype)
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
                else:
                    top_ids, top_values, entropy = sample_slice(z, scratch, uniforms[at], self.width)
                    top_values = top_values.to(torch.uint8)
                ids[at] = top_ids.cpu().numpy()
                values[at] = top_values.cpu().numpy()
                entropy_sum += entropy.sum(dtype=torch.float64)
        shape = (rows, seq_len, self.width)
        return ChunkResult(ids.reshape(shape), values.reshape(shape), float(entropy_sum))


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

    def __init__(self, store: Store, arrays: dict, teacher: TeacherManifest, group: zarr.Group) -> None:
        self.store, self.arrays, self.teacher, self.group = store, arrays, teacher, group
        self.chunk_stats = dict(group.attrs.get(CHUNK_STATS_ATTR, {}))
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="daram-writer")
        self.pending: Future | None = None

    def submit(self, chunk: int, result: ChunkResult) -> None:
        self.wait()
        self.pending = self.pool.submit(self._write, chunk, result)

    def _write(self, chunk: int, result: ChunkResult) -> None:
        self.chunk_stats[str(chunk)] = {
            "positions": int(result.ids.shape[0] * result.ids.shape[1]),
            "entropy_sum": result.entropy_sum,
            "seconds": result.seconds,
        }
        self.group.attrs[CHUNK_STATS_ATTR] = self.chunk_stats
        self.store.write_teacher_chunk(self.arrays, chunk, result.ids, result.values, self.teacher)

    def wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            try:
                pending.result()  # a failed write surfaces here
            except OSError as exc:
                raise DaramError(f"{self.store.url}: writing a teacher chunk failed: {exc}") from None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.pool.shutdown()


def dump_shard(store: Store, shard: int, teacher: TeacherManifest, runner: TeacherRunner) -> dict | None:
    """Dump (or finish) one shard under its lock; returns its stats, or None when it was already complete."""
    from tqdm import tqdm

    seq_len = store.manifest.seq_len
    with store.shard_lock(shard) as lock:
        if store.teacher_manifest().is_complete(shard):  # finished by another process since we looked
            return None
        arrays = store.teacher_arrays(shard, teacher, create=True)
        done = arrays[CHUNKS_DONE][:].astype(bool)
        ranges = store.chunk_ranges(shard)
        group = zarr.open_group(store.root.store, path=f"teacher/{shard_name(shard)}", mode="r+", use_consolidated=False)
        rows = ranges[-1][1]
        resumed = int(sum((hi - lo) for (lo, hi), d in zip(ranges, done) if d)) * seq_len
        if done.any():
            print(f"shard {shard}: resuming: {int(done.sum())}/{len(done)} chunks already written", file=sys.stderr)
        started = time.perf_counter()
        writer = ChunkWriter(store, arrays, teacher, group)
        bar = tqdm(
            total=rows * seq_len, initial=resumed, unit="tok", unit_scale=True, desc=f"teacher-dump shard {shard}",
            dynamic_ncols=True, file=sys.stderr,
        )
        try:
            for chunk, (lo, hi) in enumerate(ranges):
                if done[chunk]:
                    continue
                chunk_started = time.perf_counter()
                tokens = store.read_tokens(shard, lo, hi)
                uniforms = None
                if teacher.kind == "sampled":
                    uniforms = chunk_uniforms(teacher.seed, shard, chunk, tokens.size, teacher.draws)
                result = runner.run_chunk(tokens, uniforms)
                result.seconds = time.perf_counter() - chunk_started
                writer.submit(chunk, result)
                lock.refresh()
                bar.update(tokens.size)
        finally:
            bar.close()
            writer.close()
        wall = time.perf_counter() - started

        if not arrays[CHUNKS_DONE][:].all():
            raise DaramError(f"{store.url}: teacher shard {shard}: some chunks were not flagged done after writing")
        stats = shard_stats(store, shard, teacher, arrays, writer.chunk_stats)
        stats.update(device=runner.device_name, batch_size=runner.batch_size, tokens_computed=rows * seq_len - resumed)
        store.record_teacher_shard(shard, stats)
    print(_summary_line(shard, stats, wall), file=sys.stderr)
    return stats


def shard_stats(store: Store, shard: int, teacher: TeacherManifest, arrays: dict, chunk_stats: dict) -> dict[str, Any]:
    """Per-shard statistics: entropy and speed from the forward's per-chunk sums, the rest from the stored arrays."""
    positions = sum(c["positions"] for c in chunk_stats.values())
    seconds = sum(c["seconds"] for c in chunk_stats.values())
    return {
        "rows": store.shard_rows(shard),
        "tokens": positions,
        "shard_fingerprint": store.manifest.shard_fingerprints[shard],
        "entropy_mean": sum(c["entropy_sum"] for c in chunk_stats.values()) / positions,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(positions / max(seconds, 1e-9), 1),
        **stored_stats(store, shard, teacher, arrays),
    }


def stored_stats(store: Store, shard: int, teacher: TeacherManifest, arrays: dict) -> dict[str, Any]:
    """What the stored arrays say, read back chunk by chunk: the top-k's captured probability mass
    (mean and 5th percentile), or the unique ids per position and the truncated positions of a sampled dump."""
    values = arrays[teacher.array_names[1]]
    positions = 0
    if teacher.kind == "topk":
        hist, total = np.zeros(MASS_BINS, dtype=np.int64), 0.0
        for lo, hi in store.chunk_ranges(shard):
            mass = np.exp(values[lo:hi].astype(np.float32)).sum(-1).ravel()
            positions += mass.size
            total += float(mass.sum(dtype=np.float64))
            hist += np.bincount(np.minimum((mass * MASS_BINS).astype(np.int64), MASS_BINS - 1), minlength=MASS_BINS)
        p5_bin = int(np.searchsorted(np.cumsum(hist), 0.05 * positions))
        return {"captured_mass_mean": total / positions, "captured_mass_p5": (p5_bin + 0.5) / MASS_BINS}
    unique, truncated = 0, 0
    for lo, hi in store.chunk_ranges(shard):
        counts = values[lo:hi]
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
