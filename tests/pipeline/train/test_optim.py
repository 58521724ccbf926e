"""The optimizer's parameter groups and its schedule over the run."""

from __future__ import annotations

import pytest
import torch

from daram.config import TrainConfig
from daram.pipeline.train.optim import build_optimizer


def test_no_weight_decay_on_biases_and_norms_and_the_schedule_spans_total_steps():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer, scheduler = build_optimizer(model, TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=2), total_steps=10)
    decay, no_decay = optimizer.param_groups
    assert [p.dim() for p in decay["params"]] == [2] and all(p.dim() == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[:2] == [0.5, 1.0] and lrs[-1] > 0.1 and scheduler.get_last_lr()[0] == pytest.approx(0.1)
