"""The uniforms behind a dump's draws: a pure function of (seed, shard, chunk), so a resumed or repeated chunk
draws the same ids on any device and any number of processes."""

from __future__ import annotations

import numpy as np
import torch


def chunk_uniforms(seed: int, shard: int, chunk: int, positions: int, draws: int) -> torch.Tensor:
    """``[positions, draws]`` uniforms in [0, 1), drawn on the CPU from a generator seeded with (seed, shard, chunk)."""
    state = np.random.SeedSequence([seed, shard, chunk]).generate_state(2, np.uint32)
    generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.rand(positions, draws, generator=generator)
