"""Stores on object storage (daram/storage/remote.py), against a real S3 API: moto's server on localhost via s3fs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from zarr.storage import FsspecStore, WrapperStore

from conftest import REPO, S3_BUCKET, prepare_store
from daram.config import load_config
from daram.errors import DaramError
from daram.storage import Store
from daram.storage.keyvalue import KeyValue
from daram.storage.remote import (
    RetryingStore, backend_name, create_exclusive, has_atomic_create, is_transient, open_remote,
)


class FaultyStore(WrapperStore):
    """Fails every ``every``-th request with a connection reset: alternately before the request reaches the
    store (nothing happened) and after it (it happened, but its answer was lost), as a flaky network does."""

    def __init__(self, store, every: int) -> None:
        super().__init__(store)
        self.every, self.calls, self.failed = every, 0, 0

    def _with_store(self, store):
        return type(self)(store, self.every)

    def _fault(self) -> str:
        self.calls += 1
        if self.calls % self.every:
            return ""
        self.failed += 1
        return "before" if self.failed % 2 else "after"

    async def _faulty(self, call):
        fault = self._fault()
        if fault == "before":
            raise ConnectionResetError(104, "Connection reset by peer (injected, before)")
        result = await call()
        if fault == "after":
            raise ConnectionResetError(104, "Connection reset by peer (injected, after)")
        return result

    async def get(self, key, prototype, byte_range=None):
        return await self._faulty(lambda: self._store.get(key, prototype, byte_range))

    async def get_partial_values(self, prototype, key_ranges):
        return await self._faulty(lambda: self._store.get_partial_values(prototype, key_ranges))

    async def set(self, key, value):
        return await self._faulty(lambda: self._store.set(key, value))

    async def exists(self, key):
        return await self._faulty(lambda: self._store.exists(key))

    async def delete(self, key):
        return await self._faulty(lambda: self._store.delete(key))

    async def create_exclusive(self, key, value):
        return await self._faulty(lambda: create_exclusive(self._store, key, value))

    async def list_dir(self, prefix):
        fault = self._fault()
        if fault:
            raise ConnectionResetError(104, f"Connection reset by peer (injected, {fault})")
        async for key in self._store.list_dir(prefix):
            yield key

    async def list_prefix(self, prefix):
        fault = self._fault()
        if fault:
            raise ConnectionResetError(104, f"Connection reset by peer (injected, {fault})")
        async for key in self._store.list_prefix(prefix):
            yield key


def dump_config(url: str, teacher, **extra):
    return load_config(overrides={
        "store.path": url, "teacher.model": str(teacher), "teacher.device": "cpu", "teacher.dtype": "float32",
        "teacher.kind": "draws", "teacher.draws": 8, **extra,
    })


def cfg_overrides(tokenizer_dir, corpus) -> dict:
    """prepare_store's settings (a store of 2 shards of 32-token rows, 8 rows per chunk) for another URL."""
    return {"prepare.tokenizer": str(tokenizer_dir), "prepare.seq_len": 32, "prepare.num_shards": 2,
            "prepare.rows_per_chunk": 8, "prepare.sources": [{"path": str(corpus), "unit": "line"}]}


def test_the_server_answers_a_conditional_put_with_412(s3_server):
    # What exclusive creates rest on: S3's PutObject with If-None-Match: * refuses an existing key with 412.
    import boto3
    from botocore.exceptions import ClientError

    client = boto3.client("s3")
    client.put_object(Bucket=S3_BUCKET, Key="conditional/a", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket=S3_BUCKET, Key="conditional/a", Body=b"second", IfNoneMatch="*")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.get_object(Bucket=S3_BUCKET, Key="conditional/a")["Body"].read() == b"first"


def test_racing_exclusive_creates_on_s3_let_exactly_one_through(s3_url, tmp_path, tokenizer_dir, corpus_lines):
    store = Store.create(s3_url)
    assert has_atomic_create(store.root.store) and "S3FileSystem" in backend_name(store.root.store)
    won = []

    def race(i: int) -> None:
        kv = KeyValue(open_remote(s3_url, read_only=False))  # each its own connection
        if kv.set_if_absent("locks/race/zarr.json", f"writer {i}".encode()):
            won.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and store.kv.get("locks/race/zarr.json") == f"writer {won[0]}".encode()


def test_a_store_on_s3_prepares_dumps_verifies_inspects_and_releases_like_a_local_one(s3_url, tmp_path, tokenizer_dir, corpus_lines,
                                                                       tiny_teacher_dir, capsys):
    from daram.pipeline.inspect import run_verify
    from daram.pipeline.prepare.prepare import run_prepare
    from daram.pipeline.dump.teacher_dump import run_teacher_dump

    local = prepare_store(tmp_path, tokenizer_dir, corpus_lines[:140], seq_len=32, num_shards=2, rows_per_chunk=8)
    corpus = tmp_path / "store.zarr.txt"
    run_prepare(load_config(overrides={**cfg_overrides(tokenizer_dir, corpus), "store.path": s3_url}))
    remote = Store.open(s3_url)
    assert remote.manifest.tokens_fingerprint == Store.open(str(local)).manifest.tokens_fingerprint
    for url in (s3_url, str(local)):
        run_teacher_dump(dump_config(url, tiny_teacher_dir), all_shards=True)
    for shard in range(2):
        np.testing.assert_array_equal(Store.open(s3_url).read_teacher(shard)[0], Store.open(str(local)).read_teacher(shard)[0])
    capsys.readouterr()
    assert run_verify(load_config(overrides={"store.path": s3_url}))
    assert "intact and complete" in capsys.readouterr().out
    assert Store.open(s3_url).kv.list_dir("locks") == ["zarr.json"]  # every claim given back
    # inspect, release (moved to another bucket prefix) and restore work there too
    from daram.pipeline.inspect import run_inspect
    from daram.pipeline.job.release import run_release

    run_inspect(load_config(overrides={"store.path": s3_url}), sample=False)
    assert "teacher      2 complete, 0 incomplete, 0 not dumped, 0 released" in capsys.readouterr().out
    moved = s3_url.replace("store.zarr", "moved.zarr")
    run_release(load_config(overrides={"store.path": s3_url}), "1", to=moved)
    assert Store.open(s3_url).shard_state(1).state == "released"
    run_release(load_config(overrides={"store.path": s3_url}), "1", restore=True)
    assert Store.open(s3_url).shard_state(1).state == "complete"
    np.testing.assert_array_equal(Store.open(s3_url).read_teacher(1)[0], Store.open(str(local)).read_teacher(1)[0])


def test_every_kth_request_failing_loses_nothing_and_records_nothing_falsely(s3_url, tmp_path, tokenizer_dir,
                                                                           corpus_lines, tiny_teacher_dir, monkeypatch):
    from daram.pipeline.prepare.prepare import run_prepare
    from daram.pipeline.dump.teacher_dump import run_teacher_dump
    from daram.storage import remote

    local = prepare_store(tmp_path, tokenizer_dir, corpus_lines[:140], seq_len=32, num_shards=2, rows_per_chunk=8)
    run_teacher_dump(dump_config(str(local), tiny_teacher_dir), all_shards=True)
    faulty: list[FaultyStore] = []
    open_remote = remote.open_remote

    def flaky(url, read_only, options=None):
        faulty.append(FaultyStore(open_remote(url, read_only, options)._store, every=5))
        return RetryingStore(faulty[-1])

    monkeypatch.setattr("daram.storage.store.open_remote", flaky)
    corpus = tmp_path / "store.zarr.txt"
    run_prepare(load_config(overrides={**cfg_overrides(tokenizer_dir, corpus), "store.path": s3_url}))
    outcome = run_teacher_dump(dump_config(s3_url, tiny_teacher_dir), all_shards=True)
    assert sum(f.failed for f in faulty) > 20  # the faults really happened, before and after requests
    assert len(outcome.completed) == 2
    monkeypatch.undo()
    store, clean = Store.open(s3_url), Store.open(str(local))
    for shard in range(2):
        assert store.shard_state(shard).state == "complete"
        np.testing.assert_array_equal(store.read_teacher(shard)[0], clean.read_teacher(shard)[0])
    assert store.kv.list_dir("teacher/complete") == ["shard-00000", "shard-00001", "zarr.json"]

    # Past the retries a failure surfaces; what it leaves is judged from the store: never complete falsely.
    def hopeless(url, read_only, options=None):
        return RetryingStore(FaultyStore(open_remote(url, read_only, options)._store, every=9), retries=0)

    monkeypatch.setattr("daram.storage.store.open_remote", hopeless)
    other = s3_url.replace("store.zarr", "other.zarr")
    with pytest.raises(DaramError, match="prepare stopped: .*injected"):
        run_prepare(load_config(overrides={**cfg_overrides(tokenizer_dir, corpus), "store.path": other}))
    monkeypatch.undo()
    assert not Store.is_finished(other)  # no manifest: every command refuses it, and prepare starts it again


def test_transient_errors_are_told_from_answers():
    assert is_transient(ConnectionResetError(104, "reset")) and is_transient(TimeoutError())
    assert is_transient(OSError(5, "503 Service Unavailable")) and is_transient(OSError("An error occurred (SlowDown)"))
    assert not is_transient(FileNotFoundError("no such key")) and not is_transient(FileExistsError())
    assert not is_transient(PermissionError("AccessDenied")) and not is_transient(ValueError("bad json"))


def test_missing_credentials_name_what_to_set(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true", AWS_ENDPOINT_URL="http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "daram", "inspect", "--store", "s3://some-bucket/store.zarr"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("error: s3://some-bucket/store.zarr: no credentials for s3://; set AWS_ACCESS_KEY_ID "
                                     "and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or store.options.profile")


def test_store_options_reach_the_file_system(s3_server, s3_url, monkeypatch):
    # an S3-compatible endpoint (R2, B2, MinIO) given in daram.toml instead of the environment
    Store.create(s3_url)
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # without it s3fs would ask AWS itself
    assert Store.exists(s3_url, {"endpoint_url": s3_server})
    assert not Store.exists(s3_url.replace("store.zarr", "none.zarr"), {"endpoint_url": s3_server})


def test_a_backend_without_atomic_create_serves_one_writer_and_refuses_a_second(tmp_path):
    # fsspec's plain local file system has no create-if-absent: one writer works, a second is refused by name
    from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
    from fsspec.implementations.local import LocalFileSystem

    root = tmp_path / "plain"
    root.mkdir()
    store = FsspecStore(AsyncFileSystemWrapper(LocalFileSystem(auto_mkdir=True)), path=str(root))
    kv = KeyValue(store)
    assert not kv.atomic_create
    from daram.storage.claims import ShardClaim

    with ShardClaim(kv, "teacher-shard-00000", "teacher shard 0"):
        with pytest.raises(DaramError, match=r"LocalFileSystem \(file://\) cannot create a file exclusively, so two "
                                             r"writers cannot share this store safely"):
            ShardClaim(kv, "teacher-shard-00000", "teacher shard 0").acquire()


def test_an_interrupted_prepare_on_s3_resumes_keeping_the_shards_it_wrote(s3_url, tmp_path, tokenizer_dir,
                                                                         corpus_lines, monkeypatch, capsys):
    from daram.pipeline.prepare.prepare import run_prepare

    local = prepare_store(tmp_path, tokenizer_dir, corpus_lines[:140], seq_len=32, num_shards=2, rows_per_chunk=8)
    cfg = load_config(overrides={**cfg_overrides(tokenizer_dir, tmp_path / "store.zarr.txt"), "store.path": s3_url})
    written = []
    write_tokens = Store.write_tokens

    def preempted(self, shard, start, rows):
        if shard == 1:
            raise KeyboardInterrupt  # the session ends after shard 0 is written
        written.append(shard)
        write_tokens(self, shard, start, rows)

    monkeypatch.setattr(Store, "write_tokens", preempted)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(cfg)
    assert Store.exists(s3_url) and not Store.is_finished(s3_url)
    written.clear()
    monkeypatch.setattr(Store, "write_tokens", lambda self, shard, start, rows: written.append(shard) or write_tokens(self, shard, start, rows))
    run_prepare(cfg)  # the same command: no --overwrite needed
    assert "resuming the interrupted prepare" in capsys.readouterr().err
    assert set(written) == {1}  # shard 0 stayed as written
    assert Store.open(s3_url).manifest.tokens_fingerprint == Store.open(str(local)).manifest.tokens_fingerprint
