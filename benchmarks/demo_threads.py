"""Training speed of the demo's teacher (GPT-2, 4 layers x 128, 2,048 ids, 16 rows of 64) with one
torch thread and with one per core, alternating in one process; prints the ratio and the load average.

On a quiet machine more threads help a little; on cores another job also uses, OpenMP threads spin
waiting for each other and more threads are much slower. `daram demo` therefore uses only the idle
cores by default (demo.threads = 0).

    .venv/bin/python benchmarks/demo_threads.py [--steps 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from daram.pipeline.models import gpt2


def steps_per_s(model, optimizer, batch, steps: int) -> float:
    for i in range(steps + 2):
        if i == 2:  # two warm-up steps
            started = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    torch.manual_seed(0)
    model = gpt2(2048, n_embd=128, n_head=4, n_layer=4, n_positions=64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(0, 2048, (16, 64))
    rates = {1: [], cores: []}
    for _ in range(args.rounds):
        for threads in rates:
            torch.set_num_threads(threads)
            rates[threads].append(steps_per_s(model, optimizer, batch, args.steps))
    one, many = (sum(r) / len(r) for r in rates.values())
    print(f"1-minute load average at the end: {os.getloadavg()[0]:.2f}; {cores} cores")
    print(f"1 thread: {one:.2f} steps/s; {cores} threads: {many:.2f} steps/s; {cores} threads / 1 thread = {many / one:.2f}x")


if __name__ == "__main__":
    main()
