"""Sentence splitting and tokenizing of text blocks, on every core, in order.

A block is a run of consecutive units (about :data:`BLOCK_CHARS` characters), or a
:class:`~daram.pipeline.prepare.sources.LinePiece`, the raw bytes of consecutive lines (about
``3 * BLOCK_CHARS``: Hangul takes 3 bytes a character), which the worker decodes, parses and strips
itself so that the main process does no per-line work. Each worker process
holds its own single-threaded tokenizer and splitter and turns a block into ``ids + [EOS]`` per
unit. Results come back in submission order, so the token stream does not depend on the number
of workers: one worker or sixteen give the same bytes.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from array import array
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from daram.errors import DaramError
from daram.pipeline.parent_death import die_with_parent
from daram.pipeline.prepare.sources import LinePiece, piece_units

BLOCK_CHARS = 1 << 16  # characters per block: ~190 KB of Korean; about 2 s of kiwi, ~30 ms of tokenizer


@dataclass(frozen=True)
class EncodeSpec:
    """What each worker needs to rebuild the tokenizer and splitter (sent once, at start)."""

    tokenizer_json: str  # the Rust tokenizer, serialized: no transformers import in the workers
    eos_id: int
    dtype: str
    splitter: str  # kiwi | regex


@dataclass(frozen=True)
class EncodedBlock:
    tokens: np.ndarray  # ids + [EOS] for every unit of the block, in order
    units: int  # units after sentence splitting
    longest: int  # tokens of the longest unit (EOS included)
    skipped_lines: int = 0  # lines of a LinePiece that were skipped (not UTF-8; JSONL: not JSON or no text)


class WorkerDied(DaramError):
    """A worker process was killed; the work so far is sound, so the same command resumes it."""


def cpu_count() -> int:
    """The cores this process may run on (its affinity, as a job scheduler sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class _Encoder:
    """One core's tokenizer and splitter."""

    def __init__(self, spec: EncodeSpec) -> None:
        os.environ["RAYON_NUM_THREADS"] = "1"  # one core per worker; before the tokenizer's pool starts
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(spec.tokenizer_json)
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.tokenizer.post_processor = None  # adds nothing without special tokens, yet costs ~5% of encoding
        self.spec = spec
        self.dtype = np.dtype(spec.dtype)
        self.split = None  # the splitter loads on the first sentence block (kiwi takes seconds)

    def encode(self, texts: list[str] | LinePiece, sentences: bool) -> EncodedBlock:
        skipped = 0
        if isinstance(texts, LinePiece):
            texts, skipped = piece_units(texts)
        if sentences and self.split is None:
            from daram.pipeline.prepare.sources import sentence_splitter

            self.split = sentence_splitter(self.spec.splitter)
        units = [s for sents in self.split(texts) for s in sents] if sentences else texts
        # ids go straight into a C array of the token dtype: no list of lists, no second pass (and an id
        # too large for the dtype raises instead of wrapping)
        stream = array(self.dtype.char)
        longest = 0
        for encoding in self.tokenizer.encode_batch_fast(units, add_special_tokens=False):
            ids = encoding.ids
            stream.extend(ids)
            stream.append(self.spec.eos_id)
            if len(ids) + 1 > longest:
                longest = len(ids) + 1
        tokens = np.frombuffer(stream, dtype=self.dtype.newbyteorder("=")).astype(self.dtype, copy=False)
        return EncodedBlock(tokens, len(units), longest, skipped)


_worker: _Encoder | None = None


def _start_worker(spec: EncodeSpec, parent: int) -> None:
    """SIGTERM ends a worker at once (the main process turns its own SIGTERM into an orderly stop); Ctrl-C
    reaches the whole process group, and only the main process acts on it; and whatever ends the main
    process ends its workers."""
    global _worker
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)
    _worker = _Encoder(spec)


def _encode_in_worker(texts: list[str] | LinePiece, sentences: bool) -> EncodedBlock:
    assert _worker is not None
    return _worker.encode(texts, sentences)


class BlockEncoder:
    """Encodes ``(texts or raw lines, split_into_sentences)`` blocks in order with ``workers`` processes.

    At most ``2 * workers`` blocks are in flight, so memory stays flat however large the corpus.
    One worker encodes in this process (no pool, nothing to pickle).
    """

    def __init__(self, spec: EncodeSpec, workers: int) -> None:
        self.workers = workers
        self.local = _Encoder(spec) if workers == 1 else None
        self.pool = None
        if workers > 1:
            # fork, not spawn: spawn re-runs the caller's main module in each worker (a script without a
            # __main__ guard would prepare again, recursively); the parent has started no tokenizer threads
            # (TOKENIZERS_PARALLELISM is off there) and each worker builds its own tokenizer
            context = multiprocessing.get_context("fork")
            self.pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                            initargs=(spec, os.getpid()))

    def map(self, blocks: Iterator[tuple[list[str] | LinePiece, bool]]) -> Iterator[EncodedBlock]:
        if self.local is not None:
            for texts, sentences in blocks:
                yield self.local.encode(texts, sentences)
            return
        assert self.pool is not None
        pending: deque[Future] = deque()
        try:
            for texts, sentences in blocks:
                pending.append(self.pool.submit(_encode_in_worker, texts, sentences))
                if len(pending) >= 2 * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise WorkerDied(
                "a prepare worker process died (out of memory? killed?); rerun the same command to resume, "
                "with fewer prepare.workers if memory is short"
            ) from None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "BlockEncoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
