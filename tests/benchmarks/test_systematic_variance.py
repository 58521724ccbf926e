"""benchmarks/systematic_variance.py: its closed forms are the real variances (Monte Carlo through the dump's own
kernel), and systematic draws never have more variance than independent ones on these positions."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from systematic_variance import closed_form, monte_carlo  # noqa: E402


def test_the_printed_variances_are_the_real_ones_and_systematic_is_lower():
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([6.0, 3.0, 1.5, 0.5])[:, None]  # sharp to flat
    p = torch.softmax((torch.randn(4, 50, generator=g) * scales).double(), -1)
    for draws in (3, 6):
        independent, systematic = closed_form(p, draws)
        measured = monte_carlo(p, draws, 4000)
        assert torch.allclose(measured, systematic, rtol=0.08, atol=1e-4), (measured, systematic)
        assert (systematic <= independent + 1e-12).all() and (systematic < 0.9 * independent).any()
