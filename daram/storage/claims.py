"""Shard claims with leases: which process dumps a teacher shard, on any number of machines sharing one store.

A claim is a record created exclusively (the backend's atomic create: S3 ``If-None-Match: *``, a link on local
disk): host, pid, started, heartbeat, and a token that makes it this process's own. Its holder renews the
heartbeat from a background thread while it works. A claim is stale when its heartbeat is older than the lease
(``--lease``; heartbeats are wall-clock times of the hosts, so the lease must exceed their clock skew), or at
once when it is of this host and its process is gone.

Claims never need a conditional delete, which object stores lack: they carry a generation,
``locks/teacher-shard-N.gK``. The holder is the claim of the highest generation present. To take over a stale
claim of generation K, a process creates generation K + 1; of several that try, one succeeds. The process that
lost its claim (alive but too slow to renew, a partitioned network) finds a higher generation at its next
heartbeat or chunk and stops; should it run on regardless, the shard's completion is a write-once record
(``records.py``), so a shard is never recorded complete twice, and the chunks it writes are the same bytes
the new holder writes (a chunk is a pure function of seed, shard and chunk on one device type).

A backend without an atomic create (see ``remote.py``) serves one writer: a claim held there by another live
process is refused in one line that names the backend, instead of being trusted.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import threading
import time
import uuid
from typing import Any

from daram.errors import DaramError
from daram.storage.keyvalue import KeyValue
from daram.storage.lock import POLL_FIRST_S, POLL_MAX_S, STALE_AFTER_S, LockHeld, gone_reason

LEASE_S = STALE_AFTER_S  # a claim whose heartbeat is older than this is taken over
RENEW_EVERY = 4  # renewals per lease: three can fail (a slow network) before the claim goes stale


class ClaimLost(DaramError):
    """Another process took this claim over (its heartbeat went stale); the work under it stops."""


class ShardClaim:
    """``with ShardClaim(kv, "teacher-shard-00003", what="teacher shard 3", lease=900) as claim: ...``;
    ``claim.check()`` between units of work raises :class:`ClaimLost` once another process holds it."""

    def __init__(self, kv: KeyValue, name: str, what: str, lease: float = LEASE_S, wait: float = 0.0) -> None:
        self.kv = kv
        self.name = name
        self.what = what
        self.lease = lease
        self.wait = wait
        self.record: dict[str, Any] = {}
        self.generation = -1
        self.lost_to: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._write = threading.Lock()  # the renewer and release never write the record at the same time

    # --- the records --------------------------------------------------------------------------

    def key(self, generation: int) -> str:
        return f"locks/{self.name}.g{generation:06d}/zarr.json"

    def generations(self) -> dict[int, str]:
        """Generation -> key of every claim record present (one listing)."""
        head = f"{self.name}.g"
        found = {}
        for name in self.kv.list_dir("locks"):
            name = name.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(head) and name[len(head):].isdigit():
                found[int(name[len(head):])] = f"locks/{name}/zarr.json"
        return found

    @staticmethod
    def _encode(record: dict[str, Any]) -> bytes:
        return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"daram_lock": record}}).encode()

    @staticmethod
    def _decode(raw: bytes | None) -> dict[str, Any]:
        try:
            return json.loads(raw)["attributes"]["daram_lock"]
        except (TypeError, ValueError, KeyError):  # absent or damaged: as good as none
            return {}

    def current(self) -> tuple[int, dict[str, Any]]:
        """(generation, record) of the holder, (-1, {}) when nobody holds it."""
        present = self.generations()
        if not present:
            return -1, {}
        top = max(present)
        return top, self._decode(self.kv.get(present[top]))

    def holder(self) -> dict[str, Any] | None:
        generation, record = self.current()
        return record if generation >= 0 else None

    def is_stale(self, record: dict[str, Any]) -> bool:
        return self.stale_reason(record) is not None

    def stale_reason(self, record: dict[str, Any]) -> str | None:
        """Why the claim ``record`` no longer holds, or None: its process on this host is gone (no need to wait
        for the lease), or its heartbeat is older than the lease (any host: a hung process loses it too)."""
        if not record:
            return "a damaged record"
        reason = gone_reason(record, self.lease)
        age = time.time() - float(record.get("heartbeat", 0))
        if reason is None and age > self.lease:
            reason = f"pid {record.get('pid')} on {record.get('host')} stopped its heartbeat {age:.0f}s ago"
        return reason

    def _new_record(self) -> dict[str, Any]:
        now = time.time()
        return {
            "host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now,
            "lease": self.lease, "token": uuid.uuid4().hex,
            "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300],
            "progress": "",
        }

    # --- taking, renewing, giving back ---------------------------------------------------------

    def acquire(self, wait: float = 0.0) -> "ShardClaim":
        """Claim it: a free one at once, a stale one by taking it over; while a live process holds it, poll for
        up to ``wait`` seconds, then raise :class:`LockHeld` naming the holder."""
        deadline = time.monotonic() + wait
        pause = POLL_FIRST_S
        while True:
            generation, held = self.current()
            if generation < 0 or self.is_stale(held):
                record = self._new_record()
                try:
                    created = self.kv.set_if_absent(self.key(generation + 1), self._encode(record))
                except OSError as exc:  # read-only store, full disk: the first write a writer makes is its claim
                    raise DaramError(f"{self.what}: cannot write the claim {self.key(generation + 1)} ({exc.strerror or exc})") from None
                if created:
                    self._took(generation + 1, record, generation, held)
                    return self
                continue  # another process got there first: look again
            if not self.kv.atomic_create:
                raise DaramError(
                    f"{self.what}: held by pid {held.get('pid')} on {held.get('host')}, and {self.kv.backend} cannot "
                    "create a file exclusively, so two writers cannot share this store safely: run one writer at a "
                    "time on it, or give each machine its own shards (--worker I/N)"
                )
            if time.monotonic() >= deadline:
                raise LockHeld(self.describe_holder(held) + (f" (waited {wait:g}s)" if wait else ""))
            time.sleep(min(pause * random.uniform(0.5, 1.5), max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, POLL_MAX_S)

    def _took(self, generation: int, record: dict[str, Any], previous: int, held: dict[str, Any]) -> None:
        self.generation, self.record, self.lost_to = generation, record, None
        if previous >= 0:
            print(f"{self.what}: the claim's holder, {self.stale_reason(held) or 'gone'}; taking the claim over",
                  file=sys.stderr)
            for older, key in self.generations().items():  # the stale ones: their holders stop when they look
                if older < generation:
                    self.kv.delete_key_and_dir(key)
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="daram-claim", daemon=True)
        self._renewer.start()

    def describe_holder(self, held: dict[str, Any]) -> str:
        age = time.time() - float(held.get("heartbeat", 0))
        progress = f", {held['progress']}" if held.get("progress") else ""
        return (
            f"{self.what} is being written by pid {held.get('pid')} on {held.get('host')} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(held.get('started', 0)))}{progress} "
            f"(heartbeat {age:.0f}s ago; {held.get('command', '?')}); claim locks/{self.name}"
        )

    def check(self) -> None:
        """Raise :class:`ClaimLost` when another process has taken the claim over."""
        if self.lost_to is None:
            generation, record = self.current()
            if generation != self.generation:
                self.lost_to = record or {"host": "?", "pid": "?"}
        if self.lost_to is not None:
            raise ClaimLost(
                f"{self.what}: the claim was taken over by pid {self.lost_to.get('pid')} on {self.lost_to.get('host')} "
                f"(this process's heartbeat went stale: over {self.lease:g}s without one); it carries on with the shard"
            )

    def refresh(self, progress: str = "") -> None:
        """Renew the heartbeat now (and say how far the work got, for those who wait on it)."""
        if progress:
            self.record["progress"] = progress
        self._renew()

    def _renew(self) -> None:
        with self._write:
            if not self.record or self.lost_to is not None:
                return
            generation, record = self.current()
            if generation != self.generation:  # never write back a claim that is another's now
                self.lost_to = record or {"host": "?", "pid": "?"}
                return
            self.record["heartbeat"] = time.time()
            self.kv.set(self.key(self.generation), self._encode(self.record))

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease / RENEW_EVERY):
            try:
                self._renew()
            except Exception as exc:  # a network failure past the retries: the next renewal may succeed
                print(f"{self.what}: renewing the claim failed ({type(exc).__name__}: {exc})", file=sys.stderr)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        with self._write:
            if self.record and self.lost_to is None:
                self.kv.delete_key_and_dir(self.key(self.generation))  # ours alone: a taker uses a new generation
            self.record, self.generation = {}, -1

    def __enter__(self) -> "ShardClaim":
        return self.acquire(self.wait)

    def __exit__(self, *exc: object) -> None:
        self.release()
