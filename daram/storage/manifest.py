"""The store's metadata as frozen dataclasses: what ``attrs["daram"]`` and ``attrs["daram_teacher"]`` hold.

Each manifest validates itself on construction and round-trips through plain JSON dicts
(``to_dict`` / ``from_dict``), so a reader without daram sees the same facts in ``zarr.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from daram.errors import DaramError
from daram.storage.formats import TEACHER_FORMATS, TeacherFormat, teacher_format

FORMAT_NAME = "daram-store"
FORMAT_VERSION = 2  # what this daram writes
READABLE_VERSIONS = (1, 2)  # what it reads: version 2 added the teacher kind "draws"
PACKING = "concat-eos"  # units joined with EOS in curriculum order, cut into rows of seq_len; units may straddle rows


def token_dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 65536 else "uint32"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise DaramError(f"invalid manifest: {message}")


def _check_version(version: Any) -> None:
    if version not in READABLE_VERSIONS:
        raise DaramError(
            f"store format_version {version!r} is not readable by this daram (it reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}); upgrade daram"
        )


@dataclass(frozen=True)
class TokenizerInfo:
    name_or_path: str  # what loads it from anywhere: an absolute directory or a hub id
    vocab_size: int
    vocab_sha256: str  # sha256 of the sorted (token, id) vocabulary: two tokenizers agree iff this agrees
    eos_id: int
    pad_id: int
    given: str = ""  # as the user gave it (may be relative to where prepare ran)
    commit: str = ""  # the hub commit it was loaded from, when known

    def __post_init__(self) -> None:
        _require(self.vocab_size > 0, f"tokenizer vocab_size {self.vocab_size}")
        _require(0 <= self.eos_id < self.vocab_size, f"tokenizer eos_id {self.eos_id} outside the vocabulary")
        _require(0 <= self.pad_id < self.vocab_size, f"tokenizer pad_id {self.pad_id} outside the vocabulary")


@dataclass(frozen=True)
class SourceStats:
    name: str
    path: str
    format: str
    unit: str
    files: int
    bytes: int
    units: int
    tokens: int  # including the EOS after each unit
    skipped_lines: int  # lines that were not valid UTF-8 (or JSONL lines that were not valid JSON)
    skip: str = ""  # the slice of the source this entry read (prepare.sources.skip / take); "" = whole
    take: str = ""


@dataclass(frozen=True)
class StoreManifest:
    tokenizer: TokenizerInfo
    seq_len: int
    rows_per_shard: tuple[int, ...]
    rows_per_chunk: int
    sources: tuple[SourceStats, ...]
    shard_fingerprints: tuple[str, ...]  # sha256 of each tokens shard's bytes (little-endian)
    tokens_fingerprint: str  # sha256 over seq_len and the shard fingerprints
    dropped_tail_tokens: int = 0  # tokens after the last full row
    packing: str = PACKING
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    daram_version: str = ""

    def __post_init__(self) -> None:
        _require(self.format == FORMAT_NAME, f"format {self.format!r} is not {FORMAT_NAME!r}")
        _check_version(self.format_version)
        _require(self.seq_len > 1, f"seq_len {self.seq_len}")
        _require(len(self.rows_per_shard) > 0, "no shards")
        _require(all(r > 0 for r in self.rows_per_shard), f"empty shard in rows_per_shard {self.rows_per_shard}")
        _require(self.rows_per_chunk > 0, f"rows_per_chunk {self.rows_per_chunk}")
        _require(len(self.shard_fingerprints) == len(self.rows_per_shard), "one fingerprint per shard")

    @property
    def num_shards(self) -> int:
        return len(self.rows_per_shard)

    @property
    def token_dtype(self) -> str:
        return token_dtype_for(self.tokenizer.vocab_size)

    @property
    def total_tokens(self) -> int:
        return sum(self.rows_per_shard) * self.seq_len

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["num_shards"] = self.num_shards  # for readers without daram; derived, ignored on load
        data["token_dtype"] = self.token_dtype
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StoreManifest":
        try:
            values = {k: v for k, v in data.items() if k not in ("num_shards", "token_dtype")}
            return cls(
                **{
                    **values,
                    "tokenizer": TokenizerInfo(**values["tokenizer"]),
                    "rows_per_shard": tuple(values["rows_per_shard"]),
                    "sources": tuple(SourceStats(**s) for s in values["sources"]),
                    "shard_fingerprints": tuple(values["shard_fingerprints"]),
                }
            )
        except (KeyError, TypeError) as exc:
            raise DaramError(f"invalid manifest: {exc}") from None


@dataclass(frozen=True)
class TeacherManifest:
    """What a teacher dump holds. One per store; every shard is dumped with the same settings."""

    teacher: str  # what loads it from anywhere: an absolute directory or a hub id
    revision: str  # the hub revision asked for
    dtype: str  # of the first dump; not part of the identity (each shard's stats record its own)
    temperature: float
    kind: str  # a kind of storage/formats.py: topk | sampled | draws
    width: int  # the last axis of the arrays (the kind's ``TeacherFormat.width``)
    vocab_size: int
    tokens_fingerprint: str  # the store's tokens_fingerprint the dump was computed over
    rows_per_chunk: int
    draws: int = 0  # sampled and draws: draws per position
    seed: int = 0  # sampled and draws: the draws' seed
    shards: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # "3" -> stats of a completed shard
    format_version: int = FORMAT_VERSION
    teacher_given: str = ""  # the teacher as the user gave it (may be relative to where the dump ran)
    commit: str = ""  # the hub commit the teacher was loaded from, when known
    # "3" -> {"to": URL or "", "at": ISO time}: shards whose arrays were released (moved or deleted) after they
    # were complete; their statistics stay in ``shards``. Written only when non-empty (v1 readers stay happy).
    released: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.kind in TEACHER_FORMATS, f"teacher kind {self.kind!r} (this daram knows {', '.join(TEACHER_FORMATS)})")
        _require(self.temperature > 0 and math.isfinite(self.temperature), f"teacher temperature {self.temperature}")
        _require(0 < self.width <= self.vocab_size, f"teacher width {self.width} for vocab {self.vocab_size}")
        problem = self.format.check_dump(self)
        _require(problem is None, str(problem))
        _check_version(self.format_version)

    @property
    def format(self) -> TeacherFormat:
        """The arrays a shard of this kind holds."""
        return teacher_format(self.kind)

    @property
    def array_names(self) -> tuple[str, ...]:
        """The arrays of a teacher shard of this kind, ids first (a draws dump has only its ids)."""
        return tuple(spec.name for spec in self.format.arrays)

    def settings(self) -> dict[str, Any]:
        """The fields a resumed or parallel dump must agree on: what is computed, not how. The dtype and
        the spelling of the teacher's path are left out; the commit is compared only when both know it."""
        return {
            k: v for k, v in self.to_dict().items() if k not in ("shards", "released", "dtype", "teacher_given", "commit")
        }

    def difference(self, wanted: "TeacherManifest") -> tuple[str, Any, Any] | None:
        """(field, this dump's value, the wanted value) of the first setting that differs, or None."""
        have, want = self.settings(), wanted.settings()
        if not self.teacher_given and have["teacher"] == wanted.teacher_given:
            have["teacher"] = want["teacher"]  # a dump recorded before paths were resolved, same spelling
        for key in want:
            if have.get(key) != want[key]:
                return key, have.get(key), want[key]
        if self.commit and wanted.commit and self.commit != wanted.commit:
            return "commit", self.commit, wanted.commit
        return None

    def is_complete(self, shard: int) -> bool:
        """Recorded complete and not released. Whether its chunks are all there is ``Store.shard_state``'s call."""
        return str(shard) in self.shards and str(shard) not in self.released

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["shards"] = {k: dict(v) for k, v in self.shards.items()}
        data["released"] = {k: dict(v) for k, v in self.released.items()}
        if not data["released"]:
            del data["released"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TeacherManifest":
        try:
            return cls(**data)
        except TypeError as exc:
            raise DaramError(f"invalid teacher manifest: {exc}") from None
