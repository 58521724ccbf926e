"""One process, or one rank of a ``torchrun`` job: who writes, and how ranks agree."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch

from daram.pipeline.hf import resolve_device
from daram.pipeline.parent_death import die_with_parent


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0 alone writes metrics, checkpoints and the model."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def mean(self, values: list[float]) -> list[float]:
        """Values averaged over ranks (every rank must call this at the same point)."""
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return (tensor / self.world).tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank: a stop request must reach all ranks at once,
        or the others would wait forever in the next step's gradient all-reduce."""
        if self.world == 1:
            return flag
        tensor = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return bool(tensor.item())


def start_distributed(device_setting: str) -> Distributed:
    """One process, or (under torchrun, ``WORLD_SIZE`` > 1) this rank: gloo on CPU, nccl on GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_setting)
    if world == 1:
        return Distributed(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    die_with_parent(os.getppid())  # the launcher (torchrun's agent): killed, it cannot stop its ranks any more
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    global GROUP_STARTED
    GROUP_STARTED = True
    return Distributed(rank, world, device)


GROUP_STARTED = False  # whether this process joined a process group: it then ends with exit_rank


def exit_rank(code: int) -> NoReturn:
    """End a rank's process now, without the interpreter's shutdown (its output flushed, its files closed).

    gloo's worker threads free each finished collective after the caller has moved on, and freeing one
    that holds a tensor made in Python takes the GIL. If the interpreter is shutting down by then, the
    thread is made to exit mid-destructor and the process aborts ("terminate called without an active
    exception", SIGABRT; core dumps of the DDP test show exactly this, in about 1 run of 40). Destroying
    the group does not join those threads, so the rank leaves before the interpreter's shutdown begins.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def stop_distributed(dist: Distributed) -> None:
    if dist.world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()  # no rank tears its connections down while a peer still uses them
        torch.distributed.destroy_process_group()


def wrap_for_ddp(module: torch.nn.Module, dist: Distributed) -> torch.nn.Module:
    """DDP averages the gradients of ``module`` across ranks in backward; one process gets it unwrapped."""
    if dist.world == 1:
        return module
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[dist.device.index] if dist.device.type == "cuda" else None
    )


def no_sync(module: torch.nn.Module, sync: bool):
    """A context in which backward skips DDP's all-reduce (all but the last micro-batch of a step: the
    gradients accumulate locally and are averaged once); a plain context without DDP or when ``sync``."""
    if sync or not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return module.no_sync()
