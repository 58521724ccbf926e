"""The store contract (docs/store-format.md, format version 2): numpy + zarr only, never torch.

Only this package knows the store's layout (array names, attributes, chunk flags); stages call
:class:`Store` and :class:`TeacherShard` methods.
"""

from daram.storage.claims import LEASE_S, ClaimLost, ShardClaim
from daram.storage.codecs import codecs_for
from daram.storage.formats import (
    TEACHER_FORMATS, ArraySpec, DrawnFormat, TeacherFormat, choose_kind, kinds_reading, register, teacher_format,
)
from daram.storage.lock import FileLock, LockHeld, StoreLock
from daram.storage.manifest import SourceStats, StoreManifest, TeacherManifest, TokenizerInfo, token_dtype_for
from daram.storage.store import (
    Store, check_not_foreign, check_persistent, check_same_teacher, discard_torn_writes, fingerprint_bytes, fingerprint_rows, is_local, local_path,
    measure_teacher_bytes, shard_name, tokens_fingerprint,
)
from daram.storage.teacher import COMPLETE, INCOMPLETE, NOT_DUMPED, RELEASED, ShardState, TeacherShard

__all__ = [
    "COMPLETE",
    "INCOMPLETE",
    "NOT_DUMPED",
    "RELEASED",
    "TEACHER_FORMATS",
    "ArraySpec",
    "DrawnFormat",
    "FileLock",
    "ClaimLost",
    "LEASE_S",
    "LockHeld",
    "ShardClaim",
    "ShardState",
    "SourceStats",
    "Store",
    "StoreLock",
    "StoreManifest",
    "TeacherFormat",
    "TeacherManifest",
    "TeacherShard",
    "TokenizerInfo",
    "check_not_foreign",
    "choose_kind",
    "check_persistent",
    "check_same_teacher",
    "codecs_for",
    "discard_torn_writes",
    "fingerprint_bytes",
    "fingerprint_rows",
    "is_local",
    "kinds_reading",
    "local_path",
    "measure_teacher_bytes",
    "register",
    "shard_name",
    "teacher_format",
    "token_dtype_for",
    "tokens_fingerprint",
]
