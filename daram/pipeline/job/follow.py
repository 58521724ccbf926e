"""``--follow``: train while other machines dump (``daram student-train --follow``, ``daram run --follow``).

The trainer is the one training run of :mod:`daram.pipeline.train.student_train` (one schedule, optimizer and data
order), fed only the shards whose dump is complete: :func:`fit` stops before a step that needs another one, and
the follower waits for it, saying which machine holds it and how far it got, then trains on. So its student
equals a run over a complete dump (equal weights on CPU). ``run.time_limit``, SIGTERM and SIGINT pause it
cleanly, waiting or training; the same command continues it.

On a remote store the shards are read through a local cache (``train.out/shard-cache``): the next complete
shards are downloaded whole on a background thread while the current one trains, within ``run.disk_budget``,
and each is evicted once training is past it.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from daram.config import Config
from daram.errors import DaramError
from daram.pipeline.pause import Pause
from daram.pipeline.train.student_train import Stop, Training, finish, fit, setup
from daram.pipeline.train.checkpoint import latest_checkpoint
from daram.storage import COMPLETE, ShardState, Store, is_local, shard_name
from daram.units import parse_duration, parse_size

POLL_S = 5.0  # how often a waiting follower looks at the store
REPORT_EVERY_S = 60.0  # a waiting follower repeats its line at most this often when nothing changes
CACHE_AHEAD = 2  # complete shards kept downloaded: the one in training and the next


@dataclass
class Follower:
    store: Store  # the store itself (states, claims), not the cache
    pause: Pause
    budget: int  # bytes of the local cache at most; 0 = no limit
    cache: object | None = None  # ShardCache on a remote store
    run: Training | None = None
    waited_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    fetching: threading.Thread | None = None
    fetch_error: BaseException | None = None
    shard_bytes: int = 0  # the largest shard fetched so far: what the next one may take
    complete: set[int] = field(default_factory=set)  # shards seen complete (they stay so)
    looked: float = float("-inf")  # when the store was last asked which shards are complete


def follow_command(cfg: Config, resume: bool | None = None, given: set[str] | None = None,
                   continue_with: str | None = None) -> dict:
    """``--follow`` under its own :class:`Pause` (SIGTERM, SIGINT, ``run.time_limit``); one process."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DaramError("--follow trains in one process; under torchrun train a complete dump without --follow")
    with Pause(parse_duration(cfg.run.time_limit)) as pause:
        return run_follow(cfg, pause, resume, given, continue_with)


def run_follow(cfg: Config, pause: Pause, resume: bool | None = None, given: set[str] | None = None,
               continue_with: str | None = None) -> dict:
    """Train in shard order while other processes dump; ``resume`` None: resume when ``train.out`` holds a
    checkpoint (``daram run``). Returns the summary (``paused`` when a pause stopped it)."""
    store = Store.open(cfg.store.path, options=cfg.store.options)
    follower = Follower(store, pause, parse_size(cfg.run.disk_budget))
    training_shards, heldout = cfg.train.split(store.manifest.num_shards)
    first = heldout if heldout >= 0 else training_shards[0]
    if not wait_for(follower, first):  # training's setup reads the dump's settings and the held-out shard
        print(f"follow: paused ({pause.reason}) before training started, waiting for shard {first}; "
              f"{continue_with or 'run the same command again to continue'}")
        return {"paused": True, "steps": 0, "waited_s": follower.waited_s}
    if resume is None:
        resume = latest_checkpoint(Path(cfg.train.out)) is not None
    run = setup(cfg, resume=resume, given=given, check_dumps=False, pause=pause)
    follower.run = run
    if not is_local(store.url):
        run.store, follower.cache = run.store.with_cache(Path(run.out) / "shard-cache")
    elif follower.budget:
        print(f"note: run.disk_budget bounds the local shard cache of a remote store; {store.url} is local and is "
              "read in place", file=sys.stderr)
    try:
        while True:
            available = complete_shards(follower)
            stop = fit(run, should_stop=lambda r: keep_cache(follower), available=available)
            if stop.kind != "shards":
                break
            needed = run.plan.shard_of(next_unreadable(run, available))  # (it may be complete by now)
            if not wait_for(follower, needed):
                run.stop = Stop("paused", pause.reason)
                break
    finally:
        if follower.fetching is not None:
            follower.fetching.join()
    share = follower.waited_s / max(time.perf_counter() - follower.started, 1e-9)
    run.say(f"follow: waited {follower.waited_s:.1f}s for shards being dumped ({share:.0%} of this session)")
    summary = finish(run, continue_with)
    return {**summary, "waited_s": follower.waited_s, "idle_share": share}


def complete_shards(follower: Follower, fresh: bool = True) -> set[int]:
    """The shards whose dump is complete; ``fresh=False`` asks the store at most once per POLL_S (between
    steps: reading every completion record costs a request per shard on object storage)."""
    if fresh or time.perf_counter() - follower.looked >= POLL_S:
        teacher = follower.store.teacher_manifest()
        if teacher is not None:
            follower.complete = {int(s) for s in teacher.shards if teacher.is_complete(int(s))}
        follower.looked = time.perf_counter()
    return follower.complete


def next_unreadable(run: Training, available: set[int]) -> int:
    """The first micro-batch from the current one that reads a shard outside ``available``."""
    micro = run.micro
    while micro < run.plan.total_batches and run.plan.shard_of(micro) in available:
        micro += 1
    return micro


def wait_for(follower: Follower, shard: int) -> bool:
    """Wait until ``shard`` is complete, saying who holds it; False when a pause came first."""
    store, pause = follower.store, follower.pause
    said, said_at = "", 0.0
    started = time.perf_counter()
    try:
        while True:
            state = store.shard_state(shard)
            if state.state == COMPLETE:
                return True
            if pause.requested():
                return False
            line = f"follow: waiting for shard {shard}: {describe_wait(store, state)}"
            if line != said or time.perf_counter() - said_at > REPORT_EVERY_S:
                print(line, file=sys.stderr, flush=True)
                said, said_at = line, time.perf_counter()
            time.sleep(POLL_S)
    finally:
        follower.waited_s += time.perf_counter() - started


def describe_wait(store: Store, state: ShardState) -> str:
    """Who holds the shard and how far it got, or that nobody does."""
    claim = store.shard_lock(state.shard)
    held = claim.holder()
    if held and not claim.is_stale(held):
        progress = held.get("progress") or f"{state.chunks_done}/{state.chunks} chunks"
        age = time.time() - float(held.get("heartbeat", 0))
        return f"held by {held.get('host')} (pid {held.get('pid')}), {progress}, heartbeat {age:.0f}s ago"
    if held:
        return (f"{state.describe()}; its claim by {held.get('host')} (pid {held.get('pid')}) is stale: a dump "
                "worker will take it over")
    return f"{state.describe()}, not claimed yet (is a `daram teacher-dump --all` running?)"


def keep_cache(follower: Follower) -> bool:
    """Between steps: evict the cached shards training is past, start downloading the next complete ones.
    Never asks the run to stop (``fit``'s ``should_stop``)."""
    cache, run = follower.cache, follower.run
    if cache is None:
        return False
    if follower.fetch_error is not None:
        error, follower.fetch_error = follower.fetch_error, None
        raise DaramError(f"follow: downloading a shard into {cache.directory} failed: {error}")
    ahead = run.shards_ahead()
    for name in cache.cached():
        if int(name.removeprefix("shard-")) not in ahead:
            cache.evict(name)
    if follower.fetching is not None and follower.fetching.is_alive():
        return False
    wanted = [s for s in ahead[:CACHE_AHEAD] if shard_name(s) not in cache.cached()]
    wanted = [s for s in wanted if s in complete_shards(follower, fresh=False)] if wanted else []
    if wanted and (not follower.budget or cache.bytes() + follower.shard_bytes <= follower.budget):
        follower.fetching = threading.Thread(target=_fetch, args=(follower, wanted[0]), name="daram-cache", daemon=True)
        follower.fetching.start()
    return False


def _fetch(follower: Follower, shard: int) -> None:
    try:
        follower.shard_bytes = max(follower.shard_bytes, follower.cache.fetch(shard_name(shard)))
    except BaseException as exc:  # surfaced on the main thread at the next step
        follower.fetch_error = exc

