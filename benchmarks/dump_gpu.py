"""`teacher-dump` on a GPU with a Trinity-shaped teacher: tokens/s, model FLOPs utilisation, dump / bare forward.

A randomly initialised GPT-2 with the shape of skt/ko-gpt-trinity-1.2B-v0.5 (n_embd 1920, 24 layers,
16 heads, inner 7680, vocab 51200) in float16 runs over real KoGPT2-tokenized Korean rows. Each
round (benchmarks/harness.py: a warm-up call each, then alternating order) times a bare forward
(``model(input_ids).logits``, same rows and batch size) and the dump of one fresh shard. MFU counts the forward's matrix FLOPs per token,
2 * (matmul parameters incl. the LM head) + 2 * n_layer * seq_len * n_embd (causal attention),
against the GPU's dense float16 peak (--peak-tflops, or looked up from the device name).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dump_gpu.py                    # on a GPU
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dump_gpu.py --small           # a 2-layer shape on CPU
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from daram.pipeline.pause import Pause
from daram.pipeline.dump.runner import TeacherRunner
from daram.pipeline.dump.teacher_dump import dump_shard
from dump_overhead import build_store, random_teacher, teacher_manifest
from harness import add_timing_arguments, compare

# Dense float16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "T4": 65.0}


def peak_tflops(device: torch.device, given: float) -> float:
    if given:
        return given
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), 0.0)


def forward_flops_per_token(model, seq_len: int) -> float:
    config = model.config
    matmul_params = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "wpe" not in n and "wte" not in n)
    matmul_params += model.get_output_embeddings().weight.numel()  # the (tied) LM head is a matmul every token
    return 2.0 * matmul_params + 2.0 * config.n_layer * seq_len * config.n_embd


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a 2-layer, 128-wide teacher on CPU in float32")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16, help="rows per forward (0 = the dump's automatic choice)")
    parser.add_argument("--rows-per-chunk", type=int, default=32)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--kind", default="topk", choices=("topk", "sampled"))
    parser.add_argument("--draws", type=int, default=50)
    add_timing_arguments(parser)
    parser.add_argument("--peak-tflops", type=float, default=0.0)
    args = parser.parse_args()
    if args.small:
        args.layers, args.width, args.heads, args.rows, args.seq_len, args.batch, args.rows_per_chunk = 2, 128, 2, 8, 128, 4, 4
    device = torch.device("cuda" if torch.cuda.is_available() and not args.small else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32

    model = random_teacher(args.layers, args.width, args.heads, dtype=dtype).to(device)
    flops = forward_flops_per_token(model, args.seq_len)
    peak = peak_tflops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    calls = args.warmup + args.rounds  # each call dumps a fresh shard; the bare forward reads the same one
    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(Path(tmp, "gpu.zarr"), args.rows, args.seq_len, calls, args.rows_per_chunk)
        width = args.k if args.kind == "topk" else args.draws
        teacher = store.init_teacher(teacher_manifest(store, args.kind, width, args.draws, str(dtype).removeprefix("torch.")))
        runner = TeacherRunner(model, args.kind, width, 2.0, device, args.batch, store.manifest)
        batch = runner.batch_size
        shards = {"bare forward": iter(range(calls)), "dump": iter(range(calls))}

        def bare() -> None:
            tokens = torch.from_numpy(store.read_tokens(next(shards["bare forward"])).astype("int64"))
            synchronize(device)
            for lo in range(0, len(tokens), batch):
                model(input_ids=tokens[lo : lo + batch].to(device), use_cache=False).logits
            synchronize(device)  # the kernels' time, not their launch

        def dump() -> None:
            dump_shard(store, next(shards["dump"]), teacher, runner, Pause())
            synchronize(device)

        with torch.inference_mode():  # the warm-up calls pay for kernels, the allocator, autotuning
            result = compare({"bare forward": bare, "dump": dump}, rounds=args.rounds, warmup=args.warmup, clocks=("wall",))
        # shards differ by at most a row: tokens/s from the median shard
        n_tokens = statistics.median(store.shard_rows(shard) for shard in range(calls)) * args.seq_len
        if device.type == "cuda":
            print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    bare_tps, dump_tps = n_tokens / result.median("bare forward"), n_tokens / result.median("dump")
    ratio = result.ratio("dump")
    params = sum(p.numel() for p in model.parameters())
    mfu = lambda tps: f"{tps * flops / (peak * 1e12):.1%}" if peak else "n/a"
    what = f"top-{args.k}" if args.kind == "topk" else f"sampled, {args.draws} draws"
    print(
        f"{name}: teacher {args.layers} x {args.width} ({params / 1e9:.2f}B params, {str(dtype).removeprefix('torch.')}), "
        f"rows of {args.seq_len}, batch {batch}, {what}; medians of {args.rounds} rounds:\n"
        f"  bare forward {bare_tps:,.0f} tokens/s (MFU {mfu(bare_tps)}); dump {dump_tps:,.0f} tokens/s (MFU {mfu(dump_tps)}); "
        f"dump / bare forward = {ratio:.3f}"
    )
    if not peak:
        print("  (MFU needs the device's peak: pass --peak-tflops)")


if __name__ == "__main__":
    main()
