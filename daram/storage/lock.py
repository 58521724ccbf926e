"""Advisory locks: kept inside the store (:class:`StoreLock`), so they work wherever the store lives, and
``flock`` on a local file (:class:`FileLock`: prepare's work directory, ``train.out``).

A lock is a tiny Zarr group ``locks/<name>`` whose attributes say who holds it, so plain zarr
readers walk the hierarchy without surprises and can see who is writing.

A lock is taken with the store's create-if-absent write (atomic on local disk, in memory and on S3; see
``remote.py``; elsewhere it serves one writer). Teacher shards use claims instead (``claims.py``). The holder refreshes
a heartbeat; a lock is stale when its process is gone (same host) or its heartbeat is older than
``stale_after`` seconds (another host), and a stale lock is taken over, saying whose it was.

A :class:`FileLock` is dropped by the kernel when every descriptor of it is closed, so it needs no
heartbeat on one host, but a forked child would inherit the descriptor and keep the lock after its
parent died: a forked child closes every FileLock descriptor at once (never unlocking: the parent
still holds it). A FileLock still held after its recorded holder is gone (a dead pid on this host; on
a filesystem that shares ``flock`` between hosts, a host whose heartbeat stopped) is taken over too.
"""

from __future__ import annotations

import json
import os
import random
import fcntl
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from daram.errors import DaramError
from daram.storage.keyvalue import KeyValue

STALE_AFTER_S = 15 * 60.0
POLL_FIRST_S, POLL_MAX_S = 0.01, 0.5  # waiting for a lock: jittered polls, doubling up to this


class LockHeld(DaramError):
    """Another live process holds the lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def gone_reason(record: dict[str, Any], stale_after: float) -> str | None:
    """Why the holder ``record`` names no longer holds anything ("pid 12 on h1 is gone"), or None if it may."""
    host, pid = record.get("host"), record.get("pid")
    if host == socket.gethostname():
        return None if isinstance(pid, int) and _pid_alive(pid) else f"pid {pid} on {host} is gone"
    age = time.time() - float(record.get("heartbeat", 0))
    return f"pid {pid} on {host} stopped its heartbeat {age / 60:.0f} min ago" if age > stale_after else None


def _say_taken_over(what: str, reason: str) -> None:
    print(f"daram: {what}: the lock's holder, {reason}; taking the lock over", file=sys.stderr)


class StoreLock:
    """``with StoreLock(kv, "teacher-shard-00003", what="teacher shard 3"): ...``"""

    def __init__(self, kv: KeyValue, name: str, what: str, stale_after: float = STALE_AFTER_S, wait: float = 0.0) -> None:
        self.kv = kv
        self.prefix = f"locks/{name}"
        self.key = f"{self.prefix}/zarr.json"
        self.what = what
        self.stale_after = stale_after
        self.wait = wait  # for ``with``: how long to wait for a live holder
        self.record: dict[str, Any] = {}

    def _new_record(self) -> dict[str, Any]:
        now = time.time()
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": now,
            "heartbeat": now,
            "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300],
        }

    @staticmethod
    def _encode(record: dict[str, Any]) -> bytes:
        return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"daram_lock": record}}).encode()

    def holder(self) -> dict[str, Any] | None:
        raw = self.kv.get(self.key)
        return None if raw is None else self._decode(raw)

    @staticmethod
    def _decode(raw: bytes) -> dict[str, Any]:
        try:
            return json.loads(raw)["attributes"]["daram_lock"]
        except (ValueError, KeyError, TypeError):  # a damaged lock is as good as none
            return {}

    def is_stale(self, record: dict[str, Any]) -> bool:
        return not record or gone_reason(record, self.stale_after) is not None

    def acquire(self, wait: float = 0.0) -> "StoreLock":
        """Take the lock; while a live process holds it, poll for up to ``wait`` seconds, then raise LockHeld."""
        record = self._new_record()
        deadline = time.monotonic() + wait
        pause = POLL_FIRST_S
        while True:
            try:
                created = self.kv.set_if_absent(self.key, self._encode(record))
            except OSError as exc:  # read-only store, full disk: the first write a writer makes is its lock
                raise DaramError(f"{self.what}: cannot write the lock {self.key} ({exc.strerror or exc})") from None
            if created:
                self.record = record
                return self
            raw = self.kv.get(self.key)
            if raw is None:
                continue  # released in between; try again at once
            held = self._decode(raw)
            if self.is_stale(held):
                if self.kv.delete_if_equal(self.key, raw) and held:  # its process is gone: take it over (unless another did)
                    _say_taken_over(self.what, gone_reason(held, self.stale_after) or "")
                continue
            if time.monotonic() >= deadline:
                raise LockHeld(
                    f"{self.what} is being written by pid {held.get('pid')} on {held.get('host')} "
                    f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(held.get('started', 0)))} "
                    f"({held.get('command', '?')}); lock {self.key}"
                    + (f" (waited {wait:g}s)" if wait else "")
                )
            # jitter spreads many waiters out, so they do not all retry in the same instant
            time.sleep(min(pause * random.uniform(0.5, 1.5), max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, POLL_MAX_S)

    def refresh(self) -> None:
        """Renew the heartbeat (call between chunks) so other hosts do not judge the lock stale."""
        self.record["heartbeat"] = time.time()
        self.kv.set(self.key, self._encode(self.record))

    def release(self) -> None:
        if self.record:  # only our own record is removed, never a later holder's
            self.kv.delete_if_equal(self.key, self._encode(self.record))
        self.record = {}

    def __enter__(self) -> "StoreLock":
        return self.acquire(self.wait)

    def __exit__(self, *exc: object) -> None:
        self.release()


HEARTBEAT_S = 60.0  # how often a FileLock's holder rewrites its heartbeat
_held_files: dict[int, "FileLock"] = {}  # descriptor -> the FileLock this process holds with it


def _close_in_child() -> None:
    """After fork: the child must not keep its parent's locks alive (close, never LOCK_UN: that would unlock
    the parent's too)."""
    for fd, lock in list(_held_files.items()):
        os.close(fd)
        lock.fd = None
        lock.beating = threading.Lock()
    _held_files.clear()


os.register_at_fork(after_in_child=_close_in_child)


class FileLock:
    """``flock`` on ``path`` with its holder's record in the file; ``acquire()`` or raise LockHeld(``refusal(holder)``).

    ``refusal`` turns the holder's description ("pid 12 on h1 (daram prepare ...)") into the one-line message.
    """

    def __init__(self, path: Path, what: str, refusal, stale_after: float = STALE_AFTER_S) -> None:
        self.path = Path(path)
        self.what = what
        self.refusal = refusal
        self.stale_after = stale_after
        self.fd: int | None = None
        self.beating = threading.Lock()  # a heartbeat is never written to a descriptor that release closed

    def acquire(self) -> "FileLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held = _read_record(fd)
                os.close(fd)
                reason = gone_reason(held, self.stale_after) if held else None
                if reason is None:
                    raise LockHeld(self.refusal(_describe(held))) from None
                self._take_over(held, reason)
                continue
            if _same_file(fd, self.path):
                break
            os.close(fd)  # taken over and replaced since we opened it: lock the new file
        self.fd = fd
        _held_files[fd] = self
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "heartbeat": time.time(),
                  "command": " ".join(["daram", *sys.argv[1:]])[:200]}
        _write_record(fd, record)
        # a daemon thread: it ends with the process, and a forked child has none
        threading.Thread(target=self._beat, args=(fd, record), daemon=True, name="daram-lock-heartbeat").start()
        return self

    def _beat(self, fd: int, record: dict[str, Any]) -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            with self.beating:
                if self.fd != fd:  # released
                    return
                record["heartbeat"] = time.time()
                _write_record(fd, record)

    def _take_over(self, held: dict[str, Any], reason: str) -> None:
        """Unlink the file its gone holder's orphans keep locked, once: takeovers queue on a guard file."""
        guard = os.open(self.path.with_name(self.path.name + ".takeover"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)  # held for an instant, by the process taking over
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return  # released in between: no takeover needed
            except BlockingIOError:
                if _read_record(fd) == held:  # not already taken over by another process
                    self.path.unlink()
                    _say_taken_over(self.what, reason)
            finally:
                os.close(fd)
        finally:
            os.close(guard)

    def release(self) -> None:
        with self.beating:
            if self.fd is not None:
                _held_files.pop(self.fd, None)
                os.close(self.fd)
                self.fd = None


def _read_record(fd: int) -> dict[str, Any]:
    try:
        record = json.loads(os.pread(fd, 4096, 0))
    except ValueError:  # empty (being written) or damaged: nothing to judge by
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(fd: int, record: dict[str, Any]) -> None:
    data = json.dumps(record).encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


def _describe(record: dict[str, Any]) -> str:
    if not record:
        return "another process"
    return f"pid {record.get('pid')} on {record.get('host')} ({record.get('command', '?')})"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
