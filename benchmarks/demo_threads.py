"""Training speed of the demo's teacher (GPT-2, 4 layers x 128, 2,048 ids, 16 rows of 64) with one
torch thread and with one per core, alternating in one process (benchmarks/harness.py); prints the ratio.

On a quiet machine more threads help a little; on cores another job also uses, OpenMP threads spin
waiting for each other and more threads are much slower. `daram demo` therefore uses only the idle
cores by default (demo.threads = 0).

    .venv/bin/python benchmarks/demo_threads.py [--steps 10] [--rounds 3] [--warmup 1]
"""

from __future__ import annotations

import argparse
import os

import torch

from daram.pipeline.models import gpt2
from harness import add_timing_arguments, compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed call")
    add_timing_arguments(parser)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    torch.manual_seed(0)
    model = gpt2(2048, n_embd=128, n_head=4, n_layer=4, n_positions=64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(0, 2048, (16, 64))

    def steps_with(threads: int):
        def run() -> None:
            torch.set_num_threads(threads)
            for _ in range(args.steps):
                model(input_ids=batch, labels=batch).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        return run

    result = compare({"1 thread": steps_with(1), f"{cores} threads": steps_with(cores)},
                     rounds=args.rounds, warmup=args.warmup, clocks=("wall",))
    one, many = (args.steps / result.median(name) for name in result.names)
    print(f"1 thread: {one:.2f} steps/s; {cores} threads: {many:.2f} steps/s; "
          f"{cores} threads / 1 thread (speed) = {many / one:.2f}x")


if __name__ == "__main__":
    main()
