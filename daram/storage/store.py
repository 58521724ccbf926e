"""The store: a Zarr v3 group laid out as DESIGN.md's format v1. numpy in, numpy out; no torch.

Integrity has three layers:
- every chunk is compressed then checksummed with crc32c (zarr's ``Crc32cCodec``), so a damaged
  chunk fails to read instead of returning wrong numbers;
- every chunk file is written whole (zarr's local store writes a temporary file and renames it;
  object stores put whole objects);
- a teacher chunk counts as done only once its flag in ``chunks_done`` is set, which happens
  after both of its arrays are written, so a kill at any moment leaves nothing marked done
  that is not.
One writer per teacher shard is enforced by a :class:`~daram.storage.lock.StoreLock`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from daram.errors import DaramError
from daram.storage.draws import decode_draws
from daram.storage.keyvalue import KeyValue
from daram.storage.lock import StoreLock
from daram.storage.manifest import StoreManifest, TeacherManifest

STORE_ATTR = "daram"
TEACHER_ATTR = "daram_teacher"
CHUNKS_DONE = "chunks_done"
# zarr skips writing a chunk that equals the fill value, and reads an absent chunk as the fill value:
# store every chunk, so that an absent one always means damage (see ``Store.missing_chunks``).
WRITE_EVERY_CHUNK = {"write_empty_chunks": True}
MANIFEST_LOCK_WAIT_S = 60.0  # each holder keeps it for milliseconds; 60 s covers hundreds of racing workers


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


def compressors() -> tuple:
    # bitshuffle + zstd suits small ints and float16 alike; crc32c last so it covers the stored bytes.
    return (BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"), Crc32cCodec())


def id_compressors() -> tuple:
    """For arrays of vocabulary ids (tokens, draws): zstd's matches find the ids a corpus repeats, which
    bit-shuffling hides (KoGPT2 tokens: 1.56 B/token against 1.97; docs/benchmarks.md, format v2)."""
    return (BloscCodec(cname="zstd", clevel=9, shuffle="noshuffle"), Crc32cCodec())


def fingerprint_bytes(rows: np.ndarray) -> bytes:
    """The bytes a fingerprint hashes: little-endian, C order; feed consecutive row blocks to one sha256."""
    return np.ascontiguousarray(rows, dtype=rows.dtype.newbyteorder("<")).tobytes()


def fingerprint_rows(rows: np.ndarray) -> str:
    """sha256 of a tokens array as little-endian bytes (one shard's fingerprint)."""
    return hashlib.sha256(fingerprint_bytes(rows)).hexdigest()


def tokens_fingerprint(seq_len: int, shard_fingerprints: tuple[str, ...] | list[str]) -> str:
    return hashlib.sha256(f"{seq_len}:{','.join(shard_fingerprints)}".encode()).hexdigest()


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


class Store:
    """An open daram store. ``Store.open(url)`` to read or resume; ``Store.create(url)`` in prepare."""

    def __init__(self, url: str, root: zarr.Group, manifest: StoreManifest | None) -> None:
        self.url = url
        self.root = root
        self._manifest = manifest
        self.kv = KeyValue(root.store)

    # --- opening ----------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, mode: str = "r") -> "Store":
        """Open a finished store (``mode`` "r" or "r+"); a clear error when it is missing or unfinished."""
        if is_local(url) and not Path(url.removeprefix("file://"), "zarr.json").is_file():
            raise DaramError(f"store not found: {url} (run `daram prepare` first)")
        try:
            root = zarr.open_group(url, mode=mode, use_consolidated=False)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
            raise DaramError(f"store not found: {url} (run `daram prepare` first)") from None
        data = root.attrs.get(STORE_ATTR)
        if data is None:
            raise DaramError(
                f"{url} is not a finished daram store (prepare did not complete?); rerun `daram prepare --overwrite`"
            )
        return cls(url, root, StoreManifest.from_dict(data))

    @classmethod
    def create(cls, url: str, overwrite: bool = False) -> "Store":
        """A new, empty store for prepare to fill; ``write_manifest`` marks it finished."""
        if cls.exists(url) and not overwrite:
            raise DaramError(f"store already exists: {url}; pass --overwrite to replace it")
        check_not_foreign(url)
        root = zarr.open_group(url, mode="w", zarr_format=3, use_consolidated=False)
        root.create_group("locks")  # holds one small group per held lock (see storage/lock.py)
        return cls(url, root, None)

    @classmethod
    def resume_unfinished(cls, url: str) -> "Store":
        """A store that prepare was filling when it stopped (no manifest yet), to go on filling it."""
        return cls(url, zarr.open_group(url, mode="r+", use_consolidated=False), None)

    @staticmethod
    def exists(url: str) -> bool:
        return _group_exists(url)

    @property
    def manifest(self) -> StoreManifest:
        if self._manifest is None:
            raise DaramError(f"{self.url}: store manifest not written yet")
        return self._manifest

    def write_manifest(self, manifest: StoreManifest) -> None:
        self.root.attrs[STORE_ATTR] = manifest.to_dict()
        self._manifest = manifest

    def check_shard(self, shard: int) -> None:
        n = self.manifest.num_shards
        if not 0 <= shard < n:
            raise DaramError(f"shard {shard} is out of range: {self.url} has shards 0-{n - 1}")

    # --- tokens -----------------------------------------------------------------------------

    def create_token_shard(self, shard: int, n_rows: int, seq_len: int, rows_per_chunk: int, dtype: str) -> zarr.Array:
        return self.root.create_array(
            f"tokens/{shard_name(shard)}",
            shape=(n_rows, seq_len),
            chunks=(rows_per_chunk, seq_len),
            dtype=dtype,
            compressors=id_compressors(),
            fill_value=0,
            config=WRITE_EVERY_CHUNK,
            overwrite=True,  # a shard half written by a killed prepare is written again whole
        )

    def token_array(self, shard: int) -> zarr.Array:
        self.check_shard(shard)
        try:
            return self.root[f"tokens/{shard_name(shard)}"]
        except KeyError:
            raise DaramError(f"{self.url}: tokens/{shard_name(shard)} is missing (store damaged?)") from None

    def read_tokens(self, shard: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        array = self.token_array(shard)
        self.require_chunks(array, shard, start, stop, repair="rebuild the tokens with `daram prepare --overwrite`")
        return array[start:stop]

    def missing_chunks(self, array: zarr.Array, start: int = 0, stop: int | None = None) -> list[int]:
        """Chunks (along the rows) of ``array[start:stop]`` whose files are absent, checked in one round trip."""
        stop = array.shape[0] if stop is None else min(stop, array.shape[0])
        step = array.chunks[0]
        chunks = list(range(start // step, -(-stop // step)))
        zeros = (0,) * (array.ndim - 1)
        keys = [f"{array.path}/{array.metadata.encode_chunk_key((c, *zeros))}" for c in chunks]
        return [c for c, present in zip(chunks, self.kv.exist(keys)) if not present]

    def require_chunks(self, array: zarr.Array, shard: int, start: int, stop: int | None, repair: str) -> None:
        """Refuse to read rows whose chunk file is absent: zarr would return zeros for them."""
        missing = self.missing_chunks(array, start, stop)
        if missing:
            step, rows = array.chunks[0], array.shape[0]
            chunk = missing[0]
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DaramError(
                f"{self.url}: {array.path} chunk {chunk} (rows {chunk * step}-{min((chunk + 1) * step, rows)} of shard "
                f"{shard}){more} is missing from the store (deleted?); {repair}"
            )

    def shard_rows(self, shard: int) -> int:
        self.check_shard(shard)
        return self.manifest.rows_per_shard[shard]

    def chunk_ranges(self, shard: int) -> list[tuple[int, int]]:
        """Row ranges [start, stop) of a shard's chunks; the same for tokens and teacher arrays."""
        rows, step = self.shard_rows(shard), self.manifest.rows_per_chunk
        return [(lo, min(lo + step, rows)) for lo in range(0, rows, step)]

    # --- teacher ----------------------------------------------------------------------------

    def teacher_manifest(self) -> TeacherManifest | None:
        """Read fresh from the store (another process may have finished a shard since)."""
        try:
            group = zarr.open_group(self.root.store, path="teacher", mode="r", use_consolidated=False)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
            return None
        data = group.attrs.get(TEACHER_ATTR)
        return None if data is None else TeacherManifest.from_dict(data)

    def init_teacher(self, wanted: TeacherManifest) -> TeacherManifest:
        """Create the teacher group, or check that the dump already there has the same settings."""
        with self.manifest_lock():
            existing = self.teacher_manifest()
            if existing is None:  # never overwrite the group: its shards may hold chunks worth keeping
                self.root.require_group("teacher").attrs[TEACHER_ATTR] = wanted.to_dict()
                return wanted
            check_same_teacher(self.url, existing, wanted)
            return existing

    def record_teacher_shard(self, shard: int, stats: dict) -> TeacherManifest:
        """Mark a shard complete in the teacher manifest with its statistics (read-modify-write under a lock)."""
        with self.manifest_lock():
            group = zarr.open_group(self.root.store, path="teacher", mode="r+", use_consolidated=False)
            data = dict(group.attrs[TEACHER_ATTR])
            data["shards"] = {**data.get("shards", {}), str(shard): stats}
            data["released"] = {k: v for k, v in data.get("released", {}).items() if k != str(shard)}  # dumped again
            manifest = TeacherManifest.from_dict(data)
            group.attrs[TEACHER_ATTR] = manifest.to_dict()
            return manifest

    def release_teacher_shard(self, shard: int) -> None:
        """Delete a complete shard's teacher arrays to free disk, keeping its statistics under ``released`` in the
        teacher manifest; ``teacher-dump`` dumps it again. The manifest changes first: a kill before the arrays
        are gone leaves a shard that is not complete, whose flagged chunks a rerun of the dump keeps."""
        with self.shard_lock(shard):
            with self.lock("teacher-manifest", "the teacher manifest"):
                group = zarr.open_group(self.root.store, path="teacher", mode="r+", use_consolidated=False)
                data = dict(group.attrs[TEACHER_ATTR])
                shards = dict(data.get("shards", {}))
                if str(shard) in shards:
                    data["released"] = {**data.get("released", {}), str(shard): shards.pop(str(shard))}
                    data["shards"] = shards
                    group.attrs[TEACHER_ATTR] = TeacherManifest.from_dict(data).to_dict()
                elif str(shard) not in data.get("released", {}):  # released already: finish deleting its arrays
                    raise DaramError(f"{self.url}: teacher shard {shard} is not complete; only complete shards are released")
            self.kv.delete_dir(f"teacher/{shard_name(shard)}")

    def teacher_arrays(self, shard: int, teacher: TeacherManifest, create: bool = False) -> dict[str, zarr.Array]:
        """The shard's ids, values and ``chunks_done`` arrays; ``create`` makes them if absent (lock holder only)."""
        self.check_shard(shard)
        path = f"teacher/{shard_name(shard)}"
        rows, seq_len = self.shard_rows(shard), self.manifest.seq_len
        try:
            group = zarr.open_group(self.root.store, path=path, mode="r+" if create else "r", use_consolidated=False)
            arrays = {name: group[name] for name in (*teacher.array_names, CHUNKS_DONE)}
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
            if not create:
                raise DaramError(f"{self.url}: teacher shard {shard} has not been dumped") from None
            return self._create_teacher_shard(path, rows, seq_len, teacher)
        expected = (rows, seq_len, teacher.width)
        for name in teacher.array_names:
            if arrays[name].shape != expected:
                raise DaramError(f"{self.url}: {path}/{name} has shape {arrays[name].shape}, expected {expected}")
        return arrays

    def _create_teacher_shard(self, path: str, rows: int, seq_len: int, teacher: TeacherManifest) -> dict[str, zarr.Array]:
        group = self.root.require_group(path)
        chunk = (self.manifest.rows_per_chunk, seq_len, teacher.width)
        n_chunks = -(-rows // self.manifest.rows_per_chunk)
        common = dict(shape=(rows, seq_len, teacher.width), chunks=chunk, fill_value=0, overwrite=True, config=WRITE_EVERY_CHUNK)
        # v1's kinds keep v1's codec; a draws dump is ids only, which id_compressors() packs best.
        codecs = id_compressors() if teacher.kind == "draws" else compressors()
        dtypes = (self.manifest.token_dtype, teacher.value_dtype)
        return {
            **{name: group.create_array(name, dtype=dtype, compressors=codecs, **common)
               for name, dtype in zip(teacher.array_names, dtypes)},
            CHUNKS_DONE: group.create_array(
                CHUNKS_DONE, shape=(n_chunks,), chunks=(1,), dtype="uint8", fill_value=0, compressors=(Crc32cCodec(),), overwrite=True
            ),
        }

    def teacher_chunks_done(self, shard: int, teacher: TeacherManifest) -> np.ndarray:
        """Boolean per chunk: flagged done and every array's chunk file present; all False when not started."""
        try:
            arrays = self.teacher_arrays(shard, teacher)
        except DaramError:
            return np.zeros(len(self.chunk_ranges(shard)), dtype=bool)
        done = arrays[CHUNKS_DONE][:].astype(bool)
        for name in teacher.array_names:
            done[self.missing_chunks(arrays[name])] = False
        return done

    def write_teacher_chunk(
        self, arrays: dict[str, zarr.Array], chunk: int, ids: np.ndarray, values: np.ndarray | None, teacher: TeacherManifest
    ) -> None:
        """Write one chunk's rows (``values`` None for a draws dump), then flag it done. Call with the shard's lock held."""
        lo = chunk * self.manifest.rows_per_chunk
        for name, block in zip(teacher.array_names, (ids, values)):
            arrays[name][lo : lo + len(block)] = block
        arrays[CHUNKS_DONE][chunk] = 1

    def read_teacher(self, shard: int, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, values) of rows [start, stop) of a teacher shard: top-k ids + log-probs, sample ids + counts,
        or (draws dump) the draws + their probabilities (:func:`daram.storage.draws.decode_draws`)."""
        teacher = self.teacher_manifest()
        if teacher is None:
            raise DaramError(f"{self.url} has no teacher dump (run `daram teacher-dump` first)")
        arrays = self.teacher_arrays(shard, teacher)
        for name in teacher.array_names:
            self.require_chunks(arrays[name], shard, start, stop, repair=f"run `daram teacher-dump --shard {shard}` to dump it again")
        if teacher.kind == "draws":
            return decode_draws(arrays["draw_ids"][start:stop])
        ids_name, values_name = teacher.array_names
        return arrays[ids_name][start:stop], arrays[values_name][start:stop]

    def read_teacher_probs(self, shard: int, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64, probabilities float32) of rows [start, stop), ``(rows, seq_len, width)``, for any kind.

        Top-k: the exact probabilities at T of the k ids (the rest of the mass, ``1 - sum``, is outside them);
        sampled: ``counts / draws``; draws: ``count / draws`` at each distinct id's first slot, 0 on repeats.
        The last two are unbiased estimates of the teacher at T and sum to 1. Slots of probability 0 are padding.
        """
        teacher = self.teacher_manifest()
        ids, values = self.read_teacher(shard, start, stop)
        if teacher.kind == "topk":
            values = np.exp(values.astype(np.float32))
        elif teacher.kind == "sampled":
            values = values.astype(np.float32) / teacher.draws
        return ids.astype(np.int64), values

    # --- locks and sizes --------------------------------------------------------------------

    def lock(self, name: str, what: str, wait: float = 0.0) -> StoreLock:
        return StoreLock(self.kv, name, what, wait=wait)

    def manifest_lock(self) -> StoreLock:
        """Held for a read-modify-write of the teacher manifest: a short section, so waiters wait instead of failing."""
        return self.lock("teacher-manifest", f"the teacher manifest of {self.url}", wait=MANIFEST_LOCK_WAIT_S)

    def shard_lock(self, shard: int) -> StoreLock:
        return self.lock(f"teacher-{shard_name(shard)}", f"teacher shard {shard} of {self.url}")

    def bytes_on_disk(self, prefix: str) -> int:
        """Stored bytes under a path in the store, e.g. ``teacher/shard-00003/``."""
        return self.kv.size_of_prefix(prefix)


def check_same_teacher(url: str, existing: TeacherManifest, wanted: TeacherManifest) -> None:
    """Refuse a dump whose settings differ from the one already in the store, naming the field."""
    difference = existing.difference(wanted)
    if difference is not None:
        key, have, want = difference
        raise DaramError(
            f"{url} already holds a teacher dump with {key}={have!r}; this run asks for {key}={want!r}. "
            "Use the same settings, or dump into another store"
        )


def measure_teacher_bytes(ids: np.ndarray, values: np.ndarray | None, rows_per_chunk: int) -> int:
    """Bytes that teacher arrays of these rows take stored as a teacher shard is (same chunks and codecs), counted
    in memory: ``daram plan`` measures the teacher's format on a sample without writing a store. ``values`` None:
    a draws dump (ids only, with its own codec)."""
    memory = zarr.storage.MemoryStore()
    arrays = (("ids", ids, compressors()), ("values", values, compressors())) if values is not None else (("ids", ids, id_compressors()),)
    for name, data, codecs in arrays:
        array = zarr.create_array(
            memory, name=name, shape=data.shape, chunks=(rows_per_chunk, *data.shape[1:]), dtype=data.dtype,
            compressors=codecs, fill_value=0,
        )
        array[:] = data
    kv = KeyValue(memory)
    return kv.size_of_prefix("ids/c") + kv.size_of_prefix("values/c")


def check_not_foreign(url: str) -> None:
    """Refuse to replace a local path that holds something other than a Zarr group (a typo'd --store)."""
    if not is_local(url):
        return
    path = Path(url.removeprefix("file://"))
    if path.is_file() or (path.is_dir() and any(path.iterdir()) and not (path / "zarr.json").is_file()):
        raise DaramError(f"{url} exists and is not a daram store; refusing to write over it")


def _group_exists(url: str) -> bool:
    if is_local(url):
        return Path(url.removeprefix("file://"), "zarr.json").is_file()
    try:
        zarr.open_group(url, mode="r", use_consolidated=False)
        return True
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return False
