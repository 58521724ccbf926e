"""Throughput of `daram prepare` on the shared Korean corpus with the real KoGPT2 tokenizer.

Prints tokens/s and MB/s of text for the whole command (read, split, tokenize, pack, write),
and the share of the time spent in the tokenizer alone, measured in the same run by benchmarks/harness.py
(a warm-up call each, then rounds alternating the whole command and the tokenizer alone).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/prepare.py [--unit line|sentence] [--data ../shared/data] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from daram.config import load_config
from daram.pipeline.hf import load_tokenizer
from daram.pipeline.prepare import run_prepare
from harness import SHARED, add_timing_arguments, compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--unit", default="line", choices=("line", "sentence", "paragraph"))
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--splitter", default="kiwi", choices=("kiwi", "regex"))
    add_timing_arguments(parser)
    args = parser.parse_args()
    corpus = Path(args.data, "korean_corpus", "sentences.txt")
    tokenizer_dir = Path(args.data, "tokenizers", "kogpt2-base-v2")
    text = corpus.read_text(encoding="utf-8")

    backend = load_tokenizer(str(tokenizer_dir)).backend_tokenizer
    lines = text.splitlines()
    manifests = []

    with tempfile.TemporaryDirectory() as tmp:
        def prepare() -> None:
            cfg = load_config(overrides={
                "store.path": str(Path(tmp, f"bench-{len(manifests)}.zarr")), "prepare.tokenizer": str(tokenizer_dir),
                "prepare.seq_len": args.seq_len, "prepare.num_shards": 4, "prepare.sentence_splitter": args.splitter,
                "prepare.sources": [{"path": str(corpus), "unit": args.unit}],
            })
            manifests.append(run_prepare(cfg))

        def tokenizer_alone() -> None:
            for i in range(0, len(lines), 2048):
                backend.encode_batch_fast(lines[i : i + 2048], add_special_tokens=False)

        result = compare({"prepare": prepare, "tokenizer alone": tokenizer_alone}, rounds=args.rounds,
                         warmup=args.warmup, clocks=("wall",))

    seconds = result.median("prepare")
    tokens = sum(s.tokens for s in manifests[-1].sources)
    mb = len(text.encode()) / 1e6
    print(f"corpus        {corpus} ({mb:.2f} MB, unit={args.unit})")
    print(f"prepare       {seconds:.2f} s  {tokens / seconds:,.0f} tokens/s  {mb / seconds:.2f} MB/s (median)")
    print(f"tokenizer     {result.median('tokenizer alone'):.2f} s alone -> {result.ratio('tokenizer alone'):.0%} "
          "of prepare's time (unit=line split)")

if __name__ == "__main__":
    main()
