"""Distributed helpers across two real gloo processes: DDP averages the accumulated gradients, ranks agree."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from daram.pipeline.train.distributed import (
    Distributed, exit_rank, no_sync, start_distributed, stop_distributed, wrap_for_ddp,
)


def test_one_process_is_its_own_world():
    dist = Distributed()
    assert dist.main and dist.mean([1.0, 2.0]) == [1.0, 2.0] and dist.any(True) and not dist.any(False)
    module = torch.nn.Linear(2, 2)
    assert wrap_for_ddp(module, dist) is module
    with no_sync(module, sync=False):  # a plain module has nothing to defer
        pass


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist = start_distributed("cpu")
    torch.manual_seed(0)  # the same initial weights on both ranks
    net = torch.nn.Linear(4, 1)
    local = copy.deepcopy(net)  # the same network without DDP: this rank's own gradient
    wrapped = wrap_for_ddp(net, dist)
    generator = torch.Generator().manual_seed(rank + 1)  # each rank its own data
    for i in range(3):  # gradient accumulation over three micro-batches; the all-reduce only on the last
        x = torch.randn(5, 4, generator=generator)
        with no_sync(wrapped, sync=i == 2):
            wrapped(x).pow(2).mean().backward()
        local(x).pow(2).mean().backward()
    torch.save({
        "ddp": [p.grad for p in net.parameters()], "local": [p.grad for p in local.parameters()],
        "mean": dist.mean([float(rank), 2.0]), "any": dist.any(rank == 1), "none": dist.any(False),
    }, os.path.join(out, f"rank{rank}.pt"))
    stop_distributed(dist)
    exit_rank(0)  # as `daram` does on a rank: leave before the interpreter's shutdown, which gloo can abort


@pytest.mark.slow  # two processes importing torch: about 20 s on a busy 2-core machine
def test_ddp_averages_accumulated_gradients_across_two_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for g0, g1, l0, l1 in zip(r0["ddp"], r1["ddp"], r0["local"], r1["local"]):
        assert not torch.allclose(l0, l1)  # the ranks' own gradients differ...
        torch.testing.assert_close(g0, (l0 + l1) / 2)  # ...and DDP leaves both with their mean
        torch.testing.assert_close(g1, g0)
    assert r0["mean"] == r1["mean"] == [0.5, 2.0]
    assert r0["any"] and r1["any"] and not r0["none"] and not r1["none"]  # a stop on one rank stops both
