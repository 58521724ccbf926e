"""Peak memory of the sliced KD loss / a dense KL at the same micro-batch (LM head + loss, forward and backward).

The dense loss is what a plain implementation does: ``logits = hidden @ W^T`` for the whole
micro-batch in float32, then the same bucket KL and CE as daram's, then ``backward``. The sliced
loss is `daram.pipeline.losses.sliced_distill_loss`. Both start from the same final hidden states
(B, L, H) and head weight (V, H), both with gradients, and the same stored top-k targets; the loss
values are printed to show they agree. Each call runs one variant in its own process, timed by
benchmarks/harness.py (warm-up, alternating rounds, medians and spread); the peak is the rise
of the resident set (VmHWM after resetting it through /proc/self/clear_refs) over the resident set
once the inputs exist, so it counts the loss's own working memory.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/loss_memory.py              # reference: batch 8 x 512, H 768, V 51200
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/loss_memory.py --batch 2 --seq-len 256   # quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import add_timing_arguments, compare


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(variant: str, batch: int, seq_len: int, hidden_size: int, vocab: int, k: int, loss_slice: int) -> dict:
    import torch

    from daram.pipeline.losses import DistillObjective, TopkTarget, next_token_labels, sliced_distill_loss, topk_bucket_kl

    torch.manual_seed(0)
    temperature = 2.0
    hidden = torch.randn(batch, seq_len, hidden_size, requires_grad=True)
    weight = (torch.randn(vocab, hidden_size) * 0.05).requires_grad_()
    tokens = torch.randint(0, vocab, (batch, seq_len))
    ids = torch.randint(0, vocab, (batch, seq_len, k))
    logprobs = torch.log_softmax(torch.randn(batch, seq_len, k + 1) * 2, -1)[..., :k].sort(-1, descending=True).values
    objective = DistillObjective(next_token_labels(tokens), TopkTarget(ids, logprobs), temperature, 1.0, 0.1)

    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current resident set
    baseline = _status_kib("VmRSS")
    started = time.perf_counter()
    if variant == "dense":
        logits = hidden @ weight.T  # (B, L, V) float32: the whole micro-batch at once
        log_q = torch.log_softmax(logits / temperature, -1)
        kd = topk_bucket_kl(log_q.gather(-1, ids), logprobs).mean()
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), objective.labels.flatten(), ignore_index=-100)
        loss = temperature**2 * kd + 0.1 * ce
    else:
        loss, _, _ = sliced_distill_loss(hidden, weight, objective, loss_slice)
    loss.backward()
    seconds = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    return {"variant": variant, "loss": loss.item(), "peak_mib": (peak - baseline) / 1024, "seconds": seconds,
            "grad_norm": float(hidden.grad.norm())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=51200)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--loss-slice", type=int, default=128)
    parser.add_argument("--variant", choices=("dense", "sliced"), help=argparse.SUPPRESS)  # the child process
    add_timing_arguments(parser)
    args = parser.parse_args()
    shape = (args.batch, args.seq_len, args.hidden, args.vocab, args.k, args.loss_slice)
    if args.variant:
        print(json.dumps(measure(args.variant, *shape)))
        return

    results: dict[str, list[dict]] = {"dense": [], "sliced": []}

    def child(variant: str):
        def run() -> float:
            done = subprocess.run(
                [sys.executable, __file__, "--variant", variant, *sum(([f"--{n}", str(v)] for n, v in zip(
                    ("batch", "seq-len", "hidden", "vocab", "k", "loss-slice"), shape)), [])],
                capture_output=True, text=True, check=True,
            )
            results[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = results[variant][-1]
            print(f"  {variant:>6}: peak {r['peak_mib']:8.1f} MiB over the inputs, {r['seconds']:.2f} s, "
                  f"loss {r['loss']:.6f}, |grad hidden| {r['grad_norm']:.6f}")
            return r["seconds"]  # the loss's forward and backward, not the child's start-up
        return run

    timing = compare({"dense": child("dense"), "sliced": child("sliced")}, rounds=args.rounds, warmup=args.warmup,
                     clocks=("measured",))
    logits_mib = args.batch * args.seq_len * args.vocab * 4 / 2**20
    dense, sliced = (statistics.median(r["peak_mib"] for r in results[v][args.warmup:]) for v in ("dense", "sliced"))
    print(
        f"batch {args.batch} x {args.seq_len}, hidden {args.hidden}, vocab {args.vocab}, top-{args.k} bucket + CE, "
        f"slice {args.loss_slice} positions (float32 logits of the micro-batch: {logits_mib:.0f} MiB): "
        f"peak sliced / dense = {sliced:.0f} / {dense:.0f} MiB = {sliced / dense:.3f} (medians); "
        f"time sliced / dense = {timing.ratio('sliced'):.2f}"
    )

if __name__ == "__main__":
    main()
