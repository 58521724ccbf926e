"""The whole `daram student-train` command, distilling from the default dump / the same command with `--alpha-kd 0`
(target <= 1.10), and where the difference goes.

Part 1, the parts (in this process, one thread, CPU time): reading and decoding a micro-batch's teacher arrays
against reading its tokens alone, and the sliced loss with the stored targets at the dump's T against CE-only,
each over the same micro-batches.

Part 2, the whole commands: `python -m daram student-train ...` run as a subprocess, start-up, data reading,
prefetcher, loss, checkpoint and export included; KD with the store's dump against `--alpha-kd 0`, alternating
through benchmarks/harness.py (a warm-up each, then rounds that rotate the order), timed in wall-clock and in
the child's CPU time.

The store: the real `prepare` of the shared Korean sentences with the KoGPT2 tokenizer, and a real
`teacher-dump` with the default settings of config.py (kind, draws, T) by ../shared/data/teachers/ko-small-sharp
(a peaked teacher, like a strong LM). `--kind topk --top-k 64 --temperature 2` measures v1's top-64 instead.

    nice -n 10 .venv/bin/python benchmarks/kd_command.py                 # 2 x 128 student, 8 x 128 rows, 20 steps
    nice -n 10 .venv/bin/python benchmarks/kd_command.py --n-layer 4 --n-embd 256 --steps 30   # the issue's shape
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import SHARED, compare


def build_store(work: Path, seq_len: int, rows: int, dump: dict) -> Path:
    from daram.config import load_config
    from daram.pipeline.prepare.prepare import run_prepare
    from daram.pipeline.dump.teacher_dump import run_teacher_dump

    lines = (SHARED / "korean_corpus" / "sentences.txt").read_text(encoding="utf-8").splitlines()
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(lines[0::2][: rows * seq_len // 6]) + "\n", encoding="utf-8")  # ~8 tokens a line
    store = work / "store.zarr"
    cfg = load_config(overrides={
        "store.path": str(store), "prepare.tokenizer": str(SHARED / "tokenizers" / "kogpt2-base-v2"),
        "prepare.seq_len": seq_len, "prepare.num_shards": 1, "prepare.rows_per_chunk": 16,
        "prepare.sources": [{"path": str(corpus), "unit": "line"}],
        "teacher.model": str(SHARED / "teachers" / "ko-small-sharp"), "teacher.device": "cpu", "teacher.dtype": "float32",
        **{f"teacher.{k}": v for k, v in dump.items() if v is not None},
    })
    run_prepare(cfg)
    run_teacher_dump(cfg, all_shards=True)
    return store


def parts(store: Path, args) -> None:
    """CPU time of reading + decoding the teacher side, and of the loss, KD vs CE-only, on the same micro-batches."""
    import numpy as np
    import torch

    from daram.pipeline.batches import BatchPlan, iter_batches
    from daram.pipeline.losses import DistillObjective, Workspace, final_hidden, head_weight, next_token_labels, sliced_distill_loss
    from daram.pipeline.models import gpt2
    from daram.pipeline.train.targets import StoredTargets
    from daram.storage import Store

    torch.set_num_threads(1)
    opened = Store.open(str(store))
    teacher = opened.teacher_manifest()
    plan = BatchPlan({0: opened.chunk_ranges(0)}, [0], 1, args.batch_size, True, 0)
    n = min(args.steps, plan.total_batches)

    def read(with_teacher: bool) -> float:
        started = time.process_time()
        for _, batch in zip(range(n), iter_batches(opened, plan, 0, with_teacher=with_teacher)):
            pass
        return (time.process_time() - started) / n

    batches = list(b for _, b in zip(range(n), iter_batches(opened, plan, 0, with_teacher=True)))
    torch.manual_seed(0)
    model = gpt2(opened.manifest.tokenizer.vocab_size, args.n_embd, args.n_head, args.n_layer)
    targets = StoredTargets(teacher, "bucket", torch.device("cpu"))

    def loss(kd: bool) -> float:
        workspace, total = Workspace(), 0.0
        for batch in batches:
            tokens = torch.from_numpy(batch.tokens)
            hidden = final_hidden(model, tokens).detach().requires_grad_()
            objective = DistillObjective(next_token_labels(tokens), targets(batch, tokens) if kd else None,
                                         teacher.temperature, 1.0 if kd else 0.0, 0.1 if kd else 1.0)
            started = time.process_time()
            value, _, _ = sliced_distill_loss(hidden, head_weight(model), objective, 128, workspace=workspace)
            value.backward()
            total += time.process_time() - started
            model.zero_grad(set_to_none=True)
        return total / len(batches)

    figures = {name: [] for name in ("read tokens", "read tokens + teacher", "loss CE-only", "loss KD")}
    for _ in range(3):  # alternate, three rounds
        figures["read tokens"].append(read(False))
        figures["read tokens + teacher"].append(read(True))
        figures["loss CE-only"].append(loss(False))
        figures["loss KD"].append(loss(True))
    medians = {k: statistics.median(v) for k, v in figures.items()}
    print(f"\nparts, CPU ms per micro-batch of {args.batch_size} x {opened.manifest.seq_len} (median of 3 rounds; "
          f"{teacher.kind}, T = {teacher.temperature:g}):")
    for name, value in medians.items():
        print(f"  {name:<24s} {1000 * value:8.1f} ms  (rounds {', '.join(f'{1000 * v:.1f}' for v in figures[name])})")
    print(f"  teacher side of reading: {1000 * (medians['read tokens + teacher'] - medians['read tokens']):.1f} ms; "
          f"loss KD / CE-only = {medians['loss KD'] / medians['loss CE-only']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the commands (OMP_NUM_THREADS)")
    parser.add_argument("--kind", help="dump kind (default: config.py's)")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--draws", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--workdir", help="keep the store here (reused when present)")
    parser.add_argument("--no-parts", action="store_true", help="time only the whole commands")
    args = parser.parse_args()

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="kd-command-")
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    store = work / "store.zarr"
    if not (store / "zarr.json").is_file():
        from daram.storage import kinds_reading

        # only the settings its kind reads: another kind's setting is refused
        dump = {"kind": args.kind, "temperature": args.temperature,
                **{k: v for k, v in (("top_k", args.top_k), ("draws", args.draws)) if args.kind in kinds_reading(k)}}
        build_store(work, args.seq_len, args.batch_size * (args.steps + 1), dump)
    if not args.no_parts:
        parts(store, args)

    runs = 0

    def command(*extra: str):
        def run():
            nonlocal runs
            runs += 1
            out = work / f"out-{runs}"
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "daram", "student-train", "--store", str(store), "--out", str(out),
                 "--shards", "0", "--heldout-shard", "-1", "--n-embd", str(args.n_embd), "--n-layer", str(args.n_layer),
                 "--n-head", str(args.n_head), "--batch-size", str(args.batch_size), "--max-steps", str(args.steps),
                 "--device", "cpu", "--set", "train.grad_accum=1", "--set", "train.eval_every=0",
                 "--set", "train.checkpoint_every=0", *extra],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**__import__("os").environ, "OMP_NUM_THREADS": str(args.threads)},
            )
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return run

    print(f"\nwhole commands: student {args.n_layer} x {args.n_embd}, micro-batches of {args.batch_size} x {args.seq_len}, "
          f"{args.steps} steps, {args.threads} thread(s)")
    compare({"ce-only (--alpha-kd 0)": command("--alpha-kd", "0"), "kd (the store's dump)": command()},
            rounds=args.rounds, warmup=1, clocks=("measured", "cpu"))  # prints the rounds, medians and ratios
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
