"""One command on one CUDA GPU that measures what `daram plan` assumes: the dump's and training's MFU, and more.

Random-weight models of the reference shapes (the teacher at skt/ko-gpt-trinity-1.2B-v0.5's 24 x 1920 with 16
heads and 51,200 ids, the student at the default 4 x 768 x 8) run the project's own code over a real Zarr store of
random tokens: `TeacherRunner` and `dump_shard` (the dump of kind draws, the default: 16 draws at T = 1) and
student-train's `setup` and `fit` (a step of the sliced KD loss on those draws, and the same step CE-only). In
order of what `daram plan` needs most, it measures:

- the peak: the card's dense float16 / bfloat16 tensor peak from the datasheet table (daram/pipeline/job/measured.py),
  or a large matmul's FLOP/s for a card the table does not hold (and on CPU, float32);
- the dump (float16, the default on CUDA): tokens/s and MFU of `dump_shard` over one-chunk shards, against a bare
  forward (`model(ids).logits`) on the same rows and batch (benchmarks/harness.py: a warm-up call each, then rounds
  in rotating order), with the peak memory;
- training: a micro-batch step (train.batch_size rows, grad_accum 1) with the stored draws and CE-only, each the
  median of a run's steps after its first; tokens/s, MFU (3 x the forward FLOPs of daram plan), KD / CE-only, peak
  memory;
- the dump's time split over one chunk: trunk (the teacher's body), LM head, softmax + sampling, the copy of the
  draws to the host, and the chunk's write into the store (which the dump overlaps with the next chunk's forward);
- whether two dumps of the same chunk on the same card are byte-identical;
- the batch size (rows per forward) with the best dump throughput, and each one's peak memory;
- the dump in bfloat16, where the card has it.

Every dump time comes from CUDA events (the work is synchronised before and after); a training step's from the
loop's own step clock (each step ends on the host). The suite watches its own clock (--budget, 6 minutes by
default): a part that would not fit in what is left is skipped and listed under "skipped"; a part that fails is
listed under "failed" and the next one runs. `daram plan --measured FILE` reads the JSON. MFU counts the FLOPs of daram plan
(`forward_flops_per_token`): 2 per weight of the blocks and the LM head plus the causal attention.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu_suite.py --out gpu-suite.json    # one CUDA GPU, <= 6 minutes
    .venv/bin/python benchmarks/gpu_suite.py --cpu --tiny --out /tmp/suite.json      # tiny shapes on CPU, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from daram.config import load_config
from daram.errors import DaramError
from daram.pipeline.dump_kernels import draws_slice
from daram.pipeline.dump.runner import TeacherRunner, resolve_dtype
from daram.pipeline.dump.uniforms import chunk_uniforms
from daram.pipeline.hf import load_tokenizer, tokenizer_info
from daram.pipeline.job.measured import SUITE, SUITE_VERSION, datasheet_peak
from daram.pipeline.models import gpt2
from daram.pipeline.pause import Pause
from daram.pipeline.job.plan import REFERENCE_SHAPE, forward_flops_per_token
from daram.pipeline.train.student_train import fit, setup
from daram.pipeline.train.distributed import stop_distributed
from daram.pipeline.dump.teacher_dump import dump_shard
from daram.pipeline.train.model import precision_for
from daram.storage import Store, StoreManifest, TeacherManifest, fingerprint_rows, token_dtype_for, tokens_fingerprint
from harness import compare, load_average

KIND = "draws"  # the default dump (format v2); the split below calls its kernel, draws_slice
PRECISION_DTYPE = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


@dataclass(frozen=True)
class Shapes:
    teacher_layers: int
    teacher_width: int
    teacher_heads: int
    vocab: int
    student_layers: int
    student_width: int
    student_heads: int
    seq_len: int
    rows_per_chunk: int
    shard_rows: int  # rows of each dumped shard
    micro_batch: int  # train.batch_size
    train_steps: int  # per training run; the first is left out
    matmul: int  # side of the square matmul that measures a peak


def reference_shapes() -> Shapes:
    defaults = load_config(overrides={})
    return Shapes(
        teacher_layers=REFERENCE_SHAPE["n_layer"], teacher_width=REFERENCE_SHAPE["n_embd"], teacher_heads=16,
        vocab=REFERENCE_SHAPE["vocab_size"], student_layers=defaults.student.n_layer,
        student_width=defaults.student.n_embd, student_heads=defaults.student.n_head, seq_len=defaults.prepare.seq_len,
        rows_per_chunk=defaults.prepare.rows_per_chunk, shard_rows=defaults.prepare.rows_per_chunk,
        micro_batch=defaults.train.batch_size, train_steps=6, matmul=8192,
    )


TINY = Shapes(teacher_layers=2, teacher_width=64, teacher_heads=2, vocab=512, student_layers=2, student_width=32,
              student_heads=2, seq_len=32, rows_per_chunk=8, shard_rows=16, micro_batch=4, train_steps=4, matmul=512)


# --- clocks ----------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work) -> float:
    """Seconds ``work()`` takes, all its device work included (CUDA events on a GPU, the wall clock on CPU)."""
    synchronize(device)
    if device.type != "cuda":
        started = time.perf_counter()
        work()
        return time.perf_counter() - started
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    work()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000


class Phases:
    """Time named phases of a loop without synchronising inside it: CUDA events on a GPU, summed at the end."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.marks = device, defaultdict(list)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        if self.device.type != "cuda":
            started = time.perf_counter()
            yield
            self.marks[phase].append(time.perf_counter() - started)
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self.marks[phase].append((start, end))

    def seconds(self) -> dict[str, float]:
        synchronize(self.device)
        if self.device.type != "cuda":
            return {phase: sum(marks) for phase, marks in self.marks.items()}
        return {phase: sum(s.elapsed_time(e) for s, e in marks) / 1000 for phase, marks in self.marks.items()}


class Budget:
    """The suite's own clock: a part runs only when its estimate fits in what is left."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.started = seconds, time.perf_counter()
        self.skipped: list[dict[str, str]] = []
        self.part_seconds: dict[str, float] = {}  # wall-clock seconds each part took, set-up and its warm-up included
        self.failed: list[dict[str, str]] = []

    @contextlib.contextmanager
    def part(self, name: str, needed: bool = False):
        """Time a part. One that fails is recorded, its traceback printed, and the next part runs: on a lent GPU
        one broken part must not cost the others their figures. A ``needed`` part (the others use it) raises."""
        started = time.perf_counter()
        try:
            yield
        except Exception as exc:
            if needed:
                raise
            traceback.print_exc()
            self.failed.append({"what": name, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]})
            print(f"failed: {name} ({self.failed[-1]['error']}); going on with the next part", flush=True)
        finally:
            self.part_seconds[name] = time.perf_counter() - started

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)

    def allows(self, what: str, estimate_s: float) -> bool:
        if estimate_s <= self.left():
            return True
        self.skipped.append({"what": what, "why": f"needs about {estimate_s:.0f} s, {max(self.left(), 0):.0f} s of "
                                                  f"the {self.seconds:.0f} s budget left"})
        print(f"skipped: {what} ({self.skipped[-1]['why']})", flush=True)
        return False


def peak_memory(device: torch.device) -> int:
    """Peak bytes since the last reset: the CUDA allocator's, or on CPU the process's peak RSS so far."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# --- the peak --------------------------------------------------------------------------------------------


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` n x n matmuls after a warm-up one."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)
    return 2 * n**3 / min(timed(device, lambda: torch.mm(a, b, out=out)) for _ in range(repeats))


def peaks(device: torch.device, shapes: Shapes) -> dict:
    """FLOP/s per dtype the dump and training run in, and where they come from."""
    if device.type != "cuda":
        return {"float32": matmul_flops(device, torch.float32, shapes.matmul),
                "source": f"measured: best of 5 float32 {shapes.matmul}^3 matmuls on the CPU"}
    found = datasheet_peak(torch.cuda.get_device_name(device))
    if found is not None:
        key, peak = found
        figures = {"float16": peak.float16, **({"bfloat16": peak.bfloat16} if peak.bfloat16 else {})}
        return {**figures, "source": f"datasheet: {key} (daram/pipeline/job/measured.py)"}
    figures = {"float16": matmul_flops(device, torch.float16, shapes.matmul)}
    if torch.cuda.is_bf16_supported(including_emulation=False):
        figures["bfloat16"] = matmul_flops(device, torch.bfloat16, shapes.matmul)
    return {**figures, "source": f"measured: best of 5 {shapes.matmul}^3 matmuls (card not in the datasheet table)"}


# --- the store -------------------------------------------------------------------------------------------


def save_tokenizer(out: Path, vocab: int) -> Path:
    """A word-level tokenizer of ``vocab`` ids (the last one EOS): what a store and a student need, no corpus."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab - 1)} | {"</s>": vocab - 1}
    backend = Tokenizer(models.WordLevel(words, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="t0").save_pretrained(out)
    return out


def build_store(path: Path, tokenizer_dir: Path, shapes: Shapes, shards: int) -> Store:
    """A real store of ``shards`` shards of random tokens, written through the Store API as prepare writes one."""
    info = tokenizer_info(load_tokenizer(str(tokenizer_dir)), str(tokenizer_dir))
    dtype = token_dtype_for(shapes.vocab)
    store, rng, prints = Store.create(str(path)), np.random.default_rng(0), []
    for shard in range(shards):
        rows = rng.integers(0, shapes.vocab, (shapes.shard_rows, shapes.seq_len)).astype(dtype)
        store.create_token_shard(shard, shapes.shard_rows, shapes.seq_len, shapes.rows_per_chunk, dtype)
        store.write_tokens(shard, 0, rows)
        prints.append(fingerprint_rows(rows))
    store.write_manifest(StoreManifest(
        tokenizer=info, seq_len=shapes.seq_len, rows_per_shard=(shapes.shard_rows,) * shards,
        rows_per_chunk=shapes.rows_per_chunk, sources=(), shard_fingerprints=tuple(prints),
        tokens_fingerprint=tokens_fingerprint(shapes.seq_len, prints),
    ))
    return Store.open(str(path), mode="r+")


# --- the dump --------------------------------------------------------------------------------------------


def random_teacher(shapes: Shapes, device: torch.device, dtype: torch.dtype):
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a 1.2B model's init on a CPU takes minutes
        model = gpt2(shapes.vocab, shapes.teacher_width, shapes.teacher_heads, shapes.teacher_layers,
                     n_positions=max(1024, shapes.seq_len))
    return model.to(dtype).eval()


class Dump:
    """The teacher and its runner at the automatic batch size (a whole chunk on CUDA), over the suite's store."""

    def __init__(self, model, store: Store, teacher: TeacherManifest, device: torch.device) -> None:
        self.model, self.store, self.teacher, self.device = model, store, teacher, device
        self.runner = TeacherRunner(model, KIND, teacher.width, teacher.temperature, device, 0, store.manifest)
        self.dumped: list[int] = []
        self.peak_memory: list[int] = []  # of each dump call (the bare forward's full logits left out)

    def chunk(self, shard: int = 0) -> tuple[np.ndarray, torch.Tensor]:
        """Shard ``shard``'s first chunk of tokens and its uniforms."""
        lo, hi = self.store.chunk_ranges(shard)[0]
        tokens = self.store.read_tokens(shard, lo, hi)
        return tokens, chunk_uniforms(self.teacher.seed, shard, 0, tokens.size, self.teacher.draws)

    def bare_forward(self, shard: int) -> float:
        ids = torch.from_numpy(self.store.read_tokens(shard).astype(np.int64))
        batch = self.runner.batch_size

        def forward() -> None:
            for lo in range(0, len(ids), batch):
                self.model(input_ids=ids[lo : lo + batch].to(self.device), use_cache=False).logits
        return timed(self.device, forward)

    def dump(self, shard: int) -> float:
        reset_peak_memory(self.device)
        with contextlib.redirect_stderr(io.StringIO()):  # a progress bar and a summary line per shard
            seconds = timed(self.device, lambda: dump_shard(self.store, shard, self.teacher, self.runner, Pause()))
        self.peak_memory.append(peak_memory(self.device))
        self.dumped.append(shard)
        return seconds


def measure_dump(dump: Dump, shards: list[int], rounds: int, warmup: int, flops: float, peak: float) -> dict:
    """The dump of fresh shards against a bare forward over the same rows and batch, with the dump's peak memory."""
    bare_shards, dump_shards = iter(shards), iter(shards)
    result = compare({"bare forward": lambda: dump.bare_forward(next(bare_shards)),
                      "dump": lambda: dump.dump(next(dump_shards))}, rounds=rounds, warmup=warmup, clocks=("measured",))
    tokens = dump.store.shard_rows(shards[0]) * dump.store.manifest.seq_len
    dump_tps, bare_tps = tokens / result.median("dump"), tokens / result.median("bare forward")
    ratios = result.round_ratios("dump")
    return {
        "tokens_per_s": dump_tps, "mfu": dump_tps * flops / peak, "seconds_per_shard": result.median("dump"),
        "bare_forward_tokens_per_s": bare_tps, "bare_forward_mfu": bare_tps * flops / peak,
        "dump_over_bare": result.ratio("dump"), "dump_over_bare_min": min(ratios), "dump_over_bare_max": max(ratios),
        "rounds": rounds, "tokens_per_shard": tokens, "batch": dump.runner.batch_size,
        "peak_memory_bytes": max(dump.peak_memory),
    }


def split_chunk(runner: TeacherRunner, tokens: np.ndarray, uniforms: torch.Tensor, device: torch.device) -> tuple[dict, np.ndarray]:
    """TeacherRunner's chunk loop for the draws kind, phase by phase: (seconds per phase, the chunk's draws)."""
    phases = Phases(device)
    rows, seq_len = tokens.shape
    ids = np.empty((rows * seq_len, runner.width), dtype=runner.token_dtype)
    logits, scratch = runner.buffers
    batch_ids = torch.from_numpy(tokens.astype(np.int64))
    for lo in range(0, rows, runner.batch_size):
        with phases("trunk"):
            hidden = runner.hidden_states(batch_ids[lo : lo + runner.batch_size].to(device))
            hidden = hidden.reshape(-1, hidden.shape[-1])
        for start in range(0, hidden.shape[0], runner.slice):
            with phases("head"):
                z = runner.head(hidden[start : start + runner.slice], logits)
            at = slice(lo * seq_len + start, lo * seq_len + start + z.shape[0])
            with phases("softmax_sampling"):
                drawn, _ = draws_slice(z, scratch, uniforms[at])
            with phases("copy_to_host"):
                ids[at] = drawn.cpu().numpy()
    return phases.seconds(), ids.reshape(rows, seq_len, runner.width)


def measure_split(dump: Dump, rounds: int, write_shard: int) -> dict:
    """Median seconds per phase over ``rounds`` runs of one chunk, and the write of its draws into the store."""
    tokens, uniforms = dump.chunk()
    runs, writes = [], []
    target = dump.store.teacher_shard(write_shard, dump.teacher, create=True)
    for _ in range(rounds):
        seconds, ids = split_chunk(dump.runner, tokens, uniforms, dump.device)
        runs.append(seconds)
        with dump.store.shard_lock(write_shard):
            started = time.perf_counter()
            target.write_chunk(0, (ids,), {"positions": tokens.size, "entropy_sum": 1.0, "seconds": 1.0})
            writes.append(time.perf_counter() - started)
    split = {phase: statistics.median(run[phase] for run in runs) for phase in runs[0]}
    split["write"] = statistics.median(writes)
    total = sum(split.values())
    return {"seconds": split, "share": {phase: s / total for phase, s in split.items()}, "tokens": int(tokens.size),
            "rounds": rounds}


def measure_repeat(dump: Dump) -> dict:
    """Two dumps of the same chunk on the same card, byte for byte."""
    tokens, uniforms = dump.chunk()
    first, second = dump.runner.run_chunk(tokens, uniforms), dump.runner.run_chunk(tokens, uniforms)
    differ = (first.arrays[0] != second.arrays[0]).any(-1)
    return {"identical": first.arrays[0].tobytes() == second.arrays[0].tobytes(), "differing_positions": int(differ.sum()),
            "positions": int(differ.size)}


def measure_batches(dump: Dump, budget: Budget, chunk_s: float) -> dict:
    """Dump throughput and peak memory at 1, 2, 4, ... rows per forward, up to a chunk (the automatic choice on
    CUDA), each over at least 8 rows of one chunk: the best of 2 after a warm-up."""
    tokens, uniforms = dump.chunk()
    per_row = chunk_s / len(tokens)
    figures, batch = [], 1
    while batch <= len(tokens):
        rows = min(len(tokens), max(batch, 8))
        if not budget.allows(f"dump memory: batch {batch}", 4 * rows * per_row + 5):
            break
        runner = None
        reset_peak_memory(dump.device)
        try:
            runner = TeacherRunner(dump.model, KIND, dump.teacher.width, dump.teacher.temperature, dump.device, batch,
                                   dump.store.manifest)
            part, part_uniforms = tokens[:rows], uniforms[: rows * tokens.shape[1]]
            runner.run_chunk(part, part_uniforms)
            seconds = min(timed(dump.device, lambda: runner.run_chunk(part, part_uniforms)) for _ in range(2))
        except (torch.OutOfMemoryError, DaramError) as exc:  # the runner reports its out-of-memory as a DaramError
            budget.skipped.append({"what": f"dump memory: batch {batch} and up", "why": str(exc).splitlines()[0]})
            break
        finally:
            del runner
        figures.append({"batch": batch, "tokens_per_s": part.size / seconds, "peak_memory_bytes": peak_memory(dump.device)})
        batch *= 2
    if not figures:
        return {}
    best = max(figures, key=lambda f: f["tokens_per_s"])
    return {"batches": figures, "best_batch": best["batch"], "best_tokens_per_s": best["tokens_per_s"]}


# --- training --------------------------------------------------------------------------------------------


def measure_training(store: Store, shard: int, shapes: Shapes, device: torch.device, work: Path, rounds: int,
                     warmup: int, peak_by_dtype: dict) -> dict:
    """student-train's setup and training loop (`fit`) on a dumped shard, KD (the stored draws) against CE-only:
    medians of the steps after each run's first, a micro-batch per step. The loop's own step clock: each step
    ends on the host (its finite-loss check), so its wall time holds the step's GPU work."""
    runs, memory = iter(range(10**6)), []

    def train(kd: bool):
        def run() -> float:
            overrides = {
                "store.path": store.url, "train.out": str(work / f"student-{next(runs)}"), "train.shards": str(shard),
                "train.heldout_shard": -1, "train.batch_size": shapes.micro_batch, "train.grad_accum": 1,
                "train.max_steps": shapes.train_steps, "train.log_every": 1, "train.checkpoint_every": 0,
                "train.eval_every": 0, "train.device": device.type, "train.shuffle": False,
                "train.alpha_kd": 1.0 if kd else 0.0, "train.alpha_ce": 0.5 if kd else 1.0,
                "student.n_layer": shapes.student_layers, "student.n_embd": shapes.student_width,
                "student.n_head": shapes.student_heads,
            }
            reset_peak_memory(device)
            held = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0  # the teacher, not training's
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                run = setup(load_config(overrides=overrides))  # student-train's setup -> fit, without its export
                try:
                    with run.pause:
                        fit(run)
                finally:
                    stop_distributed(run.dist)
            if kd:
                memory.append(peak_memory(device) - held)
            return statistics.median(run.step_seconds[1:])  # the first step pays for allocations
        return run

    result = compare({"CE-only": train(False), "KD": train(True)}, rounds=rounds, warmup=warmup, unit="s/step",
                     clocks=("measured",))
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[precision_for("auto", device)[0]]
    tokens = shapes.micro_batch * shapes.seq_len
    flops = 3 * forward_flops_per_token(shapes.student_layers, shapes.student_width, shapes.vocab, shapes.seq_len)
    kd_tps = tokens / result.median("KD")
    ratios = result.round_ratios("KD")
    return {
        "precision": precision, "micro_batch": shapes.micro_batch, "tokens_per_step": tokens,
        "tokens_per_s": kd_tps, "mfu": kd_tps * flops / peak_by_dtype[PRECISION_DTYPE[precision]],
        "ce_only_tokens_per_s": tokens / result.median("CE-only"), "kd_over_ce": result.ratio("KD"),
        "kd_over_ce_min": min(ratios), "kd_over_ce_max": max(ratios), "flops_per_token": flops,
        "peak_memory_bytes": max(memory), "rounds": rounds, "steps_per_run": shapes.train_steps,
    }


def training_estimate(shapes: Shapes, chunk_s: float, dump_flops: float, runs: int, device: torch.device) -> float:
    """Seconds the training comparison may take: 2 x ``runs`` runs of start-up and export (10 s on a GPU) and
    their steps at half the FLOP rate the dump reached."""
    rate = shapes.rows_per_chunk * shapes.seq_len * dump_flops / chunk_s
    step_flops = shapes.micro_batch * shapes.seq_len * 3 * forward_flops_per_token(
        shapes.student_layers, shapes.student_width, shapes.vocab, shapes.seq_len)
    return 2 * runs * ((10 if device.type == "cuda" else 2) + shapes.train_steps * 2 * step_flops / rate)


# --- the suite -------------------------------------------------------------------------------------------


def run_suite(results: dict, device: torch.device, shapes: Shapes, budget: Budget, rounds: int, warmup: int,
              work: Path) -> None:
    """Fill ``results`` part by part (what is there when a part fails or time runs out is kept)."""
    defaults = load_config(overrides={}).teacher
    dump_dtype = resolve_dtype("auto", device)
    calls = warmup + rounds  # each dump call takes a fresh shard; shard 0 is the chunk the other parts reuse
    first_shards, bf16_shards = list(range(1, 1 + calls)), list(range(1 + calls, 1 + 2 * calls))
    write_shard = 1 + 2 * calls
    store = build_store(work / "suite.zarr", save_tokenizer(work / "tokenizer", shapes.vocab), shapes, write_shard + 1)
    teacher = store.init_teacher(TeacherManifest(
        teacher="random", revision="-", dtype=dump_dtype, temperature=defaults.temperature, kind=KIND,
        width=defaults.draws, vocab_size=shapes.vocab, tokens_fingerprint=store.manifest.tokens_fingerprint,
        rows_per_chunk=shapes.rows_per_chunk, draws=defaults.draws, seed=defaults.seed,
    ))
    flops = forward_flops_per_token(shapes.teacher_layers, shapes.teacher_width, shapes.vocab, shapes.seq_len)
    results["shapes"] = {**asdict(shapes), "kind": KIND, "draws": defaults.draws, "temperature": defaults.temperature,
                         "dump_flops_per_token": flops}
    results["dump_dtype"] = dump_dtype
    with budget.part("peak", needed=True):
        peak = results["peak_flops"] = peaks(device, shapes)
    print(f"peak: {', '.join(f'{k} {v / 1e12:.4g} TFLOP/s' for k, v in peak.items() if k != 'source')} ({peak['source']})")

    with torch.inference_mode():
        with budget.part("teacher", needed=True):
            dump = Dump(random_teacher(shapes, device, getattr(torch, dump_dtype)), store, teacher, device)
            tokens, uniforms = dump.chunk()
            chunk_s = timed(device, lambda: dump.runner.run_chunk(tokens, uniforms))  # a first warm-up: the estimates
        shard_s = chunk_s * shapes.shard_rows / shapes.rows_per_chunk
        if budget.allows(f"dump ({dump_dtype})", 2.5 * calls * shard_s + 5):
            with budget.part(f"dump {dump_dtype}"):
                results["dump"][dump_dtype] = measure_dump(dump, first_shards, rounds, warmup, flops, peak[dump_dtype])
    trained = dump.dumped[:1]
    if not trained:
        budget.skipped.append({"what": "training", "why": "no dumped shard to train on"})
    elif budget.allows("training", training_estimate(shapes, chunk_s, flops, calls, device)):
        with budget.part("training"):
            results["train"] = measure_training(store, trained[0], shapes, device, work, rounds, warmup, peak)
    with torch.inference_mode():
        if budget.allows("dump split", (rounds + 1) * chunk_s * 1.5 + 2):
            with budget.part("dump split"):
                results["dump_split"] = measure_split(dump, rounds, write_shard)
        if budget.allows("dump repeat", 2 * chunk_s + 2):
            with budget.part("dump repeat"):
                results["dump_repeat"] = measure_repeat(dump)
        dump.runner = None  # its buffers out of the memory figures of each batch size
        with budget.part("dump memory"):
            results["dump_memory"] = measure_batches(dump, budget, chunk_s) or None
        # only a card with bfloat16 of its own (emulated, it would measure the emulation)
        if "bfloat16" in peak and budget.allows("dump (bfloat16)", 2.5 * calls * shard_s + 10):
            with budget.part("dump bfloat16"):
                dump = Dump(dump.model.to(torch.bfloat16), store, teacher, device)
                results["dump"]["bfloat16"] = measure_dump(dump, bf16_shards, rounds, warmup, flops, peak["bfloat16"])


def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"name": torch.cuda.get_device_name(device), "type": "cuda", "memory_bytes": props.total_memory,
                "cuda": torch.version.cuda, "torch": torch.__version__}
    return {"name": f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads", "type": "cpu",
            "torch": torch.__version__}


def table(result: dict) -> str:
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    lines = [f"{result['device']['name']} ({result['mode']}; {result['seconds']:.0f} s; load average "
             f"{result['load_average']:.2f} at the start)"]
    for dtype, d in result["dump"].items():
        lines.append(f"dump {dtype:<9} {d['tokens_per_s']:>12,.0f} tokens/s  MFU {d['mfu']:6.1%}  dump / bare forward "
                     f"{d['dump_over_bare']:.3f} (rounds {d['dump_over_bare_min']:.3f}-{d['dump_over_bare_max']:.3f})  "
                     f"batch {d['batch']}  peak {gib(d['peak_memory_bytes'])}")
    if result["dump_split"]:
        split = result["dump_split"]
        lines.append("dump split      " + ", ".join(f"{phase} {s * 1e3:.1f} ms ({split['share'][phase]:.0%})"
                                                   for phase, s in split["seconds"].items())
                     + f" per chunk of {split['tokens']:,} tokens")
    if result["dump_repeat"]:
        rep = result["dump_repeat"]
        lines.append(f"dump repeat     {'byte-identical' if rep['identical'] else 'DIFFERENT'} "
                     f"({rep['differing_positions']:,} of {rep['positions']:,} positions differ)")
    if result["dump_memory"]:
        mem = result["dump_memory"]
        lines.append("dump batches    " + ", ".join(f"{f['batch']}: {f['tokens_per_s']:,.0f} tok/s {gib(f['peak_memory_bytes'])}"
                                                   for f in mem["batches"]) + f"; best {mem['best_batch']}")
    if result["train"]:
        t = result["train"]
        lines.append(f"train {t['precision']:<9} {t['tokens_per_s']:>11,.0f} tokens/s  MFU {t['mfu']:6.1%}  KD / CE-only "
                     f"{t['kd_over_ce']:.3f} (rounds {t['kd_over_ce_min']:.3f}-{t['kd_over_ce_max']:.3f})  micro-batch "
                     f"{t['micro_batch']}  peak {gib(t['peak_memory_bytes'])}")
    lines.append("seconds         " + ", ".join(f"{part} {s:.1f}" for part, s in result["part_seconds"].items()))
    lines += [f"skipped: {s['what']} ({s['why']})" for s in result["skipped"]]
    lines += [f"FAILED: {f['what']} ({f['error']})" for f in result["failed"]]
    if "error" in result:
        lines.append(f"STOPPED: {result['error']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSON file to write (daram plan --measured reads it)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (with --tiny: the fast test's mode)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes instead of the reference ones")
    parser.add_argument("--budget", type=float, default=360.0, help="seconds the whole suite may take")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per comparison (at least 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each side before the rounds")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("gpu_suite: no CUDA GPU here; --cpu --tiny runs the suite's own test on the CPU")
    device = torch.device("cpu" if args.cpu else "cuda")
    shapes = TINY if args.tiny else reference_shapes()
    budget = Budget(args.budget)
    started = time.perf_counter()
    result = {
        "suite": SUITE, "version": SUITE_VERSION, "mode": device.type if device.type == "cpu" else "gpu",
        "tiny": args.tiny, "command": " ".join([Path(sys.executable).name, *sys.argv]), "device": device_info(device),
        "load_average": load_average(), "budget_s": args.budget, "peak_flops": None, "dump": {}, "train": None,
        "dump_split": None, "dump_repeat": None, "dump_memory": None,
    }
    try:
        with tempfile.TemporaryDirectory(prefix="gpu_suite-") as tmp:
            run_suite(result, device, shapes, budget, args.rounds, args.warmup, Path(tmp))
    finally:  # even a crash leaves what was measured, and says so
        result.update(seconds=time.perf_counter() - started, part_seconds=budget.part_seconds, skipped=budget.skipped,
                      failed=budget.failed)
        if sys.exc_info()[0] is not None:
            result["error"] = f"{sys.exc_info()[0].__name__}: {sys.exc_info()[1]}".splitlines()[0]
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(table(result))
        print(f"wrote {args.out}")
    if budget.failed:
        raise SystemExit(f"gpu_suite: {len(budget.failed)} part(s) failed: {', '.join(f['what'] for f in budget.failed)}")


if __name__ == "__main__":
    main()
