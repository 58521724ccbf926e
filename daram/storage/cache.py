"""A local cache of whole shards in front of a remote store, for a trainer that follows the dump.

:class:`ShardCache` serves the keys of cached shards (``tokens/shard-N/...`` and ``teacher/shard-N/...``) from a
local directory and everything else from the store underneath. A shard is fetched whole into a temporary
directory and renamed into place, so it is cached completely or not at all; only complete shards are fetched
(a complete shard's arrays no longer change), and a shard is evicted once training is past it. The bytes are the
store's own, so reading through the cache gives the same numbers as reading the store.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from pathlib import Path

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.core.sync import sync
from zarr.storage import WrapperStore

SHARD_PARTS = ("tokens", "teacher")


def _shard_of(key: str) -> str | None:
    """``tokens/shard-00003/c/0/0`` -> ``shard-00003``; None for keys outside a shard."""
    parts = key.split("/", 2)
    if len(parts) >= 2 and parts[0] in SHARD_PARTS and parts[1].startswith("shard-"):
        return parts[1]
    return None


class ShardCache(WrapperStore[Store]):
    def __init__(self, store: Store, directory: str | os.PathLike) -> None:
        super().__init__(store)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        for partial in self.directory.glob("*.partial"):  # a fetch a kill interrupted
            shutil.rmtree(partial, ignore_errors=True)

    def _with_store(self, store: Store) -> "ShardCache":
        return type(self)(store, self.directory)

    def _local(self, key: str) -> Path | None:
        name = _shard_of(key)
        if name is None or not (self.directory / name).is_dir():
            return None
        return self.directory / name / key

    def cached(self) -> list[str]:
        return sorted(p.name for p in self.directory.iterdir() if p.is_dir() and not p.name.endswith(".partial"))

    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file())

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        path = self._local(key)
        if path is None or byte_range is not None:  # (zarr reads these arrays' chunks whole)
            return await self._store.get(key, prototype, byte_range)
        try:
            return prototype.buffer.from_bytes(path.read_bytes())
        except FileNotFoundError:  # evicted meanwhile, or a key the shard lacks: ask the store
            return await self._store.get(key, prototype, byte_range)

    async def exists(self, key: str) -> bool:
        path = self._local(key)
        return path.is_file() if path is not None else await self._store.exists(key)

    def fetch(self, name: str) -> int:
        """Copy shard ``name``'s tokens and teacher arrays here whole; returns the bytes copied (0 if cached)."""
        if (self.directory / name).is_dir():
            return 0
        staging = self.directory / f"{name}.{uuid.uuid4().hex}.partial"
        copied = 0

        async def keys(prefix: str) -> list[str]:
            return [k async for k in self._store.list_prefix(prefix)]

        for part in SHARD_PARTS:
            for key in sync(keys(f"{part}/{name}/")):
                buf = sync(self._store.get(key, prototype=_prototype()))
                if buf is None:
                    continue
                target = staging / key
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(buf.to_bytes())
                copied += len(buf)
        with self._lock:
            try:
                os.rename(staging, self.directory / name)
            except OSError:  # fetched by another thread meanwhile
                shutil.rmtree(staging, ignore_errors=True)
        return copied

    def evict(self, name: str) -> None:
        with self._lock:
            if (self.directory / name).is_dir():
                aside = self.directory / f"{name}.{uuid.uuid4().hex}.partial"
                os.rename(self.directory / name, aside)  # readers fall back to the store from here on
                shutil.rmtree(aside, ignore_errors=True)


def _prototype() -> BufferPrototype:
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype()
