"""One process, or one rank of a ``torchrun`` job: who writes, and how ranks agree."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from daram.pipeline.hf import resolve_device


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
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world, device)


def stop_distributed(dist: Distributed) -> None:
    if dist.world > 1 and torch.distributed.is_initialized():
        # Every rank reaches this point before any tears its connections down: a rank that destroys the
        # group while a peer still talks to it can abort the peer in gloo ("terminate called without an
        # active exception", SIGABRT).
        torch.distributed.barrier()
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
