"""The one way benchmarks/ times things: warm-up, alternating order, at least three rounds, medians, spread, ratios.

A benchmark hands ``compare`` its sides as callables, each doing one unit of the work it compares (an epoch,
a shard's dump, ten training steps). ``compare`` calls every side ``warmup`` times untimed, then runs
``rounds`` rounds; each round calls every side once, in an order that rotates from round to round (A B,
B A, A B, ... for two sides), so a change in the machine's load falls on both sides alike. Every call is
timed in wall-clock and in process CPU seconds (all threads); a side may instead return the seconds it
measured itself (e.g. a training run's median step time without start-up), or (seconds, CPU seconds),
which then count as its time.

It prints each round, then per side the median with its spread (min-max, and the range as a share of the
median), and each side's ratio to the baseline: the ratio of the medians, with the median and min-max of the
same-round ratios (when the load changes between rounds, the two medians can come from different rounds).
On a shared machine the spread says how far a figure can be trusted; the CPU-time ratio is usually the
steadier one.

    from harness import add_timing_arguments, compare
    result = compare({"ce-only": run_ce, "kd": run_kd}, rounds=args.rounds, warmup=args.warmup)
    result.ratio("kd")  # median kd / median ce-only
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MIN_ROUNDS = 3
# The shared data the benchmarks read (KoGPT2 tokenizer, Korean sentences, NSMC): $DARAM_SHARED_DATA, as for the
# tests, else ../shared/data beside the checkout.
SHARED = Path(os.environ.get("DARAM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
# What a side returns: nothing (the call's own times count), its measured seconds, or (seconds, CPU seconds).
Reported = float | tuple[float, float] | None


@dataclass(frozen=True)
class Timing:
    """One call of one side: its wall-clock seconds, its CPU seconds and the seconds that count."""

    wall: float  # the whole call
    cpu: float  # process CPU time of the call, or what the side returned for it
    measured: float  # what the side returned, else ``wall``


@dataclass
class Comparison:
    """Every round's timings, by side; the first side is the baseline of the ratios."""

    names: list[str]
    rounds: list[dict[str, Timing]] = field(default_factory=list)

    def times(self, name: str, clock: str = "measured") -> list[float]:
        return [getattr(round_[name], clock) for round_ in self.rounds]

    def median(self, name: str, clock: str = "measured") -> float:
        return statistics.median(self.times(name, clock))

    def ratio(self, name: str, clock: str = "measured", baseline: str | None = None) -> float:
        """Median of ``name`` / median of the baseline (the first side unless given)."""
        return self.median(name, clock) / self.median(baseline or self.names[0], clock)

    def round_ratios(self, name: str, clock: str = "measured", baseline: str | None = None) -> list[float]:
        """``name`` / baseline within each round: their min-max is the ratio's spread."""
        base = baseline or self.names[0]
        return [getattr(r[name], clock) / getattr(r[base], clock) for r in self.rounds]

    def summary(self, unit: str = "s", clocks: tuple[str, ...] = ("measured", "cpu")) -> str:
        lines = []
        for clock in clocks:
            label = {"measured": "time", "wall": "wall", "cpu": "CPU time"}[clock]
            for name in self.names:
                values = self.times(name, clock)
                median = statistics.median(values)
                spread = (max(values) - min(values)) / median if median else float("nan")
                lines.append(f"  {name:<28s} {label:>8s}: median {median:.4g} {unit} (min {min(values):.4g}, "
                             f"max {max(values):.4g}; range {spread:.0%} of the median; {len(values)} rounds)")
            for name in self.names[1:]:
                per_round = self.round_ratios(name, clock)
                lines.append(f"  {name} / {self.names[0]} ({label}) = {self.ratio(name, clock):.3f} "
                             f"(same-round ratios: median {statistics.median(per_round):.3f}, "
                             f"min {min(per_round):.3f}, max {max(per_round):.3f})")
        return "\n".join(lines)


def load_average() -> float:
    return os.getloadavg()[0]


def _timed(run: Callable[[], Reported]) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    reported = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if isinstance(reported, tuple):  # the side timed its own work in both clocks
        return Timing(wall, float(reported[1]), float(reported[0]))
    return Timing(wall, cpu, float(reported) if reported is not None else wall)


def compare(sides: dict[str, Callable[[], Reported]], rounds: int = MIN_ROUNDS, warmup: int = 1,
            unit: str = "s", clocks: tuple[str, ...] = ("measured", "cpu"), quiet: bool = False) -> Comparison:
    """Time ``sides`` (the first is the baseline) over ``rounds`` rotating rounds after ``warmup`` untimed calls."""
    if rounds < MIN_ROUNDS:
        raise SystemExit(f"--rounds {rounds}: a median and its spread need at least {MIN_ROUNDS} rounds")
    if len(sides) < 1 or warmup < 0:
        raise SystemExit("compare needs at least one side and warmup >= 0")
    names = list(sides)
    say = (lambda *_: None) if quiet else (lambda text: print(text, flush=True))
    say(f"load average {load_average():.2f} on {os.cpu_count()} cores; {warmup} warm-up call(s) per side, "
        f"{rounds} rounds, order rotating")
    for _ in range(warmup):
        for name in names:
            sides[name]()
    result = Comparison(names)
    for index in range(rounds):
        order = names[index % len(names):] + names[: index % len(names)]  # A B, B A, ... / A B C, B C A, ...
        timings = {name: _timed(sides[name]) for name in order}
        result.rounds.append({name: timings[name] for name in names})
        cells = ", ".join(
            f"{name} {timings[name].measured:.4g} {unit}" + (f" ({timings[name].cpu:.4g} s CPU)" if "cpu" in clocks else "")
            for name in order
        )
        say(f"round {index + 1}/{rounds}: {cells}  (load average {load_average():.2f})")
    say(result.summary(unit, clocks))
    return result


def add_timing_arguments(parser: argparse.ArgumentParser, rounds: int = MIN_ROUNDS, warmup: int = 1) -> None:
    """--rounds and --warmup, the same in every benchmark."""
    parser.add_argument("--rounds", type=int, default=rounds, help=f"timed rounds per side (at least {MIN_ROUNDS})")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed calls of each side before the rounds")
