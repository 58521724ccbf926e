"""``daram prepare``: corpus sources -> token shards, in curriculum order, on every core, resumable.

Setup: check the sources and load the tokenizer before anything is written, and claim the work
directory beside the store (``.NAME.preparing``; one prepare at a time per store). Tokenize: read
the entries' units in order, cut them into blocks, split and tokenize the blocks in worker
processes (:mod:`daram.pipeline.prepare.encode`, results in order, so any number of workers gives the same
bytes), and append ``ids + [EOS]`` to a flat token file on disk: memory stays flat however large
the corpus. Write: cut the stream into rows of ``seq_len``, split the rows into ``num_shards``
contiguous shards, write them chunk by chunk with fingerprints, and write the manifest last.

Resume: a journal in the work directory records, after each block and each shard, how far the
work got. A killed prepare (even SIGKILL) rerun with the same settings and files truncates the
token file to the last recorded block, skips the blocks already tokenized (re-reading their text,
not re-tokenizing it) and the shards already written, and ends with the same bytes as a clean run.
A local store is built inside the work directory and renamed into place, so the finished store
appears atomically and an old one survives a failed ``--overwrite``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from daram import __version__
from daram.config import Config, PrepareConfig, SourceConfig
from daram.errors import DaramError
from daram.pipeline.prepare.encode import BLOCK_CHARS, BlockEncoder, EncodeSpec, WorkerDied, cpu_count
from daram.pipeline.prepare.sources import (
    SourceCounter,
    check_overlaps,
    entry_bytes,
    iter_documents,
    iter_line_pieces,
    kiwi_available,
    reads_line_pieces,
    resolve_files,
)
from daram.storage import (
    FileLock, SourceStats, Store, StoreManifest, check_not_foreign, discard_torn_writes, fingerprint_bytes, is_local, token_dtype_for, tokens_fingerprint,
)
from daram.text import plural

WRITE_CHUNKS = 16  # chunks per write call: zarr compresses the chunks of one call on several threads
LONG_UNIT_ROWS = 4  # a paragraph unit longer than this many rows, in a file of sentence-like lines, gets a warning

# prepare's measured throughput per core, MB of UTF-8 text per CPU-second (what one unshared core does),
# for forecasts (`daram plan`). Source: `python benchmarks/prepare.py --text-mb 16 --kiwi-mb 1.5`
# (docs/benchmarks.md, "prepare"): real Korean sentences, KoGPT2's tokenizer, the whole command on 2
# workers (marginal rate, so start-up is left out); kiwi: splitting and tokenizing on 1 worker after kiwi
# is loaded. 2-core VM, load 1.4-1.7. Paragraph units still go through the main process's line reader:
# their figure is the line units' one from before line units moved to the workers (2026-12-01, load 12-15).
MB_PER_S_PER_CORE = {"line": 4.45, "paragraph": 2.54, "sentence-regex": 4.32, "sentence-kiwi": 0.247}


def mb_per_s_per_core(unit: str, splitter: str = "kiwi") -> float:
    """prepare's measured MB/s on one core for a unit (and, for sentences, a splitter)."""
    return MB_PER_S_PER_CORE[f"sentence-{splitter}" if unit == "sentence" else unit]


def forecast_seconds(settings: PrepareConfig, cores: int) -> float:
    """Seconds prepare should take for the configured sources on ``cores`` cores (measured rates, linear in cores)."""
    return sum(
        entry_bytes(source, resolve_files(source)) / 1e6 / (mb_per_s_per_core(source.unit, settings.sentence_splitter) * cores)
        for source in settings.sources
    )


def run_prepare(cfg: Config, overwrite: bool = False) -> StoreManifest:
    settings = cfg.prepare
    url = cfg.store.path
    if not settings.sources:
        raise DaramError("no sources: pass --source PATH or list [[prepare.sources]] in daram.toml")
    options = cfg.store.options
    if not overwrite and Store.is_finished(url, options):
        raise DaramError(f"store already exists: {url}; pass --overwrite to replace it")
    check_not_foreign(url)
    check_overlaps(settings.sources)
    files = [resolve_files(source) for source in settings.sources]  # per entry: a path may appear many times
    if settings.sentence_splitter == "kiwi" and any(s.unit == "sentence" for s in settings.sources) and not kiwi_available():
        raise DaramError("prepare.sentence_splitter = \"kiwi\" needs kiwipiepy (pip install kiwipiepy), or set it to \"regex\"")

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # parallelism comes from the worker processes
    from daram.pipeline.hf import load_tokenizer, tokenizer_info

    tokenizer = load_tokenizer(settings.tokenizer)
    info = tokenizer_info(tokenizer, settings.tokenizer)
    dtype = np.dtype(token_dtype_for(info.vocab_size))
    workers = settings.workers or cpu_count()
    recipe = _recipe(settings, info.vocab_sha256, files)

    started = time.perf_counter()
    try:
        work = WorkDir.claim(url, recipe, _layout(settings))
    except OSError as exc:  # the work directory cannot be made or written: a full or read-only disk
        raise DaramError(f"prepare cannot write its work directory beside {url}: {_describe(exc)}") from None
    try:
        spec = EncodeSpec(tokenizer.backend_tokenizer.to_str(), info.eos_id, dtype.str, settings.sentence_splitter)
        with _sigterm_interrupts():
            stats = _tokenize(settings, files, spec, workers, work)
            manifest = _write_store(url, overwrite, settings, info, stats, dtype, work, options)
    except WorkerDied:
        work.release()  # the blocks so far are sound: the rerun its message asks for resumes them
        raise
    except DaramError:
        work.discard()  # bad input: a rerun needs other settings, which could not resume this work anyway
        raise
    except OSError as exc:  # a full disk, a read-only directory, an I/O error: keep the work to resume
        work.release()
        raise DaramError(
            f"prepare stopped: {_describe(exc)}; the store at {url} is unchanged. Fix that and rerun the same "
            f"command: it resumes from {work.path}"
        ) from None
    except BaseException:
        work.release()  # KeyboardInterrupt and the like: the journal lets a rerun resume
        raise
    work.discard()

    seconds = time.perf_counter() - started
    total_tokens = sum(s.tokens for s in stats)
    total_bytes = sum(s.bytes for s in stats)
    units = sum(s.units for s in stats)
    shards = settings.num_shards
    print(
        f"prepare: {url}: {total_tokens:,} tokens from {plural(units, 'unit')} in {plural(len(stats), 'source')} -> "
        f"{plural(shards, 'shard')} x ~{manifest.rows_per_shard[0]:,} rows of {settings.seq_len} in {seconds:.1f}s on "
        f"{plural(workers, 'worker')} ({total_tokens / seconds:,.0f} tokens/s, {total_bytes / seconds / 1e6:.2f} MB/s)"
    )
    return manifest


# --- the work directory: lock, journal, token stream, staging store ---------------------------


@dataclass
class Journal:
    """How far a prepare got; rewritten atomically after every block and every shard."""

    recipe: str  # hash of what decides the token stream: settings, tokenizer, files
    layout: str = ""  # seq_len, num_shards, rows_per_chunk: what decides the shards
    stream_bytes: int = 0  # bytes of tokens.bin that are complete
    sources: list[dict] = field(default_factory=list)  # SourceStats of the finished entries
    blocks: int = 0  # blocks of the current entry already in the stream
    units: int = 0
    tokens: int = 0
    longest: int = 0
    skipped_lines: int = 0  # undecodable lines of the current entry that workers skipped
    shards: list[str] = field(default_factory=list)  # fingerprints of the shards written to the staging store


class WorkDir:
    """``.NAME.preparing`` beside a local store (a temp directory for a remote one), held with a lock."""

    def __init__(self, path: Path, journal: Journal, lock: FileLock) -> None:
        self.path = path
        self.journal = journal
        self._lock: FileLock | None = lock

    @classmethod
    def claim(cls, url: str, recipe: str, layout: str) -> "WorkDir":
        path = _work_path(url)
        path.mkdir(parents=True, exist_ok=True)
        # the workers are forked while it is held: FileLock closes it in them, so they never keep it
        lock = FileLock(path / "lock", f"the prepare of {url}", lambda holder: (
            f"another `daram prepare` is writing {url}: {holder} (its work is in {path}); wait for it or stop it"))
        lock.acquire()
        journal_path = path / "journal.json"
        journal = Journal(recipe, layout)
        if journal_path.is_file():
            try:
                previous = Journal(**json.loads(journal_path.read_text()))
            except (ValueError, TypeError):
                previous = None
            if previous is not None and previous.recipe == recipe:
                journal = previous
                if journal.layout != layout:
                    journal.layout, journal.shards = layout, []
                _say(f"resuming the interrupted prepare in {path}: {plural(len(journal.sources), 'source')} and "
                     f"{plural(journal.blocks, 'block')} tokenized, {plural(len(journal.shards), 'shard')} written")
            else:
                _say(f"the sources or settings changed since the interrupted prepare in {path}; starting over")
                for child in path.iterdir():
                    if not child.name.startswith("lock"):
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
        work = cls(path, journal, lock)
        discard_torn_writes(str(work.staging_path))  # what a kill mid-write left behind; the journal redoes that write
        work.save()
        return work

    @property
    def stream_path(self) -> Path:
        return self.path / "tokens.bin"

    @property
    def staging_path(self) -> Path:
        return self.path / "store.zarr"

    def save(self) -> None:
        tmp = self.path / "journal.json.tmp"
        tmp.write_text(json.dumps(dataclasses.asdict(self.journal)))
        os.replace(tmp, self.path / "journal.json")

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self.release()


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (preemption, a notebook shutting down) stops prepare as Ctrl-C does: the work directory
    and its journal are kept, and the same command resumes from them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _work_path(url: str) -> Path:
    if is_local(url):
        store = Path(url.removeprefix("file://")).expanduser().absolute()
        return store.with_name(f".{store.name}.preparing")
    return Path(tempfile.gettempdir(), f"daram-prepare-{hashlib.sha256(url.encode()).hexdigest()[:16]}")


def _recipe(settings: PrepareConfig, vocab_sha256: str, files: list[list[Path]]) -> str:
    """What decides the token stream; a resumed prepare must agree on all of it (not on the worker count)."""
    decisive = dataclasses.asdict(settings)
    for key in ("workers", "seq_len", "num_shards", "rows_per_chunk"):
        decisive.pop(key)
    listing = [[(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in entry] for entry in files]
    text = json.dumps({"settings": decisive, "vocab": vocab_sha256, "files": listing, "block": BLOCK_CHARS}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _layout(settings: PrepareConfig) -> str:
    return f"{settings.seq_len}/{settings.num_shards}/{settings.rows_per_chunk}"


# --- tokenize -------------------------------------------------------------------------------


def _tokenize(settings: PrepareConfig, files: list[list[Path]], spec: EncodeSpec, workers: int, work: WorkDir) -> list[SourceStats]:
    from tqdm import tqdm

    journal = work.journal
    stats = [SourceStats(**s) for s in journal.sources]
    if len(stats) == len(settings.sources):
        return stats
    sliced = any(s.take or s.skip for s in settings.sources)
    total = None if sliced else sum(p.stat().st_size for entry in files for p in entry)
    with work.stream_path.open("ab") as stream, BlockEncoder(spec, workers) as encoder, tqdm(
        total=total, initial=sum(s.bytes for s in stats), unit="B", unit_scale=True, desc="prepare: tokenize",
        dynamic_ncols=True,
    ) as bar:
        stream.truncate(journal.stream_bytes)  # drop a block written after the last journal entry
        stream.seek(journal.stream_bytes)
        for index in range(len(stats), len(settings.sources)):
            source = settings.sources[index]
            counter = SourceCounter(units=journal.units, tokens=journal.tokens)
            warned = False
            bytes_before = bar.n
            done = journal.blocks  # blocks already in the stream: read again, not tokenized again
            if reads_line_pieces(source):  # raw lines: the workers decode and strip them
                counter.skipped_lines = journal.skipped_lines  # the workers counted these; the blocks are not decoded again
                texts = iter_line_pieces(source, files[index], counter, 3 * BLOCK_CHARS)
            else:
                texts = _blocks(iter_documents(source, files[index], counter))
            todo = ((block, source.unit == "sentence") for i, block in enumerate(texts) if i >= done)
            for block in encoder.map(todo):
                block.tokens.tofile(stream)
                stream.flush()  # in the page cache: survives SIGKILL, and the journal may now count it
                counter.units += block.units
                counter.tokens += block.tokens.size
                counter.skipped_lines += block.skipped_lines
                journal.stream_bytes += block.tokens.nbytes
                journal.blocks += 1
                journal.units, journal.tokens, journal.skipped_lines = counter.units, counter.tokens, counter.skipped_lines
                journal.longest = max(journal.longest, block.longest)
                work.save()
                bar.update(bytes_before + counter.bytes - bar.n)
                if not warned and _looks_like_sentence_lines(source, counter, journal.longest, settings.seq_len):
                    warned = True
            stats.append(_finish_source(source, counter))
            journal.sources.append(dataclasses.asdict(stats[-1]))
            journal.blocks = journal.units = journal.tokens = journal.longest = journal.skipped_lines = 0
            work.save()
    return stats


def _blocks(units: Iterator[str]) -> Iterator[list[str]]:
    """Consecutive units, about BLOCK_CHARS characters a block; the same cut for any number of workers."""
    block: list[str] = []
    size = 0
    for unit in units:
        block.append(unit)
        size += len(unit)
        if size >= BLOCK_CHARS:
            yield block
            block, size = [], 0
    if block:
        yield block


def _looks_like_sentence_lines(source: SourceConfig, counter: SourceCounter, longest: int, seq_len: int) -> bool:
    """Warn once when paragraph units run to several rows in a file whose lines read like single sentences."""
    if source.unit != "paragraph" or counter.sentence_like_paragraphs == 0 or longest <= LONG_UNIT_ROWS * seq_len:
        return False
    _say(f"warning: source {source.label}: paragraph units of up to {longest:,} tokens ({longest // seq_len} rows of "
         f"seq_len {seq_len}) whose lines each read like one sentence; if the file holds one sentence per line, "
         f'set unit = "line" (or "sentence") for this source [prepare.sources.unit]')
    return True


def _finish_source(source: SourceConfig, counter: SourceCounter) -> SourceStats:
    if counter.skipped_lines and counter.skipped_lines >= counter.lines - counter.skipped_lines:
        raise DaramError(
            f"source {source.label}: binary or not UTF-8: {counter.skipped_lines:,} of {plural(counter.lines, 'line')} "
            f"undecodable and skipped; convert it to UTF-8 text (iconv -f cp949 -t utf-8)"
        )
    if counter.units == 0:
        raise DaramError(f"source {source.label}: holds no text")
    if counter.skipped_lines:
        _say(f"warning: source {source.label}: {plural(counter.skipped_lines, 'undecodable line')} "
             f"skipped (not UTF-8{', or not JSON' if source.format == 'jsonl' else ''}); counted in the manifest")
    wanted = source.span[1]
    if wanted is not None and (counter.bytes if source.measure == "bytes" else counter.lines) < wanted - source.span[0]:
        _say(f"warning: source {source.label}: the files ran out before take = {source.take!r}")
    return SourceStats(
        name=source.label,
        path=source.path,
        format=source.format,
        unit=source.unit,
        files=counter.files,
        bytes=counter.bytes,
        units=counter.units,
        tokens=counter.tokens,
        skipped_lines=counter.skipped_lines,
        skip=source.skip,
        take=source.take,
    )


# --- write ----------------------------------------------------------------------------------


def _write_store(url, overwrite, settings, info, stats, dtype, work: WorkDir, options: Mapping[str, str] | None = None) -> StoreManifest:
    from tqdm import tqdm

    seq_len, rows_per_chunk = settings.seq_len, settings.rows_per_chunk
    total_tokens = sum(s.tokens for s in stats)
    n_rows = total_tokens // seq_len
    if n_rows < settings.num_shards:
        raise DaramError(
            f"the sources give {total_tokens} tokens = {n_rows} rows of seq_len {seq_len}, "
            f"fewer than num_shards={settings.num_shards}; add text or lower --num-shards / --seq-len"
        )
    rows_per_shard = _split_evenly(n_rows, settings.num_shards)
    journal = work.journal
    local = is_local(url)
    if journal.shards and (work.staging_path.is_dir() if local else Store.exists(url, options)):
        # the shards written before the interruption stay; a remote store is filled in place (see its journal)
        store = Store.resume_unfinished(str(work.staging_path) if local else url, options)
    else:
        journal.shards = []
        store = Store.create(str(work.staging_path) if local else url, overwrite=True if local else overwrite,
                             options=options)
    row_bytes = seq_len * dtype.itemsize
    first = sum(rows_per_shard[: len(journal.shards)])
    with tqdm(total=n_rows, initial=first, unit="row", desc="prepare: write shards", dynamic_ncols=True) as bar:
        for shard in range(len(journal.shards), settings.num_shards):
            count = rows_per_shard[shard]
            store.create_token_shard(shard, count, seq_len, rows_per_chunk, dtype.name)
            digest = hashlib.sha256()
            step = rows_per_chunk * WRITE_CHUNKS
            for lo in range(0, count, step):
                n = min(step, count - lo)
                # plain reads, not a memmap: a memmap's pages count as resident and grow with the corpus
                block = np.fromfile(work.stream_path, dtype=dtype, count=n * seq_len, offset=(first + lo) * row_bytes)
                block = block.reshape(n, seq_len)
                store.write_tokens(shard, lo, block)
                digest.update(fingerprint_bytes(block))
                bar.update(n)
            journal.shards.append(digest.hexdigest())
            work.save()
            first += count
    manifest = StoreManifest(
        tokenizer=info,
        seq_len=seq_len,
        rows_per_shard=tuple(rows_per_shard),
        rows_per_chunk=rows_per_chunk,
        sources=tuple(stats),
        shard_fingerprints=tuple(journal.shards),
        tokens_fingerprint=tokens_fingerprint(seq_len, journal.shards),
        dropped_tail_tokens=total_tokens - n_rows * seq_len,
        daram_version=__version__,
    )
    store.write_manifest(manifest)  # written last: a store without it is unfinished
    if local:
        _swap_into_place(work.staging_path, Path(url.removeprefix("file://")).expanduser())
    return manifest


def _split_evenly(n_rows: int, n_shards: int) -> list[int]:
    base, extra = divmod(n_rows, n_shards)
    return [base + (1 if i < extra else 0) for i in range(n_shards)]


def _swap_into_place(staging: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


# --- messages -------------------------------------------------------------------------------


def _say(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"prepare: {message}", file=sys.stderr)  # on a line of its own, not glued to the progress bar


def _describe(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or (exc.errno is None and "requested and" in str(exc)):
        reason = "no space left on the device (or over the file size limit)"
    else:
        reason = exc.strerror or str(exc)
    return f"{reason} ({exc.filename})" if exc.filename else reason
