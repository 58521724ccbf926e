"""``daram plan``: what the whole job will take, before anything heavy runs.

Tokens come from the store when it exists, else from the corpus bytes at 5.74 UTF-8 bytes per token
(measured with the KoGPT2/Trinity tokenizer on ``shared/data/korean_corpus/sentences.txt``). The teacher's
bytes per token come, best first, from the teacher shards already in the store, from dumping a few
hundred rows with the configured teacher into memory (when it loads), or from the per-slot figures of
``docs/benchmarks.md`` (an estimate, and labelled so). From those: the window of shards that fits
``run.disk_budget``, and the GPU-hours of the dump and of training on P100, T4, A100 and H100 from FLOPs
per token and an assumed MFU (:data:`ASSUMED_MFU`: no GPU was measured), or the MFU that
``benchmarks/gpu_suite.py`` measured (``--measured FILE``), and the sessions of ``run.time_limit`` they fill.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from daram.config import REFERENCE_TEACHER, Config
from daram.errors import DaramError
from daram.pipeline.architectures import student_shape
from daram.pipeline.job.measured import DATASHEET_PEAKS, MeasuredMFU, read_measured
from daram.storage import Store, measure_teacher_bytes, teacher_format
from daram.units import format_duration, format_size, parse_duration, parse_size

# Measured: UTF-8 bytes per token of the KoGPT2/Trinity tokenizer on shared/data/korean_corpus/sentences.txt.
CORPUS_BYTES_PER_TOKEN = 5.74
# Dense float16 tensor peaks from the vendors' data sheets (daram/pipeline/job/measured.py): P100 PCIe, H100 SXM.
PEAK_FLOPS = {gpu: DATASHEET_PEAKS[gpu].float16 for gpu in ("P100", "T4", "A100", "H100")}
# ASSUMED model FLOPs utilisation, not measured (no GPU was lent when this was written): the dump is a
# large-batch inference forward, training a small model with a 51,200-way softmax in its loss.
ASSUMED_MFU = {"dump": 0.40, "train": 0.30}
# The reference teacher's shape (skt/ko-gpt-trinity-1.2B-v0.5), used when its config cannot be read.
REFERENCE_SHAPE = {"n_layer": 24, "n_embd": 1920, "vocab_size": 51200, "tied": True}
MEASURE_ROWS = 256  # rows dumped into memory to measure the teacher's bytes per token
DISK_MARGIN = 1.05  # a shard's bytes vary a little around the mean: keep 5% of the budget in reserve


@dataclass(frozen=True)
class Plan:
    tokens: int
    tokens_source: str
    shards: int
    training_shards: list[int]
    heldout_shard: int
    training_tokens: int
    token_bytes: int
    token_bytes_source: str
    teacher_bytes_per_token: float
    teacher_bytes_source: str
    teacher_bytes: int  # the whole dump
    largest_shard_teacher_bytes: int
    disk_budget: int  # 0 = none
    window_shards: int  # training shards on disk at once (besides the held-out one)
    dump_flops_per_token: float
    train_flops_per_token: float
    mfu: dict[str, float]
    dump_gpu_hours: dict[str, float]
    train_gpu_hours: dict[str, float]
    time_limit_hours: float  # 0 = none
    sessions: dict[str, int | None]
    notes: list[str]
    # --machines N: the dump's shards shared by N machines (teacher-dump --all on each), so its wall hours are
    # a 1/N share of its GPU-hours; training follows on one of them (run --follow) and is not divided
    machines: int = 1
    dump_wall_hours: dict[str, float] = field(default_factory=dict)
    dump_sessions_per_machine: dict[str, int | None] = field(default_factory=dict)


def make_plan(cfg: Config, measure: bool = True, measured: str | None = None, machines: int = 1) -> Plan:
    """The forecast for ``cfg``; ``measure=False`` never loads the teacher (estimates instead); ``measured``: a
    ``benchmarks/gpu_suite.py`` JSON whose MFU replaces the assumed one; ``machines`` share the dump."""
    if machines < 1:
        raise DaramError(f"--machines {machines}: give the number of machines that dump, 1 or more")
    notes: list[str] = []
    mfu, mfu_note = effective_mfu(read_measured(measured) if measured else None)
    store = Store.open(cfg.store.path, options=cfg.store.options) if Store.exists(cfg.store.path, cfg.store.options) else None
    rows, seq_len, tokens_source = _rows_per_shard(cfg, store)
    shards = len(rows)
    if cfg.train.heldout_shard >= shards:
        notes.append(f"train.heldout_shard {cfg.train.heldout_shard} is past the last shard ({shards - 1}): none held out")
        cfg = cfg.replace("train", heldout_shard=-1)
    training, heldout = cfg.train.split(shards)
    shard_tokens = [r * seq_len for r in rows]
    tokens = sum(shard_tokens)

    if store is not None:
        token_bytes, token_bytes_source = store.token_bytes(), "the store"
    else:
        token_bytes, token_bytes_source = tokens * 2, "estimate: 2 bytes per uint16 token, before compression"
    per_token, teacher_source = teacher_bytes_per_token(cfg, store, measure)
    shard_bytes = [math.ceil(t * per_token) for t in shard_tokens]
    budget = parse_size(cfg.run.disk_budget)
    window = window_size([shard_bytes[s] for s in training], budget, shard_bytes[heldout] if heldout >= 0 else 0)
    if budget and window == 0:
        notes.append(
            f"run.disk_budget {format_size(budget)} does not hold one training shard's teacher arrays "
            f"({format_size(max(shard_bytes[s] for s in training))})"
            + (f" beside the held-out shard's ({format_size(shard_bytes[heldout])})" if heldout >= 0 else "")
            + ": raise it, or prepare more shards"
        )

    teacher_shape, shape_source = _teacher_shape(cfg)
    notes.append(f"teacher shape: {shape_source}")
    dump_flops = forward_flops_per_token(teacher_shape["n_layer"], teacher_shape["n_embd"], teacher_shape["vocab_size"], seq_len)
    student = cfg.student
    vocab = teacher_shape["vocab_size"] if store is None else store.manifest.tokenizer.vocab_size
    layers, width, block = student_shape(student)
    train_flops = 3 * forward_flops_per_token(layers, width, vocab, seq_len, block)  # forward + backward
    trained_tokens = sum(shard_tokens[s] for s in training) * cfg.train.epochs
    if cfg.train.max_steps:
        trained_tokens = min(trained_tokens, cfg.train.max_steps * cfg.train.batch_size * cfg.train.grad_accum * seq_len)
    dump_hours = {gpu: tokens * dump_flops / (peak * mfu["dump"]) / 3600 for gpu, peak in PEAK_FLOPS.items()}
    train_hours = {gpu: trained_tokens * train_flops / (peak * mfu["train"]) / 3600 for gpu, peak in PEAK_FLOPS.items()}
    limit_h = parse_duration(cfg.run.time_limit) / 3600
    sessions = {gpu: (math.ceil((dump_hours[gpu] + train_hours[gpu]) / limit_h) if limit_h else None) for gpu in PEAK_FLOPS}
    notes.append(mfu_note)
    wall_hours, machine_sessions = dump_share(dump_hours, machines, limit_h, shards)
    if machines > shards:
        notes.append(f"--machines {machines}: only {shards} shards to share; {machines - shards} machines get none")
    return Plan(
        tokens=tokens, tokens_source=tokens_source, shards=shards, training_shards=training, heldout_shard=heldout,
        training_tokens=sum(shard_tokens[s] for s in training), token_bytes=int(token_bytes),
        token_bytes_source=token_bytes_source, teacher_bytes_per_token=round(per_token, 2),
        teacher_bytes_source=teacher_source, teacher_bytes=sum(shard_bytes),
        largest_shard_teacher_bytes=max(shard_bytes), disk_budget=budget, window_shards=window,
        dump_flops_per_token=dump_flops, train_flops_per_token=train_flops, mfu=mfu,
        dump_gpu_hours={k: float(f"{v:.4g}") for k, v in dump_hours.items()},
        train_gpu_hours={k: float(f"{v:.4g}") for k, v in train_hours.items()},
        time_limit_hours=round(limit_h, 4), sessions=sessions, notes=notes, machines=machines,
        dump_wall_hours={k: float(f"{v:.4g}") for k, v in wall_hours.items()}, dump_sessions_per_machine=machine_sessions,
    )


# --- components ----------------------------------------------------------------------------------------


def effective_mfu(measured: MeasuredMFU | None) -> tuple[dict[str, float], str]:
    """The MFU of the dump and of training the forecast uses, and the note that says where it comes from."""
    if measured is None:
        return dict(ASSUMED_MFU), (
            f"MFU assumed, not measured: {ASSUMED_MFU['dump']:.0%} for the dump, {ASSUMED_MFU['train']:.0%} for training")
    mfu = {"dump": measured.dump or ASSUMED_MFU["dump"], "train": measured.train or ASSUMED_MFU["train"]}
    parts = [f"{mfu['dump']:.1%} for the dump ({measured.dump_dtype})" if measured.dump else
             f"{mfu['dump']:.0%} for the dump (assumed: the suite did not measure it)",
             f"{mfu['train']:.1%} for training ({measured.train_precision})" if measured.train else
             f"{mfu['train']:.0%} for training (assumed: the suite did not measure it)"]
    where = (f"on {measured.device}, applied to every GPU below" if measured.mode == "gpu" else
             f"on the CPU ({measured.device}): a test of the suite, not a GPU figure")
    return mfu, f"MFU measured by benchmarks/gpu_suite.py ({measured.path}) {where}: {parts[0]}, {parts[1]}"


def window_size(shard_bytes: list[int], budget: int, fixed: int = 0) -> int:
    """How many consecutive training shards (of these sizes, in order) fit beside ``fixed`` bytes (the held-out
    shard) in ``budget``, whichever run of them is taken: the largest ones decide. 0 = budget too small;
    ``budget`` 0 = no limit, all of them."""
    if not budget:
        return len(shard_bytes)
    room = budget / DISK_MARGIN - fixed
    largest = sorted(shard_bytes, reverse=True)
    n = 0
    while n < len(largest) and sum(largest[: n + 1]) <= room:
        n += 1
    return n


def dump_share(dump_hours: dict[str, float], machines: int, limit_h: float, shards: int
               ) -> tuple[dict[str, float], dict[str, int | None]]:
    """(wall hours of the dump, sessions of ``limit_h`` each dumping machine needs) per GPU kind when
    ``machines`` share it. Shards are the unit of work: more machines than shards do not help."""
    share = min(machines, shards)
    wall = {gpu: hours / share for gpu, hours in dump_hours.items()}
    return wall, {gpu: (math.ceil(hours / limit_h) if limit_h else None) for gpu, hours in wall.items()}


def forward_flops_per_token(n_layer: int, n_embd: int, vocab: int, seq_len: int, block_weights: int | None = None) -> float:
    """A forward per token: 2 FLOPs per weight of the blocks (``block_weights`` each; a GPT-2's 12 d^2 by default)
    and of the LM head (V d), plus causal attention over the context (2 L T d, Kaplan et al. 2020)."""
    block = 12 * n_embd**2 if block_weights is None else block_weights
    return 2 * n_layer * block + 2 * vocab * n_embd + 2 * n_layer * seq_len * n_embd


def teacher_bytes_per_token(cfg: Config, store: Store | None, measure: bool) -> tuple[float, str]:
    """(bytes per token of the teacher arrays at the configured format, where the figure comes from)."""
    teacher = store.teacher_manifest() if store is not None else None
    done = [int(s) for s in teacher.shards if teacher.is_complete(int(s))] if teacher is not None else []  # not released
    if done:
        stored = sum(store.teacher_bytes(s) for s in done)
        tokens = sum(store.shard_rows(s) for s in done) * store.manifest.seq_len
        return stored / tokens, f"measured: {len(done)} dumped shard{'s' if len(done) > 1 else ''} in the store"
    vocab = store.manifest.tokenizer.vocab_size if store is not None else REFERENCE_SHAPE["vocab_size"]
    if store is not None and measure:
        try:
            return _measure_sample(cfg, store)
        except DaramError as exc:
            estimate, source = _estimate_bytes(cfg, vocab)
            return estimate, f"{source} (the teacher could not be measured: {exc})"
    return _estimate_bytes(cfg, vocab)


def _estimate_bytes(cfg: Config, vocab_size: int) -> tuple[float, str]:
    """The kind's bytes per slot (``TeacherFormat.bytes_per_slot``) times its width."""
    fmt = teacher_format(cfg.teacher.kind)
    width = fmt.width(cfg.teacher, vocab_size, "the teacher")
    return width * fmt.bytes_per_slot, f"estimate: {fmt.bytes_per_slot:.2f} {fmt.bytes_note}"


def _measure_sample(cfg: Config, store: Store) -> tuple[float, str]:
    """Dump the first rows of the first training shard with the configured teacher into memory, stored with
    the store's own chunking and codecs, and count the bytes."""
    import torch

    from daram.pipeline.dump.runner import TeacherRunner, resolve_dtype
    from daram.pipeline.dump.uniforms import chunk_uniforms
    from daram.pipeline.hf import load_causal_lm, resolve_device

    settings, manifest = cfg.teacher, store.manifest
    fmt = teacher_format(settings.kind)
    width = fmt.width(settings, manifest.tokenizer.vocab_size, store.url)
    device = resolve_device(settings.device)
    model = load_causal_lm(settings.model, resolve_dtype(settings.dtype, device), str(device), settings.revision)
    runner = TeacherRunner(model, settings.kind, width, settings.temperature, device, settings.batch_size, manifest)
    shard = 0 if cfg.train.heldout(manifest.num_shards) != 0 else 1 % manifest.num_shards
    rows = min(MEASURE_ROWS, store.shard_rows(shard))
    results = []
    with torch.inference_mode():
        for chunk, (lo, hi) in enumerate(store.chunk_ranges(shard)):
            if lo >= rows:
                break
            tokens = store.read_tokens(shard, lo, hi)
            uniforms = chunk_uniforms(settings.seed, shard, chunk, tokens.size, settings.draws) if fmt.drawn else None
            results.append(runner.run_chunk(tokens, uniforms).arrays)
    arrays = tuple(np.concatenate(column) for column in zip(*results))
    stored = measure_teacher_bytes(fmt, arrays, manifest.rows_per_chunk, store.read_tokens(shard), manifest.tokenizer.vocab_size)
    return stored / arrays[0][..., 0].size, f"measured: {len(arrays[0])} rows of shard {shard} dumped into memory"


def _rows_per_shard(cfg: Config, store: Store | None) -> tuple[list[int], int, str]:
    if store is not None:
        return list(store.manifest.rows_per_shard), store.manifest.seq_len, "the store"
    from daram.pipeline.prepare.sources import entry_bytes, resolve_files

    if not cfg.prepare.sources:
        raise DaramError(
            f"no store at {cfg.store.path} and no [[prepare.sources]] to estimate from; list the corpus in daram.toml"
        )
    corpus = sum(entry_bytes(source, resolve_files(source)) for source in cfg.prepare.sources)  # slices count once
    tokens = int(corpus / CORPUS_BYTES_PER_TOKEN)
    seq_len, shards = cfg.prepare.seq_len, cfg.prepare.num_shards
    rows = tokens // seq_len
    per_shard = [rows // shards + (1 if s < rows % shards else 0) for s in range(shards)]
    if min(per_shard) == 0:
        raise DaramError(f"the corpus ({format_size(corpus)}) is too small for {shards} shards of rows of {seq_len}")
    source = f"estimate: {format_size(corpus)} of corpus at {CORPUS_BYTES_PER_TOKEN} bytes per token (Korean, KoGPT2 tokenizer)"
    return per_shard, seq_len, source


def _teacher_shape(cfg: Config) -> tuple[dict[str, Any], str]:
    """The teacher's layers, width and vocabulary from its config (no weights loaded), else the reference's."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(cfg.teacher.model, revision=cfg.teacher.revision)
        shape = {
            "n_layer": config.num_hidden_layers, "n_embd": config.hidden_size, "vocab_size": config.vocab_size,
        }
        return shape, f"{cfg.teacher.model} ({shape['n_layer']} layers, width {shape['n_embd']})"
    except (OSError, ValueError, AttributeError):
        which = "the reference teacher" if cfg.teacher.model == REFERENCE_TEACHER else f"unknown ({cfg.teacher.model!r} not readable here)"
        return REFERENCE_SHAPE, f"{which}: assumed {REFERENCE_TEACHER}'s 24 layers, width 1920"


# --- output ----------------------------------------------------------------------------------------------


def run_plan(cfg: Config, as_json: bool = False, measure: bool = True, measured: str | None = None,
             machines: int = 1) -> Plan:
    from daram.pipeline.dump.teacher_dump import teacher_settings

    plan = make_plan(teacher_settings(cfg, "plan", file=sys.stderr if as_json else sys.stdout), measure, measured,
                     machines)
    print(json.dumps(asdict(plan), indent=2) if as_json else plan_table(plan))
    return plan


def plan_table(plan: Plan) -> str:
    budget = format_size(plan.disk_budget) if plan.disk_budget else "none"
    held = f"shard {plan.heldout_shard} held out" if plan.heldout_shard >= 0 else "none held out"
    window = f"{plan.window_shards} of {len(plan.training_shards)} training shards at once"
    lines = [
        f"tokens            {plan.tokens:,} in {plan.shards} shards, {held}  ({plan.tokens_source})",
        f"token shards      {format_size(plan.token_bytes)}  ({plan.token_bytes_source})",
        f"teacher dump      {plan.teacher_bytes_per_token:.1f} B/token: {format_size(plan.teacher_bytes)} in all, "
        f"largest shard {format_size(plan.largest_shard_teacher_bytes)}  ({plan.teacher_bytes_source})",
        f"disk budget       {budget}: {window}",
        f"FLOPs per token   dump {plan.dump_flops_per_token / 1e9:.2f} G, training {plan.train_flops_per_token / 1e9:.2f} G",
        "",
        f"{'GPU':<6} {'dump':>10} {'train':>10} {'sessions':>9}",
    ]
    for gpu in plan.dump_gpu_hours:
        sessions = plan.sessions[gpu]
        lines.append(
            f"{gpu:<6} {_hours(plan.dump_gpu_hours[gpu]):>10} {_hours(plan.train_gpu_hours[gpu]):>10} "
            f"{sessions if sessions is not None else '-':>9}"
        )
    if plan.time_limit_hours:
        lines.append(f"(sessions of {format_duration(plan.time_limit_hours * 3600)}, run.time_limit)")
    if plan.machines > 1:
        lines += ["", f"{plan.machines} machines dump (teacher-dump --all on each), one trains (run --follow):",
                  f"{'GPU':<6} {'dump wall h':>12} {'sessions each':>14}"]
        for gpu, hours in plan.dump_wall_hours.items():
            sessions = plan.dump_sessions_per_machine[gpu]
            lines.append(f"{gpu:<6} {_hours(hours):>12} {sessions if sessions is not None else '-':>14}")
    lines += [""] + [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def _hours(hours: float) -> str:
    """GPU time for people: hours, or minutes or seconds for a small job (never 2.17e-05)."""
    if hours >= 1:
        return f"{hours:,.0f} h" if hours >= 100 else f"{hours:.3g} h"
    if hours * 60 >= 1:
        return f"{hours * 60:.2g} min" if hours * 60 < 10 else f"{hours * 60:.0f} min"
    return f"{hours * 3600:.0f} s" if hours * 3600 >= 1 else "< 1 s"
