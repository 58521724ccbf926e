"""The draws' uniforms: a pure function of (seed, shard, chunk)."""

from __future__ import annotations

import torch

from daram.pipeline.dump.uniforms import chunk_uniforms


def test_uniforms_are_a_pure_function_of_seed_shard_and_chunk():
    first = chunk_uniforms(0, 3, 5, positions=64, draws=16)
    assert first.shape == (64, 16) and first.dtype == torch.float32
    assert 0 <= float(first.min()) and float(first.max()) < 1
    torch.manual_seed(123)  # torch's global stream plays no part
    assert torch.equal(chunk_uniforms(0, 3, 5, 64, 16), first)
    for other in ((1, 3, 5), (0, 4, 5), (0, 3, 6)):
        assert not torch.equal(chunk_uniforms(*other, 64, 16), first), other
