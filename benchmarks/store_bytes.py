"""Bytes on disk per token of a teacher shard: top-k at k = 16, 32, 64, 128 and sampled dumps, against raw size.

Raw is what the arrays hold before compression: 4 bytes per kept id for top-k (uint16 id + float16
log-prob), 3 for sampled (uint16 id + uint8 count), times the width (k, or S for sampled). On disk
is everything under ``teacher/shard-00000/`` (Blosc zstd + bitshuffle, crc32c, metadata included).

How well the arrays compress depends on the teacher's distributions, so two teachers run through
the real `teacher-dump` path (`dump_shard`) over the same real rows:

- ``trained``: a small GPT-2 (2 layers, 128 wide) over the KoGPT2 vocabulary, trained here for a
  few hundred steps on the shared Korean sentences that are not in the store (context-dependent,
  Zipf-like distributions; flatter than a 1.2B teacher's);
- ``random``: the same shape, randomly initialised: nearly uniform over 51,200 ids, so the ids look
  random, the worst case for compression.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/store_bytes.py [--steps 300 --temperatures 2,1] [--teacher-dir DIR]

``--teacher-dir`` keeps the trained teacher (training takes about 15 minutes on a busy 2-core CPU)
and reuses it when the directory already holds one.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from daram.pipeline.hf import load_tokenizer
from daram.pipeline.pause import Pause
from daram.pipeline.dump.runner import TeacherRunner
from daram.pipeline.dump.teacher_dump import dump_shard
from daram.storage import Store
from dump_overhead import SHARED, build_store, random_teacher, teacher_manifest

STORE_LINES = 4000  # build_store reads the first sentences; the teacher trains on the ones after these
CONFIGS = [("topk", 16, 0), ("topk", 32, 0), ("topk", 64, 0), ("topk", 128, 0),
           ("sampled", 16, 16), ("sampled", 50, 50), ("sampled", 24, 50)]  # (kind, width, draws)


def train_teacher(steps: int, seq_len: int = 128, batch: int = 8, seed: int = 0):
    """The random teacher's shape trained on the sentences after the first STORE_LINES (`train_small_teacher`)."""
    from daram.pipeline.models import train_small_teacher

    tokenizer = load_tokenizer(str(SHARED / "tokenizers" / "kogpt2-base-v2"))
    lines = (SHARED / "korean_corpus" / "sentences.txt").read_text(encoding="utf-8").splitlines()[STORE_LINES:]
    stream = [i for ids in tokenizer(lines, add_special_tokens=False)["input_ids"] for i in (*ids, tokenizer.eos_token_id)]
    rows = np.array(stream[: len(stream) // seq_len * seq_len]).reshape(-1, seq_len)
    model = random_teacher(2, 128, 2)
    curve = train_small_teacher(model, rows, steps, batch, lr=3e-3, seed=seed, desc="store_bytes: train teacher")
    return model, float(np.mean([point["loss"] for point in curve[-50:]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rows-per-chunk", type=int, default=32)
    parser.add_argument("--temperatures", default="2,1", help="comma-separated T of the stored distributions")
    parser.add_argument("--steps", type=int, default=300, help="training steps of the `trained` teacher")
    parser.add_argument("--teacher-dir", default="", help="save the trained teacher here, or load it if present")
    args = parser.parse_args()

    teachers = {"random": random_teacher(2, 128, 2)}
    saved = Path(args.teacher_dir) if args.teacher_dir else None
    if saved is not None and (saved / "config.json").is_file():
        from transformers import AutoModelForCausalLM

        teachers["trained"] = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).eval()
        print(f"trained teacher loaded from {saved}")
    else:
        print(f"training the small teacher for {args.steps} steps (batch 8 x 128 tokens)")
        teachers["trained"], loss = train_teacher(args.steps)
        print(f"  final train loss {loss:.2f} nats (uniform: {np.log(51200):.2f})")
        if saved is not None:
            teachers["trained"].save_pretrained(saved)
    with tempfile.TemporaryDirectory() as tmp:
        base = build_store(Path(tmp, "base.zarr"), args.rows, args.seq_len, 1, args.rows_per_chunk)
        positions = base.shard_rows(0) * args.seq_len
        print(f"{base.shard_rows(0)} rows x {args.seq_len} tokens = {positions:,} positions, KoGPT2 vocab 51,200")
        print(f"{'teacher':8s} {'T':>3s} {'kind':8s} {'width':>5s} {'raw B/tok':>9s} {'disk B/tok':>10s} {'ratio':>6s}  kept")
        runs = [(float(t), name, config) for t in args.temperatures.split(",") for name in ("trained", "random") for config in CONFIGS]
        for T, name, (kind, width, draws) in runs:
            path = Path(tmp, f"{name}-{kind}-{width}-{draws}.zarr")
            shutil.copytree(base.url, path)
            store = Store.open(str(path), mode="r+")
            teacher = store.init_teacher(teacher_manifest(store, kind, width, draws, temperature=T))
            runner = TeacherRunner(teachers[name], kind, width, T, torch.device("cpu"), 8, store.manifest)
            with torch.inference_mode():
                stats = dump_shard(store, 0, teacher, runner, Pause())
            raw = width * (4 if kind == "topk" else 3)
            disk = store.teacher_bytes(0) / positions
            if kind == "topk":
                kept = f"top-{width} mass mean {stats['captured_mass_mean']:.3f}, p5 {stats['captured_mass_p5']:.3f}"
            else:
                kept = (f"{draws} draws: {stats['unique_ids_mean']:.1f} unique ids per position, "
                        f"{stats['truncated_positions'] / positions:.1%} of positions truncated")
            print(f"{name:8s} {T:3g} {kind:8s} {width:5d} {raw:9d} {disk:10.1f} {disk / raw:6.2f}  {kept}; "
                  f"entropy {stats['entropy_mean']:.2f} nats", flush=True)
            shutil.rmtree(path)


if __name__ == "__main__":
    main()
