"""Checkpoints: RNG streams restored exactly, atomic and pruned saves, signature mismatches named."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from daram.errors import DaramError
from daram.pipeline.train.checkpoint import (
    check_signature,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    read_settings,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from daram.pipeline.train.distributed import Distributed


def _draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_state_restores_every_stream():
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    state = rng_state()
    first = _draws()
    _draws()  # move every stream on
    set_rng_state(state)
    assert _draws() == first


def test_save_is_atomic_pruned_and_loads_back(tmp_path):
    dist = Distributed()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, dist, {"step": step, "weights": torch.full((2,), float(step))},
                        settings={"train": {"lr": 0.001 * step}})
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002", "step-00000003"]  # the last two are kept
    # A save torn before its rename leaves a hidden temporary directory, which is never taken for a checkpoint.
    (root / ".step-00000004.tmp").mkdir()
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 3)
    state, rng = load_checkpoint(checkpoint_path(tmp_path, 3), dist)
    assert state["step"] == 3 and torch.equal(state["weights"], torch.full((2,), 3.0)) and "torch" in rng
    assert read_settings(checkpoint_path(tmp_path, 3)) == {"train": {"lr": 0.003}}
    assert save_checkpoint(tmp_path, 3, dist, {"step": 3}) is None  # an existing step is never overwritten


def test_a_damaged_or_foreign_checkpoint_is_a_one_line_error(tmp_path):
    dist = Distributed()
    path = save_checkpoint(tmp_path, 1, dist, {"step": 1})
    (path / "rng-rank0.pt").unlink()
    with pytest.raises(DaramError, match="lacks rng-rank0.pt"):
        load_checkpoint(path, dist)
    path = save_checkpoint(tmp_path, 2, dist, {"step": 2})
    (path / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DaramError, match=r"cannot read .*step-00000002: UnpicklingError") as error:
        load_checkpoint(path, dist)
    assert "\n" not in str(error.value)


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_the_earlier_ones(tmp_path):
    dist = Distributed()
    save_checkpoint(tmp_path, 1, dist, {"step": 1})
    (tmp_path / "checkpoints" / ".step-00000002.tmp").write_text("")  # in the way, as a full disk would be
    with pytest.raises(DaramError, match=r"step-00000002: cannot write the checkpoint \(.*\); the earlier checkpoints"):
        save_checkpoint(tmp_path, 2, dist, {"step": 2})
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 1)


def test_signature_mismatch_names_the_key_and_both_values():
    check_signature({"train.lr": 0.001, "shape": [1, 2]}, {"train.lr": 0.001, "shape": (1, 2)})  # tuples went through JSON
    with pytest.raises(DaramError, match=r"train.lr was 0.001 in the checkpointed run and is 0.002 now"):
        check_signature({"train.lr": 0.001}, {"train.lr": 0.002})
