"""``daram student-train``: phase two, a GPT-2 student learns from the stored teacher distributions.

Setup: open the store, check every requested shard's dump and the settings against the store's
manifests (refusing to start, with one line naming the field, when they disagree), build or load
the student, the optimizer and the schedule, and restore a checkpoint under ``--resume``.
Loop: micro-batches stream from the store through a background reader; each optimizer step
accumulates ``grad_accum`` of them, clips, steps, logs, and now and then evaluates on the
held-out shard and checkpoints. Finish: a last checkpoint and evaluation, the Hugging Face model
directory, the loss curve and one summary line.

Under ``torchrun`` every rank reads its own chunks (see :mod:`daram.pipeline.batches`) and DDP
averages the gradients; rank 0 alone writes metrics, checkpoints and the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from daram.config import Config, TrainConfig, parse_shards
from daram.errors import DaramError
from daram.pipeline.batches import BatchPlan, Prefetcher, check_teacher_shards, iter_batches
from daram.pipeline.heldout import heldout_metrics
from daram.pipeline.hf import check_store_tokenizer, load_causal_lm, load_tokenizer, resolve_device
from daram.pipeline.models import gpt2
from daram.pipeline.losses import (
    DenseTarget,
    DistillObjective,
    SampledTarget,
    TopkTarget,
    Workspace,
    final_hidden,
    head_weight,
    next_token_labels,
    sliced_distill_loss,
)
from daram.storage import Store, TeacherManifest
from daram.text import plural

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2
METRICS = "metrics.jsonl"
CURVE = "loss_curve.png"
# Settings that may change between a run and its --resume: they do not change what is computed.
RESUMABLE_CHANGES = ("out", "checkpoint_every", "eval_every", "eval_rows", "log_every", "loss_slice", "device", "prefetch")


# --- small pure helpers ---------------------------------------------------------------------------


def lr_factor(step: int, warmup: int, total: int, min_ratio: float, schedule: str) -> float:
    """LR multiplier at ``step`` (0-based): linear warmup to 1, then cosine or linear decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * decay


def precision_for(name: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a grad scaler is needed) for train.precision."""
    if name == "auto":
        if device.type != "cuda":
            return None, False
        name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"  # P100 / T4 class: fp16 + scaler
    if name == "fp16" and device.type != "cuda":
        raise DaramError("train.precision fp16 needs a CUDA GPU (use bf16 or fp32 on CPU)")
    return {"fp32": (None, False), "bf16": (torch.bfloat16, False), "fp16": (torch.float16, True)}[name]


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def mean(self, values: list[float]) -> list[float]:
        """Values averaged over ranks (every rank must call this at the same point)."""
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return (tensor / self.world).tolist()


def _start_distributed(device_setting: str) -> Distributed:
    """One process, or one rank of a torchrun job (gloo on CPU, nccl on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed(device=resolve_device(device_setting))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_setting)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world, device)


class StudentWithLoss(torch.nn.Module):
    """The student and its sliced loss as one module, so DDP sees the whole forward."""

    def __init__(self, model, loss_slice: int, compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.loss_slice, self.compute_dtype = model, loss_slice, compute_dtype
        self.workspace = Workspace()  # the loss's buffers, reused from step to step

    def forward(self, tokens: torch.Tensor, objective: DistillObjective):
        hidden = final_hidden(self.model, tokens)
        return sliced_distill_loss(
            hidden, head_weight(self.model), objective, self.loss_slice, self.compute_dtype, self.workspace
        )


# --- the command --------------------------------------------------------------------------------


def run_student_train(cfg: Config, resume: bool = False, online_teacher: str | None = None) -> dict:
    """Train a student from the store in ``cfg``; returns the summary (also printed as one line).

    ``online_teacher`` (a model directory; used by ``benchmarks/fidelity.py``) replaces the stored
    teacher by that model run in the loop: full-vocabulary KD, the teacher arrays are not read.
    """
    train = cfg.train
    dist = _start_distributed(train.device)
    try:
        return _train(cfg, train, dist, resume, online_teacher)
    finally:
        if dist.world > 1:
            torch.distributed.destroy_process_group()


def _train(cfg: Config, train: TrainConfig, dist: Distributed, resume: bool, online_teacher: str | None) -> dict:
    # --- setup: check everything before anything is written ---------------------------------------
    store = Store.open(cfg.store.path)
    manifest = store.manifest
    shards = parse_shards(train.shards, manifest.num_shards, "train.shards")
    if train.heldout_shard >= 0:
        store.check_shard(train.heldout_shard)
        if train.heldout_shard in shards:
            raise DaramError(f"train.heldout_shard {train.heldout_shard} is also in train.shards ({train.shards})")
    teacher = store.teacher_manifest()
    use_kd = train.alpha_kd > 0
    if online_teacher is None:
        if use_kd:
            check_teacher_shards(store, teacher, shards, "train.shards")
        if train.heldout_shard >= 0:
            check_teacher_shards(store, teacher, [train.heldout_shard], "train.heldout_shard")
    temperature = _temperature(train, teacher, needed=use_kd or train.heldout_shard >= 0)
    tokenizer = _store_tokenizer(store)
    out = Path(train.out)
    checkpoint = _latest_checkpoint(out) if resume else None
    if resume and checkpoint is None:
        raise DaramError(f"--resume: no checkpoint in {out / CHECKPOINTS}")
    if not resume and _latest_checkpoint(out) is not None:
        raise DaramError(f"train.out {out} already holds a run; pass --resume to continue it or choose another --out")

    autocast_dtype, use_scaler = precision_for(train.precision, dist.device)
    torch.manual_seed(train.seed)  # the same initial weights on every rank
    model = _build_student(cfg, store, tokenizer).to(dist.device)
    teacher_model = None
    if online_teacher is not None:
        check_store_tokenizer(load_tokenizer(online_teacher), f"online teacher {online_teacher!r}", store)
        teacher_model = load_causal_lm(online_teacher, "float32", str(dist.device))
        if teacher_model.config.vocab_size != manifest.tokenizer.vocab_size:
            raise DaramError(f"online teacher {online_teacher}: vocab_size differs from the store's tokenizer")
    torch.manual_seed(train.seed + dist.rank)  # dropout streams differ between ranks

    plan = BatchPlan(
        {s: store.chunk_ranges(s) for s in shards}, shards, train.epochs, train.batch_size,
        train.shuffle, train.seed, dist.rank, dist.world,
    )
    if plan.total_batches == 0:
        raise DaramError(
            f"train.shards {train.shards}: no full micro-batch of {train.batch_size} rows"
            + (f" per rank ({dist.world} ranks)" if dist.world > 1 else "")
        )
    total_steps = -(-plan.total_batches // train.grad_accum)
    if train.max_steps:
        total_steps = min(total_steps, train.max_steps)

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # biases and layer norms
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=train.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, train.warmup_steps, total_steps, train.min_lr / train.lr, train.schedule)
    )
    scaler = torch.amp.GradScaler(dist.device.type, enabled=use_scaler)
    signature = _signature(cfg, dist, store, teacher, online_teacher)
    step, micro = 0, 0
    if checkpoint is not None:
        step, micro = _load_checkpoint(checkpoint, dist, model, optimizer, scheduler, scaler, signature)

    wrapped = StudentWithLoss(model, train.loss_slice, autocast_dtype or torch.float32)
    if dist.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[dist.device.index] if dist.device.type == "cuda" else None
        )
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        _trim_metrics(out / METRICS, step)
    kind = teacher.kind if (use_kd and online_teacher is None) else None  # what the reader fetches
    logs_kd = use_kd  # a CE-only run has no KL to report (it never reads the teacher)
    tokens_per_micro = train.batch_size * manifest.seq_len * dist.world

    def autocast():
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(dist.device.type, dtype=autocast_dtype)

    def evaluate() -> dict | None:
        if train.heldout_shard < 0:
            return None
        result = None
        if dist.main:
            with autocast():
                result = heldout_metrics(
                    model, store, train.heldout_shard, temperature, train.eval_rows, train.batch_size,
                    dist.device, teacher_model=teacher_model,
                )
            _log(out, {"step": step, "split": "heldout", **result})
        dist.barrier()
        return result

    # --- loop -----------------------------------------------------------------------------------------
    from tqdm import tqdm

    batches = Prefetcher(
        iter_batches(store, plan, micro, with_teacher=kind is not None), depth=train.prefetch
    )
    bar = tqdm(total=total_steps, initial=step, unit="step", desc="student-train", disable=not dist.main,
               dynamic_ncols=True, file=sys.stderr)
    started, start_micro = time.perf_counter(), micro
    tokens_since_log, seconds_since_log, step_times, step_cpu_times, last = 0, 0.0, [], [], {}
    heldout = None
    model.train()
    try:
        while step < total_steps:
            step_started, step_cpu_started = time.perf_counter(), time.process_time()
            group = [b for _, b in zip(range(train.grad_accum), batches)]
            if not group:
                break
            losses = torch.zeros(3, dtype=torch.float64, device=dist.device)  # loss, kd, ce of this step
            for i, batch in enumerate(group):
                tokens = torch.from_numpy(batch.tokens).to(dist.device, non_blocking=True)
                # Under DDP, gradients are averaged across ranks only on the step's last micro-batch.
                sync = i == len(group) - 1 or dist.world == 1
                with (contextlib.nullcontext() if sync else wrapped.no_sync()):
                    with autocast():
                        target = _target(batch, kind, teacher, train, temperature, teacher_model, tokens, dist.device)
                        objective = DistillObjective(
                            next_token_labels(tokens), target, temperature, train.alpha_kd, train.alpha_ce
                        )
                        loss, kd, ce = wrapped(tokens, objective)
                    scaler.scale(loss / len(group)).backward()
                losses += torch.stack([loss.detach(), kd, ce]).double() / len(group)
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            step += 1
            micro += len(group)
            tokens_since_log += len(group) * tokens_per_micro
            step_times.append(time.perf_counter() - step_started)
            seconds_since_log += step_times[-1]  # training time only: evaluations and checkpoints are left out
            step_cpu_times.append(time.process_time() - step_cpu_started)
            bar.update(1)

            if step % train.log_every == 0 or step == total_steps:
                loss_v, kd_v, ce_v = dist.mean(losses.tolist())
                last = {
                    "step": step, "loss": loss_v, "kd": kd_v if logs_kd else None, "ce": ce_v,
                    "lr": lr, "tokens_per_s": tokens_since_log / seconds_since_log, "grad_norm": float(grad_norm),
                    **{k: v for k, v in plan.describe(micro).items() if k != "micro_batches"},
                }
                tokens_since_log, seconds_since_log = 0, 0.0
                if dist.main:
                    _log(out, last)
                    bar.set_postfix(loss=f"{loss_v:.4f}", tok_s=f"{last['tokens_per_s']:,.0f}")
            if train.eval_every and step % train.eval_every == 0 and step < total_steps:
                heldout = evaluate()
                _plot(out, dist)
            if train.checkpoint_every and step % train.checkpoint_every == 0 and step < total_steps:
                _save_checkpoint(out, dist, step, micro, plan, model, optimizer, scheduler, scaler, signature)
    finally:
        batches.close()
        bar.close()

    # --- finish ---------------------------------------------------------------------------------------
    elapsed = time.perf_counter() - started
    _save_checkpoint(out, dist, step, micro, plan, model, optimizer, scheduler, scaler, signature)
    heldout = evaluate() or heldout
    if dist.main:
        _export(model, tokenizer, out)
        _plot(out, dist)
    summary = {
        "steps": step,
        "tokens": micro * tokens_per_micro,
        "tokens_this_run": (micro - start_micro) * tokens_per_micro,  # less than tokens after a --resume
        "seconds": elapsed,
        "step_seconds": step_times,  # wall time of each step of this process (the first pays for warm-up)
        "step_cpu_seconds": step_cpu_times,  # CPU time of this process (all threads) per step: steadier under load
        "mean_step_s": float(np.mean(step_times[1:] or step_times)) if step_times else 0.0,  # warm-up left out
        "last": last,
        "heldout": heldout,
        "out": str(out),
    }
    if dist.main:
        print(_summary_line(summary, kind or ("online" if teacher_model else "ce-only")), file=sys.stderr)
    return summary


# --- setup helpers --------------------------------------------------------------------------------


def _temperature(train: TrainConfig, teacher: TeacherManifest | None, needed: bool) -> float:
    """The store's T, or train.temperature when set (a different value needs the explicit allowance)."""
    stored = teacher.temperature if teacher is not None else None
    if train.temperature == 0:
        if stored is None:
            if needed:
                raise DaramError("train.temperature is 0 (= the store's) but the store has no teacher dump")
            return 1.0  # CE-only without a dump or a held-out shard: T is never used
        return stored
    if stored is not None and train.temperature != stored and not train.allow_temperature_mismatch:
        raise DaramError(
            f"train.temperature {train.temperature} differs from the teacher dump's {stored}; leave it 0 to use the "
            "store's, or set train.allow_temperature_mismatch = true"
        )
    return train.temperature


def _store_tokenizer(store: Store):
    """The tokenizer the store was prepared with, checked against the vocabulary hash in its manifest."""
    info = store.manifest.tokenizer
    tokenizer = load_tokenizer(info.name_or_path)
    check_store_tokenizer(tokenizer, f"tokenizer path {info.name_or_path!r}, changed since `prepare`,", store)
    return tokenizer


def _build_student(cfg: Config, store: Store, tokenizer):
    """A new GPT-2 of the configured shape, or ``student.init_from``, checked against the store's tokenizer."""
    manifest = store.manifest
    info = manifest.tokenizer
    if cfg.student.init_from:
        source = cfg.student.init_from
        check_store_tokenizer(load_tokenizer(source), f"student.init_from {source!r}", store)
        model = load_causal_lm(source, "float32", "cpu")
        if model.config.vocab_size < info.vocab_size:
            raise DaramError(
                f"student.init_from {source!r}: vocab_size {model.config.vocab_size} < the store's {info.vocab_size}"
            )
        positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 0)
        if positions < manifest.seq_len:
            raise DaramError(f"student.init_from {source!r}: {positions} positions < the store's seq_len {manifest.seq_len}")
        try:
            head_weight(model)
        except ValueError as exc:
            raise DaramError(f"student.init_from {source!r}: {exc}") from None
        return model.train()

    s = cfg.student
    return gpt2(info.vocab_size, s.n_embd, s.n_head, s.n_layer, n_positions=max(manifest.seq_len, 1024),
                dropout=s.dropout, tokenizer=tokenizer)


def _signature(cfg: Config, dist: Distributed, store: Store, teacher, online_teacher) -> dict:
    """What a resumed run must share with the checkpointed one for the losses to continue exactly."""
    train = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in RESUMABLE_CHANGES}
    return {
        **{f"train.{k}": v for k, v in train.items()},
        **{f"student.{k}": v for k, v in dataclasses.asdict(cfg.student).items()},
        "world_size": dist.world,
        "store.tokens_fingerprint": store.manifest.tokens_fingerprint,
        "teacher": None if teacher is None else {k: teacher.settings()[k] for k in ("teacher", "kind", "width", "temperature", "draws", "seed")},
        "online_teacher": online_teacher,
    }


def _target(batch, kind, teacher, train, temperature, teacher_model, tokens, device):
    if teacher_model is not None:
        with torch.no_grad():
            hidden = final_hidden(teacher_model, tokens)
        weight = head_weight(teacher_model)
        return DenseTarget(lambda a, b: (hidden[:, a:b] @ weight.to(hidden.dtype).T).float(), temperature)
    if kind is None:
        return None
    ids = torch.from_numpy(batch.teacher_ids).to(device, non_blocking=True)
    values = torch.from_numpy(batch.teacher_values).to(device, non_blocking=True)
    if kind == "topk":
        return TopkTarget(ids, values, train.tail)
    return SampledTarget(ids, values, teacher.draws)


# --- checkpoints ----------------------------------------------------------------------------------


def _rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": list(np.random.get_state()),
        "python": random.getstate(),
    }
    state["numpy"][1] = torch.from_numpy(state["numpy"][1].astype(np.int64))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(out, dist, step, micro, plan, model, optimizer, scheduler, scaler, signature) -> None:
    """``checkpoints/step-N``: written into a temporary directory, then renamed; the last two are kept.

    A kill before the rename leaves only the temporary directory, which resume ignores (and the
    next save replaces), so a checkpoint that exists is always whole.
    """
    root = out / CHECKPOINTS
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.tmp"
    if final.exists():  # the end of a run resumed at its very end
        return
    if dist.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    _write(tmp / f"rng-rank{dist.rank}.pt", _rng_state())
    dist.barrier()
    if dist.main:
        _write(tmp / "state.pt", {
            "step": step,
            "micro_batches": micro,
            "data_position": {**plan.describe(micro), "shuffle_seed": signature["train.seed"]},
            "signature": json.dumps(signature, sort_keys=True),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
        })
        _fsync_dir(tmp)
        tmp.rename(final)
        _fsync_dir(root)
        for old in sorted(root.glob("step-*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old)
    dist.barrier()


def _write(path: Path, obj) -> None:
    with path.open("wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _latest_checkpoint(out: Path) -> Path | None:
    found = sorted((out / CHECKPOINTS).glob("step-*"))
    return found[-1] if found else None


def _load_checkpoint(path, dist, model, optimizer, scheduler, scaler, signature) -> tuple[int, int]:
    try:
        state = torch.load(path / "state.pt", map_location=dist.device, weights_only=True)
        rng = torch.load(path / f"rng-rank{dist.rank}.pt", weights_only=True)
    except FileNotFoundError as exc:
        raise DaramError(f"--resume: {path} lacks {Path(exc.filename).name} (a run with another world size?)") from None
    except Exception as exc:
        raise DaramError(f"--resume: cannot read {path}: {type(exc).__name__}: {exc}") from None
    saved = json.loads(state["signature"])
    for key in sorted(set(saved) | set(signature)):
        if saved.get(key) != json.loads(json.dumps(signature.get(key))):
            raise DaramError(
                f"--resume: {key} was {saved.get(key)!r} in the checkpointed run and is {signature.get(key)!r} now; "
                "resume with the same setting, or start a new run in another --out"
            )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    _set_rng_state(rng)
    return state["step"], state["micro_batches"]


# --- outputs --------------------------------------------------------------------------------------


def _log(out: Path, record: dict) -> None:
    with (out / METRICS).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _trim_metrics(path: Path, step: int) -> None:
    """On resume, drop records after the checkpoint's step (they will be written again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def read_metrics(out: Path) -> list[dict]:
    path = Path(out) / METRICS
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _plot(out: Path, dist: Distributed) -> None:
    if not dist.main:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(out)
    train = [r for r in records if r.get("split") != "heldout"]
    heldout = [r for r in records if r.get("split") == "heldout"]
    steps = [r["step"] for r in train]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(steps, [r["loss"] for r in train], label="loss")
    left.plot(steps, [r["ce"] for r in train], label="CE (train)", alpha=0.8)
    if heldout:
        left.plot([r["step"] for r in heldout], [r["ce"] for r in heldout], "s-", label="CE (held-out)")
    left.set_title("loss and next-token CE")
    kd = [(r["step"], r["kd"]) for r in train if r["kd"] is not None]
    if kd:
        right.plot(*zip(*kd), label="KL (train)", alpha=0.8)
    if heldout:
        right.plot([r["step"] for r in heldout], [r["kl"] for r in heldout], "o-", label="KL (held-out)")
    right.set_title(f"KL(teacher || student) at T = {heldout[-1]['temperature']:g}" if heldout else "KL(teacher || student)")
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.set_ylabel("nats per token")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out / CURVE, dpi=110)
    plt.close(fig)


def _export(model, tokenizer, out: Path) -> None:
    """A Hugging Face model directory: safetensors weights, config, generation config, tokenizer files."""
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _summary_line(summary: dict, kind: str) -> str:
    last = summary["last"] or {}
    parts = [
        f"student-train ({kind}): {plural(summary['steps'], 'step')}, {summary['tokens']:,} tokens; this run "
        f"{summary['tokens_this_run']:,} in {summary['seconds']:.0f} s ({summary['tokens_this_run'] / max(summary['seconds'], 1e-9):,.0f} tokens/s)",
    ]
    if last:
        kd = f", KL {last['kd']:.4f}" if last.get("kd") is not None else ""
        parts.append(f"loss {last['loss']:.4f}{kd}, CE {last['ce']:.4f}")
    if summary["heldout"]:
        h = summary["heldout"]
        parts.append(f"held-out KL {h['kl']:.4f}, CE {h['ce']:.4f}, top-1 {h['top1_agreement']:.1%}")
    parts.append(f"model in {summary['out']}")
    return "; ".join(parts)
