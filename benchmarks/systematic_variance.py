"""Variance of the stored estimate: systematic draws (the ``draw_ranks`` kernel) against independent draws.

At a position with teacher distribution p and D draws, the estimate p_hat_i = count_i / D is unbiased either
way; the KD gradient in the student's logits is q - p_hat, so its variance is E||p_hat - p||^2, summed over ids:

- independent draws: count_i ~ Binomial(D, p_i), so the sum is (1 - sum_i p_i^2) / D;
- systematic draws (one uniform u, points (j + u) / D): count_i is D p_i rounded down or up, so
  Var(count_i) = f_i (1 - f_i) with f_i the fraction of D p_i, and the sum is sum_i f_i (1 - f_i) / D^2.

Both in closed form from the real teachers' p on real held-out text (deterministic: no timing), with a Monte
Carlo check of the systematic form through the dump's own kernel on the first positions.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/systematic_variance.py --rows 16 --draws 4,6,8,16
"""

from __future__ import annotations

import argparse

import torch


def closed_form(p: torch.Tensor, draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(independent, systematic) E||p_hat - p||^2 per position, p ``(n, V)`` float64."""
    independent = (1 - (p * p).sum(-1)) / draws
    fraction = p * draws - (p * draws).floor()
    return independent, (fraction * (1 - fraction)).sum(-1) / draws**2


def monte_carlo(p: torch.Tensor, draws: int, trials: int, seed: int = 0) -> torch.Tensor:
    """E||p_hat - p||^2 per position of systematic draws by the dump's kernel, over ``trials`` uniforms."""
    from daram.pipeline.dump_kernels import draws_slice, systematic

    g = torch.Generator().manual_seed(seed)
    n, vocab = p.shape
    z = p.float().log().repeat_interleave(trials, 0)
    drawn, _ = draws_slice(z, torch.empty_like(z), systematic(torch.rand(n * trials, draws, generator=g)))
    p_hat = torch.zeros(n * trials, vocab, dtype=torch.float64).scatter_add_(1, drawn, torch.full(drawn.shape, 1.0 / draws, dtype=torch.float64))
    return ((p_hat - p.repeat_interleave(trials, 0)) ** 2).sum(-1).view(n, trials).mean(-1)


def main() -> None:
    import numpy as np

    from fidelity import SHARED, prepare_store
    from daram.pipeline.hf import load_causal_lm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16, help="rows of 128 tokens of the held-out shard")
    parser.add_argument("--draws", default="4,6,8,16")
    parser.add_argument("--workdir", default="/tmp/daram-fidelity")
    args = parser.parse_args()
    torch.set_num_threads(1)
    store = prepare_store(__import__("pathlib").Path(args.workdir), 128)
    tokens = torch.from_numpy(store.read_tokens(7, 0, args.rows).astype(np.int64))
    print("| teacher | draws | E||p_hat - p||^2 independent | systematic | systematic / independent | Monte Carlo / closed form (systematic, 16 positions x 100 draws of u) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in ("ko-small-sharp", "ko-small"):
        teacher = load_causal_lm(str(SHARED / "teachers" / name), "float32", "cpu").eval()
        with torch.no_grad():
            p = torch.softmax(teacher(tokens).logits.flatten(0, 1).double(), -1)
        for draws in (int(d) for d in args.draws.split(",")):
            independent, systematic_ = closed_form(p, draws)
            check = float(monte_carlo(p[:16], draws, 100).mean() / systematic_[:16].mean())
            print(f"| {name} | {draws} | {float(independent.mean()):.4f} | {float(systematic_.mean()):.4f} | "
                  f"{float(systematic_.mean() / independent.mean()):.2f} | {check:.3f} |", flush=True)


if __name__ == "__main__":
    main()
