"""Teacher-dump kinds: the arrays each kind stores, declared once.

A new kind (e.g. format v2's) is one :class:`TeacherFormat` added to :data:`TEACHER_FORMATS`; the
store creates, checks, reads and releases its arrays from this description alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from daram.errors import DaramError

TOKEN_DTYPE = "tokens"  # an ArraySpec dtype meaning "the store's token dtype" (uint16 or uint32)


@dataclass(frozen=True)
class ArraySpec:
    name: str
    dtype: str  # a numpy dtype name, or TOKEN_DTYPE
    per_id: bool = True  # shape (rows, seq_len, width); False: one value per position, (rows, seq_len)

    def numpy_dtype(self, token_dtype: str) -> str:
        return token_dtype if self.dtype == TOKEN_DTYPE else self.dtype


@dataclass(frozen=True)
class TeacherFormat:
    kind: str
    arrays: tuple[ArraySpec, ...]  # what ``Store.read_teacher`` returns, in this order (ids first)
    summary: str  # what the arrays hold, for --help and docs


TEACHER_FORMATS: dict[str, TeacherFormat] = {
    f.kind: f
    for f in (
        TeacherFormat(
            "topk",
            (ArraySpec("topk_ids", TOKEN_DTYPE), ArraySpec("topk_logprobs", "float16")),
            "the k most likely ids per position with log_softmax(logits / T) over the full vocabulary",
        ),
        TeacherFormat(
            "sampled",
            (ArraySpec("sample_ids", TOKEN_DTYPE), ArraySpec("sample_counts", "uint8")),
            "the unique ids of `draws` draws from softmax(logits / T) per position, with their counts",
        ),
        TeacherFormat(  # format v2: repeats sit side by side, so a run's length is its count (daram.storage.draws)
            "draws",
            (ArraySpec("draw_ids", TOKEN_DTYPE),),
            "`draws` ids drawn from softmax(logits / T) per position, sorted ascending; no counts array",
        ),
    )
}


def teacher_format(kind: str) -> TeacherFormat:
    try:
        return TEACHER_FORMATS[kind]
    except KeyError:
        raise DaramError(f"unknown teacher kind {kind!r}; this daram knows {', '.join(TEACHER_FORMATS)}") from None
