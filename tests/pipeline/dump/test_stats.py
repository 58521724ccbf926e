"""A dumped shard's statistics: the forward's per-chunk sums, and what its kind counts in the stored arrays."""

from __future__ import annotations

import numpy as np

from conftest import prepare_store
from daram.pipeline.dump.stats import shard_stats, summary_line
from daram.storage import Store, TeacherManifest


def test_shard_statistics_sum_the_chunks_and_count_the_stored_draws(tmp_path, tokenizer_dir, corpus_lines):
    path = prepare_store(tmp_path, tokenizer_dir, corpus_lines[:60], seq_len=16, num_shards=1, rows_per_chunk=4)
    store = Store.open(str(path), mode="r+")
    m = store.manifest
    teacher = store.init_teacher(TeacherManifest(
        teacher="t", revision="main", dtype="float32", temperature=1.0, kind="draws", width=4,
        vocab_size=m.tokenizer.vocab_size, tokens_fingerprint=m.tokens_fingerprint, rows_per_chunk=m.rows_per_chunk, draws=4,
    ))
    target = store.teacher_shard(0, teacher, create=True)
    row_draws = np.array([3, 3, 3, 9], dtype=m.token_dtype)  # two distinct ids at every position
    for chunk, (lo, hi) in enumerate(store.chunk_ranges(0)):
        draws = np.broadcast_to(row_draws, (hi - lo, 16, 4)).copy()
        target.write_chunk(chunk, (draws,), {"positions": (hi - lo) * 16, "entropy_sum": 0.5 * (hi - lo) * 16, "seconds": 1.0})
    stats = shard_stats(store, target)
    rows = m.rows_per_shard[0]
    assert stats["tokens"] == rows * 16 and stats["rows"] == rows
    assert stats["entropy_mean"] == 0.5 and stats["seconds"] == len(store.chunk_ranges(0))
    assert stats["unique_ids_mean"] == 2.0 and stats["truncated_positions"] == 0
    line = summary_line(target, {**stats, "tokens_computed": 16, "device": "cpu"}, wall=1.0)
    assert line.startswith(f"shard 0: {rows * 16:,} tokens (16 this run)") and "2.0 unique ids per position" in line
