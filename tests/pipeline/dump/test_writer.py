"""The chunk writer: a chunk's statistics, arrays and done flag, written off the main thread; a failure surfaces."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import prepare_store
from daram.errors import DaramError
from daram.pipeline.dump.runner import ChunkResult
from daram.pipeline.dump.writer import ChunkWriter
from daram.storage import Store, TeacherManifest


def _draws_shard(tmp_path, tokenizer_dir, corpus_lines):
    path = prepare_store(tmp_path, tokenizer_dir, corpus_lines[:60], seq_len=16, num_shards=1, rows_per_chunk=4)
    store = Store.open(str(path), mode="r+")
    m = store.manifest
    teacher = store.init_teacher(TeacherManifest(
        teacher="t", revision="main", dtype="float32", temperature=1.0, kind="draws", width=4,
        vocab_size=m.tokenizer.vocab_size, tokens_fingerprint=m.tokens_fingerprint, rows_per_chunk=m.rows_per_chunk, draws=4,
    ))
    return store, store.teacher_shard(0, teacher, create=True)


def test_a_written_chunk_is_flagged_done_with_its_statistics(tmp_path, tokenizer_dir, corpus_lines):
    store, target = _draws_shard(tmp_path, tokenizer_dir, corpus_lines)
    draws = np.sort(np.random.default_rng(0).integers(0, 50, (4, 16, 4)), -1).astype(store.manifest.token_dtype)
    writer = ChunkWriter(target)
    writer.submit(1, ChunkResult((draws,), entropy_sum=12.5, seconds=0.25))
    writer.close()
    assert target.chunk_states().tolist()[:3] == [False, True, False]
    assert target.chunk_stats() == {"1": {"positions": 64, "entropy_sum": 12.5, "seconds": 0.25}}
    assert np.array_equal(target.read_rows(4, 8)[0], draws)


def test_a_failed_write_surfaces_as_one_line_naming_the_store(tmp_path, tokenizer_dir, corpus_lines, monkeypatch):
    store, target = _draws_shard(tmp_path, tokenizer_dir, corpus_lines)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(target, "write_chunk", full_disk)
    writer = ChunkWriter(target)
    writer.submit(0, ChunkResult((np.zeros((4, 16, 4), dtype=np.uint16),), 0.0))
    with pytest.raises(DaramError, match=r"writing a teacher chunk failed: .*No space left on device"):
        writer.close()
    assert not target.chunk_states().any()
