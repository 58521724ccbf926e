"""One teacher shard's arrays and chunk flags, and what state a shard is in.

Only this module and ``store.py`` know the layout of ``teacher/shard-N``: the kind's arrays (see
:mod:`daram.storage.formats`), the ``chunks_done`` flags and the per-chunk statistics. Stages call
:class:`TeacherShard` methods ("write chunk", "chunk states", "read rows") and read
:class:`ShardState` ("complete", "incomplete", "not dumped", "released").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import zarr

from daram.errors import DaramError
from daram.storage.codecs import WRITE_EVERY_CHUNK, codecs_for, flag_codecs
from daram.storage.formats import ArraySpec, TeacherFormat
from daram.storage.manifest import StoreManifest, TeacherManifest

CHUNKS_DONE = "chunks_done"
CHUNK_STATS_ATTR = "daram_chunk_stats"  # on teacher/shard-N: per-chunk sums that only the forward can see

COMPLETE, INCOMPLETE, NOT_DUMPED, RELEASED = "complete", "incomplete", "not dumped", "released"


@dataclass(frozen=True)
class ShardState:
    """Where a teacher shard stands, judged from its chunk flags and files, not only the manifest."""

    shard: int
    state: str  # complete | incomplete | not dumped | released
    chunks_done: int  # flagged done and present in every array
    chunks: int
    recorded: bool  # the manifest records it complete (with its statistics)
    released_to: str | None = None  # released: where its arrays went ("" when deleted)

    @property
    def repair(self) -> str:
        """The command that brings the shard to complete ("" when it is)."""
        if self.state == COMPLETE:
            return ""
        if self.state == RELEASED and self.released_to:  # (dumping it again works too)
            return f"daram release --restore --shards {self.shard}"
        return f"daram teacher-dump --shard {self.shard}"

    def describe(self) -> str:
        """One phrase for messages: "incomplete (2/7 chunks)", "released (moved to s3://...)"."""
        if self.state == INCOMPLETE:
            lost = " (recorded complete, but chunks were lost)" if self.recorded else ""
            return f"incomplete ({self.chunks_done}/{self.chunks} chunks){lost}"
        if self.state == RELEASED:
            return f"released (moved to {self.released_to})" if self.released_to else "released (deleted)"
        return self.state


class ShardStore(Protocol):
    """What a teacher shard asks of its store (``daram.storage.store.Store``, which imports this module)."""

    url: str
    manifest: StoreManifest

    def shard_rows(self, shard: int) -> int: ...
    def read_tokens(self, shard: int, start: int = 0, stop: int | None = None) -> np.ndarray: ...
    def chunk_key(self, array: zarr.Array, chunk: int) -> str: ...
    def missing_chunks(self, array: zarr.Array, start: int = 0, stop: int | None = None) -> list[int]: ...
    def require_chunks(self, array: zarr.Array, shard: int, start: int, stop: int | None, repair: str) -> None: ...


class TeacherShard:
    """The arrays of ``teacher/shard-N``; get one from :meth:`Store.teacher_shard`."""

    def __init__(self, store: ShardStore, shard: int, teacher: TeacherManifest, group: zarr.Group,
                 arrays: dict[str, zarr.Array], done: zarr.Array) -> None:
        self.store, self.shard, self.teacher = store, shard, teacher
        self.group, self.arrays, self.done = group, arrays, done
        self.format: TeacherFormat = teacher.format
        self.path = f"teacher/{group.basename}"
        self.tables = tuple(self._read_table(spec) for spec in self.format.tables)

    # --- opening / creating (called by Store.teacher_shard) -----------------------------------------

    @classmethod
    def open(cls, store: ShardStore, shard: int, teacher: TeacherManifest, group: zarr.Group) -> "TeacherShard":
        names = [spec.name for spec in teacher.format.arrays] + [CHUNKS_DONE]
        arrays = {}
        for name in names:
            try:
                # the config is not stored with the array: ask again for every chunk to be written
                arrays[name] = group[name].with_config(WRITE_EVERY_CHUNK)
            except KeyError:
                raise DaramError(
                    f"{store.url}: teacher/{group.basename}/{name} is missing (store damaged?); "
                    f"run `daram teacher-dump --shard {shard}` to dump the shard again"
                ) from None
            except ValueError as exc:  # zarr.json that is not JSON
                raise DaramError(
                    f"{store.url}: teacher/{group.basename}/{name}/zarr.json is damaged ({exc}); run "
                    f"`daram teacher-dump --shard {shard}` to dump the shard again"
                ) from None
        done = arrays.pop(CHUNKS_DONE)
        shard_ = cls(store, shard, teacher, group, arrays, done)
        shard_.check_layout()
        return shard_

    def _read_table(self, spec: ArraySpec) -> np.ndarray:
        repair = f"run `daram teacher-dump --shard {self.shard}` to dump the shard again"
        try:
            table = self.group[spec.name]
        except KeyError:
            raise DaramError(f"{self.store.url}: {self.path}/{spec.name} is missing (store damaged?); {repair}") from None
        self.store.require_chunks(table, self.shard, 0, None, repair=repair)
        expected = ((self.teacher.vocab_size,), np.dtype(spec.numpy_dtype(self.store.manifest.token_dtype)))
        if (table.shape, table.dtype) != expected:
            raise DaramError(f"{self.store.url}: {self.path}/{spec.name} is {table.shape} {table.dtype}, expected "
                             f"{expected[0]} {expected[1]} (store damaged?); {repair}")
        return table[:]

    @classmethod
    def create(cls, store: ShardStore, shard: int, teacher: TeacherManifest, group: zarr.Group) -> "TeacherShard":
        """Create the arrays the group lacks (all of them for a new shard); existing ones are kept. The kind's
        tables are built from the shard's tokens and (re)written when absent: the same tokens give the same."""
        rows, seq_len, step = store.shard_rows(shard), store.manifest.seq_len, store.manifest.rows_per_chunk
        existing = {name for name, _ in group.members()}
        absent = [spec.name not in existing or bool(store.missing_chunks(group[spec.name])) for spec in teacher.format.tables]
        if any(absent):  # a resumed shard keeps its tables: the tokens are read only to build a missing one
            tables = teacher.format.build_tables(store.read_tokens(shard), teacher.vocab_size)
            for spec, data, missing in zip(teacher.format.tables, tables, absent):
                if missing:
                    table = group[spec.name] if spec.name in existing else group.create_array(
                        spec.name, shape=data.shape, chunks=data.shape, dtype=data.dtype, compressors=codecs_for(spec),
                        fill_value=0, config=WRITE_EVERY_CHUNK,
                    )
                    table[:] = data
        for spec in teacher.format.arrays:
            if spec.name not in existing:
                shape = _shape(spec, rows, seq_len, teacher.width)
                group.create_array(
                    spec.name, shape=shape, chunks=(step, *shape[1:]), dtype=spec.numpy_dtype(store.manifest.token_dtype),
                    compressors=codecs_for(spec), fill_value=0,
                    config=WRITE_EVERY_CHUNK,
                )
        if CHUNKS_DONE not in existing:
            group.create_array(
                CHUNKS_DONE, shape=(-(-rows // step),), chunks=(1,), dtype="uint8", fill_value=0,
                compressors=flag_codecs(), config=WRITE_EVERY_CHUNK,
            )
        return cls.open(store, shard, teacher, group)

    def check_layout(self) -> None:
        rows, seq_len = self.store.shard_rows(self.shard), self.store.manifest.seq_len
        for spec in self.format.arrays:
            array = self.arrays[spec.name]
            shape = _shape(spec, rows, seq_len, self.teacher.width)
            dtype = np.dtype(spec.numpy_dtype(self.store.manifest.token_dtype))
            if array.shape != shape or array.dtype != dtype:
                raise DaramError(
                    f"{self.store.url}: {self.path}/{spec.name} is {array.shape} {array.dtype}, expected {shape} {dtype} "
                    f"(store damaged?); run `daram teacher-dump --shard {self.shard}` after removing {self.path}"
                )

    # --- chunk states ----------------------------------------------------------------------------------

    def flags(self) -> np.ndarray:
        """The ``chunks_done`` flags as stored; an unreadable flag (damaged) counts as not done."""
        return self._read_flags()[0]

    def damaged_flags(self) -> list[int]:
        """Chunks whose flag cannot be read (checksum mismatch)."""
        return self._read_flags()[1]

    def _read_flags(self) -> tuple[np.ndarray, list[int]]:
        try:
            return self.done[:].astype(bool), []
        except Exception:  # a checksum mismatch in one flag's file: read them one by one
            flags, damaged = np.zeros(self.done.shape[0], dtype=bool), []
            for chunk in range(len(flags)):
                try:
                    flags[chunk] = bool(self.done[chunk])
                except Exception:
                    damaged.append(chunk)
            return flags, damaged

    def chunk_keys(self, chunk: int) -> list[str]:
        """The store keys of one chunk's files in every array (to name them in a repair)."""
        return [self.store.chunk_key(array, chunk) for array in self.arrays.values()]

    def missing_chunks(self) -> dict[str, list[int]]:
        """Per array, the chunks whose files are absent."""
        return {name: self.store.missing_chunks(array) for name, array in self.arrays.items()}

    def chunk_states(self) -> np.ndarray:
        """Boolean per chunk: flagged done and its file present in every array."""
        done = self.flags()
        for missing in self.missing_chunks().values():
            done[missing] = False
        return done

    # --- writing (with the shard's lock held) ----------------------------------------------------------

    def chunk_stats(self) -> dict[str, dict[str, Any]]:
        """Per-chunk statistics saved by :meth:`write_chunk`, keyed by chunk number as a string."""
        return dict(self.group.attrs.get(CHUNK_STATS_ATTR, {}))

    def write_chunk(self, chunk: int, arrays: Sequence[np.ndarray], stats: Mapping[str, Any] | None = None) -> None:
        """Write one chunk's rows of every array (in the format's order), then flag it done.

        The statistics go first and the flag last, so a flagged chunk always has both."""
        arrays = self.format.encode(tuple(arrays), self.tables)
        if len(arrays) != len(self.format.arrays):
            raise ValueError(f"{self.format.kind} has {len(self.format.arrays)} arrays, got {len(arrays)}")
        if stats is not None:
            self.group.attrs[CHUNK_STATS_ATTR] = {**self.chunk_stats(), str(chunk): dict(stats)}
        lo = chunk * self.store.manifest.rows_per_chunk
        for spec, data in zip(self.format.arrays, arrays):
            self.arrays[spec.name][lo : lo + len(data)] = data
        self.done[chunk] = 1

    def clear_flags(self, chunks: Sequence[int]) -> None:
        """Mark chunks not done before they are written again (a repair), so a kill midway leaves them not done."""
        for chunk in chunks:
            self.done[chunk] = 0

    # --- reading ---------------------------------------------------------------------------------------

    def read_rows(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, ...]:
        """Rows [start, stop) of every array in the format's order, then the shard's tables: what the format's
        readers (``decode``, ``probabilities``, ``check_block``) take. An absent chunk is refused."""
        for name in self.arrays:
            self.store.require_chunks(
                self.arrays[name], self.shard, start, stop,
                repair=f"run `daram teacher-dump --shard {self.shard}` to dump it again",
            )
        return tuple(self.arrays[name][start:stop] for name in self.arrays) + self.tables



def _shape(spec: ArraySpec, rows: int, seq_len: int, width: int) -> tuple[int, ...]:
    return (rows, seq_len, width) if spec.per_id else (rows, seq_len)
