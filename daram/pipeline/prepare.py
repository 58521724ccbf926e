"""``daram prepare``: corpus sources -> token shards, in curriculum order.

Setup: check the sources and load the tokenizer before anything is written. Loop: read units
source by source, tokenize in batches, append ``ids + [EOS]`` to a flat token file on disk (the
corpus never has to fit in memory). Finish: cut the stream into rows of ``seq_len``, split the
rows into ``num_shards`` contiguous shards, write them chunk by chunk with fingerprints, and
write the manifest last. A local store is built beside its destination and renamed into place,
so a failed or killed prepare never leaves a half store (or loses the old one under --overwrite).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from daram import __version__
from daram.config import Config, SourceConfig
from daram.errors import DaramError
from daram.pipeline.sources import SourceCounter, iter_documents, resolve_files, sentence_splitter
from daram.storage import SourceStats, Store, StoreManifest, token_dtype_for, tokens_fingerprint
from daram.storage.store import check_not_foreign, fingerprint_bytes, is_local
from daram.text import plural

BATCH_UNITS = 2048  # units per tokenizer call: large enough for the Rust tokenizer to use every core


def run_prepare(cfg: Config, overwrite: bool = False) -> StoreManifest:
    settings = cfg.prepare
    url = cfg.store.path
    if not settings.sources:
        raise DaramError("no sources: pass --source PATH or list [[prepare.sources]] in daram.toml")
    if not overwrite and Store.exists(url):
        raise DaramError(f"store already exists: {url}; pass --overwrite to replace it")
    check_not_foreign(url)
    files = {source.path: resolve_files(source) for source in settings.sources}

    os.environ.setdefault("RAYON_NUM_THREADS", str(settings.workers))  # before tokenizers starts its pool
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from daram.pipeline.hf import load_tokenizer, tokenizer_info

    tokenizer = load_tokenizer(settings.tokenizer)
    info = tokenizer_info(tokenizer, settings.tokenizer)
    dtype = np.dtype(token_dtype_for(info.vocab_size))
    split_sentences = sentence_splitter(settings.sentence_splitter, settings.workers) if any(s.unit == "sentence" for s in settings.sources) else None
    total_bytes = sum(p.stat().st_size for paths in files.values() for p in paths)
    # The Rust tokenizer directly: half the time of the transformers wrapper, and no offsets computed.
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)

    from tqdm import tqdm

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="daram-prepare-", dir=_scratch_dir(url)) as scratch:
        stream_path = Path(scratch, "tokens.bin")
        stats: list[SourceStats] = []
        with stream_path.open("wb") as stream, tqdm(
            total=total_bytes, unit="B", unit_scale=True, desc="prepare: tokenize", dynamic_ncols=True
        ) as bar:
            for source in settings.sources:
                counter = SourceCounter()
                bytes_before = bar.n
                for texts in _batches(iter_documents(source, files[source.path], counter), BATCH_UNITS):
                    units = [s for sents in split_sentences(texts) for s in sents] if source.unit == "sentence" else texts
                    encodings = encode(units, add_special_tokens=False)
                    flat = np.fromiter(_with_eos((e.ids for e in encodings), info.eos_id), dtype=dtype)
                    flat.tofile(stream)
                    counter.units += len(units)
                    counter.tokens += flat.size
                    bar.update(bytes_before + counter.bytes - bar.n)
                if counter.units == 0:
                    raise DaramError(f"source {source.path}: holds no text")
                stats.append(_source_stats(source, counter))

        total_tokens = sum(s.tokens for s in stats)
        n_rows = total_tokens // settings.seq_len
        if n_rows < settings.num_shards:
            raise DaramError(
                f"the sources give {total_tokens} tokens = {n_rows} rows of seq_len {settings.seq_len}, "
                f"fewer than num_shards={settings.num_shards}; add text or lower --num-shards / --seq-len"
            )
        rows = np.memmap(stream_path, dtype=dtype, mode="r", shape=(n_rows, settings.seq_len))
        rows_per_shard = _split_evenly(n_rows, settings.num_shards)
        manifest = _write_store(url, overwrite, rows, rows_per_shard, settings.rows_per_chunk, info, stats, total_tokens)
        del rows

    seconds = time.perf_counter() - started
    print(
        f"prepare: {url}: {total_tokens:,} tokens from {plural(sum(s.units for s in stats), 'unit')} in "
        f"{plural(len(stats), 'source')} -> {plural(settings.num_shards, 'shard')} x ~{n_rows // settings.num_shards} rows of {settings.seq_len} "
        f"in {seconds:.1f}s ({total_tokens / seconds:,.0f} tokens/s, {total_bytes / seconds / 1e6:.2f} MB/s)"
    )
    return manifest


def _write_store(url, overwrite, rows, rows_per_shard, rows_per_chunk, info, stats, total_tokens) -> StoreManifest:
    from tqdm import tqdm

    target = _staging_path(url) if is_local(url) else url
    store = Store.create(target, overwrite=True if target != url else overwrite)
    fingerprints = []
    start = 0
    with tqdm(total=len(rows), unit="row", desc="prepare: write shards", dynamic_ncols=True) as bar:
        for shard, count in enumerate(rows_per_shard):
            array = store.create_token_shard(shard, count, rows.shape[1], rows_per_chunk, str(rows.dtype))
            digest = hashlib.sha256()
            for lo in range(0, count, rows_per_chunk):
                block = np.ascontiguousarray(rows[start + lo : start + min(lo + rows_per_chunk, count)])
                array[lo : lo + len(block)] = block
                digest.update(fingerprint_bytes(block))
                bar.update(len(block))
            fingerprints.append(digest.hexdigest())
            start += count
    manifest = StoreManifest(
        tokenizer=info,
        seq_len=rows.shape[1],
        rows_per_shard=tuple(rows_per_shard),
        rows_per_chunk=rows_per_chunk,
        sources=tuple(stats),
        shard_fingerprints=tuple(fingerprints),
        tokens_fingerprint=tokens_fingerprint(rows.shape[1], fingerprints),
        dropped_tail_tokens=total_tokens - len(rows) * rows.shape[1],
        daram_version=__version__,
    )
    store.write_manifest(manifest)  # written last: a store without it is unfinished
    if target != url:
        _swap_into_place(Path(target), Path(url.removeprefix("file://")))
    return manifest


def _with_eos(batch: Iterator[list[int]], eos: int) -> Iterator[int]:
    for ids in batch:
        yield from ids
        yield eos


def _batches(items: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _split_evenly(n_rows: int, n_shards: int) -> list[int]:
    base, extra = divmod(n_rows, n_shards)
    return [base + (1 if i < extra else 0) for i in range(n_shards)]


def _source_stats(source: SourceConfig, counter: SourceCounter) -> SourceStats:
    return SourceStats(
        name=source.name or source.path,
        path=source.path,
        format=source.format,
        unit=source.unit,
        files=counter.files,
        bytes=counter.bytes,
        units=counter.units,
        tokens=counter.tokens,
        skipped_lines=counter.skipped_lines,
    )


def _scratch_dir(url: str) -> str | None:
    """Keep the flat token file on the store's disk when local (it is as large as the tokens)."""
    if not is_local(url):
        return None
    parent = Path(url.removeprefix("file://")).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return str(parent)


def _staging_path(url: str) -> str:
    path = Path(url.removeprefix("file://"))
    staging = path.with_name(f".{path.name}.preparing-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    return str(staging)


def _swap_into_place(staging: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
