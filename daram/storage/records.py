"""Shard completion records: each shard's completion is its own object, written once, never rewritten.

``teacher/complete/shard-N`` is a tiny Zarr group whose attributes hold the shard's statistics
(``daram_shard_complete``). It is created with the backend's exclusive create, so of any number of
machines that finish the same shard exactly one records it, and no machine ever rewrites a file that
another may be rewriting at the same moment (the teacher manifest's shard table used to be one such
file). The teacher manifest's ``shards`` table is derived: the records, over the table an older store
(format v1/v2) kept in ``teacher/zarr.json``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from daram.storage.keyvalue import KeyValue

PREFIX = "teacher/complete"
ATTR = "daram_shard_complete"


def _group(attributes: dict[str, Any]) -> bytes:
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attributes}).encode()


def record_key(name: str) -> str:
    return f"{PREFIX}/{name}/zarr.json"


def ensure_group(kv: KeyValue) -> None:
    """The parent group, so that zarr readers walk ``teacher/complete`` like any group (created once)."""
    kv.set_if_absent(f"{PREFIX}/zarr.json", _group({}))


def write_record(kv: KeyValue, name: str, stats: dict[str, Any]) -> bool:
    """Record shard ``name`` complete with ``stats``; False when it already was (by this or another writer)."""
    ensure_group(kv)
    # the token makes this writer's object its own, so a create retried after a lost answer recognises it
    return kv.set_if_absent(record_key(name), _group({ATTR: stats, "token": uuid.uuid4().hex}))


def read_records(kv: KeyValue) -> dict[int, dict[str, Any]]:
    """Every recorded shard's statistics by shard number: one listing, then the records read concurrently."""
    keys = [k for k in kv.list_prefix(f"{PREFIX}/") if k.endswith("/zarr.json") and k != f"{PREFIX}/zarr.json"]
    if not keys:
        return {}

    async def fetch() -> list:
        return list(await asyncio.gather(*(kv.store.get(k, prototype=default_buffer_prototype()) for k in keys)))

    records = {}
    for key, buf in zip(keys, sync(fetch())):
        if buf is None:  # deleted in between (a store being rebuilt): not a record
            continue
        try:
            stats = json.loads(buf.to_bytes())["attributes"][ATTR]
            shard = int(key[len(PREFIX) + 1:].split("/")[0].removeprefix("shard-"))
        except (ValueError, KeyError, TypeError):
            continue  # a damaged record is no record: the shard is judged not recorded and dumped again
        records[shard] = stats
    return records


def delete_record(kv: KeyValue, name: str) -> None:
    kv.delete(record_key(name))
