"""Streaming rows of tokens (and the teacher's arrays) from the store into micro-batches.

The order is a pure function of (shards, epochs, seed, shuffle, batch size), the same on any number
of ranks, so a run checkpointed on N ranks resumes on M with the same data (elastic resume):

- shards are visited in the given curriculum order, every epoch;
- within a shard, the chunk order is a seeded permutation (when shuffling), and the rows are
  shuffled within windows of :data:`WINDOW_CHUNKS` consecutive chunks, so only one window is held
  in memory (a shuffle buffer, not a whole-shard shuffle);
- the rows are cut into micro-batches of ``batch_size``, the rows left over at a shard's end are
  skipped; the micro-batches of all shards and epochs, in order, are the global sequence. Under DDP
  rank ``r`` of ``w`` trains micro-batch ``g`` when ``g % w == r``; a step is ``grad_accum * w``
  consecutive micro-batches, so the global batch stays the same when ``w`` changes and
  ``grad_accum`` follows it. The sequence is cut to a multiple of ``w`` (at most ``w - 1``
  micro-batches of the data's end), so ranks step together. Ranks read the windows their rows are in:
  rows of one chunk may go to several ranks.

A position in this order is the number of (global) micro-batches consumed, which is what a
checkpoint records; :meth:`BatchPlan.describe` turns it back into (epoch, shard, row offset).

Reading runs in a background thread (:class:`Prefetcher`) a few micro-batches ahead.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from daram.errors import DaramError
from daram.storage import COMPLETE, INCOMPLETE, NOT_DUMPED, RELEASED, Store, TeacherManifest
from daram.text import plural

WINDOW_CHUNKS = 8  # chunks per shuffle window


@dataclass(frozen=True)
class ShardPass:
    """One shard in one epoch, as one rank sees it."""

    epoch: int
    shard: int
    chunks: tuple[tuple[int, int], ...]  # the shard's chunk row ranges, in reading order
    batches: int  # full micro-batches of the pass (of all ranks together)
    seed: tuple[int, ...]  # seeds the row shuffle within windows; () = no shuffle

    def row_order(self) -> np.ndarray:
        """The row indices in the order they are used (all of them; only the first ``batches * batch_size``
        are)."""
        rng = np.random.default_rng(self.seed) if self.seed else None
        windows = [np.zeros(0, dtype=np.int64)]  # a rank may get no chunk of a small shard
        for w in range(0, len(self.chunks), WINDOW_CHUNKS):
            rows = np.concatenate([np.arange(lo, hi) for lo, hi in self.chunks[w : w + WINDOW_CHUNKS]])
            windows.append(rng.permutation(rows) if rng else rows)
        return np.concatenate(windows)


class BatchPlan:
    def __init__(
        self,
        chunk_ranges: dict[int, list[tuple[int, int]]],
        shards: list[int],
        epochs: int,
        batch_size: int,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.passes: list[ShardPass] = []
        for epoch in range(epochs):
            for shard in shards:
                ranges = chunk_ranges[shard]
                rng = np.random.default_rng([seed, epoch, shard])
                order = rng.permutation(len(ranges)) if shuffle else np.arange(len(ranges))
                chunks = tuple(ranges[i] for i in order)
                batches = sum(hi - lo for lo, hi in chunks) // batch_size
                row_seed = (seed, epoch, shard, 0) if shuffle else ()  # (the seed of a one-rank run, as before)
                self.passes.append(ShardPass(epoch, shard, chunks, batches, row_seed))
        everything = sum(p.batches for p in self.passes)
        self.total_batches = everything - everything % world  # every rank takes as many

    def locate(self, micro: int) -> tuple[int, int]:
        """(index into ``passes``, micro-batch within that pass) of the ``micro``-th micro-batch."""
        for i, shard_pass in enumerate(self.passes):
            if micro < shard_pass.batches:
                return i, micro
            micro -= shard_pass.batches
        return len(self.passes), 0

    def shard_of(self, micro: int) -> int | None:
        """The shard the ``micro``-th micro-batch reads (None past the end)."""
        index, _ = self.locate(micro)
        return self.passes[index].shard if index < len(self.passes) else None

    def shards_from(self, micro: int) -> list[int]:
        """The shards still to be read from micro-batch ``micro`` on, in reading order (a shard appears again in
        each later epoch): what must be on disk, and when, for the rest of the run."""
        index, _ = self.locate(micro)
        return [p.shard for p in self.passes[index:] if p.batches > 0]

    def describe(self, micro: int) -> dict[str, int]:
        """The data position after ``micro`` micro-batches, for checkpoints and logs."""
        index, batch = self.locate(micro)
        if index == len(self.passes):
            return {"micro_batches": micro, "epoch": self.passes[-1].epoch + 1, "shard": -1, "row_offset": 0}
        shard_pass = self.passes[index]
        return {
            "micro_batches": micro,
            "epoch": shard_pass.epoch,
            "shard": shard_pass.shard,
            "row_offset": batch * self.batch_size,
        }


@dataclass
class Batch:
    tokens: np.ndarray  # (B, L) int64
    teacher_ids: np.ndarray | None  # (B, L, width) int64
    teacher_values: np.ndarray | None  # (B, L, width) float32: log-probs (topk) or counts (sampled)
    shard: int


def iter_batches(
    store: Store, plan: BatchPlan, start: int = 0, with_teacher: bool = True, stop: int | None = None
) -> Iterator[Batch]:
    """This rank's micro-batches among the global ones ``start`` to ``stop`` (default: the end).
    ``with_teacher=False`` never opens the teacher arrays; ``stop`` keeps a reader that runs ahead out of
    shards that are not there yet."""
    first, skip = plan.locate(start)
    global_index = start - skip  # of the first micro-batch of the pass
    end = plan.total_batches if stop is None else min(stop, plan.total_batches)
    for shard_pass in plan.passes[first:]:
        if global_index >= end:
            return
        mine = [b for b in range(skip, shard_pass.batches)
                if global_index + b < end and (global_index + b) % plan.world == plan.rank]
        if mine:
            order = shard_pass.row_order()
            window = _WindowReader(store, shard_pass, with_teacher)
            for b in mine:
                yield window.take(order[b * plan.batch_size : (b + 1) * plan.batch_size])
        global_index += shard_pass.batches
        skip = 0


class _WindowReader:
    """Reads a shard's chunks a window at a time and serves rows from the windows read.

    Rows are used window by window, so a window is dropped once a batch needs only later ones.
    """

    def __init__(self, store: Store, shard_pass: ShardPass, with_teacher: bool) -> None:
        self.store, self.shard_pass, self.with_teacher = store, shard_pass, with_teacher
        self.where: dict[int, tuple[int, int]] = {}  # row -> (window, index within the window's arrays)
        for w in range(0, len(shard_pass.chunks), WINDOW_CHUNKS):
            rows = np.concatenate([np.arange(lo, hi) for lo, hi in shard_pass.chunks[w : w + WINDOW_CHUNKS]])
            self.where.update((int(r), (w, i)) for i, r in enumerate(rows))
        self.windows: dict[int, tuple[np.ndarray, ...]] = {}

    def take(self, rows: np.ndarray) -> Batch:
        located = [self.where[int(r)] for r in rows]
        needed = sorted({w for w, _ in located})
        self.windows = {w: arrays for w, arrays in self.windows.items() if w >= needed[0]}
        for w in needed:
            if w not in self.windows:
                parts = [self._read(lo, hi) for lo, hi in self.shard_pass.chunks[w : w + WINDOW_CHUNKS]]
                self.windows[w] = tuple(np.concatenate(column) for column in zip(*parts))
        columns = [np.stack([self.windows[w][c][i] for w, i in located]) for c in range(len(self.windows[needed[0]]))]
        # Windows keep the stored dtypes (a quarter of the memory); a batch gets the ones torch indexes with.
        tokens = columns[0].astype(np.int64)
        if not self.with_teacher:
            return Batch(tokens, None, None, self.shard_pass.shard)
        return Batch(tokens, columns[1].astype(np.int64), columns[2].astype(np.float32), self.shard_pass.shard)

    def _read(self, lo: int, hi: int) -> tuple[np.ndarray, ...]:
        shard = self.shard_pass.shard
        try:
            tokens = self.store.read_tokens(shard, lo, hi)
            if not self.with_teacher:
                return (tokens,)
            ids, values = self.store.read_teacher(shard, lo, hi)
        except DaramError:
            raise
        except Exception as exc:  # a checksum or decompression failure: the chunk is damaged
            raise DaramError(
                f"{self.store.url}: cannot read rows {lo}-{hi} of shard {shard} ({type(exc).__name__}: {exc}); "
                "run `daram verify`"
            ) from None
        return tokens, ids, values


def check_token_shards(store: Store, shards: list[int]) -> None:
    """Refuse token arrays whose shape or dtype no longer match the manifest (metadata edited or replaced), or
    that lost a chunk file: the reader would otherwise index past their end, or read zeros."""
    for shard in shards:
        store.check_tokens_layout(shard)
        missing = store.missing_token_chunks(shard)
        if missing:
            store.read_tokens(shard, *store.chunk_ranges(shard)[missing[0]])  # raises, naming the chunk and the repair


def check_teacher_shards(store: Store, teacher: TeacherManifest | None, shards: list[int], setting: str) -> None:
    """Refuse shards whose teacher dump is missing, incomplete or was computed over other tokens, naming every
    such shard in one message."""
    if teacher is None:
        raise DaramError(f"{store.url} has no teacher dump (run `daram teacher-dump`), needed by {setting}")
    if teacher.tokens_fingerprint != store.manifest.tokens_fingerprint:
        raise DaramError(
            f"{store.url}: the teacher dump was computed over other tokens (tokens_fingerprint differs); "
            "dump it again after `daram prepare`"
        )
    if teacher.vocab_size != store.manifest.tokenizer.vocab_size:
        raise DaramError(
            f"{store.url}: teacher vocab_size {teacher.vocab_size} != the store tokenizer's "
            f"{store.manifest.tokenizer.vocab_size}"
        )
    states = [store.shard_state(shard, teacher) for shard in shards]
    not_dumped = [st.shard for st in states if st.state == NOT_DUMPED]
    incomplete = [f"{st.shard} ({st.chunks_done}/{st.chunks} chunks)" for st in states if st.state == INCOMPLETE]
    released = [st for st in states if st.state == RELEASED]
    if not_dumped or incomplete or released:
        missing = sorted(st.shard for st in states if st.state != COMPLETE)
        problems = ([f"not dumped: {_spans(not_dumped)}"] if not_dumped else []) + (
            [f"incomplete: {', '.join(incomplete)}"] if incomplete else []) + (
            [f"released: {_spans([st.shard for st in released])}"] if released else [])
        restore = ""
        if released:
            places = sorted({st.released_to for st in released if st.released_to})
            restore = (
                f"; released shards were moved to {', '.join(places)}: bring them back with `daram release --restore "
                f"--shards {_spans([st.shard for st in released], ',')}`, or dump them again" if places
                else "; released shards were deleted: dump them again"
            )
        raise DaramError(
            f"{setting}: the teacher dump lacks {plural(len(missing), 'shard')} ({'; '.join(problems)}); run `daram "
            f"teacher-dump --shards {_spans(missing, ',')}` to dump {'it' if len(missing) == 1 else 'them'}{restore}"
        )


def _spans(shards: list[int], sep: str = ", ") -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``: a long list of missing shards stays readable."""
    spans, shards = [], sorted(shards)
    start = prev = shards[0]
    for s in shards[1:] + [None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        spans.append(f"{start}-{prev}" if prev > start else f"{start}")
        if s is not None:
            start = prev = s
    return sep.join(spans)


class Prefetcher:
    """Runs an iterator in a background thread, ``depth`` items ahead; re-raises its errors here."""

    _END = object()

    def __init__(self, items: Iterator, depth: int) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._fill, args=(items,), daemon=True, name="daram-prefetch")
        self.thread.start()

    def _fill(self, items: Iterator) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(exc)

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        return self

    def __next__(self):
        item = self.queue.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
