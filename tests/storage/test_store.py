import importlib.util
import json
import multiprocessing
import os
import time
import subprocess
import sys
import textwrap
import threading
import uuid

import numpy as np
import pytest
import zarr

from daram.errors import DaramError
from daram.storage import (
    LockHeld, Store, StoreManifest, check_persistent, TeacherManifest, TokenizerInfo, fingerprint_rows, token_dtype_for, tokens_fingerprint,
)

SEQ, ROWS, RPC, K, VOCAB = 8, 10, 4, 3, 100


def make_store(url: str, num_shards: int = 2) -> Store:
    store = Store.create(url)
    shards = [np.random.default_rng(s).integers(0, VOCAB, size=(ROWS, SEQ)).astype(np.uint16) for s in range(num_shards)]
    for s, rows in enumerate(shards):
        store.create_token_shard(s, ROWS, SEQ, RPC, "uint16")
        store.write_tokens(s, 0, rows)
    fps = [fingerprint_rows(r) for r in shards]
    store.write_manifest(StoreManifest(
        tokenizer=TokenizerInfo("tok", VOCAB, "abc", 1, 3), seq_len=SEQ, rows_per_shard=(ROWS,) * num_shards,
        rows_per_chunk=RPC, sources=(), shard_fingerprints=tuple(fps), tokens_fingerprint=tokens_fingerprint(SEQ, fps),
    ))
    return store


def teacher_manifest(store: Store, **changes) -> TeacherManifest:
    values = dict(teacher="t", revision="main", dtype="float32", temperature=2.0, kind="topk", width=K,
                  vocab_size=VOCAB, tokens_fingerprint=store.manifest.tokens_fingerprint, rows_per_chunk=RPC)
    return TeacherManifest(**{**values, **changes})


@pytest.fixture(params=["local", "memory"])
def url(request, tmp_path):
    return str(tmp_path / "s.zarr") if request.param == "local" else f"memory://daram-{uuid.uuid4().hex}"


def test_tokens_round_trip_and_plain_zarr_reads_them(url):
    store = make_store(url)
    again = Store.open(url)
    assert again.manifest == store.manifest
    assert again.chunk_ranges(0) == [(0, 4), (4, 8), (8, 10)]
    rows = again.read_tokens(1)
    assert rows.dtype == np.uint16 and rows.shape == (ROWS, SEQ)
    assert fingerprint_rows(rows) == again.manifest.shard_fingerprints[1]
    group = zarr.open_group(url, mode="r")
    np.testing.assert_array_equal(group["tokens/shard-00001"][:], rows)
    assert group.attrs["daram"]["num_shards"] == 2 and group.attrs["daram"]["token_dtype"] == "uint16"


def test_teacher_round_trip(url):
    store = Store.open(make_store(url).url, mode="r+")
    teacher = store.init_teacher(teacher_manifest(store))
    ids = np.arange(RPC * SEQ * K, dtype=np.uint16).reshape(RPC, SEQ, K) % VOCAB
    logprobs = np.full((RPC, SEQ, K), -2.5, dtype=np.float16)
    with store.shard_lock(0):
        store.teacher_shard(0, teacher, create=True).write_chunk(1, (ids, logprobs), {"positions": RPC * SEQ})
    assert store.teacher_shard(0).chunk_states().tolist() == [False, True, False]
    assert store.teacher_shard(0).chunk_stats() == {"1": {"positions": RPC * SEQ}}
    got_ids, got_lp = store.read_teacher(0, 4, 8)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_lp, logprobs)
    assert not store.teacher_manifest().is_complete(0)
    store.record_teacher_shard(0, {"rows": ROWS})
    assert store.teacher_manifest().is_complete(0) and store.teacher_manifest().shards["0"] == {"rows": ROWS}
    group = zarr.open_group(url, mode="r")
    assert group["teacher/shard-00000/topk_logprobs"].dtype == np.float16
    assert group["teacher"].attrs["daram_teacher"]["kind"] == "topk"


def test_a_second_dump_with_other_settings_is_refused(url):
    store = Store.open(make_store(url).url, mode="r+")
    store.init_teacher(teacher_manifest(store))
    assert store.init_teacher(teacher_manifest(store)).temperature == 2.0  # same settings: fine
    with pytest.raises(DaramError, match="temperature=2.0.*temperature=1.0"):
        store.init_teacher(teacher_manifest(store, temperature=1.0))


def test_sampled_kind_arrays(url):
    store = Store.open(make_store(url).url, mode="r+")
    teacher = store.init_teacher(teacher_manifest(store, kind="sampled", width=5, draws=50))
    arrays = store.teacher_shard(1, teacher, create=True).arrays
    assert set(arrays) == {"sample_ids", "sample_counts"}
    assert arrays["sample_counts"].dtype == np.uint8 and arrays["sample_ids"].shape == (ROWS, SEQ, 5)


def test_opening_errors(tmp_path):
    with pytest.raises(DaramError, match="store not found"):
        Store.open(str(tmp_path / "none.zarr"))
    zarr.open_group(str(tmp_path / "half.zarr"), mode="w")
    with pytest.raises(DaramError, match="not a finished daram store"):
        Store.open(str(tmp_path / "half.zarr"))
    store = make_store(str(tmp_path / "s.zarr"))
    with pytest.raises(DaramError, match="already exists"):
        Store.create(store.url)
    with pytest.raises(DaramError, match="shard 5 is out of range"):
        store.read_tokens(5)
    with pytest.raises(DaramError, match="has no teacher dump"):
        store.read_teacher(0)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DaramError, match="not a daram store"):
        Store.create(str(tmp_path / "mine"), overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_manifest_validation_and_round_trip():
    store_manifest = make_store(f"memory://{uuid.uuid4().hex}").manifest
    assert StoreManifest.from_dict(json.loads(json.dumps(store_manifest.to_dict()))) == store_manifest
    # Version 1 stores stay readable; a version this daram does not know is refused, naming it.
    assert StoreManifest.from_dict({**store_manifest.to_dict(), "format_version": 1}).format_version == 1
    with pytest.raises(DaramError, match="format_version 3 is not readable"):
        StoreManifest.from_dict({**store_manifest.to_dict(), "format_version": 3})
    with pytest.raises(DaramError, match="format_version 7 is not readable"):
        TeacherManifest("t", "main", "float32", 1.0, "draws", 8, 100, "fp", 4, draws=8, format_version=7)
    with pytest.raises(DaramError, match="eos_id"):
        TokenizerInfo("t", 10, "x", 10, 0)
    with pytest.raises(DaramError, match="width"):
        TeacherManifest("t", "main", "float16", 2.0, "topk", 200, 100, "fp", 4)
    assert token_dtype_for(65536) == "uint16" and token_dtype_for(65537) == "uint32"


KILL_MID_CHUNK = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from daram.storage import Store
    store = Store.open(sys.argv[1], mode="r+")
    teacher = store.teacher_manifest()
    lock = store.shard_lock(0).acquire()
    target = store.teacher_shard(0, teacher, create=True)

    class DieOnWrite:
        # the values array: the ids of this chunk are already on disk when the process dies here
        def __setitem__(self, key, value):
            os.kill(os.getpid(), signal.SIGKILL)

    ones = np.ones((4, 8, 3), dtype=np.uint16)
    target.write_chunk(0, (ones, np.full((4, 8, 3), -1, np.float16)))
    target.arrays["topk_logprobs"] = DieOnWrite()
    target.write_chunk(1, (ones, np.full((4, 8, 3), -1, np.float16)))
""")


def test_a_write_killed_mid_chunk_leaves_nothing_marked_done(tmp_path):
    store = Store.open(make_store(str(tmp_path / "s.zarr")).url, mode="r+")
    teacher = store.init_teacher(teacher_manifest(store))
    result = subprocess.run([sys.executable, "-c", KILL_MID_CHUNK, store.url])
    assert result.returncode == -9
    assert store.teacher_shard(0).chunk_states().tolist() == [True, False, False]
    # the dead writer's lock is stale: the next writer takes it over
    with store.shard_lock(0) as lock:
        assert lock.record["pid"] == os.getpid()


def test_the_files_of_a_write_killed_mid_rename_are_gone_when_the_next_writer_opens_the_shard(tmp_path):
    # zarr's local store writes <key>.<uuid>.partial and renames it; SIGKILL between the two leaves the
    # file, and a resumed shard would then differ from a clean one (caught first by prepare's kill test).
    store = Store.open(make_store(str(tmp_path / "s.zarr")).url, mode="r+")
    teacher = store.init_teacher(teacher_manifest(store))
    store.teacher_shard(0, teacher, create=True)
    torn = tmp_path / "s.zarr" / "teacher" / "shard-00000" / "topk_ids" / "c" / "1" / "0" / "0.0123abcd.partial"
    torn.parent.mkdir(parents=True, exist_ok=True)
    torn.write_bytes(b"half a chunk")
    elsewhere = tmp_path / "s.zarr" / "teacher" / "zarr.json.4567.partial"  # another writer's: not this shard's
    elsewhere.write_bytes(b"{")
    store.teacher_shard(0, teacher, create=True)
    assert not torn.exists() and elsewhere.exists()


def test_lock_is_exclusive_and_released(url):
    store = make_store(url)
    with store.shard_lock(1):
        with pytest.raises(LockHeld, match=rf"teacher shard 1 .* is being written by pid {os.getpid()}"):
            store.shard_lock(1).acquire()
        with store.shard_lock(0):  # other shards are independent
            pass
    with store.shard_lock(1):  # released on exit
        pass
    assert not zarr.open_group(url, mode="r")["locks"].attrs.asdict()
    assert [name for name, _ in zarr.open_group(url, mode="r")["locks"].members()] == []


def test_stale_lock_of_another_host_is_taken_over_only_after_heartbeat_timeout(url):
    store = make_store(url)
    lock = store.shard_lock(0)
    record = {"host": "other-node", "pid": 1, "started": 0, "heartbeat": 0, "command": "daram teacher-dump"}
    assert store.kv.set_if_absent(lock.key(0), lock._encode(record))
    with store.shard_lock(0) as taken:  # heartbeat from 1970: stale, taken over by the next generation
        assert taken.record["pid"] == os.getpid() and taken.generation == 1
        assert sorted(taken.generations()) == [1]  # the stale claim is gone
    import time

    store.kv.set(lock.key(0), lock._encode({**record, "heartbeat": time.time()}))
    with pytest.raises(LockHeld, match="other-node"):
        store.shard_lock(0).acquire()


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over_naming_it(url, capsys):
    # a SIGKILLed teacher-dump leaves its shard's lock behind; the rerun takes it over and says whose it was
    import socket
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    store = make_store(url)
    lock = store.shard_lock(0)
    record = {"host": socket.gethostname(), "pid": dead.pid, "started": 0, "heartbeat": time.time(), "command": "daram x"}
    assert store.kv.set_if_absent(lock.key(0), lock._encode(record))
    with store.shard_lock(0) as taken:
        assert taken.record["pid"] == os.getpid()
    assert (f"teacher shard 0 of {store.url}: the claim's holder, pid {dead.pid} on {socket.gethostname()} is gone; "
            "taking the claim over") in capsys.readouterr().err


def _delete_chunk(url: str, array_path: str, key: str) -> None:
    store = Store.open(url, mode="r+")
    assert store.kv.get(f"{array_path}/{key}") is not None
    store.kv.delete(f"{array_path}/{key}")


def test_an_absent_chunk_is_refused_never_read_as_zeros(url):
    # zarr reads an absent chunk as its fill value (0); the store must refuse instead
    store = Store.open(make_store(url).url, mode="r+")
    teacher = store.init_teacher(teacher_manifest(store))
    ids = np.ones((RPC, SEQ, K), dtype=np.uint16)
    with store.shard_lock(0):
        target = store.teacher_shard(0, teacher, create=True)
        for chunk, (lo, hi) in enumerate(store.chunk_ranges(0)):
            target.write_chunk(chunk, (ids[: hi - lo], np.full((hi - lo, SEQ, K), -1, np.float16)))
    _delete_chunk(url, "tokens/shard-00001", "c/1/0")
    with pytest.raises(DaramError, match=r"tokens/shard-00001 chunk 1 \(rows 4-8 of shard 1\) is missing.*prepare --overwrite"):
        store.read_tokens(1, 0, 10)
    assert store.read_tokens(1, 8, 10).shape == (2, SEQ)  # other chunks still read
    _delete_chunk(url, "teacher/shard-00000/topk_logprobs", "c/2/0/0")
    with pytest.raises(DaramError, match=r"topk_logprobs chunk 2 .* missing.*teacher-dump --shard 0"):
        store.read_teacher(0, 6, 10)
    assert store.teacher_shard(0).chunk_states().tolist() == [True, True, False]


def test_chunks_equal_to_the_fill_value_are_written(url):
    # without write_empty_chunks zarr skips an all-zero chunk, which a reader could not tell from a deleted one
    store = make_store(url)
    store.create_token_shard(2, ROWS, SEQ, RPC, "uint16")
    store.write_tokens(2, 0, np.zeros((ROWS, SEQ), np.uint16))
    assert len(store.kv.list_prefix("tokens/shard-00002/c/")) == 3


def _record_completion(url: str, shard: int, start) -> None:
    start.wait()  # all workers leave the barrier together and race for the manifest lock
    Store.open(url, mode="r+").record_teacher_shard(shard, {"rows": ROWS, "by": os.getpid()})


def test_racing_completions_all_wait_their_turn_and_are_all_recorded(tmp_path):
    # a job array finishing many shards at once: every completion must land, none may fail
    workers = 32
    store = Store.open(make_store(str(tmp_path / "s.zarr"), num_shards=workers).url, mode="r+")
    store.init_teacher(teacher_manifest(store))
    context = multiprocessing.get_context("fork")
    start = context.Barrier(workers)
    processes = [context.Process(target=_record_completion, args=(store.url, s, start)) for s in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * workers
    recorded = store.teacher_manifest().shards
    assert sorted(map(int, recorded)) == list(range(workers))
    assert {recorded[str(s)]["by"] for s in range(workers)} == {p.pid for p in processes}


def test_a_waiting_lock_gets_it_once_released_and_gives_up_after_its_bound(url):
    store = make_store(url)
    holder = store.lock("teacher-manifest", "the manifest").acquire()
    with pytest.raises(LockHeld, match=r"waited 0.2s"):
        store.lock("teacher-manifest", "the manifest").acquire(wait=0.2)
    threading.Timer(0.3, holder.release).start()
    assert store.lock("teacher-manifest", "the manifest").acquire(wait=30).record["pid"] == os.getpid()


@pytest.mark.parametrize("scheme, extra", [("s3", "s3"), ("gs", "gcs"), ("az", "azure")])
def test_an_object_store_url_without_its_filesystem_names_the_pip_extra(scheme, extra):
    if importlib.util.find_spec({"s3": "s3fs", "gs": "gcsfs", "az": "adlfs"}[scheme]):
        pytest.skip(f"{scheme}'s filesystem is installed")
    for check in (Store.open, Store.exists, check_persistent):  # gs:// without gcsfs was a traceback from exists
        with pytest.raises(DaramError, match=rf"{scheme}:// stores need a package .*pip install 'daram\[{extra}\]'"):
            check(f"{scheme}://bucket/store.zarr")


def test_an_unknown_protocol_is_one_line():
    # was read as a damaged zarr.json ("rebuild the store with --overwrite")
    for check in (Store.open, Store.exists, check_persistent):
        with pytest.raises(DaramError, match=r"^nosuch://b/s.zarr: fsspec knows no protocol nosuch://"):
            check("nosuch://b/s.zarr")


def test_a_file_url_is_the_same_store_as_its_path(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(str(path))
    store = Store.open(f"file://{path}", mode="r+")
    teacher = store.init_teacher(teacher_manifest(store))
    with store.shard_lock(0):
        store.teacher_shard(0, teacher, create=True).write_chunk(0, (np.ones((RPC, SEQ, K), np.uint16), np.zeros((RPC, SEQ, K), np.float16)))
    assert Store.open(str(path)).teacher_shard(0).chunk_states().tolist() == [True, False, False]
    np.testing.assert_array_equal(store.read_tokens(1), Store.open(str(path)).read_tokens(1))


def test_a_read_only_store_is_refused_before_writing(tmp_path):
    store = make_store(str(tmp_path / "s.zarr"))
    os.chmod(store.url, 0o555)
    try:
        if os.access(store.url, os.W_OK):
            pytest.skip("running as root: permissions do not make a directory read-only")
        with pytest.raises(DaramError, match="is read-only"):
            Store.open(store.url, mode="r+")
        assert Store.open(store.url).read_tokens(0).shape == (ROWS, SEQ)  # reading is fine
    finally:
        os.chmod(store.url, 0o755)


def test_a_memory_store_is_refused_where_a_command_would_lose_it():
    check_persistent("/data/s.zarr")
    with pytest.raises(DaramError, match="memory:// stores live inside one process"):
        check_persistent("memory://s.zarr")


def test_format_v1_stores_written_before_release_still_read(url):
    # a teacher manifest without the "released" key (every v1 store so far) reads as nothing released,
    # and a manifest with nothing released is written without it, so older daram versions read it too
    store = Store.open(make_store(url).url, mode="r+")
    store.init_teacher(teacher_manifest(store))
    raw = zarr.open_group(url, mode="r")["teacher"].attrs["daram_teacher"]
    assert "released" not in raw and TeacherManifest.from_dict(raw).released == {}


def test_a_lock_that_cannot_be_written_is_one_error(url, monkeypatch):
    # a read-only store (or a full disk): the first write a writer makes is its lock
    store = make_store(url)

    def refuse(key, value):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(store.kv, "set_if_absent", refuse)
    with pytest.raises(DaramError, match=r"teacher shard 0 .*: cannot write the claim locks/teacher-shard-00000.g000000/zarr.json \(Read-only"):
        store.shard_lock(0).acquire()
