"""Throughput of `daram prepare` on the shared Korean corpus with the real KoGPT2 tokenizer.

Prints tokens/s and MB/s of text for the whole command (read, split, tokenize, pack, write),
and the share of the time spent in the tokenizer alone, measured in the same run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/prepare.py [--unit line|sentence] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from daram.config import load_config
from daram.pipeline.hf import load_tokenizer
from daram.pipeline.prepare import run_prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--unit", default="line", choices=("line", "sentence", "paragraph"))
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--splitter", default="kiwi", choices=("kiwi", "regex"))
    args = parser.parse_args()
    corpus = Path(args.data, "korean_corpus", "sentences.txt")
    tokenizer_dir = Path(args.data, "tokenizers", "kogpt2-base-v2")
    text = corpus.read_text(encoding="utf-8")

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(overrides={
            "store.path": str(Path(tmp, "bench.zarr")), "prepare.tokenizer": str(tokenizer_dir),
            "prepare.seq_len": args.seq_len, "prepare.num_shards": 4, "prepare.sentence_splitter": args.splitter,
            "prepare.sources": [{"path": str(corpus), "unit": args.unit}],
        })
        started = time.perf_counter()
        manifest = run_prepare(cfg)
        seconds = time.perf_counter() - started

    backend = load_tokenizer(str(tokenizer_dir)).backend_tokenizer
    lines = text.splitlines()
    started = time.perf_counter()
    for i in range(0, len(lines), 2048):
        backend.encode_batch_fast(lines[i : i + 2048], add_special_tokens=False)
    tokenize_seconds = time.perf_counter() - started

    tokens = sum(s.tokens for s in manifest.sources)
    mb = len(text.encode()) / 1e6
    print(f"corpus        {corpus} ({mb:.2f} MB, unit={args.unit})")
    print(f"prepare       {seconds:.2f} s  {tokens / seconds:,.0f} tokens/s  {mb / seconds:.2f} MB/s")
    print(f"tokenizer     {tokenize_seconds:.2f} s alone -> {tokenize_seconds / seconds:.0%} of prepare's time (unit=line split)")


if __name__ == "__main__":
    main()
