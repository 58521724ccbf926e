"""A daram store as a torch dataset, for your own trainer: :class:`StoreBatches`.

Public API (semantic versioning, see the README): the names in ``__all__``, their arguments, and the keys and
shapes of the batches, documented in :mod:`daram.losses` (``input_ids``, ``teacher_ids``, ``teacher_probs``,
``teacher_tail``), which turns a batch and the student's logits into ``student-train``'s loss.

The order is fixed by the store alone: shards in the order given, chunks in order within a shard, rows in
order within a chunk. Under ``torchrun`` (or with ``rank``/``world`` given) chunk ``i`` of that order goes to
rank ``i % world``, so ranks read disjoint chunks; every rank gets the same number of full batches (the fewest
any rank can fill) so that DDP ranks step together, and the few rows left over are skipped. Within a rank,
batch ``k`` is made by DataLoader worker ``k % num_workers``, which is the order the DataLoader hands batches
out in: the stream is the same whatever the number of workers. A position is the number of batches a rank
has consumed; ``start=position`` resumes exactly there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from daram.errors import DaramError
from daram.pipeline.batches import check_teacher_shards, check_token_shards
from daram.storage import Store

__all__ = ["StoreBatches"]


class StoreBatches(torch.utils.data.IterableDataset):
    """Batches of ``batch_size`` rows of a store, with the teacher's targets decoded for any kind.

    Use it with ``DataLoader(dataset, batch_size=None, num_workers=n)``: the dataset batches itself. ``shards``:
    the shards to read, in order (default: all). ``teacher=False`` reads tokens only (no dump needed).
    ``start``: batches of this rank already consumed. ``rank``/``world``: default to torch.distributed's
    when it is initialized, else 0 and 1.
    """

    def __init__(self, store: str | Path | Store, batch_size: int, shards: Sequence[int] | None = None,
                 teacher: bool = True, start: int = 0, rank: int | None = None, world: int | None = None) -> None:
        super().__init__()
        self.store = store if isinstance(store, Store) else Store.open(str(store))
        manifest = self.store.manifest
        self.shards = list(range(manifest.num_shards) if shards is None else shards)
        bad = [s for s in self.shards if not 0 <= s < manifest.num_shards]
        if bad or not self.shards:
            raise DaramError(f"{self.store.url}: shards {bad or self.shards} are not in 0-{manifest.num_shards - 1}")
        if rank is None or world is None:
            rank, world = _distributed_rank()
        if batch_size < 1 or world < 1 or not 0 <= rank < world or start < 0:
            raise DaramError(f"StoreBatches: batch_size {batch_size} and world {world} must be >= 1, rank {rank} in "
                             f"0-{world - 1}, start {start} >= 0")
        check_token_shards(self.store, self.shards)
        self.teacher = self.store.teacher_manifest() if teacher else None
        if teacher:
            check_teacher_shards(self.store, self.teacher, self.shards, f"StoreBatches(shards={self.shards})")
        self.batch_size, self.rank, self.world, self.start = batch_size, rank, world, start
        chunks = [(shard, lo, hi) for shard in self.shards for lo, hi in self.store.chunk_ranges(shard)]
        self.chunks = chunks[rank::world]  # this rank's chunks, in reading order
        self.offsets = np.cumsum([0] + [hi - lo for _, lo, hi in self.chunks])  # where each chunk starts in the stream
        self.total = min(sum(hi - lo for _, lo, hi in chunks[r::world]) for r in range(world)) // batch_size
        if start > self.total:
            raise DaramError(f"StoreBatches: start {start} is past the end ({self.total} batches for rank {rank})")

    def __getstate__(self) -> dict:
        """DataLoader workers open the store again (a spawned worker gets its URL, not a zarr handle)."""
        return {**self.__dict__, "store": self.store.url}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, store=Store.open(state["store"]))

    @property
    def temperature(self) -> float | None:
        """The T the teacher's probabilities are at (the dump's); None without the teacher."""
        return self.teacher.temperature if self.teacher else None

    @property
    def vocab_size(self) -> int:
        """The store tokenizer's number of ids: a student needs at least this many logits."""
        return self.store.manifest.tokenizer.vocab_size

    def __len__(self) -> int:
        """Batches left for this rank from ``start`` (all workers together)."""
        return self.total - self.start

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        reader = _ChunkReader(self.store, self.teacher is not None)
        for k in range(self.start + worker, self.total, workers):
            yield self.batch(k, reader)

    def batch(self, k: int, reader: "_ChunkReader | None" = None) -> dict[str, torch.Tensor]:
        """Batch ``k`` of this rank's stream."""
        reader = reader or _ChunkReader(self.store, self.teacher is not None)
        first, last = k * self.batch_size, (k + 1) * self.batch_size
        parts = []
        index = int(np.searchsorted(self.offsets, first, side="right")) - 1
        while first < last:
            shard, lo, hi = self.chunks[index]
            begin, end = first - self.offsets[index], min(last, self.offsets[index + 1]) - self.offsets[index]
            parts.append([array[begin:end] for array in reader.read(shard, lo, hi)])
            first += end - begin
            index += 1
        columns = [np.concatenate(column) for column in zip(*parts)]
        batch = {"input_ids": torch.from_numpy(columns[0].astype(np.int64))}
        if self.teacher is not None:
            batch.update(teacher_ids=torch.from_numpy(columns[1]), teacher_probs=torch.from_numpy(columns[2]),
                         teacher_tail=torch.from_numpy(columns[3]))
        return batch


class _ChunkReader:
    """One chunk's decoded arrays at a time: consecutive batches of a worker mostly share a chunk."""

    def __init__(self, store: Store, with_teacher: bool) -> None:
        self.store, self.with_teacher = store, with_teacher
        self.key: tuple[int, int] | None = None
        self.arrays: tuple[np.ndarray, ...] = ()

    def read(self, shard: int, lo: int, hi: int) -> tuple[np.ndarray, ...]:
        if self.key != (shard, lo):
            try:
                tokens = self.store.read_tokens(shard, lo, hi)
                targets = self.store.read_teacher_targets(shard, lo, hi) if self.with_teacher else ()
            except DaramError:
                raise
            except Exception as exc:  # a checksum or decompression failure: the chunk is damaged
                raise DaramError(f"{self.store.url}: cannot read rows {lo}-{hi} of shard {shard} "
                                 f"({type(exc).__name__}: {exc}); run `daram verify`") from None
            self.key, self.arrays = (shard, lo), (tokens, *targets)
        return self.arrays


def _distributed_rank() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
