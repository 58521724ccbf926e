"""Teacher-dump kinds, the storage half: everything about a kind's arrays, in one object per kind.

A :class:`TeacherFormat` owns its arrays, its width, its decoding to probabilities, the checks of a
stored block, its shard statistics, its one-line description, the settings it reads and their
validation, and its bytes-per-slot estimate for ``daram plan``. The store, inspect, verify and plan
look a kind up here (:func:`teacher_format`) instead of branching on its name; an unknown kind fails in
that one place. The torch half (dump kernel, value dtype, training target) is
``daram/pipeline/dump_kinds.py``. A new kind is one subclass registered with :func:`register`, plus
its torch half; docs/architecture.md says where.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from daram.errors import DaramError
from daram.storage.draws import decode_draws

TOKEN_DTYPE = "tokens"  # an ArraySpec dtype meaning "the store's token dtype" (uint16 or uint32)
PROB_SUM_TOLERANCE = 5e-3  # float16 rounding of k stored log-probs
MASS_BINS = 10_000  # resolution of the captured-mass percentile


@dataclass(frozen=True)
class ArraySpec:
    name: str
    dtype: str  # a numpy dtype name, or TOKEN_DTYPE
    per_id: bool = True  # shape (rows, seq_len, width); False: one value per position, (rows, seq_len)
    # "values": bit-shuffled zstd (floats, counts); "ids": zstd that finds repeated ids; "shuffled_ids": byte-shuffled
    # zstd, for ids whose high bytes repeat (differences of sorted ids, a permutation ordered by frequency)
    codec: str = "values"

    def numpy_dtype(self, token_dtype: str) -> str:
        return token_dtype if self.dtype == TOKEN_DTYPE else self.dtype


class DumpSettings(Protocol):
    """The teacher settings a kind reads (``daram.config.TeacherConfig`` has them; storage never imports it)."""

    top_k: int
    draws: int
    sample_width: int
    seed: int


class Dump(Protocol):
    """What a kind reads of a dump's manifest (``TeacherManifest``)."""

    kind: str
    width: int
    draws: int
    seed: int
    vocab_size: int


@dataclass(frozen=True)
class TeacherFormat:
    """One kind. Subclasses fill in the methods; the base class holds what every kind shares."""

    kind: str
    arrays: tuple[ArraySpec, ...]  # as stored, in this order (ids first)
    reads: tuple[str, ...]  # the teacher settings (bare names) that only some kinds read, these among them
    drawn: bool  # ids drawn from a seeded stream of uniforms: the manifest records draws and seed
    bytes_per_slot: float  # plan's estimate of stored bytes per slot of the width (docs/benchmarks.md)
    bytes_note: str  # where that estimate comes from
    # one (vocab_size,) array per shard that the kind decodes with, built from the shard's tokens when the
    # shard is created (:meth:`build_tables`); a reader gets them after the arrays, from ``TeacherShard.read_rows``
    tables: tuple[ArraySpec, ...] = ()

    def build_tables(self, tokens: np.ndarray, vocab_size: int) -> tuple[np.ndarray, ...]:
        """The shard's tables (``tables``' order) from its token rows: none for most kinds."""
        return ()

    def encode(self, arrays: tuple[np.ndarray, ...], tables: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """The dump kernel's arrays -> the arrays as stored (the same for most kinds)."""
        return arrays

    def width(self, settings: DumpSettings, vocab_size: int, where: str) -> int:
        """The last axis of the arrays for these settings; a setting this kind cannot honour is refused."""
        raise NotImplementedError

    def check_dump(self, dump: Dump) -> str | None:
        """What is wrong with a manifest of this kind (a short phrase), or None."""
        return None

    def describe(self, dump: Dump) -> str:
        """One phrase for ``daram inspect``: "top-64", "draws (format v2), 16 sorted draws, seed 0"."""
        raise NotImplementedError

    # The readers below take ``arrays``: the stored arrays of some rows, in ``arrays``' order, then the shard's
    # ``tables`` (``TeacherShard.read_rows``).

    def decode(self, arrays: tuple[np.ndarray, ...], dump: Dump) -> tuple[np.ndarray, np.ndarray]:
        """Stored arrays -> ``Store.read_teacher``'s (ids, values): the two arrays as stored by default."""
        ids, values = arrays
        return ids, values

    def probabilities(self, arrays: tuple[np.ndarray, ...], dump: Dump) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64, probabilities float32), ``(rows, seq_len, width)``; slots of probability 0 are padding."""
        raise NotImplementedError

    def tail(self, probs: np.ndarray) -> np.ndarray:
        """The teacher's mass outside the stored ids, ``(rows, seq_len)`` float32: 0 for the kinds whose
        probabilities are an estimate that sums to 1."""
        return np.zeros(probs.shape[:-1], dtype=np.float32)

    def targets(self, arrays: tuple[np.ndarray, ...], dump: Dump) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, probabilities, tail mass): every kind in one fixed-width form (``daram.data``'s batches)."""
        ids, probs = self.probabilities(arrays, dump)
        return ids, probs, self.tail(probs)

    def check_block(self, arrays: tuple[np.ndarray, ...], dump: Dump) -> list[str]:
        """Content checks of one chunk of stored arrays; each problem as a short phrase."""
        ids = arrays[0]
        return [f"id {int(ids.max())} >= vocab {dump.vocab_size}"] if ids.max(initial=0) >= dump.vocab_size else []

    def statistics(self, blocks: Iterable[tuple[np.ndarray, ...]], dump: Dump) -> dict[str, Any]:
        """A shard's statistics from its stored arrays, read chunk by chunk."""
        raise NotImplementedError

    def summary(self, stats: Mapping[str, Any]) -> str:
        """A shard's statistics as one phrase for the dump's log."""
        raise NotImplementedError

    def array_specs(self) -> dict[str, ArraySpec]:
        return {spec.name: spec for spec in self.arrays}


class TopkFormat(TeacherFormat):
    """The k most likely ids per position, with log_softmax(logits / T) over the full vocabulary."""

    def width(self, settings: DumpSettings, vocab_size: int, where: str) -> int:
        if settings.top_k > vocab_size:
            raise DaramError(f"teacher.top_k={settings.top_k} exceeds the vocabulary of {where} ({vocab_size:,} ids)")
        return settings.top_k

    def describe(self, dump: Dump) -> str:
        return f"top-{dump.width}"

    def probabilities(self, arrays, dump):
        ids, logprobs = arrays
        return ids.astype(np.int64), np.exp(logprobs.astype(np.float32))

    def tail(self, probs):
        """``1 - sum`` of the k probabilities: exact up to their float16 rounding (clamped at 0)."""
        return np.clip(1.0 - probs.sum(-1), 0.0, None).astype(np.float32)

    def check_block(self, arrays, dump):
        problems = super().check_block(arrays, dump)
        ids, logprobs = arrays[0], arrays[1].astype(np.float32)
        if not np.isfinite(logprobs).all():
            return problems + ["non-finite log-probs"]
        mass = np.exp(logprobs).sum(-1)
        if mass.max() > 1 + PROB_SUM_TOLERANCE:
            problems.append(f"probabilities sum to {mass.max():.4f} > 1")
        if (np.diff(logprobs, axis=-1) > 0).any():
            problems.append("top-k log-probs not sorted in descending order")
        if (np.diff(np.sort(ids, axis=-1), axis=-1) == 0).any():
            problems.append("an id appears twice at one position")
        return problems

    def statistics(self, blocks, dump):
        """The captured probability mass of the k ids: mean and 5th percentile."""
        hist, total, positions = np.zeros(MASS_BINS, dtype=np.int64), 0.0, 0
        for arrays in blocks:
            mass = np.exp(arrays[1].astype(np.float32)).sum(-1).ravel()
            positions += mass.size
            total += float(mass.sum(dtype=np.float64))
            hist += np.bincount(np.minimum((mass * MASS_BINS).astype(np.int64), MASS_BINS - 1), minlength=MASS_BINS)
        p5_bin = int(np.searchsorted(np.cumsum(hist), 0.05 * positions))
        return {"captured_mass_mean": total / positions, "captured_mass_p5": (p5_bin + 0.5) / MASS_BINS}

    def summary(self, stats):
        return f"top-k mass mean {stats['captured_mass_mean']:.3g} (p5 {stats['captured_mass_p5']:.3g})"


class DrawnFormat(TeacherFormat):
    """What the kinds that store draws share: their statistics, from the counts of each position's ids."""

    def counts(self, arrays: tuple[np.ndarray, ...], dump: Dump) -> np.ndarray:
        """Draws per slot, ``(rows, seq_len, width)``; 0 = padding."""
        return np.rint(self.probabilities(arrays, dump)[1] * dump.draws).astype(np.int64)

    def statistics(self, blocks, dump):
        """Unique ids per position, and the positions whose rarest draws were dropped (sampled, S < draws)."""
        unique, truncated, positions = 0, 0, 0
        for arrays in blocks:
            counts = self.counts(arrays, dump)
            positions += counts.shape[0] * counts.shape[1]
            unique += int((counts > 0).sum())
            truncated += int((counts.sum(-1) < dump.draws).sum())
        return {"unique_ids_mean": unique / positions, "truncated_positions": truncated}

    def summary(self, stats):
        return f"{stats['unique_ids_mean']:.1f} unique ids per position, {stats['truncated_positions']} truncated"


class SampledFormat(DrawnFormat):
    """The unique ids of ``draws`` draws from softmax(logits / T) per position, with their counts (uint8)."""

    def width(self, settings, vocab_size, where):
        if settings.draws > 255:
            raise DaramError(f"teacher.draws={settings.draws}: at most 255 (counts are stored as uint8)")
        width = settings.sample_width or settings.draws
        if width > min(settings.draws, vocab_size):
            raise DaramError(
                f"teacher.sample_width={width} exceeds teacher.draws={settings.draws} (or the vocabulary); "
                f"a position has at most `draws` unique ids"
            )
        return width

    def check_dump(self, dump):
        return None if 0 < dump.draws < 256 else f"sampled draws {dump.draws} (1-255, counts are uint8)"

    def describe(self, dump):
        return f"sampled, {dump.draws} draw{'s' if dump.draws != 1 else ''}, width {dump.width}, seed {dump.seed}"

    def probabilities(self, arrays, dump):
        ids, counts = arrays
        return ids.astype(np.int64), counts.astype(np.float32) / dump.draws

    def counts(self, arrays, dump):
        return arrays[1].astype(np.int64)

    def check_block(self, arrays, dump):
        """Unique ids with their draw counts, most drawn first, padded with id 0 / count 0."""
        problems = super().check_block(arrays, dump)
        ids, counts = arrays[0], arrays[1].astype(np.int64)
        drawn = counts > 0
        total = counts.sum(-1)
        if (np.diff(counts, axis=-1) > 0).any():
            problems.append("counts not in descending order (or padding before a drawn id)")
        if (ids[~drawn] != 0).any():
            problems.append("a padding slot (count 0) holds an id other than 0")
        # fewer than `draws` only when every slot is used: the rarest ids were dropped (truncation)
        wrong = (total > dump.draws) | ((total < dump.draws) & ~drawn.all(-1))
        if wrong.any():
            problems.append(f"counts sum to {int(total[wrong].flat[0])}, not draws={dump.draws}")
        marked = np.where(drawn, ids.astype(np.int64), -1 - np.arange(ids.shape[-1]))  # padding never repeats
        if (np.diff(np.sort(marked, axis=-1), axis=-1) == 0).any():
            problems.append("an id appears twice at one position")
        return problems


class DrawsFormat(DrawnFormat):
    """Format v2: ``draws`` ids drawn per position, sorted ascending; a run's length is its count (no counts array)."""

    def width(self, settings, vocab_size, where):
        return settings.draws  # every draw is stored (sorted), so the width is the number of draws

    def check_dump(self, dump):
        return None if dump.width == dump.draws > 0 else f"draws dump of width {dump.width}, draws {dump.draws}"

    def describe(self, dump):
        return f"draws (format v2), {dump.draws} sorted draw{'s' if dump.draws != 1 else ''}, seed {dump.seed}"

    def draw_ids(self, arrays) -> np.ndarray:
        """The stored draws as ids, ``(..., draws)``, repeats adjacent: what ``decode_draws`` reads."""
        return arrays[0]

    def decode(self, arrays, dump):
        return decode_draws(self.draw_ids(arrays))

    def probabilities(self, arrays, dump):
        return decode_draws(self.draw_ids(arrays))

    def check_block(self, arrays, dump):
        problems = super().check_block(arrays, dump)
        if (np.diff(arrays[0].astype(np.int64), axis=-1) < 0).any():
            problems.append("draws not sorted in ascending order")
        return problems


class DrawRanksFormat(DrawsFormat):
    """``draws`` ids per position drawn systematically (one uniform per position, the draws evenly spaced along the
    teacher's CDF: ``daram.pipeline.dump_kernels.systematic``), each id re-labelled by its rank in the shard's
    token counts (most frequent first), sorted, and stored as differences: the first rank, then each rank
    minus the one before.

    The labels are lossless: decoded, the draws give ``count / draws`` per id as a draws dump does, an unbiased
    estimate (systematic draws: each id's count is ``draws * p`` rounded down or up). Frequent ids get small ranks
    and a sorted position's ranks small steps, whose high bytes byte-shuffled zstd packs to nothing
    (docs/benchmarks.md, "Draws where they matter"). The permutation, ``rank_ids`` (rank -> id), is one
    table per shard: deterministic from the shard's own tokens, so a resumed or parallel dump builds the same.
    A reader undoes it with numpy: ``ids = rank_ids[np.cumsum(steps, axis=-1)]``.
    """

    def describe(self, dump):
        return (f"draw ranks (systematic draws re-labelled by token frequency, delta-coded), {dump.draws} sorted "
                f"draw{'s' if dump.draws != 1 else ''}, seed {dump.seed}")

    def build_tables(self, tokens, vocab_size):
        counts = np.bincount(tokens.ravel(), minlength=vocab_size)[:vocab_size]
        return (np.argsort(-counts, kind="stable").astype(tokens.dtype),)  # ties keep id order

    def encode(self, arrays, tables):
        (draw_ids,), (rank_ids,) = arrays, tables
        rank_of = np.empty(len(rank_ids), dtype=draw_ids.dtype)
        rank_of[rank_ids] = np.arange(len(rank_ids), dtype=draw_ids.dtype)
        ranks = np.sort(rank_of[draw_ids], axis=-1)
        steps = ranks.copy()
        steps[..., 1:] = np.diff(ranks, axis=-1)
        return (steps,)

    def draw_ids(self, arrays) -> np.ndarray:
        """The stored draws as ids (int64), ``(..., draws)``, sorted by rank: repeats stay adjacent."""
        steps, rank_ids = arrays
        return rank_ids.astype(np.int64)[np.cumsum(steps, axis=-1, dtype=np.int64)]

    def check_block(self, arrays, dump):
        steps, rank_ids = arrays
        if len(rank_ids) != dump.vocab_size or not (np.bincount(rank_ids, minlength=dump.vocab_size) == 1).all():
            return [f"rank_ids is not a permutation of the {dump.vocab_size:,} ids"]
        top = int(np.cumsum(steps, axis=-1, dtype=np.int64).max(initial=0))
        return [f"rank {top} >= vocab {dump.vocab_size}"] if top >= dump.vocab_size else []


TEACHER_FORMATS: dict[str, TeacherFormat] = {}


def register(fmt: TeacherFormat) -> TeacherFormat:
    """Make a kind known to the store (a kind's torch half registers in ``daram/pipeline/dump_kinds.py``)."""
    TEACHER_FORMATS[fmt.kind] = fmt
    return fmt


# docs/benchmarks.md (benchmarks/store_bytes.py, trained teacher at T = 2): top-64 took 170.3 B/token (2.66 per id);
# sampled 50 draws, S = 50, 89.7 (1.79 per slot). Format v2, draws at T = 1: 7.38 B/token for 8 draws of
# ko-small-sharp (2.8 nats), 13.34 for ko-small (7 nats). Draw ranks at T = 1 (benchmarks/fidelity.py --bytes-only,
# 128-token rows): 5.14 B/token for 6 draws of ko-small-sharp.
register(TopkFormat(
    "topk", (ArraySpec("topk_ids", TOKEN_DTYPE), ArraySpec("topk_logprobs", "float16")), ("top_k",), False,
    170.3 / 64, "B per top-k id (docs/benchmarks.md)",
))
register(SampledFormat(
    "sampled", (ArraySpec("sample_ids", TOKEN_DTYPE), ArraySpec("sample_counts", "uint8")),
    ("draws", "sample_width", "seed"), True, 89.7 / 50, "B per sampled slot (docs/benchmarks.md)",
))
register(DrawsFormat(
    "draws", (ArraySpec("draw_ids", TOKEN_DTYPE, codec="ids"),), ("draws", "seed"), True,
    7.38 / 8, "B per draw of a peaked teacher (docs/benchmarks.md; a flat one takes up to 1.8x)",
))
register(DrawRanksFormat(
    "draw_ranks", (ArraySpec("draw_rank_steps", TOKEN_DTYPE, codec="shuffled_ids"),), ("draws", "seed"), True,
    5.14 / 6, "B per draw of a peaked teacher at 6 draws (docs/benchmarks.md; a flat one takes up to 1.8x)",
    tables=(ArraySpec("rank_ids", TOKEN_DTYPE, codec="shuffled_ids"),),
))


def teacher_format(kind: str) -> TeacherFormat:
    """The one place an unknown kind fails."""
    try:
        return TEACHER_FORMATS[kind]
    except KeyError:
        raise DaramError(f"unknown teacher kind {kind!r}; this daram knows {', '.join(TEACHER_FORMATS)}") from None


def kinds_reading(setting: str) -> list[str]:
    """The kinds whose dumps read ``setting`` (a teacher setting that some kinds ignore)."""
    return [f.kind for f in TEACHER_FORMATS.values() if setting in f.reads]


def _listed(kinds: list[str]) -> str:
    """"topk", "sampled and draws", "sampled, draws and draw_ranks"."""
    return " and ".join(kinds) if len(kinds) < 3 else f"{', '.join(kinds[:-1])} and {kinds[-1]}"


def choose_kind(kind: str, kind_given: bool, given: Iterable[str]) -> tuple[str, str]:
    """(the kind a dump uses, why when it is not ``kind`` as given): a setting that only some kinds read picks
    the kind when ``teacher.kind`` was not given, and contradicts it when it was. ``given``: the teacher settings
    the user set (bare names: ``top_k``). A contradiction is refused in one line naming both settings."""
    teacher_format(kind)
    specific = [key for key in dict.fromkeys(given) if kinds_reading(key)]
    if kind_given:
        for key in specific:
            if kind not in kinds_reading(key):
                raise DaramError(
                    f"teacher.{key} is read only by {_listed(kinds_reading(key))} dumps, but teacher.kind is "
                    f"{kind!r}: remove teacher.{key}, or set teacher.kind to a kind that reads it"
                )
        return kind, ""
    candidates = list(TEACHER_FORMATS)
    for key in specific:
        narrowed = [k for k in candidates if k in kinds_reading(key)]
        if not narrowed:
            others = [k for k in specific if set(kinds_reading(k)).isdisjoint(kinds_reading(key))]
            other = (others or specific)[0]
            raise DaramError(
                f"teacher.{other} ({_listed(kinds_reading(other))} dumps) and teacher.{key} "
                f"({_listed(kinds_reading(key))} dumps) belong to different kinds: set teacher.kind and keep "
                "only the settings it reads"
            )
        candidates = narrowed
    if kind in candidates:
        return kind, ""
    chosen = candidates[0]
    return chosen, f"teacher.kind = {chosen!r} (from teacher.{', teacher.'.join(specific)})"

