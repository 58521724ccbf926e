"""AdamW and its learning-rate schedule (``daram/pipeline/schedule.py``) over a run's steps."""

from __future__ import annotations

import torch

from daram.pipeline.schedule import lr_factor


def build_optimizer(model: torch.nn.Module, train, total_steps: int):
    """(AdamW, its LambdaLR schedule over ``total_steps``); no weight decay on biases and layer norms."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=train.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, train.warmup_steps, total_steps, train.min_lr / train.lr, train.schedule)
    )
    return optimizer, scheduler
