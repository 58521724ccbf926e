"""Fidelity of the stored formats: students trained with equal steps, data and seed on a small real teacher.

1. A store: the real `prepare` over ../shared/data/korean_corpus/sentences.txt with the KoGPT2 tokenizer
   (rows of 64 tokens, 8 shards of about 1,000 rows). Students train on shard 0; shard 7 is held out from everyone.
2. A teacher: a small GPT-2 over the KoGPT2 vocabulary (51,200 ids) trained briefly on shards 2-6 (with
   daram's own sliced CE loss), so its distributions are those of a real, if weak, language model.
3. The formats, each dumped by the real `teacher-dump` into its own copy of the store (same tokens):
   top-k at k = 8, 16, 64 and sampled at 16 and 50 draws.
4. Students (same shape, steps, rows, order and seed): CE-only; online full-logit KD (the teacher in the
   loop, `run_student_train(..., online_teacher=...)`); stored top-k with the `bucket` and the
   `renormalize` tail at each k; sampled at each draw count. All KD runs use alpha_kd 1, alpha_ce 0.1.
5. Every student is scored on the same held-out rows against the teacher model itself: the exact
   full-vocabulary KL at T, CE, top-1 agreement with the teacher's argmax, ECE (`heldout_metrics` with
   ``teacher_model``), so the formats are judged by one yardstick, not by their own estimates.

Columns: bytes per token of the teacher arrays on disk; held-out KL at T; held-out CE; top-1 agreement;
ECE; step time / CE-only's; the share of online KD's KL gain over CE-only kept,
``(KL_ce - KL) / (KL_ce - KL_online)``. Step times come from a separate timing phase: short runs of
every student in round-robin, the order rotated each round, on one thread, timed in process CPU time
(the medians of their per-step times, each run's first step left out). On a shared machine, wall time
swings with the other jobs' load; one thread's CPU time measures the work and barely does.

With ``--workdir``, stores, teacher and trained students found there are reused (a rerun only
evaluates and times them).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/fidelity.py --json /tmp/fidelity.json     # ~15 min on 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/fidelity.py --teacher-steps 20 --steps 10 --heldout-rows 16  # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from harness import SHARED, compare

TRAIN_SHARDS, TEACHER_SHARDS, HELDOUT = "0", range(2, 7), 7


def train_teacher(store, out: Path, layers: int, width: int, heads: int, steps: int, batch: int, lr: float) -> float:
    """A GPT-2 over the store's vocabulary, trained on random rows of the teacher shards; returns its last loss."""
    import numpy as np
    import torch

    from daram.pipeline.hf import load_tokenizer
    from daram.pipeline.models import gpt2, train_small_teacher

    tokenizer = load_tokenizer(store.manifest.tokenizer.name_or_path)
    torch.manual_seed(1234)
    model = gpt2(store.manifest.tokenizer.vocab_size, width, heads, layers, tokenizer=tokenizer)
    rows = np.concatenate([store.read_tokens(s) for s in TEACHER_SHARDS])
    curve = train_small_teacher(model, rows, steps, batch, lr, seed=1234, desc="fidelity: train teacher")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return curve[-1]["loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--teacher-layers", type=int, default=2)
    parser.add_argument("--teacher-width", type=int, default=128)
    parser.add_argument("--teacher-heads", type=int, default=4)
    parser.add_argument("--teacher-steps", type=int, default=200)
    parser.add_argument("--teacher-batch", type=int, default=16)
    parser.add_argument("--teacher-lr", type=float, default=1e-2)
    parser.add_argument("--n-embd", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-head", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--top-k", default="8,16,64")
    parser.add_argument("--draws", default="16,50")
    parser.add_argument("--heldout-rows", type=int, default=128)
    parser.add_argument("--timing-rounds", type=int, default=3)
    parser.add_argument("--timing-steps", type=int, default=4)
    parser.add_argument("--workdir", help="keep the stores, teacher and students here (default: a temporary directory)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    from daram.config import load_config
    from daram.pipeline.heldout import heldout_metrics
    from daram.pipeline.hf import load_causal_lm
    from daram.pipeline.prepare import run_prepare
    from daram.pipeline.student_train import run_student_train
    from daram.pipeline.teacher_dump import run_teacher_dump
    from daram.storage import Store

    started = time.perf_counter()
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="fidelity-")
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    base = work / "store.zarr"
    common = {
        "prepare.tokenizer": str(SHARED / "tokenizers" / "kogpt2-base-v2"), "prepare.seq_len": args.seq_len,
        "prepare.num_shards": 8, "prepare.rows_per_chunk": 64,
        "prepare.sources": [{"path": str(SHARED / "korean_corpus" / "sentences.txt"), "unit": "line"}],
    }
    if not Store.exists(str(base)):
        run_prepare(load_config(overrides={"store.path": str(base), **common}))
    store = Store.open(str(base))
    teacher_dir = work / "teacher"
    if not (teacher_dir / "model.safetensors").is_file():
        train_teacher(store, teacher_dir, args.teacher_layers, args.teacher_width, args.teacher_heads,
                      args.teacher_steps, args.teacher_batch, args.teacher_lr)
    teacher = load_causal_lm(str(teacher_dir), "float32", "cpu")
    train_shards = [0]
    train_tokens = sum(store.shard_rows(s) for s in train_shards) * args.seq_len

    # --- the formats: one store copy and one real dump each ------------------------------------------------
    formats = {f"top-{k}": {"teacher.kind": "topk", "teacher.top_k": int(k)} for k in args.top_k.split(",")}
    formats |= {f"sampled-{d}": {"teacher.kind": "sampled", "teacher.draws": int(d)} for d in args.draws.split(",")}
    stores, format_info = {}, {}
    for name, settings in formats.items():
        path = work / f"store-{name}-T{args.temperature:g}.zarr"
        if not path.exists():
            shutil.copytree(base, path)
            run_teacher_dump(load_config(overrides={
                "store.path": str(path), "teacher.model": str(teacher_dir), "teacher.temperature": args.temperature,
                "teacher.device": "cpu", "teacher.dtype": "float32", **settings,
            }), shards=TRAIN_SHARDS)
        dumped = Store.open(str(path))
        stats = dumped.teacher_manifest().shards
        format_info[name] = {
            "bytes_per_token": sum(dumped.teacher_bytes(s) for s in train_shards) / train_tokens,
            **{key: statistics.mean(stats[str(s)][key] for s in train_shards)
               for key in ("captured_mass_mean", "unique_ids_mean", "truncated_positions", "entropy_mean")
               if key in stats[str(train_shards[0])]},
        }
        stores[name] = path

    # --- the students ----------------------------------------------------------------------------------------
    runs = [("CE-only", base, {"train.alpha_kd": 0.0, "train.alpha_ce": 1.0}, None),
            ("online KD (full logits)", base, {"train.temperature": args.temperature}, str(teacher_dir))]
    for name in formats:
        if name.startswith("top-"):
            runs += [(f"{name} bucket", stores[name], {"train.tail": "bucket"}, None),
                     (f"{name} renormalize", stores[name], {"train.tail": "renormalize"}, None)]
        else:
            runs.append((name, stores[name], {}, None))
    def student_config(store_path: Path, out: Path, steps: int, settings: dict):
        return load_config(overrides={
            "store.path": str(store_path), "train.out": str(out), "train.shards": TRAIN_SHARDS, "train.heldout_shard": -1,
            "student.n_embd": args.n_embd, "student.n_head": args.n_head, "student.n_layer": args.n_layer,
            "train.batch_size": args.batch_size, "train.grad_accum": 1, "train.max_steps": steps,
            "train.lr": args.lr, "train.min_lr": args.lr / 10, "train.warmup_steps": max(1, args.steps // 10),
            "train.log_every": 10, "train.checkpoint_every": 0, "train.eval_every": 0, "train.device": "cpu",
            "train.loss_slice": args.seq_len, "train.alpha_kd": 1.0, "train.alpha_ce": 0.1, "train.seed": 0, **settings,
        })

    results = {}
    for label, store_path, settings, online in runs:
        out = work / f"students-T{args.temperature:g}" / label.replace(" ", "_").replace("(", "").replace(")", "")
        if not (out / "model.safetensors").is_file():
            shutil.rmtree(out, ignore_errors=True)
            run_student_train(student_config(store_path, out, args.steps, settings), online_teacher=online)
        student = load_causal_lm(str(out), "float32", "cpu")
        metrics = heldout_metrics(student, store, HELDOUT, args.temperature, args.heldout_rows, 16, "cpu", teacher_model=teacher)
        fmt = format_info.get(label.split(" ")[0], {})
        results[label] = {
            **{k: metrics[k] for k in ("kl", "ce", "perplexity", "top1_agreement", "ece", "kl_tokens")},
            "bytes_per_token": fmt.get("bytes_per_token", 0.0),
            "format": fmt,
        }
        print(f"{label}: KL {metrics['kl']:.4f}, CE {metrics['ce']:.3f}, top-1 {metrics['top1_agreement']:.3f}, "
              f"ECE {metrics['ece']:.4f}", flush=True)
    reference = heldout_metrics(teacher, store, HELDOUT, args.temperature, args.heldout_rows, 16, "cpu", teacher_model=teacher)

    # --- step times: short runs in round-robin (benchmarks/harness.py), so every student sees the same load -----
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    def short_run(store_path, settings, online):
        def run() -> float:
            out = work / "timing"
            shutil.rmtree(out, ignore_errors=True)
            summary = run_student_train(student_config(store_path, out, args.timing_steps + 1, settings), online_teacher=online)
            return statistics.median(summary["step_cpu_seconds"][1:])  # CPU time: the work, not the machine's load
        return run

    timing = compare({label: short_run(*rest) for label, *rest in runs}, rounds=args.timing_rounds, warmup=1,
                     unit="s/step (CPU)", clocks=("measured",))
    torch.set_num_threads(threads)
    for label in results:
        results[label]["step_s"] = timing.median(label)

    # --- the table -------------------------------------------------------------------------------------------
    ce_only, online = results["CE-only"], results["online KD (full logits)"]
    gain = ce_only["kl"] - online["kl"]
    lines = [
        "| student | bytes / token | held-out KL at T | held-out CE | top-1 agreement | ECE | step / CE-only | KL gain of online KD kept |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in results.items():
        kept = (ce_only["kl"] - r["kl"]) / gain if gain > 0 else math.nan
        r["gain_kept"] = kept
        lines.append(
            f"| {label} | {r['bytes_per_token']:.1f} | {r['kl']:.4f} | {r['ce']:.3f} | {r['top1_agreement']:.3f} | "
            f"{r['ece']:.4f} | {r['step_s'] / ce_only['step_s']:.2f} | "
            f"{kept:.0%} |"
        )
    print()
    print(
        f"teacher {args.teacher_layers}x{args.teacher_width} ({args.teacher_steps} steps): held-out CE {reference['ce']:.3f}, "
        f"ECE {reference['ece']:.4f}; T = {args.temperature}; students {args.n_layer}x{args.n_embd}, {args.steps} steps of "
        f"{args.batch_size} x {args.seq_len} tokens; held-out {reference['kl_tokens']} positions of shard {HELDOUT}; "
        f"CE-only step {ce_only['step_s']:.3f} s of CPU time on one thread (median of {args.timing_rounds} runs)"
    )
    for name, info in format_info.items():
        extra = ", ".join(f"{k} {v:.3f}" for k, v in info.items() if k != "bytes_per_token")
        print(f"  {name}: {info['bytes_per_token']:.1f} bytes/token; {extra}")
    print("\n".join(lines))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "teacher": reference, "formats": format_info,
                                               "results": results}, indent=2), encoding="utf-8")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
