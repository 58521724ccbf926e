"""``daram release``: free the disk of complete teacher shards, moving them elsewhere or deleting them,
and ``daram release --restore``: bring moved shards back.

A released shard is a state of the store, not a missing directory: the teacher manifest keeps its
statistics and where it went; ``inspect`` and ``verify`` report it released; ``teacher-dump`` dumps it
again (bit-identical on CPU); ``student-train`` refuses it, saying where it is and how to bring it back.
"""

from __future__ import annotations

from daram.config import Config, parse_shards
from daram.errors import DaramError
from daram.storage import RELEASED, Store, check_persistent
from daram.text import plural
from daram.units import format_size


def run_release(cfg: Config, shards: str, to: str | None = None, restore: bool = False, source: str | None = None) -> list[int]:
    """Release (or restore) the selected shards; returns the shards whose state this run changed."""
    store = Store.open(cfg.store.path, mode="r+", options=cfg.store.options)
    selection = parse_shards(shards, store.manifest.num_shards, "--shards")
    if restore:
        if to:
            raise DaramError("--to is for releasing; --restore brings shards back from where they went (or --from URL)")
        return _restore(store, selection, source)
    if source:
        raise DaramError("--from is for --restore")
    if to:
        check_persistent(to)
        if to.rstrip("/") == store.url.rstrip("/"):
            raise DaramError(f"--to {to} is the store itself; give another place")
    changed = []
    for shard in selection:
        before = store.shard_state(shard)
        if before.state == RELEASED:
            print(f"shard {shard}: already released ({before.describe()})")
            store.release_shard(shard, to)  # tidies what an interrupted release left behind
            continue
        freed = store.teacher_bytes(shard)
        after = store.release_shard(shard, to)
        changed.append(shard)
        print(f"shard {shard}: {after.describe()}, {format_size(freed)} freed")
    print(f"release: {store.url}: {plural(len(changed), 'shard')} released" + (f" to {to}" if to and changed else ""))
    return changed


def _restore(store: Store, selection: list[int], source: str | None) -> list[int]:
    changed = []
    for shard in selection:
        if store.shard_state(shard).state != RELEASED:
            print(f"shard {shard}: {store.shard_state(shard).describe()}, not released; left as it is")
            continue
        store.restore_shard(shard, source)
        changed.append(shard)
        print(f"shard {shard}: restored, {format_size(store.teacher_bytes(shard))}")
    print(f"release --restore: {store.url}: {plural(len(changed), 'shard')} restored")
    return changed
