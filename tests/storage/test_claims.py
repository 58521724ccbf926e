"""Shard claims with leases (daram/storage/claims.py) and completion records (records.py), on local disk and on
a real S3 API (moto's server)."""

from __future__ import annotations

import json
import os
import time

import pytest
import zarr

from daram.errors import DaramError
from daram.storage import ClaimLost, LockHeld, Store, records
from daram.storage.claims import ShardClaim

from tests.storage.test_store import make_store, teacher_manifest


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    url = str(tmp_path / "s.zarr") if request.param == "local" else request.getfixturevalue("s3_url")
    return Store.open(make_store(url).url, mode="r+")


def stale_record(claim: ShardClaim, host: str = "other-node", age: float = 3600.0) -> bytes:
    now = time.time()
    return claim._encode({"host": host, "pid": 1, "started": now - age, "heartbeat": now - age, "token": "old",
                          "command": "daram teacher-dump --all", "progress": "3/7 chunks"})


def test_a_claim_is_exclusive_names_its_holder_and_progress_and_is_given_back(store):
    with store.shard_lock(0) as claim:
        claim.refresh(progress="2/3 chunks")
        with pytest.raises(LockHeld, match=rf"teacher shard 0 .* is being written by pid {os.getpid()} on .*, 2/3 chunks"):
            store.shard_lock(0).acquire()
        assert store.shard_lock(1).acquire().generation == 0  # shards are independent
    assert store.shard_lock(0).holder() is None
    with store.shard_lock(0) as again:
        assert again.generation == 0


def test_a_claim_is_taken_over_only_once_its_lease_has_passed(store):
    claim = store.shard_lock(0, lease=60)
    assert store.kv.set_if_absent(claim.key(0), stale_record(claim, age=30))
    with pytest.raises(LockHeld, match="other-node"):  # 30 s without a heartbeat: within a 60 s lease
        store.shard_lock(0, lease=60).acquire()
    with store.shard_lock(0, lease=20) as taken:  # past a 20 s lease: the next generation takes it over
        assert taken.generation == 1 and sorted(taken.generations()) == [1]
        assert taken.holder()["pid"] == os.getpid()


def test_a_holder_that_lost_its_claim_stops_and_never_removes_the_new_holders(store):
    slow = store.shard_lock(0, lease=3600).acquire()
    slow._stop.set()  # its renewals stop, as a frozen or partitioned machine's would
    record = json.loads(store.kv.get(slow.key(0)))["attributes"]["daram_lock"]
    store.kv.set(slow.key(0), slow._encode({**record, "heartbeat": time.time() - 7200}))
    new = store.shard_lock(0, lease=3600).acquire()
    assert new.generation == 1
    with pytest.raises(ClaimLost, match=rf"taken over by pid {os.getpid()}"):
        slow.check()
    slow.refresh()  # a late renewal writes nothing back
    slow.release()
    assert new.holder()["token"] == new.record["token"] and sorted(new.generations()) == [1]
    new.release()
    assert store.shard_lock(0).holder() is None


def test_racing_takeovers_of_one_stale_claim_let_one_through(store):
    claim = store.shard_lock(0)
    store.kv.set_if_absent(claim.key(0), stale_record(claim))
    contenders = [store.shard_lock(0, lease=60) for _ in range(4)]
    won = []
    for contender in contenders:  # each saw the same stale generation 0; generation 1 is created once
        try:
            won.append(contender.acquire())
        except LockHeld:
            pass
    assert len(won) == 1 and won[0].generation == 1
    won[0].release()


def test_a_shard_is_recorded_complete_once_and_the_manifest_table_is_derived(store):
    teacher = store.init_teacher(teacher_manifest(store))
    assert store.record_teacher_shard(1, {"rows": 10, "by": "first"})
    assert not store.record_teacher_shard(1, {"rows": 10, "by": "second"})  # another machine finished it too
    assert store.teacher_manifest().shards == {"1": {"rows": 10, "by": "first"}}
    # the shard table is not kept in teacher/zarr.json: nothing there is rewritten per shard
    assert zarr.open_group(store.root.store, path="teacher", mode="r").attrs["daram_teacher"]["shards"] == {}
    assert records.read_records(store.kv) == {1: {"rows": 10, "by": "first"}}
    assert teacher.shards == {}


def test_a_v2_store_with_the_table_in_its_manifest_reads_as_before(tmp_path):
    # stores written before completion records keep every shard's stats in teacher/zarr.json
    store = Store.open(make_store(str(tmp_path / "s.zarr")).url, mode="r+")
    old = teacher_manifest(store, shards={"0": {"rows": 10, "by": "v2"}})
    store.root.require_group("teacher").attrs["daram_teacher"] = old.to_dict()
    assert store.teacher_manifest().shards == {"0": {"rows": 10, "by": "v2"}}
    assert store.init_teacher(teacher_manifest(store)).shards == {"0": {"rows": 10, "by": "v2"}}  # resumes it
    assert store.record_teacher_shard(1, {"rows": 10, "by": "record"})
    assert store.teacher_manifest().shards == {"0": {"rows": 10, "by": "v2"}, "1": {"rows": 10, "by": "record"}}


def test_a_damaged_claim_is_no_claim(store):
    claim = store.shard_lock(0)
    store.kv.set_if_absent(claim.key(0), b"{not json")
    with store.shard_lock(0) as taken:
        assert taken.generation == 1


def test_a_lease_must_be_a_duration(tmp_path):
    from daram.config import load_config
    from daram.pipeline.dump.teacher_dump import setup_dump

    cfg = load_config(overrides={"store.path": str(tmp_path / "none.zarr"), "teacher.lease": "0s"})
    with pytest.raises(DaramError, match="teacher.lease must be > 0, got '0s'"):
        setup_dump(cfg, None, None, True, pause=None)
    cfg = load_config(overrides={"store.path": str(tmp_path / "none.zarr"), "teacher.lease": ""})
    with pytest.raises(DaramError, match="teacher.lease '': give a duration, e.g. 15m"):
        setup_dump(cfg, None, None, True, pause=None)
