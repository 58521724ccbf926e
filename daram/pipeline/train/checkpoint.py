"""Checkpoints of a training run: ``checkpoints/step-N/`` holds ``state.pt`` (rank 0: weights, optimizer,
schedule, scaler, data position, signature), ``rng-rank{R}.pt`` (every rank's RNG streams) and
``settings.json`` (the run's settings, readable before anything heavy loads: ``--resume`` starts from them).

A checkpoint is written into ``.step-N.tmp`` and renamed when whole, so one that exists is always
complete; a kill before the rename leaves only the temporary directory, which :func:`latest_checkpoint`
ignores and the next save replaces. The last :data:`KEEP` are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from daram.errors import DaramError
from daram.pipeline.train.distributed import Distributed

CHECKPOINTS = "checkpoints"
SETTINGS = "settings.json"
KEEP = 2


def rng_state() -> dict:
    """Every RNG a step draws from (dropout: torch; anything else: numpy, random), as tensors torch.load
    accepts with ``weights_only=True``."""
    state = {"torch": torch.get_rng_state(), "numpy": list(np.random.get_state()), "python": random.getstate()}
    state["numpy"][1] = torch.from_numpy(state["numpy"][1].astype(np.int64))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(out: Path, step: int) -> Path:
    return Path(out) / CHECKPOINTS / f"step-{step:08d}"


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted((Path(out) / CHECKPOINTS).glob("step-*"))
    return found[-1] if found else None


def save_checkpoint(out: Path, step: int, dist: Distributed, state: dict[str, Any], settings: dict | None = None) -> Path | None:
    """Write ``state`` (rank 0's), ``settings`` and every rank's RNG state as the checkpoint of ``step``; all
    ranks call this. Returns the directory, or None when that step's checkpoint already exists (a run resumed
    at its end)."""
    root = Path(out) / CHECKPOINTS
    final = checkpoint_path(out, step)
    tmp = root / f".{final.name}.tmp"
    if final.exists():
        return None
    try:
        if dist.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        _write(tmp / f"rng-rank{dist.rank}.pt", rng_state())
        dist.barrier()
        if dist.main:
            _write(tmp / "state.pt", state)
            if settings is not None:
                with (tmp / SETTINGS).open("w", encoding="utf-8") as handle:
                    json.dump(settings, handle, indent=1, sort_keys=True)
                    handle.flush()
                    os.fsync(handle.fileno())
            _fsync_dir(tmp)
            tmp.rename(final)
            _fsync_dir(root)
            for old in sorted(root.glob("step-*"))[:-KEEP]:
                shutil.rmtree(old)
    except OSError as exc:  # a full disk, a read-only mount: the checkpoints already written stay whole
        raise DaramError(
            f"{final}: cannot write the checkpoint ({exc.strerror or type(exc).__name__}); the earlier checkpoints "
            "are intact"
        ) from None
    dist.barrier()
    return final


def load_checkpoint(path: Path, dist: Distributed) -> tuple[dict, dict]:
    """(rank 0's state, this rank's RNG state) of the checkpoint at ``path``; a bad one is a DaramError."""
    try:
        state = torch.load(path / "state.pt", map_location=dist.device, weights_only=True)
        # a rank the checkpointed run did not have (resumed on more ranks) takes rank 0's streams: they feed
        # only dropout, so such a run continues exactly only without dropout (the default)
        mine = path / f"rng-rank{dist.rank}.pt"
        rng = torch.load(mine if mine.is_file() else path / "rng-rank0.pt", weights_only=True)
    except FileNotFoundError as exc:
        raise DaramError(f"--resume: {path} lacks {Path(exc.filename).name} (an interrupted copy?)") from None
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]  # torch's unpickling errors run to a page
        raise DaramError(f"--resume: cannot read {path}: {type(exc).__name__}: {first_line}") from None
    return state, rng


def read_settings(path: Path) -> dict | None:
    """The settings saved with the checkpoint at ``path`` (None for one written before they were)."""
    try:
        return json.loads((Path(path) / SETTINGS).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DaramError(f"--resume: cannot read {Path(path) / SETTINGS}: {exc}") from None


def check_signature(saved: dict, current: dict) -> None:
    """Refuse to resume when anything that changes what is computed differs, naming the key and both values."""
    current = json.loads(json.dumps(current))  # tuples -> lists, as the saved one went through JSON
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            raise DaramError(
                f"--resume: {key} was {saved.get(key)!r} in the checkpointed run and is {current.get(key)!r} now; "
                "resume with the same setting, or start a new run in another --out"
            )


def checkpoint_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


def _write(path: Path, obj) -> None:
    with path.open("wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
