"""``daram release``: released shards are a state of the store, moved to any fsspec URL and back."""

import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_teacher_dump
from daram.cli import app
from daram.config import load_config
from daram.errors import DaramError
from daram.pipeline.batches import check_teacher_shards
from daram.pipeline.inspect import run_inspect, run_verify
from daram.storage import Store
from daram.units import format_size


def files_of(store_path: Path, shard: int) -> dict[str, bytes]:
    root = store_path / "teacher" / f"shard-{shard:05d}"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def dumped_store(prepared_store, tiny_teacher_dir) -> Path:
    write_teacher_dump(prepared_store, tiny_teacher_dir, width=4)
    return prepared_store


def test_release_to_a_file_url_then_restore_gives_back_the_same_bytes(dumped_store, tmp_path, capsys):
    before = files_of(dumped_store, 0)
    stats = Store.open(str(dumped_store)).teacher_manifest().shards["0"]
    away = f"file://{tmp_path / 'released.zarr'}"
    result = CliRunner().invoke(app, ["release", "--store", str(dumped_store), "--shards", "0", "--to", away])
    assert result.exit_code == 0, result.output
    assert "shard 0: released (moved to file://" in result.stdout and "1 shard released to" in result.stdout
    # the bytes freed in a unit that fits them (a small shard read "0.0 MB freed")
    assert f"), {format_size(sum(map(len, before.values())))} freed" in result.stdout
    assert not (dumped_store / "teacher" / "shard-00000").exists()
    assert files_of(tmp_path / "released.zarr", 0) == before  # moved whole

    store = Store.open(str(dumped_store))
    assert store.teacher_manifest().shards["0"] == stats  # statistics kept
    assert store.shard_state(0).state == "released" and store.shard_state(0).released_to == away
    cfg = load_config(overrides={"store.path": str(dumped_store)})
    run_inspect(cfg, sample=False)
    assert f"teacher released (moved to {away})" in capsys.readouterr().out
    assert run_verify(cfg)  # the only gap is a released shard
    assert "the only gaps are released shards (0)" in capsys.readouterr().out
    with pytest.raises(DaramError, match=rf"released: 0\).*moved to {away}: bring them back with `daram release --restore --shards 0`"):
        check_teacher_shards(store, store.teacher_manifest(), [0, 1], "student-train")

    result = CliRunner().invoke(app, ["release", "--store", str(dumped_store), "--shards", "0-1", "--restore"])
    assert result.exit_code == 0, result.output
    assert f"shard 0: restored, {format_size(sum(map(len, before.values())))}" in result.stdout and "shard 1: complete, not released; left as it is" in result.stdout
    assert files_of(dumped_store, 0) == before
    assert Store.open(str(dumped_store)).shard_state(0).state == "complete"
    assert run_verify(cfg) and "intact and complete" in capsys.readouterr().out


def test_release_to_memory_and_back_and_a_deleted_shard_cannot_be_restored(dumped_store):
    store = Store.open(str(dumped_store), mode="r+")
    before = files_of(dumped_store, 1)
    away = f"memory://released-{uuid.uuid4().hex}"
    store.release_shard(1, away)
    assert store.shard_state(1).describe() == f"released (moved to {away})"
    store.restore_shard(1)
    assert files_of(dumped_store, 1) == before and store.shard_state(1).state == "complete"

    store.release_shard(0)  # no --to: deleted
    assert store.shard_state(0).describe() == "released (deleted)"
    with pytest.raises(DaramError, match=r"released without --to \(deleted\); dump it again with `daram teacher-dump --shard 0`"):
        store.restore_shard(0)


def test_only_complete_shards_are_released(prepared_store, tiny_teacher_dir):
    write_teacher_dump(prepared_store, tiny_teacher_dir, width=4, shards=[0], complete=False)
    store = Store.open(str(prepared_store), mode="r+")
    with pytest.raises(DaramError, match=r"shard 0 is incomplete \(3/3 chunks\); only complete shards are released"):
        store.release_shard(0)
    with pytest.raises(DaramError, match="shard 1 is not dumped"):
        store.release_shard(1)
    assert store.shard_state(0).chunks_done == 3  # nothing touched


def test_a_release_killed_under_its_lock_leaves_no_lock_once_finished(dumped_store):
    # Catches the lock a SIGKILL mid-release left behind for ever: finishing that release deleted the arrays
    # without taking the shard's lock, so nothing ever removed the dead holder's record.
    import signal
    import subprocess
    import sys

    store = Store.open(str(dumped_store), mode="r+")
    store.release_shard(0)
    hold = ("import sys, time; from daram.storage import Store; "
            "Store.open(sys.argv[1], mode='r+').shard_lock(0).acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(dumped_store)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    locks = dumped_store / "locks"
    assert list(locks.glob("teacher-*"))  # the dead holder's record is there
    assert store.release_shard(0).describe() == "released (deleted)"
    assert not list(locks.glob("teacher-*"))
