"""Cost of refusing absent chunks: reading rows with the presence check / without it.

A store of one token shard and one top-16 teacher shard (random ids and log-probs; the check looks
at file names, not at values) is read the way ``student-train`` reads it: chunk by chunk, tokens
and both teacher arrays. One side calls ``Store.read_tokens`` / ``read_teacher`` as they are; the
other replaces ``Store.require_chunks`` with a no-op. benchmarks/harness.py times them (warm-up,
alternating rounds, medians, spread, the ratio); then the check alone: one existence call per chunk file.

    .venv/bin/python benchmarks/chunk_check.py                 # 4096 rows of 512, chunks of 64, 5 rounds
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from daram.storage import Store, StoreManifest, TeacherManifest, TokenizerInfo, fingerprint_rows, tokens_fingerprint
from harness import add_timing_arguments, compare


def build(path: str, rows: int, seq_len: int, rows_per_chunk: int, k: int) -> Store:
    rng = np.random.default_rng(0)
    store = Store.create(path)
    tokens = rng.integers(0, 51200, size=(rows, seq_len), dtype=np.uint16)
    store.create_token_shard(0, rows, seq_len, rows_per_chunk, "uint16")
    store.write_tokens(0, 0, tokens)
    fps = (fingerprint_rows(tokens),)
    store.write_manifest(StoreManifest(
        tokenizer=TokenizerInfo("random", 51200, "-", 1, 3), seq_len=seq_len, rows_per_shard=(rows,),
        rows_per_chunk=rows_per_chunk, sources=(), shard_fingerprints=fps, tokens_fingerprint=tokens_fingerprint(seq_len, fps),
    ))
    store = Store.open(path, mode="r+")
    teacher = store.init_teacher(TeacherManifest(
        teacher="random", revision="-", dtype="float32", temperature=2.0, kind="topk", width=k, vocab_size=51200,
        tokens_fingerprint=store.manifest.tokens_fingerprint, rows_per_chunk=rows_per_chunk,
    ))
    with store.shard_lock(0):
        target = store.teacher_shard(0, teacher, create=True)
        for chunk, (lo, hi) in enumerate(store.chunk_ranges(0)):
            ids = rng.integers(0, 51200, size=(hi - lo, seq_len, k), dtype=np.uint16)
            logprobs = -rng.random((hi - lo, seq_len, k)).astype(np.float16)
            target.write_chunk(chunk, (ids, logprobs))
    return Store.open(path)


def read_all(store: Store) -> float:
    started = time.perf_counter()
    for lo, hi in store.chunk_ranges(0):
        store.read_tokens(0, lo, hi)
        store.read_teacher(0, lo, hi)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--rows-per-chunk", type=int, default=64)
    parser.add_argument("--k", type=int, default=16)
    add_timing_arguments(parser, rounds=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = build(str(Path(tmp, "s.zarr")), args.rows, args.seq_len, args.rows_per_chunk, args.k)
        checked = store.require_chunks

        def unchecked() -> float:
            store.require_chunks = lambda *a, **kw: None
            try:
                return read_all(store)
            finally:
                store.require_chunks = checked

        chunks = len(store.chunk_ranges(0))
        keys = [k for k in store.kv.list_prefix("") if "/c/" in k]  # every chunk file (zarr v3's chunk key encoding)

        def check_alone() -> None:  # existence checks as the reads make them, one key per call, without the reads
            for key in keys:
                store.kv.exist([key])

        print(f"{args.rows} rows of {args.seq_len} ({chunks} chunks of {args.rows_per_chunk} rows), top-{args.k} teacher")
        # the warm-up fills the page cache and the codec pools
        reads = compare({"unchecked": unchecked, "checked": lambda: read_all(store)}, rounds=args.rounds,
                        warmup=args.warmup, unit="s", clocks=("measured",))
        alone = compare({"check alone": check_alone}, rounds=args.rounds, warmup=args.warmup, clocks=("measured",))
        per_check = alone.median("check alone") / len(keys)
        checks = alone.times("check alone")
        print(f"the check alone: {per_check * 1e6:.1f} us per chunk and array (min {min(checks) / len(keys) * 1e6:.1f}, "
              f"max {max(checks) / len(keys) * 1e6:.1f}) = {per_check * 3 * chunks / reads.median('unchecked'):.2%} "
              "of the unchecked read")

if __name__ == "__main__":
    main()
