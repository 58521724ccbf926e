"""Teacher-dump kinds: the arrays each kind stores, declared once.

A new kind (e.g. format v2's) is one :class:`TeacherFormat` added to :data:`TEACHER_FORMATS`; the
store creates, checks, reads and releases its arrays from this description alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from daram.errors import DaramError
from daram.storage.draws import decode_draws

TOKEN_DTYPE = "tokens"  # an ArraySpec dtype meaning "the store's token dtype" (uint16 or uint32)


@dataclass(frozen=True)
class ArraySpec:
    name: str
    dtype: str  # a numpy dtype name, or TOKEN_DTYPE
    per_id: bool = True  # shape (rows, seq_len, width); False: one value per position, (rows, seq_len)
    codec: str = "values"  # "values": bit-shuffled zstd (floats, counts); "ids": zstd that finds repeated ids

    def numpy_dtype(self, token_dtype: str) -> str:
        return token_dtype if self.dtype == TOKEN_DTYPE else self.dtype


@dataclass(frozen=True)
class TeacherFormat:
    kind: str
    arrays: tuple[ArraySpec, ...]  # as stored, in this order (ids first)
    # stored arrays -> what ``Store.read_teacher`` returns, (ids, values); None: the two arrays as stored
    decode: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None


TEACHER_FORMATS: dict[str, TeacherFormat] = {
    f.kind: f
    for f in (
        # the k most likely ids per position, with log_softmax(logits / T) over the full vocabulary
        TeacherFormat("topk", (ArraySpec("topk_ids", TOKEN_DTYPE), ArraySpec("topk_logprobs", "float16"))),
        # the unique ids of `draws` draws from softmax(logits / T) per position, with their counts
        TeacherFormat("sampled", (ArraySpec("sample_ids", TOKEN_DTYPE), ArraySpec("sample_counts", "uint8"))),
        # format v2: `draws` ids drawn per position, sorted ascending; a run's length is its count (no counts array)
        TeacherFormat("draws", (ArraySpec("draw_ids", TOKEN_DTYPE, codec="ids"),), decode=decode_draws),
    )
}


def teacher_format(kind: str) -> TeacherFormat:
    try:
        return TEACHER_FORMATS[kind]
    except KeyError:
        raise DaramError(f"unknown teacher kind {kind!r}; this daram knows {', '.join(TEACHER_FORMATS)}") from None
