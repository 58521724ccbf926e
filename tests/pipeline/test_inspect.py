from pathlib import Path

import numpy as np
import pytest

from daram.config import load_config
from daram.pipeline.inspect import check_teacher_block, run_inspect, run_verify
from daram.storage import Store, TeacherManifest


def cfg_for(store):
    return load_config(overrides={"store.path": str(store)})


def write_teacher(store_path: Path, shards=(0,), complete=True) -> TeacherManifest:
    """Valid top-4 teacher arrays for some shards (softmax of random logits, full-vocab normalised)."""
    store = Store.open(str(store_path), mode="r+")
    m = store.manifest
    teacher = store.init_teacher(TeacherManifest(
        teacher="synthetic", revision="-", dtype="float32", temperature=2.0, kind="topk", width=4,
        vocab_size=m.tokenizer.vocab_size, tokens_fingerprint=m.tokens_fingerprint, rows_per_chunk=m.rows_per_chunk,
    ))
    rng = np.random.default_rng(0)
    for shard in shards:
        with store.shard_lock(shard):
            arrays = store.teacher_arrays(shard, teacher, create=True)
            for chunk, (lo, hi) in enumerate(store.chunk_ranges(shard)):
                ids = np.stack([rng.choice(m.tokenizer.vocab_size, 4, replace=False) for _ in range((hi - lo) * m.seq_len)])
                logprobs = np.sort(np.log(rng.dirichlet(np.ones(8), size=len(ids))[:, :4]), axis=-1)[:, ::-1]
                store.write_teacher_chunk(arrays, chunk, ids.reshape(hi - lo, m.seq_len, 4).astype(np.uint16),
                                          logprobs.reshape(hi - lo, m.seq_len, 4).astype(np.float16), teacher)
        if complete:
            store.record_teacher_shard(shard, {"rows": hi, "captured_mass_mean": 0.5, "tokens_per_s": 1000.0})
    return teacher


def test_inspect_shows_manifest_shards_and_a_decoded_sample(prepared_store, capsys):
    write_teacher(prepared_store)
    run_inspect(cfg_for(prepared_store))
    out = capsys.readouterr().out
    assert "kogpt2-base-v2" in out and "vocab 51,200" in out and "2 shards" in out
    assert "teacher      synthetic" in out and "T=2" in out and "top-4" in out
    assert "teacher complete" in out and "captured_mass_mean 0.5" in out
    assert "teacher 0/" in out  # shard 1 not dumped: 0 of its chunks
    assert "sample (shard 0, row 0):" in out and any("\uac00" <= ch <= "\ud7a3" for ch in out.split("sample")[1])


def test_verify_passes_on_an_intact_store_and_names_a_corrupted_chunk(prepared_store, capsys):
    write_teacher(prepared_store, shards=(0, 1))
    assert run_verify(cfg_for(prepared_store))
    chunk = prepared_store / "teacher" / "shard-00001" / "topk_logprobs" / "c" / "1" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x5A
    chunk.write_bytes(data)
    capsys.readouterr()
    assert not run_verify(cfg_for(prepared_store))
    out = capsys.readouterr().out
    assert "teacher/shard-00001/topk_logprobs chunk 1" in out and "checksum" in out
    assert "shard-00000" not in out.split("verify:")[0]


def test_verify_catches_a_flipped_token_chunk(prepared_store, capsys):
    chunk = prepared_store / "tokens" / "shard-00000" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[-10] ^= 0x01
    chunk.write_bytes(data)
    assert not run_verify(cfg_for(prepared_store))
    assert "tokens/shard-00000 chunk 0" in capsys.readouterr().out


def test_verify_reports_incomplete_dumps(prepared_store, capsys):
    write_teacher(prepared_store, shards=(0,), complete=False)
    assert not run_verify(cfg_for(prepared_store))
    assert "never recorded complete" in capsys.readouterr().out


def test_teacher_block_checks():
    teacher = TeacherManifest("t", "-", "float32", 2.0, "topk", 3, 100, "fp", 4)
    ids = np.array([[[5, 7, 9]]], dtype=np.uint16)
    good = np.log(np.array([[[0.5, 0.3, 0.1]]])).astype(np.float16)
    assert check_teacher_block(teacher, ids, good) == []
    assert "sum to" in check_teacher_block(teacher, ids, np.log(np.array([[[0.7, 0.5, 0.1]]])).astype(np.float16))[0]
    assert "sorted" in check_teacher_block(teacher, ids, good[..., ::-1])[0]
    assert "twice" in check_teacher_block(teacher, np.array([[[5, 5, 9]]], dtype=np.uint16), good)[0]
    assert ">= vocab" in check_teacher_block(teacher, np.array([[[5, 700, 9]]], dtype=np.uint16), good)[0]
    assert "non-finite" in check_teacher_block(teacher, ids, np.full((1, 1, 3), np.nan, np.float16))[0]
