"""Teacher-dump kinds, the torch half: each kind's dump kernel and training target, in one table.

The storage half (arrays, width, decoding, checks, statistics) is ``daram/storage/formats.py``. The dump,
the training targets and held-out scoring look a kind up here (:func:`dump_kind`) instead of branching on
its name. A kernel turns one slice of tempered logits into the kind's arrays, in the format's order; the
runner casts the values to ``value_dtypes`` on the device (less to copy), the ids to the store's token dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from daram.errors import DaramError
from daram.pipeline.dump_kernels import draws_slice, sample_slice, systematic, topk_slice
from daram.pipeline.losses import SampledTarget, SparseTarget, Target, TopkTarget
from daram.storage import TeacherManifest, teacher_format

# (z [n, vocab] float32 logits / T, overwritten; scratch buffer; uniforms [n, draws] or None; width)
#   -> (the kind's arrays for these n positions, ids first; entropy [n] of softmax(z))
Kernel = Callable[[Tensor, Tensor, Tensor | None, int], tuple[tuple[Tensor, ...], Tensor]]
# (ids int64, values float32 as ``Store.read_teacher`` gives them, the dump's manifest, train.tail) -> a loss target
TargetMaker = Callable[[Tensor, Tensor, TeacherManifest, str], Target]


@dataclass(frozen=True)
class DumpKind:
    kind: str
    kernel: Kernel
    value_dtypes: tuple[torch.dtype, ...]  # of the arrays after the ids: their stored dtypes (the format's ArraySpecs)
    target: TargetMaker


DUMP_KINDS: dict[str, DumpKind] = {}


def register(entry: DumpKind) -> DumpKind:
    DUMP_KINDS[entry.kind] = entry
    return entry


def dump_kind(kind: str) -> DumpKind:
    """The torch half of ``kind``; an unknown kind fails in ``teacher_format``, the one place that knows them."""
    teacher_format(kind)
    try:
        return DUMP_KINDS[kind]
    except KeyError:
        raise DaramError(f"teacher kind {kind!r} has no dump kernel or training target in this daram") from None


def _topk(z: Tensor, scratch: Tensor, uniforms: Tensor | None, width: int):
    ids, logprobs, entropy = topk_slice(z, scratch, width)
    return (ids, logprobs), entropy


def _sampled(z: Tensor, scratch: Tensor, uniforms: Tensor | None, width: int):
    ids, counts, entropy = sample_slice(z, scratch, uniforms, width)
    return (ids, counts), entropy


def _draws(z: Tensor, scratch: Tensor, uniforms: Tensor | None, width: int):
    drawn, entropy = draws_slice(z, scratch, uniforms)
    return (drawn,), entropy


def _systematic_draws(z: Tensor, scratch: Tensor, uniforms: Tensor | None, width: int):
    drawn, entropy = draws_slice(z, scratch, systematic(uniforms))
    return (drawn,), entropy


register(DumpKind("topk", _topk, (torch.float16,), lambda ids, values, dump, tail: TopkTarget(ids, values, tail)))
register(DumpKind("sampled", _sampled, (torch.uint8,), lambda ids, values, dump, tail: SampledTarget(ids, values, dump.draws)))
register(DumpKind("draws", _draws, (), lambda ids, values, dump, tail: SparseTarget(ids, values)))
# draws placed systematically; storage re-labels them (``DrawRanksFormat.encode``) and decodes them back to ids
register(DumpKind("draw_ranks", _systematic_draws, (), lambda ids, values, dump, tail: SparseTarget(ids, values)))
