"""The learning-rate schedule every daram model trains with: warm-up, then cosine or linear decay to a floor.

Shared by the students' optimizer (``train/optim.py``) and the small teachers of ``models.py``, which
sit on either side of the training package: here, neither imports the other.
"""

from __future__ import annotations

import math


def lr_factor(step: int, warmup: int, total: int, min_ratio: float, schedule: str) -> float:
    """LR multiplier at ``step`` (0-based): linear warmup to 1, then cosine or linear decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * decay
