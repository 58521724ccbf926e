"""Where a micro-batch's teacher targets come from: the one place to swap for another teacher source.

A :class:`TargetSource` says whether the batch reader must fetch the stored teacher arrays and turns
a batch into the loss's target (or None for CE-only). The loop never looks inside.
"""

from __future__ import annotations

from typing import Protocol

import torch

from daram.pipeline.batches import Batch
from daram.pipeline.dump_kinds import dump_kind
from daram.pipeline.losses import DenseTarget, final_hidden, head_weight
from daram.storage import TeacherManifest


class TargetSource(Protocol):
    name: str  # shown in the summary line: topk, sampled, online, ce-only
    reads_teacher: bool  # whether batches must carry the stored teacher arrays

    def __call__(self, batch: Batch, tokens: torch.Tensor): ...


class NoTargets:
    """CE-only: the teacher is never read."""

    name, reads_teacher = "ce-only", False

    def __call__(self, batch: Batch, tokens: torch.Tensor):
        return None


class StoredTargets:
    """The dumped teacher's arrays as the batch reader fetched them, made into its kind's training target
    (``dump_kinds.py``: top-k log-probs, sampled counts, or draws decoded into probabilities)."""

    reads_teacher = True

    def __init__(self, teacher: TeacherManifest, tail: str, device: torch.device) -> None:
        self.name, self.teacher, self.tail, self.device = teacher.kind, teacher, tail, device
        self.make_target = dump_kind(teacher.kind).target

    def __call__(self, batch: Batch, tokens: torch.Tensor):
        ids = torch.from_numpy(batch.teacher_ids).to(self.device, non_blocking=True)
        values = torch.from_numpy(batch.teacher_values).to(self.device, non_blocking=True)
        return self.make_target(ids, values, self.teacher, self.tail)


class OnlineTeacher:
    """A teacher model run in the loop: full-vocabulary KD, the stored teacher arrays are not read."""

    name, reads_teacher = "online", False

    def __init__(self, model, temperature: float) -> None:
        self.model, self.temperature = model, temperature

    def __call__(self, batch: Batch, tokens: torch.Tensor):
        with torch.no_grad():
            hidden = final_hidden(self.model, tokens)
        weight = head_weight(self.model)
        return DenseTarget(lambda a, b: (hidden[:, a:b] @ weight.to(hidden.dtype).T).float(), self.temperature)
