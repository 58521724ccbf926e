"""`daram prepare` against the bare tokenizer, worker scaling, and peak memory, from one run.

Prints, each as a ratio of marginal rates (the seconds that a corpus twice as large adds, so start-up
cancels out) measured within this run by benchmarks/harness.py (a warm-up call per side, then rounds in
rotating order; medians, spread and same-round ratios):
- line units and regex-sentence units: prepare's end-to-end MB/s on every core over the MB/s of the
  Rust tokenizer alone (``encode_batch_fast`` on every core) over the same text (target >= 0.8);
- kiwi sentence splitting: MB/s through 2 worker processes over 1 (target >= 1.7), and MB/s per core;
- peak RSS of a whole prepare (its workers included) on a 20 MB and a 200 MB generated corpus.

Each measurement runs in a fresh process, so none inherits another's threads, caches or memory.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/prepare.py [--data ../shared/data] [--rounds 3] [--kiwi-mb 0.3] [--skip-memory | --memory-only]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness import SHARED, add_timing_arguments, compare

HERE = Path(__file__).resolve()


def _one(args: argparse.Namespace) -> None:
    """A single measurement, in this (fresh) process; prints one JSON line."""
    mb = Path(args.corpus).stat().st_size / 1e6  # not read here unless needed: it would count in the peak RSS
    if args.one == "kiwi":
        from daram.pipeline.prepare.encode import BlockEncoder, EncodeSpec
        from daram.pipeline.prepare.prepare import _blocks
        from tokenizers import Tokenizer

        spec = EncodeSpec(Tokenizer.from_file(str(Path(args.tokenizer, "tokenizer.json"))).to_str(), 1, "<u2", "kiwi")
        lines = [line for line in Path(args.corpus).read_text(encoding="utf-8").splitlines() if line.strip()]
        with BlockEncoder(spec, args.workers) as encoder:
            # every worker loads kiwi first (seconds each): what is timed is splitting and tokenizing
            list(encoder.map(iter([(["워밍업 문장입니다. 두 번째 문장."], True)] * (2 * args.workers))))
            cpu_before = _cpu()
            started = time.perf_counter()
            units = sum(block.units for block in encoder.map((b, True) for b in _blocks(iter(lines))))
            seconds = time.perf_counter() - started
        assert units >= len(lines)
    elif args.one == "tokenizer":
        os.environ["RAYON_NUM_THREADS"] = str(args.workers)
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(Path(args.tokenizer, "tokenizer.json")))
        lines = [line for line in Path(args.corpus).read_text(encoding="utf-8").splitlines() if line.strip()]
        tokenizer.encode_batch_fast(lines[:2048], add_special_tokens=False)  # warm-up: the thread pool starts
        cpu_before = _cpu()
        started = time.perf_counter()
        for i in range(0, len(lines), 2048):
            tokenizer.encode_batch_fast(lines[i : i + 2048], add_special_tokens=False)
        seconds = time.perf_counter() - started
    else:
        from daram.config import load_config
        from daram.pipeline.hf import load_tokenizer
        from daram.pipeline.prepare.prepare import run_prepare

        load_tokenizer(args.tokenizer)  # imports transformers: not prepare's work on a real corpus
        with tempfile.TemporaryDirectory(dir=Path(args.corpus).parent) as tmp:
            cfg = load_config(overrides={
                "store.path": str(Path(tmp, "bench.zarr")), "prepare.tokenizer": args.tokenizer,
                "prepare.seq_len": 512, "prepare.num_shards": 4, "prepare.workers": args.workers,
                "prepare.sentence_splitter": args.splitter,
                "prepare.sources": [{"path": args.corpus, "unit": args.unit}],
            })
            cpu_before = _cpu()
            started = time.perf_counter()
            run_prepare(cfg)
            seconds = time.perf_counter() - started
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    peak_kb = sum(u.ru_maxrss for u in usage)
    cpu = sum(u.ru_utime + u.ru_stime for u in usage) - cpu_before  # this process and its workers, all threads
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "mb": mb, "mb_per_s": mb / seconds, "peak_rss_mb": peak_kb / 1024}))


def _cpu() -> float:
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def _measure(args: argparse.Namespace, corpus: Path, one: str, workers: int, unit: str = "line", splitter: str = "regex") -> dict:
    command = [sys.executable, str(HERE), "--one", one, "--corpus", str(corpus), "--tokenizer", args.tokenizer,
               "--workers", str(workers), "--unit", unit, "--splitter", splitter]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(HERE.parents[1])})
    if result.returncode != 0:
        sys.exit(f"measurement failed: {' '.join(command)}\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _corpus(lines: list[str], megabytes: float, path: Path, seed: int = 0) -> Path:
    """A generated corpus of about ``megabytes``: the real sentences, shuffled anew for each pass."""
    chance = random.Random(seed)
    target = megabytes * 1e6
    written = 0
    with path.open("w", encoding="utf-8") as out:
        while written < target:
            chance.shuffle(lines)
            for line in lines:
                out.write(line + "\n")
                written += len(line.encode()) + 1
                if written >= target:
                    break
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--text-mb", type=float, default=4, help="MB of text for the tokenizer comparison (and twice that)")
    parser.add_argument("--kiwi-mb", type=float, default=0.3, help="MB of text for the kiwi scaling runs")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true", help="only the peak RSS at 20 and 200 MB")
    add_timing_arguments(parser)
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", default="", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", default="", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--unit", default="line", help=argparse.SUPPRESS)
    parser.add_argument("--splitter", default="regex", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return _one(args)

    from daram.pipeline.prepare.encode import cpu_count

    args.tokenizer = args.tokenizer or str(Path(args.data, "tokenizers", "kogpt2-base-v2"))
    lines = Path(args.data, "korean_corpus", "sentences.txt").read_text(encoding="utf-8").splitlines()
    cores = cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        if args.memory_only:
            return _memory(args, lines, Path(tmp))
        # Marginal rates, between a corpus and one twice its size: the fixed seconds of a run (starting
        # Python, loading the tokenizer, starting the workers) cancel out, as they do on a real corpus.
        text = _corpus(list(lines), args.text_mb, Path(tmp, "text-1.txt"), seed=2)
        double = _corpus(list(lines), 2 * args.text_mb, Path(tmp, "text-2.txt"), seed=2)
        mb = (double.stat().st_size - text.stat().st_size) / 1e6
        print(f"== prepare on every core ({cores}) vs the tokenizer alone on {cores} threads: the marginal seconds of "
              f"{mb:.1f} MB more real Korean sentences, KoGPT2 tokenizer")
        cpu: dict[str, list[float]] = {}

        def side(name: str, *how) -> Callable[[], float]:
            def run() -> float:
                runs = [_measure(args, corpus, *how) for corpus in (text, double)]
                cpu.setdefault(name, []).append(runs[1]["cpu_seconds"] - runs[0]["cpu_seconds"])
                return runs[1]["seconds"] - runs[0]["seconds"]
            return run

        result = compare({
            "tokenizer alone": side("tokenizer alone", "tokenizer", cores),
            "prepare, line units": side("prepare, line units", "prepare", 0, "line"),
            "prepare, regex sentences": side("prepare, regex sentences", "prepare", 0, "sentence", "regex"),
        }, rounds=args.rounds, warmup=args.warmup, clocks=("measured",))
        print(result.summary(clocks=("measured",)))
        for name in result.names:
            print(f"  {name:<28s} {mb / result.median(name):.2f} MB/s; {mb / statistics.median(cpu[name]):.2f} MB per CPU-second "
                  "(MB/s per core, steadier under load)")
        for name in result.names[1:]:
            per_round = [1 / r for r in result.round_ratios(name)]
            print(f"  {name}: throughput / tokenizer alone = {1 / result.ratio(name):.2f} "
                  f"(same-round {min(per_round):.2f}-{max(per_round):.2f}; target >= 0.8)")

        # kiwi: the blocks of a corpus through 1 and through 2 worker processes, after each worker has
        # loaded kiwi (seconds each, once per prepare): the splitting itself, which is what scales
        kiwi_text = _corpus(list(lines), args.kiwi_mb, Path(tmp, "kiwi.txt"), seed=1)
        kiwi_mb = kiwi_text.stat().st_size / 1e6
        kiwi_cpu: list[float] = []

        def kiwi(workers: int) -> float:
            measured = _measure(args, kiwi_text, "kiwi", workers)
            if workers == 1:
                kiwi_cpu.append(measured["cpu_seconds"])
            return measured["seconds"]

        print(f"== kiwi sentence splitting (and tokenizing), 1 vs 2 worker processes: {kiwi_mb:.2f} MB")
        result = compare({"kiwi, 1 worker": lambda: kiwi(1), "kiwi, 2 workers": lambda: kiwi(2)},
                         rounds=args.rounds, warmup=args.warmup, clocks=("measured",))
        print(result.summary(clocks=("measured",)))
        per_round = [1 / r for r in result.round_ratios("kiwi, 2 workers")]
        print(f"  kiwi, 1 worker: {kiwi_mb / result.median('kiwi, 1 worker'):.3f} MB/s; "
              f"{kiwi_mb / statistics.median(kiwi_cpu):.3f} MB per CPU-second")
        print(f"  kiwi, 2 workers / 1 worker throughput = {1 / result.ratio('kiwi, 2 workers'):.2f} "
              f"(same-round {min(per_round):.2f}-{max(per_round):.2f}; target >= 1.7)")

        if not args.skip_memory:
            _memory(args, lines, Path(tmp))


def _memory(args: argparse.Namespace, lines: list[str], tmp: Path) -> None:
    print("== peak RSS of a whole prepare, line units, every core (this process and its largest worker)")
    for megabytes in (20, 200):
        corpus = _corpus(list(lines), megabytes, tmp / f"mem-{megabytes}.txt", seed=megabytes)
        measured = _measure(args, corpus, "prepare", 0, "line")
        corpus.unlink()
        print(f"  {megabytes:3d} MB corpus: peak RSS {measured['peak_rss_mb']:.0f} MB ({measured['mb_per_s']:.2f} MB/s)")

if __name__ == "__main__":
    main()
