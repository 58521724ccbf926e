"""`daram inspect` and `daram verify`: what they show, and the damage verify finds."""

import json
import re

import numpy as np
import pytest

from conftest import write_teacher_dump
from daram.config import load_config
from daram.errors import DaramError
from daram.pipeline.inspect import run_inspect, run_verify
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
    assert "teacher not dumped" in out  # shard 1: never started, not "0/n chunks"
    assert "teacher      1 complete, 0 incomplete, 1 not dumped, 0 released" in out
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
    assert "teacher shard 1 chunk 1 (rows 16-32): unreadable" in out and "checksum" in out
    # the repair: the damaged chunk looks done, so its files go and the dump redoes exactly it
    assert f"repair: rm {prepared_store}/teacher/shard-00001/topk_ids/c/1/0/0 {chunk} && daram teacher-dump --shard 1" in out
    assert "shard 0" not in out.split("verify:")[0]


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
    assert teacher.format.check_block((ids, good), teacher) == []
    assert "sum to" in teacher.format.check_block((ids, np.log(np.array([[[0.7, 0.5, 0.1]]])).astype(np.float16)), teacher)[0]
    assert "sorted" in teacher.format.check_block((ids, good[..., ::-1]), teacher)[0]
    assert "twice" in teacher.format.check_block((np.array([[[5, 5, 9]]], dtype=np.uint16), good), teacher)[0]
    assert ">= vocab" in teacher.format.check_block((np.array([[[5, 700, 9]]], dtype=np.uint16), good), teacher)[0]
    assert "non-finite" in teacher.format.check_block((ids, np.full((1, 1, 3), np.nan, np.float16)), teacher)[0]


def test_verify_exits_0_only_when_complete_and_counts_the_shards(prepared_store, tiny_teacher_dir, capsys):
    assert not run_verify(cfg_for(prepared_store))  # no teacher dump yet
    assert "no teacher dump" in capsys.readouterr().out
    assert run_verify(cfg_for(prepared_store), tokens_only=True)
    assert "intact and complete" in capsys.readouterr().out
    write_teacher_dump(prepared_store, tiny_teacher_dir, width=4, shards=[0])
    assert not run_verify(cfg_for(prepared_store))  # shard 1 never dumped: intact, but not complete
    out = capsys.readouterr().out
    assert "teacher: 1 complete, 0 incomplete, 1 not dumped, 0 released: intact but not complete" in out
    assert "BAD" not in out


def test_a_flipped_byte_in_a_done_flag_is_reported_not_a_traceback(prepared_store, tiny_teacher_dir, capsys):
    write_teacher_dump(prepared_store, tiny_teacher_dir, width=4, shards=[0, 1])
    flag = prepared_store / "teacher" / "shard-00000" / "chunks_done" / "c" / "1"
    data = bytearray(flag.read_bytes())
    data[0] ^= 0x01
    flag.write_bytes(data)
    run_inspect(cfg_for(prepared_store), sample=False)
    assert "teacher incomplete (2/3 chunks) (recorded complete, but chunks were lost)" in capsys.readouterr().out
    assert not run_verify(cfg_for(prepared_store))
    out = capsys.readouterr().out
    assert "teacher shard 0: the done flag of chunk 1 is damaged (checksum)" in out
    assert "repair: daram teacher-dump --shard 0" in out


def test_damaged_metadata_is_one_error_naming_the_file_and_the_repair(prepared_store, tiny_teacher_dir, capsys):
    write_teacher_dump(prepared_store, tiny_teacher_dir, width=4, shards=[0])
    tokens_meta = prepared_store / "tokens" / "shard-00001" / "zarr.json"
    meta = json.loads(tokens_meta.read_text())
    tokens_meta.write_text(json.dumps({**meta, "shape": [meta["shape"][0] + 5, meta["shape"][1]], "data_type": "uint32"}))
    assert not run_verify(cfg_for(prepared_store))
    out = capsys.readouterr().out
    assert re.search(r"tokens/shard-00001 is \(42, 64\) uint32, but the manifest says \(37, 64\) uint16", out)
    assert "repair: daram prepare --overwrite" in out

    teacher_meta = prepared_store / "teacher" / "zarr.json"
    teacher_meta.write_text(teacher_meta.read_text()[:-20])
    for run in (run_verify, run_inspect):
        with pytest.raises(DaramError, match=r"teacher/zarr.json is damaged.*move the teacher/ directory aside"):
            run(cfg_for(prepared_store))
    (prepared_store / "zarr.json").write_text("{not json")
    with pytest.raises(DaramError, match=r"zarr.json is damaged.*daram prepare --overwrite"):
        run_inspect(cfg_for(prepared_store))
