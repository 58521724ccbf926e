"""The store: a Zarr v3 group laid out as docs/store-format.md describes (format version 2). numpy in, numpy out; no torch.

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
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from daram.errors import DaramError
from daram.storage.keyvalue import KeyValue
from daram.storage.lock import StoreLock
from daram.storage.manifest import StoreManifest, TeacherManifest
from daram.storage.records import ensure_group, read_records, write_record
from daram.storage.cache import ShardCache
from daram.storage.claims import LEASE_S, ShardClaim
from daram.storage.codecs import TOKEN_ZSTD_LEVEL, WRITE_EVERY_CHUNK, codecs_for, id_compressors
from daram.storage.formats import TeacherFormat
from daram.storage.remote import explain_access_error, open_remote
from daram.storage.teacher import COMPLETE, INCOMPLETE, NOT_DUMPED, RELEASED, ShardState, TeacherShard

STORE_ATTR = "daram"
TEACHER_ATTR = "daram_teacher"
CHUNKS_DONE_KEY = "chunks_done/zarr.json"  # present once a teacher shard's arrays exist
MANIFEST_LOCK_WAIT_S = 60.0  # each holder keeps it for milliseconds; 60 s covers hundreds of racing workers


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


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


def local_path(url: str) -> str:
    """A local store's path (``file:///x/s.zarr`` -> ``/x/s.zarr``); other URLs unchanged."""
    return url.removeprefix("file://") if url.startswith("file://") else url


# URL scheme -> daram's pip extra
FSSPEC_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure", "adl": "azure"}


def check_filesystem(url: str) -> None:
    """One line, not a traceback, when a protocol of ``url`` is unknown to fsspec or its package is missing."""
    if is_local(url):
        return
    import fsspec

    for part in url.split("::"):  # chained URLs: simplecache::s3://...
        scheme = part.split("://", 1)[0] if "://" in part else part
        try:
            fsspec.get_filesystem_class(scheme)
        except ImportError as exc:
            extra = FSSPEC_EXTRAS.get(scheme)
            hint = f"pip install 'daram[{extra}]'" if extra else f"install the fsspec filesystem for {scheme}://"
            raise DaramError(f"{url}: {scheme}:// stores need a package that is not installed ({exc}); {hint}") from None
        except ValueError:
            raise DaramError(
                f"{url}: fsspec knows no protocol {scheme}://; give a local path or an fsspec URL (s3://, gs://, az://, ...)"
            ) from None


def discard_torn_writes(url: str, prefix: str = "") -> int:
    """Delete what killed writes left under ``prefix``: zarr's local store writes ``<key>.<uuid>.partial``
    and renames it into place, so a SIGKILL mid-write leaves that file behind. Nothing reads it, but a
    resumed store would not equal a clean one. Call only where no other process writes."""
    root = Path(local_path(url), prefix)
    if not is_local(url) or not root.is_dir():
        return 0
    torn = list(root.rglob("*.partial"))
    for path in torn:
        path.unlink(missing_ok=True)
    return len(torn)


def check_persistent(url: str) -> None:
    """Refuse a store URL whose contents vanish with the process (``memory://``): a command would "succeed"
    and leave nothing behind."""
    if url.startswith("memory://"):
        raise DaramError(
            f"store {url}: memory:// stores live inside one process and vanish when the command exits; "
            "give a directory or a persistent fsspec URL (file://, s3://, gs://)"
        )
    check_filesystem(url)


def _open_group(url: str, options: Mapping[str, Any] | None = None, **kwargs) -> zarr.Group:
    """zarr.open_group with one-line errors for what a user can fix: a missing filesystem package, missing
    credentials, damaged metadata. A remote store retries transient errors (see ``remote.py``)."""
    check_filesystem(url)
    target = local_path(url) if is_local(url) else open_remote(url, kwargs.get("mode") == "r", options)
    try:
        return zarr.open_group(target, use_consolidated=False, **kwargs)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        raise
    except ValueError as exc:  # a zarr.json that is not JSON (JSONDecodeError is a ValueError)
        raise DaramError(
            f"{url}: zarr.json is damaged ({type(exc).__name__}: {exc}); the store manifest cannot be read: "
            "rebuild the store with `daram prepare --overwrite`"
        ) from None
    except Exception as exc:
        explained = explain_access_error(url, exc)
        if explained is None:
            raise
        raise explained from None


class Store:
    """An open daram store. ``Store.open(url)`` to read or resume; ``Store.create(url)`` in prepare."""

    def __init__(self, url: str, root: zarr.Group, manifest: StoreManifest | None) -> None:
        self.url = url
        self.root = root
        self._manifest = manifest
        self.kv = KeyValue(root.store)

    # --- opening ----------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, mode: str = "r", options: Mapping[str, Any] | None = None) -> "Store":
        """Open a finished store (``mode`` "r" or "r+"); a clear error when it is missing or unfinished."""
        if is_local(url):
            path = Path(local_path(url))
            if not (path / "zarr.json").is_file():
                raise DaramError(f"store not found: {url} (run `daram prepare` first)")
            if mode != "r" and not os.access(path, os.W_OK):
                raise DaramError(f"{url} is read-only; this command writes into the store (locks, teacher arrays)")
        try:
            root = _open_group(url, options, mode=mode)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
            raise DaramError(f"store not found: {url} (run `daram prepare` first)") from None
        data = root.attrs.get(STORE_ATTR)
        if data is None:
            raise DaramError(
                f"{url} is not a finished daram store (prepare did not complete?); rerun `daram prepare --overwrite`"
            )
        return cls(url, root, StoreManifest.from_dict(data))

    @classmethod
    def create(cls, url: str, overwrite: bool = False, options: Mapping[str, Any] | None = None) -> "Store":
        """A new, empty store for prepare to fill; ``write_manifest`` marks it finished."""
        if cls.exists(url, options) and not overwrite:
            raise DaramError(f"store already exists: {url}; pass --overwrite to replace it")
        check_not_foreign(url)
        root = _open_group(url, options, mode="w", zarr_format=3)
        root.create_group("locks")  # holds one small group per held lock (see storage/lock.py)
        return cls(url, root, None)

    @classmethod
    def resume_unfinished(cls, url: str, options: Mapping[str, Any] | None = None) -> "Store":
        """A store that prepare was filling when it stopped (no manifest yet), to go on filling it."""
        return cls(url, _open_group(url, options, mode="r+"), None)

    @staticmethod
    def exists(url: str, options: Mapping[str, Any] | None = None) -> bool:
        return _group_exists(url, options)

    @staticmethod
    def is_finished(url: str, options: Mapping[str, Any] | None = None) -> bool:
        """A store whose manifest is written (an interrupted prepare's remote store has none yet)."""
        if not _group_exists(url, options):
            return False
        return STORE_ATTR in _open_group(url, options, mode="r").attrs

    def with_cache(self, directory: str | os.PathLike) -> tuple["Store", ShardCache]:
        """This store read through a local cache of whole shards (see ``cache.py``), and the cache."""
        cache = ShardCache(self.root.store, directory)
        return Store(self.url, zarr.open_group(cache, mode="r", use_consolidated=False), self._manifest), cache

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

    def shard_rows(self, shard: int) -> int:
        self.check_shard(shard)
        return self.manifest.rows_per_shard[shard]

    def chunk_ranges(self, shard: int) -> list[tuple[int, int]]:
        """Row ranges [start, stop) of a shard's chunks; the same for tokens and teacher arrays."""
        rows, step = self.shard_rows(shard), self.manifest.rows_per_chunk
        return [(lo, min(lo + step, rows)) for lo in range(0, rows, step)]

    # --- tokens -----------------------------------------------------------------------------

    def create_token_shard(self, shard: int, n_rows: int, seq_len: int, rows_per_chunk: int, dtype: str) -> None:
        """An empty tokens shard for prepare to fill with :meth:`write_tokens`."""
        self.root.create_array(
            f"tokens/{shard_name(shard)}",
            shape=(n_rows, seq_len),
            chunks=(rows_per_chunk, seq_len),
            dtype=dtype,
            compressors=id_compressors(TOKEN_ZSTD_LEVEL),
            fill_value=0,
            config=WRITE_EVERY_CHUNK,
            overwrite=True,  # a shard half written by a killed prepare is written again whole
        )

    def write_tokens(self, shard: int, start: int, rows: np.ndarray) -> None:
        """Write rows from ``start`` (chunk-aligned, whole chunks but the shard's last)."""
        array = self.root[f"tokens/{shard_name(shard)}"].with_config(WRITE_EVERY_CHUNK)  # config is not stored
        array[start : start + len(rows)] = rows

    def _token_array(self, shard: int) -> zarr.Array:
        self.check_shard(shard)
        where, repair = f"tokens/{shard_name(shard)}", "rebuild the store with `daram prepare --overwrite`"
        try:
            array = self.root[where]
        except KeyError:
            raise DaramError(f"{self.url}: {where} is missing (store damaged?); {repair}") from None
        except ValueError as exc:
            raise DaramError(f"{self.url}: {where}/zarr.json is damaged ({exc}); {repair}") from None
        expected = (self.manifest.rows_per_shard[shard], self.manifest.seq_len)
        if array.shape != expected or array.dtype != np.dtype(self.manifest.token_dtype):
            raise DaramError(
                f"{self.url}: {where} is {array.shape} {array.dtype}, but the manifest says {expected} "
                f"{self.manifest.token_dtype} (store damaged?); {repair}"
            )
        return array

    def check_tokens_layout(self, shard: int) -> None:
        """Refuse a tokens shard that is missing or whose metadata (shape, dtype) disagrees with the manifest."""
        self._token_array(shard)

    def read_tokens(self, shard: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        array = self._token_array(shard)
        self.require_chunks(array, shard, start, stop, repair="rebuild the tokens with `daram prepare --overwrite`")
        return array[start:stop]

    def tokens_fingerprint_matches(self, shard: int, blocks: Iterable[np.ndarray]) -> bool:
        """Whether ``blocks``, a shard's rows in order, hash to the fingerprint prepare recorded for it."""
        digest = hashlib.sha256()
        for block in blocks:
            digest.update(fingerprint_bytes(block))
        return digest.hexdigest() == self.manifest.shard_fingerprints[shard]

    def check_tokens_fingerprint(self, shard: int) -> None:
        """Refuse a tokens shard whose chunks no longer hash to the fingerprint prepare recorded (a chunk lost,
        replaced or damaged): a teacher dump over it would be recorded as a dump of other text."""
        def blocks():
            for lo, hi in self.chunk_ranges(shard):
                try:
                    yield self.read_tokens(shard, lo, hi)
                except DaramError:
                    raise
                except Exception as exc:  # a checksum or decompression failure
                    raise DaramError(
                        f"{self.url}: tokens/{shard_name(shard)} rows {lo}-{hi} cannot be read ({type(exc).__name__}); "
                        "the token shards are damaged: rebuild the store with `daram prepare --overwrite`"
                    ) from None

        if not self.tokens_fingerprint_matches(shard, blocks()):
            raise DaramError(
                f"{self.url}: tokens/{shard_name(shard)} does not match its fingerprint in the manifest (a chunk lost or "
                "changed); refusing to dump over it: rebuild the store with `daram prepare --overwrite`"
            )

    def missing_token_chunks(self, shard: int) -> list[int]:
        return self.missing_chunks(self._token_array(shard))

    def missing_chunks(self, array: zarr.Array, start: int = 0, stop: int | None = None) -> list[int]:
        """Chunks (along the rows) of ``array[start:stop]`` whose files are absent, checked in one round trip."""
        stop = array.shape[0] if stop is None else min(stop, array.shape[0])
        step = array.chunks[0]
        chunks = list(range(start // step, -(-stop // step)))
        keys = [self.chunk_key(array, c) for c in chunks]
        return [c for c, present in zip(chunks, self.kv.exist(keys)) if not present]

    @staticmethod
    def chunk_key(array: zarr.Array, chunk: int) -> str:
        """The store key of a chunk of rows (every array is chunked along its first axis only)."""
        return f"{array.path}/{array.metadata.encode_chunk_key((chunk, *(0,) * (array.ndim - 1)))}"

    @property
    def local_root(self) -> str | None:
        """The store's directory when it is on local disk."""
        return local_path(self.url) if is_local(self.url) else None

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

    # --- teacher ----------------------------------------------------------------------------

    def teacher_manifest(self) -> TeacherManifest | None:
        """Read fresh from the store (another process may have finished a shard since)."""
        try:
            group = zarr.open_group(self.root.store, path="teacher", mode="r", use_consolidated=False)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
            return None
        except ValueError as exc:
            raise DaramError(
                f"{self.url}: teacher/zarr.json is damaged ({type(exc).__name__}: {exc}); the teacher manifest is "
                "lost with it: move the teacher/ directory aside and run `daram teacher-dump` again"
            ) from None
        data = group.attrs.get(TEACHER_ATTR)
        if data is None:
            return None
        # the shard table: each shard's own completion record, over the table a v1/v2 store kept in the manifest
        recorded = {str(shard): stats for shard, stats in read_records(self.kv).items()}
        return TeacherManifest.from_dict({**data, "shards": {**data.get("shards", {}), **recorded}})

    def _require_teacher(self) -> TeacherManifest:
        teacher = self.teacher_manifest()
        if teacher is None:
            raise DaramError(f"{self.url} has no teacher dump (run `daram teacher-dump` first)")
        return teacher

    def init_teacher(self, wanted: TeacherManifest) -> TeacherManifest:
        """Create the teacher group, or check that the dump already there has the same settings. The group is
        created once, exclusively: of many machines starting the same dump, one writes it and the others check it."""
        group = {"zarr_format": 3, "node_type": "group", "attributes": {TEACHER_ATTR: wanted.to_dict()}}
        if self.kv.set_if_absent("teacher/zarr.json", json.dumps(group).encode()):
            ensure_group(self.kv)
            return wanted
        existing = self.teacher_manifest()
        if existing is None:  # the group without a dump (a release's destination): never overwrite its members
            with self.manifest_lock():
                if self.teacher_manifest() is None:
                    self.root.require_group("teacher").attrs[TEACHER_ATTR] = wanted.to_dict()
                    return wanted
            existing = self.teacher_manifest()
        check_same_teacher(self.url, existing, wanted)
        ensure_group(self.kv)
        return existing

    def _update_teacher_manifest(self, change) -> TeacherManifest:
        """Read-modify-write of the teacher manifest under its lock; ``change`` maps the dict to the new one."""
        with self.manifest_lock():
            group = zarr.open_group(self.root.store, path="teacher", mode="r+", use_consolidated=False)
            manifest = TeacherManifest.from_dict(change(dict(group.attrs[TEACHER_ATTR])))
            group.attrs[TEACHER_ATTR] = manifest.to_dict()
            return manifest

    def record_teacher_shard(self, shard: int, stats: dict) -> bool:
        """Record a shard complete with its statistics, in its own write-once record (no longer released, if it
        was); False when it was recorded already (by another process, or before a release), which is kept."""
        created = write_record(self.kv, shard_name(shard), stats)
        if str(shard) in (self._require_teacher().released or {}):  # dumped again after a release: rare, one writer
            self._update_teacher_manifest(
                lambda data: {**data, "released": {k: v for k, v in data.get("released", {}).items() if k != str(shard)}}
            )
        return created

    def teacher_shard(self, shard: int, teacher: TeacherManifest | None = None, create: bool = False) -> TeacherShard:
        """A teacher shard's arrays; ``create`` makes the missing ones (lock holder only)."""
        self.check_shard(shard)
        teacher = teacher or self._require_teacher()
        path = f"teacher/{shard_name(shard)}"
        try:
            mode = "r" if self.root.store.read_only else "r+"  # as the store was opened
            group = zarr.open_group(self.root.store, path=path, mode=mode, use_consolidated=False)
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
            if not create:
                state = self.shard_state(shard, teacher)
                raise DaramError(f"{self.url}: teacher shard {shard} is {state.describe()}; run `{state.repair}`") from None
            group = self.root.require_group(path)
        except ValueError as exc:
            raise DaramError(
                f"{self.url}: {path}/zarr.json is damaged ({exc}); remove {path} and run "
                f"`daram teacher-dump --shard {shard}` to dump it again"
            ) from None
        if not create:
            return TeacherShard.open(self, shard, teacher, group)
        discard_torn_writes(self.url, f"teacher/{shard_name(shard)}")  # the lock holder is the shard's only writer
        return TeacherShard.create(self, shard, teacher, group)

    def shard_state(self, shard: int, teacher: TeacherManifest | None = None) -> ShardState:
        """Complete only when every chunk is flagged done, present in every array, and the shard is recorded."""
        chunks = len(self.chunk_ranges(shard))
        teacher = teacher if teacher is not None else self.teacher_manifest()
        if teacher is None:
            return ShardState(shard, NOT_DUMPED, 0, chunks, recorded=False)
        recorded = teacher.is_complete(shard)  # recorded with its statistics, and not released since
        released = teacher.released.get(str(shard))
        path = f"teacher/{shard_name(shard)}/{CHUNKS_DONE_KEY}"
        if self.kv.get(path) is None:  # no arrays at all
            if released is not None:
                return ShardState(shard, RELEASED, 0, chunks, recorded, released_to=released.get("to", ""))
            return ShardState(shard, INCOMPLETE if recorded else NOT_DUMPED, 0, chunks, recorded)
        try:
            done = int(self.teacher_shard(shard, teacher).chunk_states().sum())
        except DaramError:  # damaged arrays: nothing of it can be trusted
            done = 0
        state = COMPLETE if done == chunks and recorded else INCOMPLETE
        return ShardState(shard, state, done, chunks, recorded)

    # --- releasing shards (moved elsewhere or deleted) and bringing them back ------------------

    def release_shard(self, shard: int, to: str | None = None) -> ShardState:
        """Release a complete teacher shard: copy its arrays to ``to`` (any fsspec URL; checked byte for byte)
        or to nowhere, record it released (its statistics stay in the manifest), then delete it here.

        Safe to kill at any moment: the copy is checked before anything is recorded, and the done flags go
        first, so a shard is either complete here, or released with its arrays recorded where they went."""
        teacher = self._require_teacher()
        state = self.shard_state(shard, teacher)
        prefix = f"teacher/{shard_name(shard)}/"
        if state.state == RELEASED:
            with self.shard_lock(shard):  # takes over the lock of a release that a kill interrupted
                self.kv.delete_dir(prefix)  # finish that release; nothing left to copy
            return state
        resumable = str(shard) in teacher.released and state.chunks_done == state.chunks  # killed after recording
        if state.state != COMPLETE and not resumable:
            raise DaramError(
                f"{self.url}: teacher shard {shard} is {state.describe()}; only complete shards are released "
                f"(run `{state.repair}` first)"
            )
        with self.shard_lock(shard):
            if to:
                copy_prefix(self.kv, prefix, _open_kv(to, create=True), prefix, self.url, to)
                destination = _open_group(to, mode="a")
                destination.require_group("teacher").attrs[TEACHER_ATTR] = teacher.to_dict()  # what the arrays are
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self._update_teacher_manifest(
                lambda data: {**data, "released": {**data.get("released", {}), str(shard): {"to": to or "", "at": when}}}
            )
            self.kv.delete_dir(f"{prefix}{CHUNKS_DONE_KEY.split('/')[0]}/")  # flags first: never half "complete"
            self.kv.delete_dir(prefix)
        return self.shard_state(shard)

    def restore_shard(self, shard: int, source: str | None = None) -> ShardState:
        """Bring a released shard back from where it was moved (or from ``source``), checked before it counts."""
        teacher = self._require_teacher()
        state = self.shard_state(shard, teacher)
        if state.state != RELEASED:
            raise DaramError(f"{self.url}: teacher shard {shard} is {state.describe()}, not released; nothing to restore")
        source = source or state.released_to
        if not source:
            raise DaramError(
                f"{self.url}: teacher shard {shard} was released without --to (deleted); dump it again with "
                f"`daram teacher-dump --shard {shard}`"
            )
        try:
            kept = _open_group(source, mode="r")["teacher"].attrs.get(TEACHER_ATTR)
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
            kept = None
        if kept is None:
            raise DaramError(f"{source} holds no released teacher shards of a daram store")
        check_same_teacher(source, TeacherManifest.from_dict(kept), teacher)  # the same dump of the same tokens
        prefix = f"teacher/{shard_name(shard)}/"
        with self.shard_lock(shard):
            copy_prefix(_open_kv(source, create=False), prefix, self.kv, prefix, source, self.url)
            restored = self.shard_state(shard, teacher)
            if restored.chunks_done != restored.chunks:
                raise DaramError(
                    f"{source}: teacher shard {shard} came back {restored.chunks_done}/{restored.chunks} chunks; "
                    f"dump it again with `daram teacher-dump --shard {shard}`"
                )
            self._update_teacher_manifest(
                lambda data: {**data, "released": {k: v for k, v in data.get("released", {}).items() if k != str(shard)}}
            )
        return self.shard_state(shard)

    def read_teacher(self, shard: int, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, values) of rows [start, stop) of a teacher shard, as its kind hands them to training
        (:meth:`TeacherFormat.decode`: top-k ids + log-probs, sample ids + counts, or the draws + their probabilities)."""
        target = self.teacher_shard(shard)
        return target.format.decode(target.read_rows(start, stop), target.teacher)

    def read_teacher_probs(self, shard: int, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64, probabilities float32) of rows [start, stop), ``(rows, seq_len, width)``, for any kind.

        Top-k: the exact probabilities at T of the k ids (the rest of the mass, ``1 - sum``, is outside them);
        sampled: ``counts / draws``; draws: ``count / draws`` at each distinct id's first slot, 0 on repeats.
        The last two are unbiased estimates of the teacher at T and sum to 1. Slots of probability 0 are padding.
        """
        target = self.teacher_shard(shard)
        return target.format.probabilities(target.read_rows(start, stop), target.teacher)

    def read_teacher_targets(self, shard: int, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, ...]:
        """(ids int64, probabilities float32, tail mass float32) of rows [start, stop): the first two as
        :meth:`read_teacher_probs`, ``(rows, seq_len, width)``; the tail ``(rows, seq_len)`` is the teacher's
        mass outside the ids, ``1 - sum`` for top-k and 0 for the kinds whose probabilities sum to 1."""
        target = self.teacher_shard(shard)
        return target.format.targets(target.read_rows(start, stop), target.teacher)

    # --- locks and sizes --------------------------------------------------------------------

    def lock(self, name: str, what: str, wait: float = 0.0) -> StoreLock:
        return StoreLock(self.kv, name, what, wait=wait)

    def manifest_lock(self) -> StoreLock:
        """Held for a read-modify-write of the teacher manifest: a short section, so waiters wait instead of failing."""
        return self.lock("teacher-manifest", f"the teacher manifest of {self.url}", wait=MANIFEST_LOCK_WAIT_S)

    def shard_lock(self, shard: int, lease: float = LEASE_S) -> ShardClaim:
        """The claim on a teacher shard (one writer at a time, on any number of machines); see ``claims.py``."""
        return ShardClaim(self.kv, f"teacher-{shard_name(shard)}", f"teacher shard {shard} of {self.url}", lease)

    def token_bytes(self, shard: int | None = None) -> int:
        """Stored bytes of one tokens shard, or of all of them."""
        return self.kv.size_of_prefix("tokens/" if shard is None else f"tokens/{shard_name(shard)}/")

    def teacher_bytes(self, shard: int | None = None) -> int:
        """Stored bytes of one teacher shard, or of the whole dump."""
        return self.kv.size_of_prefix("teacher/" if shard is None else f"teacher/{shard_name(shard)}/")


def _open_kv(url: str, create: bool) -> KeyValue:
    """Key/value access to the root of any fsspec URL (a released shard's destination)."""
    try:
        return KeyValue(_open_group(url, mode="a" if create else "r").store)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise DaramError(f"{url}: nothing there (was the shard released to another place?)") from None


def copy_prefix(source: KeyValue, prefix: str, target: KeyValue, target_prefix: str, source_url: str, target_url: str) -> int:
    """Copy every key under ``prefix``, then read each back and compare; returns the bytes copied."""
    keys = source.list_prefix(prefix)
    if not keys:
        raise DaramError(f"{source_url}: {prefix} is empty; nothing to copy")
    copied = 0
    for key in keys:
        data = source.get(key)
        destination = target_prefix + key[len(prefix):]
        target.set(destination, data)
        if target.get(destination) != data:
            raise DaramError(f"{target_url}: {destination} reads back different bytes than were written; nothing was released")
        copied += len(data)
    return copied


def check_same_teacher(url: str, existing: TeacherManifest, wanted: TeacherManifest) -> None:
    """Refuse a dump whose settings differ from the one already in the store, naming the field."""
    difference = existing.difference(wanted)
    if difference is not None:
        key, have, want = difference
        raise DaramError(
            f"{url} already holds a teacher dump with {key}={have!r}; this run asks for {key}={want!r}. "
            "Use the same settings, or dump into another store"
        )


def measure_teacher_bytes(fmt: TeacherFormat, arrays: tuple[np.ndarray, ...], rows_per_chunk: int, tokens: np.ndarray,
                          vocab_size: int) -> int:
    """Bytes that teacher arrays of these rows (the dump kernel's, for these token rows) take stored as a teacher
    shard is (same encoding, chunks and codecs), counted in memory: ``daram plan`` measures the teacher's format
    on a sample without writing a store. A kind's per-shard tables (``rank_ids``: 2 B per vocabulary id) are
    left out: a shard's, not a token's."""
    memory = zarr.storage.MemoryStore()
    stored = fmt.encode(arrays, fmt.build_tables(tokens, vocab_size))
    for spec, data in zip(fmt.arrays, stored):
        array = zarr.create_array(
            memory, name=spec.name, shape=data.shape, chunks=(rows_per_chunk, *data.shape[1:]), dtype=data.dtype,
            compressors=codecs_for(spec), fill_value=0,
        )
        array[:] = data
    kv = KeyValue(memory)
    return sum(kv.size_of_prefix(f"{spec.name}/c") for spec in fmt.arrays)


def check_not_foreign(url: str) -> None:
    """Refuse to replace a local path that holds something other than a Zarr group (a typo'd --store)."""
    if not is_local(url):
        return
    path = Path(url.removeprefix("file://"))
    if path.is_file() or (path.is_dir() and any(path.iterdir()) and not (path / "zarr.json").is_file()):
        raise DaramError(f"{url} exists and is not a daram store; refusing to write over it")


def _group_exists(url: str, options: Mapping[str, Any] | None = None) -> bool:
    if is_local(url):
        return Path(url.removeprefix("file://"), "zarr.json").is_file()
    check_filesystem(url)
    try:
        _open_group(url, options, mode="r")
        return True
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return False
