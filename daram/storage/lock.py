"""Advisory locks kept inside the store, so they work wherever the store lives.

A lock is a tiny Zarr group ``locks/<name>`` whose attributes say who holds it, so plain zarr
readers walk the hierarchy without surprises and can see who is writing.

A lock is taken with the store's create-if-absent write (atomic on local disk and in memory; on
object stores it is best effort, so give each machine its own shards there). The holder refreshes
a heartbeat; a lock is stale when its process is gone (same host) or its heartbeat is older than
``stale_after`` seconds (another host), and a stale lock is taken over.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import time
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
        if not record:
            return True
        if record.get("host") == socket.gethostname():
            return not _pid_alive(int(record.get("pid", -1)))
        return time.time() - float(record.get("heartbeat", 0)) > self.stale_after

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
                self.kv.delete_if_equal(self.key, raw)  # its process is gone: take it over (unless another did)
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
