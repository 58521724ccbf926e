"""Format v2's teacher kind ``draws``: the decode of its one array, numpy only.

A draws dump stores, per position, ``draws`` ids drawn from the teacher's ``softmax(logits / T)``,
sorted ascending so that repeats are adjacent (``draw_ids``, the store's token dtype). Nothing else:
the counts are the lengths of the runs, so the array is plain integers that any Zarr v3 reader
returns bit for bit, and zstd (no shuffle) packs a position of a peaked teacher, whose draws
repeat a few ids, into a few bytes.
"""

from __future__ import annotations

import numpy as np


def decode_draws(draw_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64, probabilities float32), both ``(..., draws)``, from stored sorted draws.

    A distinct id holds ``count / draws`` at its first slot and its repeats hold 0 (padding), so the
    probabilities sum to 1 and are an unbiased estimate of the teacher at T.
    """
    ids = draw_ids.astype(np.int64)
    draws = ids.shape[-1]
    new = np.ones(ids.shape, dtype=bool)
    new[..., 1:] = ids[..., 1:] != ids[..., :-1]
    run = np.maximum.accumulate(np.where(new, np.arange(draws), 0), axis=-1)  # first slot of each draw's id
    counts = (run[..., :, None] == np.arange(draws)).sum(-2)  # draws that start at each slot's run
    return ids, (counts / draws).astype(np.float32)
