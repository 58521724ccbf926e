"""Cost of `teacher-dump` over a bare teacher forward, with a KoGPT2-shaped teacher on the same rows.

The bare forward is what any user of the teacher pays: ``model(input_ids).logits`` over the same
rows in batches of the same size. The dump adds the tempered full-vocabulary softmax statistics,
top-k (or the draws), the float16 conversion, compression and the chunk writes (on a background
thread). benchmarks/harness.py times them: a warm-up call each, then rounds that alternate which of
the two runs first; each call dumps a fresh shard. Both wall time and process CPU time (all threads)
are reported: on a shared machine the CPU-time ratio is
the steadier of the two, the wall ratio what a user waits.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dump_overhead.py                 # 12 x 768, k = 64
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dump_overhead.py --kind sampled --draws 50
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dump_overhead.py --kind draws --draws 16 --temperature 1   # v2 default
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dump_overhead.py --layers 2 --width 64 --heads 2   # quick
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from daram.config import load_config
from daram.pipeline.prepare.prepare import run_prepare
from daram.pipeline.pause import Pause
from daram.pipeline.dump.runner import TeacherRunner
from daram.pipeline.dump.teacher_dump import dump_shard
from daram.storage import Store, TeacherManifest, teacher_format
from harness import SHARED, add_timing_arguments, compare



def build_store(path: Path, rows: int, seq_len: int, shards: int, rows_per_chunk: int, data: Path = SHARED) -> Store:
    """A real store of `shards` shards with at least `rows` rows each, from the shared Korean sentences."""
    lines = (data / "korean_corpus" / "sentences.txt").read_text(encoding="utf-8").splitlines()
    # about 12 tokens per sentence; take enough for every shard to reach `rows` rows
    needed = rows * seq_len * shards // 8
    corpus = path.with_suffix(".txt")
    corpus.write_text("\n".join(lines[:needed]) + "\n", encoding="utf-8")
    cfg = load_config(overrides={
        "store.path": str(path), "prepare.tokenizer": str(data / "tokenizers" / "kogpt2-base-v2"),
        "prepare.seq_len": seq_len, "prepare.num_shards": shards, "prepare.rows_per_chunk": rows_per_chunk,
        "prepare.sources": [{"path": str(corpus), "unit": "line"}],
    })
    manifest = run_prepare(cfg)
    if min(manifest.rows_per_shard) < rows:
        raise SystemExit(f"corpus too small for {shards} shards of {rows} rows")
    return Store.open(str(path), mode="r+")


def random_teacher(layers: int, width: int, heads: int, vocab: int = 51200, context: int = 1024, dtype=torch.float32):
    from daram.pipeline.models import gpt2

    torch.manual_seed(0)
    return gpt2(vocab, width, heads, layers, n_positions=context).to(dtype).eval()


def teacher_manifest(
    store: Store, kind: str, width: int, draws: int, dtype: str = "float32", temperature: float = 2.0
) -> TeacherManifest:
    m = store.manifest
    return TeacherManifest(
        teacher="random", revision="-", dtype=dtype, temperature=temperature, kind=kind, width=width,
        vocab_size=m.tokenizer.vocab_size, tokens_fingerprint=m.tokens_fingerprint, rows_per_chunk=m.rows_per_chunk,
        draws=draws if teacher_format(kind).drawn else 0,
    )


def bare_forward(model, tokens: torch.Tensor, batch: int, device) -> None:
    for lo in range(0, len(tokens), batch):
        model(input_ids=tokens[lo : lo + batch].to(device), use_cache=False).logits.sum().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rows-per-chunk", type=int, default=8)
    parser.add_argument("--kind", default="topk", choices=("topk", "sampled", "draws"))
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--temperature", type=float, default=2.0, help="T of the dump (teacher.temperature is 1)")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    add_timing_arguments(parser, rounds=6)
    args = parser.parse_args()

    device = torch.device("cpu")
    model = random_teacher(args.layers, args.width, args.heads)
    params = sum(p.numel() for p in model.parameters())
    calls = args.warmup + args.rounds  # each call dumps a fresh shard; the bare forward reads the same one
    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(Path(tmp, "bench.zarr"), args.rows, args.seq_len, calls, args.rows_per_chunk)
        width = args.k if args.kind == "topk" else args.draws
        teacher = store.init_teacher(teacher_manifest(store, args.kind, width, args.draws, temperature=args.temperature))
        runner = TeacherRunner(model, args.kind, width, args.temperature, device, args.batch, store.manifest)
        print(f"{store.shard_rows(0)} rows x {args.seq_len} tokens per shard, batch {args.batch}")
        shards = {"bare forward": iter(range(calls)), "dump": iter(range(calls))}

        def bare() -> None:
            shard = next(shards["bare forward"])
            bare_forward(model, torch.from_numpy(store.read_tokens(shard).astype("int64")), args.batch, device)

        def dump() -> None:
            dump_shard(store, next(shards["dump"]), teacher, runner, Pause())

        with torch.inference_mode():
            result = compare({"bare forward": bare, "dump": dump}, rounds=args.rounds, warmup=args.warmup)
    what = f"top-{args.k}" if args.kind == "topk" else f"{args.kind}, {args.draws} draws"
    what += f", T = {args.temperature:g}"
    wall, cpu = result.round_ratios("dump"), result.round_ratios("dump", "cpu")
    print(
        f"teacher {args.layers} layers x {args.width} wide, vocab 51200 ({params / 1e6:.0f}M params), float32, "
        f"{torch.get_num_threads()} threads, {what}: dump / bare forward = {result.ratio('dump'):.3f} wall "
        f"(same-round min {min(wall):.3f}, max {max(wall):.3f}), {result.ratio('dump', 'cpu'):.3f} CPU time "
        f"(min {min(cpu):.3f}, max {max(cpu):.3f})"
    )

if __name__ == "__main__":
    main()
