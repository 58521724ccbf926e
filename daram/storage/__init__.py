"""The store contract (DESIGN.md, format v1): numpy + zarr only, never torch."""

from daram.storage.lock import LockHeld, StoreLock
from daram.storage.manifest import SourceStats, StoreManifest, TeacherManifest, TokenizerInfo, token_dtype_for
from daram.storage.store import Store, fingerprint_rows, shard_name, tokens_fingerprint

__all__ = [
    "LockHeld",
    "SourceStats",
    "Store",
    "StoreLock",
    "StoreManifest",
    "TeacherManifest",
    "TokenizerInfo",
    "fingerprint_rows",
    "shard_name",
    "token_dtype_for",
    "tokens_fingerprint",
]
