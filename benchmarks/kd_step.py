"""Step time of `student-train` with stored top-64 logits / the same run CE-only (target <= 1.15).

Both runs are the same `run_student_train` call on the same store, rows, seed and student (the
reference shape 768/8/4, vocabulary 51,200); the CE-only run sets alpha_kd = 0, so it never opens
the teacher arrays. The store is built by the real `prepare` from the shared Korean sentences and
dumped by the real `teacher-dump` (a small random GPT-2 teacher over the KoGPT2 vocabulary; its
quality does not change the student's step time). benchmarks/harness.py times them: a warm-up run
each, then rounds that alternate which run goes first so both see the same machine load; a run counts
its median step time (its first step, which pays for allocations and the first reads, left out), and
the ratio is of the medians over the rounds.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/kd_step.py                  # batch 2 x 256, 6 steps, 3 rounds
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/kd_step.py --n-embd 64 --n-layer 2 --n-head 2 --steps 4   # quick
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from harness import SHARED, add_timing_arguments, compare



def build_store(work: Path, seq_len: int, rows: int, top_k: int) -> Path:
    """A store of one shard with at least ``rows`` rows, and a top-k dump of a small random teacher."""
    import torch
    from transformers import AutoTokenizer

    from daram.config import load_config
    from daram.pipeline.models import gpt2
    from daram.pipeline.prepare.prepare import run_prepare
    from daram.pipeline.dump.teacher_dump import run_teacher_dump

    tokenizer_dir = SHARED / "tokenizers" / "kogpt2-base-v2"
    lines = (SHARED / "korean_corpus" / "sentences.txt").read_text(encoding="utf-8").splitlines()
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(lines[: rows * seq_len // 6]) + "\n", encoding="utf-8")  # ~8 tokens a sentence
    teacher_dir = work / "teacher"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    gpt2(len(tokenizer), n_embd=64, n_head=2, n_layer=2).save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    store = work / "store.zarr"
    cfg = load_config(overrides={
        "store.path": str(store), "prepare.tokenizer": str(tokenizer_dir), "prepare.seq_len": seq_len,
        "prepare.num_shards": 1, "prepare.rows_per_chunk": 16, "prepare.sources": [{"path": str(corpus), "unit": "line"}],
        "teacher.model": str(teacher_dir), "teacher.top_k": top_k, "teacher.kind": "topk", "teacher.device": "cpu",
        "teacher.dtype": "float32",
    })
    manifest = run_prepare(cfg)
    if manifest.rows_per_shard[0] < rows:
        raise SystemExit(f"corpus gave {manifest.rows_per_shard[0]} rows, fewer than {rows}")
    run_teacher_dump(cfg, all_shards=True)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-embd", type=int, default=768)
    parser.add_argument("--n-head", type=int, default=8)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    add_timing_arguments(parser)  # a round: one run of each
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--loss-slice", type=int, default=128)
    args = parser.parse_args()

    from daram.config import load_config
    from daram.pipeline.train.student_train import run_student_train

    with tempfile.TemporaryDirectory(prefix="kd_step-") as tmp:
        work = Path(tmp)
        store = build_store(work, args.seq_len, args.batch_size * args.steps, args.top_k)
        runs = iter(range(10**6))

        def train(name: str):
            def run() -> tuple[float, float]:
                out = work / f"{name}-{next(runs)}"
                cfg = load_config(overrides={
                    "store.path": str(store), "train.out": str(out), "train.shards": "0", "train.heldout_shard": -1,
                    "student.n_embd": args.n_embd, "student.n_head": args.n_head, "student.n_layer": args.n_layer,
                    "train.batch_size": args.batch_size, "train.grad_accum": 1, "train.max_steps": args.steps,
                    "train.log_every": 1, "train.checkpoint_every": 0, "train.eval_every": 0, "train.device": "cpu",
                    "train.loss_slice": args.loss_slice, "train.alpha_kd": 1.0 if name == "kd" else 0.0,
                    "train.alpha_ce": 0.1 if name == "kd" else 1.0, "train.shuffle": False,
                })
                summary = run_student_train(cfg)
                # the first step pays for allocations and the first reads: left out
                steps, cpu = summary["step_seconds"][1:], summary["step_cpu_seconds"][1:]
                return statistics.median(steps), statistics.median(cpu)
            return run

        result = compare({"CE-only": train("ce"), "KD, stored top-k": train("kd")}, rounds=args.rounds,
                         warmup=args.warmup, unit="s/step")
    import torch

    kd, ce = result.median("KD, stored top-k"), result.median("CE-only")
    kd_cpu, ce_cpu = result.median("KD, stored top-k", "cpu"), result.median("CE-only", "cpu")
    print(
        f"student {args.n_embd}/{args.n_head}/{args.n_layer}, vocab 51200, batch {args.batch_size} x {args.seq_len}, "
        f"top-{args.top_k} bucket, fp32 on CPU ({torch.get_num_threads()} threads): step with stored logits / CE-only = "
        f"{kd:.3f} / {ce:.3f} s = {kd / ce:.3f} wall, {kd_cpu:.3f} / {ce_cpu:.3f} s = {kd_cpu / ce_cpu:.3f} CPU time "
        f"(medians over {args.rounds} runs of each run's median step; target <= 1.15)"
    )

if __name__ == "__main__":
    main()
