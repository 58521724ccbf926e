"""A dumped teacher shard's statistics: entropy and speed from the forward's per-chunk sums, what its kind
measures (captured mass, unique ids) from the stored arrays, and the one line the dump logs per shard."""

from __future__ import annotations

from typing import Any

from daram.pipeline.dump.padded_vocab import padding_stats
from daram.storage import Store, TeacherShard


def shard_stats(store: Store, target: TeacherShard) -> dict[str, Any]:
    """Per-shard statistics, as the teacher manifest records them."""
    shard, chunk_stats = target.shard, target.chunk_stats()
    positions = sum(c["positions"] for c in chunk_stats.values())
    seconds = sum(c["seconds"] for c in chunk_stats.values())
    return {
        "rows": store.shard_rows(shard),
        "tokens": positions,
        "shard_fingerprint": store.manifest.shard_fingerprints[shard],
        "entropy_mean": sum(c["entropy_sum"] for c in chunk_stats.values()) / positions,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(positions / max(seconds, 1e-9), 1),
        **padding_stats(chunk_stats.values(), positions),
        **stored_stats(store, target),
    }


def stored_stats(store: Store, target: TeacherShard) -> dict[str, Any]:
    """What the stored arrays say, read back chunk by chunk (``TeacherFormat.statistics``)."""
    blocks = (target.read_rows(lo, hi) for lo, hi in store.chunk_ranges(target.shard))
    return target.format.statistics(blocks, target.teacher)


def summary_line(target: TeacherShard, stats: dict[str, Any], wall: float) -> str:
    padding = ""
    if "padding_mass_max" in stats:
        padding = f"; mass on padding ids mean {stats['padding_mass_mean']:.2g} (max {stats['padding_mass_max']:.2g})"
    return (
        f"shard {target.shard}: {stats['tokens']:,} tokens ({stats['tokens_computed']:,} this run) in {wall:.1f}s, "
        f"{stats['tokens_per_s']:,.0f} tokens/s on {stats['device']}; {target.format.summary(stats)}{padding}; "
        f"entropy {stats['entropy_mean']:.3f} nats"
    )
