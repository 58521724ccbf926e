"""Fine-tune seconds per epoch of the reference student shape (768/8/4) over the KoGPT2 shape (768/12/12).

Both models are randomly initialised GPT-2s over the KoGPT2 vocabulary (51,200 ids), fine-tuned by the
same loop `daram eval` uses (``finetune_task``) on the same NSMC subset, timed by benchmarks/harness.py: a
warm-up epoch each, then rounds that alternate the two shapes so load from other jobs hits both alike; the
ratio of the median epoch times is printed with its spread. The reference study
measured 0.37-0.50 on a GPU.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/eval_speed.py [--examples 64] [--max-length 64] [--rounds 3] [--warmup 1]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import AutoTokenizer

from daram.config import load_config
from daram.pipeline.eval.downstream import TASKS, load_split, subsample
from daram.pipeline.eval.finetune import TaskData, finetune_task
from daram.pipeline.hf import resolve_device
from daram.pipeline.models import gpt2
from harness import SHARED, add_timing_arguments, compare

SHAPES = {"student 768/8/4": (768, 8, 4), "KoGPT2 768/12/12": (768, 12, 12)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--examples", type=int, default=64, help="NSMC training examples per epoch")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    add_timing_arguments(parser)  # a round: one epoch per shape
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(Path(args.data, "tokenizers", "kogpt2-base-v2"))
    task = TASKS["nsmc"]
    # scoring is not timed; keep dev and test short
    data = TaskData(*(subsample(load_split(task, split, args.data), n, 0)
                      for split, n in (("train", args.examples), ("dev", 16), ("test", 16))))
    settings = load_config(overrides={
        "eval.epochs": 1, "eval.batch_size": args.batch_size, "eval.max_length": args.max_length,
    }).eval

    with tempfile.TemporaryDirectory() as tmp:
        paths, params = {}, {}
        for name, (n_embd, n_head, n_layer) in SHAPES.items():
            torch.manual_seed(0)
            model = gpt2(len(tokenizer), n_embd, n_head, n_layer, tokenizer=tokenizer)
            params[name] = sum(p.numel() for p in model.parameters())
            paths[name] = Path(tmp, name.split()[0])
            model.save_pretrained(paths[name])
            tokenizer.save_pretrained(paths[name])
            del model
        print(f"device        {device} ({torch.get_num_threads()} threads), torch {torch.__version__}")
        print(f"subset        NSMC: {len(data.train)} examples, max length {args.max_length}, batch {args.batch_size}; "
              + ", ".join(f"{name} {params[name] / 1e6:.1f}M params" for name in SHAPES))

        def epoch_of(name: str):
            # the epoch's own seconds, as finetune_task records them: model loading and scoring are not timed
            return lambda: finetune_task(str(paths[name]), tokenizer, task, data, settings, 0, device, name)["seconds"]

        # KoGPT2 first: it is the ratio's baseline
        result = compare({name: epoch_of(name) for name in reversed(SHAPES)}, rounds=args.rounds, warmup=args.warmup)
    print(f"ratio         student / KoGPT2 = {result.ratio(next(iter(SHAPES))):.2f} (reference study, GPU: 0.37-0.50)")


if __name__ == "__main__":
    main()
