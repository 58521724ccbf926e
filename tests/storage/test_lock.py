"""FileLock: flock with its holder's record; never kept alive by a forked child, taken over from a holder that is gone."""

import json
import os
import socket
import subprocess
import time

import pytest

from daram.storage import FileLock, LockHeld


def _lock(path) -> FileLock:
    return FileLock(path, "the test's lock", lambda holder: f"held by {holder}")


def _kept_by_another_process(path, record: dict) -> subprocess.Popen:
    """``path`` locked, its open descriptor kept by a process that is not ``record``'s holder: an orphan that
    inherited it, as prepare's workers did after their parent was SIGKILLed."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, json.dumps(record).encode())
    keeper = subprocess.Popen(["sleep", "60"], pass_fds=[fd])
    os.close(fd)
    return keeper


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def keepers():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def test_a_lock_whose_holder_died_is_taken_over_naming_it(tmp_path, capsys, keepers):
    # Catches the store locked forever: the holder was SIGKILLed, an orphan it forked kept the descriptor.
    path = tmp_path / "lock"
    dead = _dead_pid()
    keepers.append(_kept_by_another_process(path, {"host": socket.gethostname(), "pid": dead, "heartbeat": time.time()}))
    lock = _lock(path).acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"the lock's holder, pid {dead} on {socket.gethostname()} is gone; taking the lock over" in capsys.readouterr().err
    with pytest.raises(LockHeld, match=rf"^held by pid {os.getpid()} on {socket.gethostname()} "):
        _lock(path).acquire()  # and it is really held now
    lock.release()


def test_a_live_holder_is_never_taken_over(tmp_path, keepers):
    path = tmp_path / "lock"
    keepers.append(_kept_by_another_process(path, {"host": socket.gethostname(), "pid": os.getppid(), "command": "daram x"}))
    with pytest.raises(LockHeld, match=rf"^held by pid {os.getppid()} on {socket.gethostname()} \(daram x\)$"):
        _lock(path).acquire()


def test_another_host_is_gone_only_when_its_heartbeat_stopped(tmp_path, capsys, keepers):
    # a filesystem that shares flock between hosts shows another host's lock; only its heartbeat says it lives
    fresh, stale = tmp_path / "fresh", tmp_path / "stale"
    keepers.append(_kept_by_another_process(fresh, {"host": "other-node", "pid": 7, "heartbeat": time.time()}))
    keepers.append(_kept_by_another_process(stale, {"host": "other-node", "pid": 7, "heartbeat": time.time() - 3600}))
    with pytest.raises(LockHeld, match="pid 7 on other-node"):
        _lock(fresh).acquire()
    _lock(stale).acquire().release()
    assert "pid 7 on other-node stopped its heartbeat 60 min ago" in capsys.readouterr().err


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    # Catches prepare's workers (forked while prepare held its work directory's lock) keeping it after prepare ended.
    path = tmp_path / "lock"
    lock = _lock(path).acquire()
    ready, started = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(started, b"1")  # the fork is done, and with it what runs in a child after fork
        time.sleep(30)
        os._exit(0)
    try:
        assert os.read(ready, 1) == b"1"
        lock.release()
        _lock(path).acquire().release()  # not held by the child
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
        os.close(ready), os.close(started)
