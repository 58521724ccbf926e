"""Writing a teacher dump's finished chunks on a background thread, so compression and I/O overlap the next forward."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from daram.errors import DaramError
from daram.pipeline.dump.runner import ChunkResult
from daram.storage import TeacherShard


class ChunkWriter:
    """At most one write is in flight (two chunks' arrays in memory). A chunk's statistics are saved
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
        stats = {"positions": result.positions, "entropy_sum": result.entropy_sum, "seconds": result.seconds,
                 **result.padding}
        self.shard.write_chunk(chunk, result.arrays, stats)

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
