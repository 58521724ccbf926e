"""Korean sentence splitters on the same text: kiwipiepy (prepare's) against kss, where installed.

Joins the shared sentences five at a time into paragraphs, so the true boundaries are known, and
prints per splitter its MB/s on one thread (after a warm-up call) and how many of the sentences it
found. Splitters that are not importable in this interpreter are skipped; kss and its MeCab backend
(`pip install kss python-mecab-ko`) are not daram dependencies, so run it once per environment:

    .venv/bin/python benchmarks/splitters.py --rounds 3
    /path/to/kss-venv/bin/python benchmarks/splitters.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def splitters() -> dict:
    found = {}
    try:
        from kiwipiepy import Kiwi

        kiwi = Kiwi(num_workers=1)
        found["kiwipiepy"] = lambda texts: [len(s) for s in kiwi.split_into_sents(texts)]
    except ImportError:
        pass
    try:
        import kss

        for backend in ("mecab", "pecab"):
            found[f"kss ({backend})"] = lambda texts, b=backend: [len(kss.split_sentences(t, backend=b)) for t in texts]
    except ImportError:
        pass
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = os.environ.get("DARAM_SHARED_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--data", default=shared)
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    lines = Path(args.data, "korean_corpus", "sentences.txt").read_text(encoding="utf-8").splitlines()[: args.sentences]
    paragraphs = [" ".join(lines[i : i + 5]) for i in range(0, len(lines), 5)]
    mb = sum(len(p.encode()) for p in paragraphs) / 1e6
    print(f"{len(paragraphs)} paragraphs of 5 sentences, {mb:.2f} MB, load average {os.getloadavg()[0]:.1f}")
    found = splitters()
    for split in found.values():
        split(paragraphs[:2])  # warm-up: models and dictionaries load
    for round_ in range(args.rounds):  # alternate, so changing load falls on every splitter alike
        for name, split in found.items():
            started = time.process_time()
            counts = split(paragraphs)
            seconds = time.process_time() - started
            print(f"round {round_ + 1}: {name:<14s} {mb / seconds:.3f} MB per CPU-second, "
                  f"{sum(counts)} sentences found of {len(lines)}")


if __name__ == "__main__":
    main()
