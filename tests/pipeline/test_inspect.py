"""`daram inspect` and `daram verify`: what they show, and the damage verify finds."""

import re

import numpy as np

from conftest import write_teacher_dump
from daram.config import load_config
from daram.pipeline.inspect import check_teacher_block, run_inspect, run_verify
from daram.storage import TeacherManifest


def cfg_for(store):
    return load_config(overrides={"store.path": str(store)})


def test_inspect_shows_manifest_shards_and_a_decoded_sample(prepared_store, tokenizer_dir, tiny_teacher_dir, capsys):
    write_teacher_dump(prepared_store, tiny_teacher_dir, width=4, shards=[0])
    run_inspect(cfg_for(prepared_store))
    out = capsys.readouterr().out
    assert str(tokenizer_dir) in out and "vocab 2,048" in out and "2 shards" in out
    assert f"teacher      {tiny_teacher_dir} @ main" in out and "T=2" in out and "top-4" in out
    assert "teacher complete" in out and re.search(r"captured_mass_mean [0-9.e-]+\b", out)
    assert "teacher 0/" in out  # shard 1 not dumped: 0 of its chunks
    assert "sample (shard 0, row 0):" in out and any("\uac00" <= ch <= "\ud7a3" for ch in out.split("sample")[1])


def test_verify_passes_on_an_intact_store_and_names_a_corrupted_chunk(prepared_store, tiny_teacher_dir, capsys):
    write_teacher_dump(prepared_store, tiny_teacher_dir, width=4)
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


def test_verify_reports_incomplete_dumps(prepared_store, tiny_teacher_dir, capsys):
    write_teacher_dump(prepared_store, tiny_teacher_dir, width=4, shards=[0], complete=False)
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
