"""Format v2's draws kind: the numpy decode against a direct count, and a real dump through the store."""

from __future__ import annotations

import numpy as np
import pytest

from daram.storage.draws import decode_draws


def test_decode_gives_each_distinct_id_its_count_at_its_first_slot():
    rng = np.random.default_rng(0)
    draws = np.sort(rng.choice([3, 7, 7, 9, 50000], size=(5, 6, 8)), axis=-1).astype(np.uint16)
    ids, p = decode_draws(draws)
    assert ids.dtype == np.int64 and p.dtype == np.float32 and p.shape == draws.shape
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    for position, probs in zip(draws.reshape(-1, 8), p.reshape(-1, 8)):
        unique, counts = np.unique(position, return_counts=True)
        first = np.searchsorted(position, unique)  # the first slot of each distinct id
        expected = np.zeros(8, dtype=np.float32)
        expected[first] = counts / 8
        np.testing.assert_array_equal(probs, expected)  # repeats hold 0; ids above 32,767 stay unsigned


def test_a_position_of_one_repeated_id_is_certain():
    ids, p = decode_draws(np.full((1, 1, 4), 12, dtype=np.uint16))
    assert ids.tolist() == [[[12] * 4]] and p.tolist() == [[[1.0, 0.0, 0.0, 0.0]]]
