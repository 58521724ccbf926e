"""``daram student-train``: phase two, a GPT-2 student learns from the stored teacher distributions.

A recipe in three parts over the components in :mod:`daram.pipeline.train`:

- :func:`setup` checks everything before anything is written (shards, dumps, settings against the
  store's manifests and, under ``--resume``, against the checkpoint), builds the student, the
  optimizer and the schedule, and restores the checkpoint. It returns a :class:`Training`.
- :func:`fit` is the loop. It stops only between optimizer steps: at the end of the data or
  ``train.max_steps``, when the next step needs a shard the caller has not made available, or when
  asked to (a signal, ``run.time_limit``, the caller's ``should_stop``). Calling it again goes on
  exactly where it stopped: one schedule, one optimizer, one data order.
- :func:`finish` writes the last checkpoint, and for a finished run the held-out evaluation, the
  Hugging Face model directory, the loss curve and one summary line; a paused run gets a "paused"
  line saying how to continue.

Under ``torchrun`` every rank reads its own chunks (see :mod:`daram.pipeline.batches`) and DDP
averages the gradients; rank 0 alone writes metrics, checkpoints and the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from daram.config import Config, StudentConfig, TrainConfig
from daram.errors import DaramError
from daram.pipeline.batches import BatchPlan, Prefetcher, check_teacher_shards, check_token_shards, iter_batches
from daram.pipeline.heldout import heldout_metrics
from daram.pipeline.hf import check_store_tokenizer, load_causal_lm, load_tokenizer
from daram.pipeline.losses import DistillObjective, next_token_labels
from daram.pipeline.pause import Pause
from daram.pipeline.train.checkpoint import (
    check_signature,
    checkpoint_bytes,
    latest_checkpoint,
    load_checkpoint,
    read_settings,
    save_checkpoint,
    set_rng_state,
)
from daram.pipeline.train.distributed import Distributed, no_sync, start_distributed, stop_distributed, wrap_for_ddp
from daram.pipeline.train.export import export_student
from daram.pipeline.train.metrics import MetricsLog, objective_formula, plot_curves, read_metrics, summary_line
from daram.pipeline.train.model import StudentWithLoss, build_student, precision_for
from daram.pipeline.train.optim import build_optimizer
from daram.pipeline.train.out_lock import claim_out
from daram.pipeline.train.targets import NoTargets, OnlineTeacher, StoredTargets, TargetSource
from daram.storage import Store, TeacherManifest
from daram.text import plural
from daram.units import parse_duration

__all__ = ["Training", "Stop", "setup", "fit", "finish", "run_student_train", "precision_for", "read_metrics"]

# Settings that may change between a run and its --resume: they do not change what is computed.
RESUMABLE_CHANGES = (
    "out", "checkpoint_every", "eval_every", "eval_rows", "log_every", "loss_slice", "device", "prefetch",
)


@dataclass(frozen=True)
class Stop:
    """Why :func:`fit` returned. ``kind``: ``max_steps`` or ``epochs`` (the run is finished), ``shards`` (the
    next step needs a shard the caller has not made available) or ``paused`` (a signal, the time limit or
    the caller's ``should_stop``)."""

    kind: str
    message: str

    @property
    def finished(self) -> bool:
        return self.kind in ("max_steps", "epochs")


@dataclass
class Training:
    """Everything a training run holds between :func:`setup`, :func:`fit` and :func:`finish`."""

    cfg: Config
    dist: Distributed
    store: Store
    teacher: TeacherManifest | None
    shards: list[int]
    heldout_shard: int  # resolved from train.heldout_shard; -1 = none
    temperature: float
    tokenizer: object
    out: Path
    model: torch.nn.Module
    wrapped: torch.nn.Module  # the student with its loss, under DDP when there are several ranks
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    autocast_dtype: torch.dtype | None
    plan: BatchPlan
    total_steps: int
    targets: TargetSource
    signature: dict
    metrics: MetricsLog
    pause: Pause  # SIGTERM, SIGINT and run.time_limit: the caller enters it (see run_student_train)
    step: int = 0  # optimizer steps taken
    micro: int = 0  # micro-batches consumed: the position in the data order
    start_micro: int = 0  # where this process started (after a --resume, not 0)
    checked_shards: set[int] = field(default_factory=set)  # shards whose teacher dump has been checked
    last: dict = field(default_factory=dict)  # the last logged training record
    heldout: dict | None = None
    step_seconds: list[float] = field(default_factory=list)
    step_cpu_seconds: list[float] = field(default_factory=list)
    train_seconds: float = 0.0  # wall time inside fit's steps
    checkpoint_seconds: float = 0.0  # the last checkpoint's duration: part of the time limit's reserve
    stop: Stop | None = None

    @property
    def train(self) -> TrainConfig:
        return self.cfg.train

    @property
    def tokens_per_micro(self) -> int:
        return self.train.batch_size * self.store.manifest.seq_len  # one micro-batch of one rank

    def next_step_micro_batches(self) -> range:
        """The (global) micro-batches the next step reads, of all ranks: ``grad_accum`` per rank, fewer at the end
        of the data."""
        return range(self.micro, min(self.micro + self.train.grad_accum * self.dist.world, self.plan.total_batches))

    def shards_ahead(self) -> list[int]:
        """The shards the rest of the run reads, in order, starting with the next step's."""
        return self.plan.shards_from(self.micro)

    def say(self, message: str) -> None:
        if self.dist.main:
            print(message, file=sys.stderr, flush=True)


# --- setup -------------------------------------------------------------------------------------------


def setup(cfg: Config, resume: bool = False, online_teacher: str | None = None, given: set[str] | None = None,
          check_dumps: bool = True, pause: Pause | None = None) -> Training:
    """Check the settings and the store, build the student, optimizer and schedule; under ``resume`` restore
    the last checkpoint in ``train.out``, whose settings are the run's (``given``: the keys set on the
    command line or in a config file; one that contradicts the checkpoint is refused). Without ``given``
    (API callers) every setting must equal the checkpoint's, as before.

    ``check_dumps=False`` defers the check of the training shards' teacher dumps to :func:`fit`, shard by
    shard (for a caller that dumps them while training runs)."""
    out = Path(cfg.train.out)
    checkpoint = latest_checkpoint(out) if resume else None
    if resume and checkpoint is None:
        raise DaramError(f"--resume: no checkpoint in {out / 'checkpoints'}")
    if not resume and latest_checkpoint(out) is not None:
        raise DaramError(f"train.out {out} already holds a run; pass --resume to continue it or choose another --out")
    saved = read_settings(checkpoint) if checkpoint else None
    if saved is not None and given is not None:
        cfg = _settings_of_checkpoint(cfg, saved, given)  # before anything heavy: --device may come from here
    dist = start_distributed(cfg.train.device)
    try:
        state, rng = load_checkpoint(checkpoint, dist) if checkpoint else (None, None)
        if state is not None:
            cfg = _on_these_ranks(cfg, state, dist)
        return _setup(cfg, dist, state, rng, online_teacher or cfg.train.online_teacher or None, check_dumps, pause)
    except BaseException:
        stop_distributed(dist)
        raise


def _setup(cfg: Config, dist: Distributed, state: dict | None, rng: dict | None, online_teacher: str | None,
           check_dumps: bool, pause: Pause | None) -> Training:
    train = cfg.train
    store = Store.open(cfg.store.path, options=cfg.store.options)
    manifest = store.manifest
    shards, heldout = train.split(manifest.num_shards)
    check_token_shards(store, shards + ([heldout] if heldout >= 0 else []))
    teacher = store.teacher_manifest()
    use_kd = train.alpha_kd > 0
    checked: set[int] = set()
    if online_teacher is None:
        if use_kd and check_dumps:
            check_teacher_shards(store, teacher, shards, "train.shards")
            checked = set(shards)
        if heldout >= 0:
            check_teacher_shards(store, teacher, [heldout], "train.heldout_shard")
    if online_teacher is not None and train.temperature == 0:
        raise DaramError("train.online_teacher needs train.temperature > 0 (the seed project used 2)")
    # An online teacher brings its own distributions: the stored dump's T does not apply.
    temperature = _temperature(train, None if online_teacher else teacher, needed=use_kd or heldout >= 0)
    tokenizer = _store_tokenizer(store)
    out = Path(train.out)
    if dist.main:  # the other ranks share rank 0's directory
        claim_out(out)
        _check_writable(out)
        print(f"student-train: {train.describe_split(manifest.num_shards)}", flush=True)  # every check passed

    autocast_dtype, use_scaler = precision_for(train.precision, dist.device)
    torch.manual_seed(train.seed)  # the same initial weights on every rank
    model = build_student(cfg.student, store, tokenizer).to(dist.device)
    if online_teacher is not None:
        check_store_tokenizer(load_tokenizer(online_teacher), f"online teacher {online_teacher!r}", store)
        teacher_model = load_causal_lm(online_teacher, "float32", str(dist.device))
        if teacher_model.config.vocab_size != manifest.tokenizer.vocab_size:
            raise DaramError(f"online teacher {online_teacher}: vocab_size differs from the store's tokenizer")
        targets: TargetSource = OnlineTeacher(teacher_model, temperature)
    elif use_kd:
        targets = StoredTargets(teacher, train.tail, dist.device)
    else:
        targets = NoTargets()
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
    total_steps = -(-plan.total_batches // (train.grad_accum * dist.world))  # the last step may have fewer
    if train.max_steps:
        total_steps = min(total_steps, train.max_steps)
    optimizer, scheduler = build_optimizer(model, train, total_steps)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=use_scaler)
    signature = _signature(cfg, dist, store, teacher, online_teacher)
    training = Training(
        cfg=cfg, dist=dist, store=store, teacher=teacher, shards=shards, heldout_shard=heldout, temperature=temperature, tokenizer=tokenizer,
        out=out, model=model, wrapped=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
        autocast_dtype=autocast_dtype, plan=plan, total_steps=total_steps, targets=targets, signature=signature,
        metrics=MetricsLog(out, dist.main), pause=pause or Pause(parse_duration(cfg.run.time_limit)), checked_shards=checked,
    )
    if state is not None:
        check_signature(_from_before_new_settings(json.loads(state["signature"]), signature), signature)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(rng)
        training.step, training.micro = state["step"], state["micro_batches"]
    training.start_micro = training.micro
    training.wrapped = wrap_for_ddp(StudentWithLoss(model, train.loss_slice, autocast_dtype or torch.float32), dist)
    training.metrics.trim(training.step)
    model.train()
    return training


def _on_these_ranks(cfg: Config, state: dict, dist: Distributed) -> Config:
    """Elastic resume: the checkpointed run's global batch (rows per step) on this run's ranks, by
    ``grad_accum``. The data order and schedule do not depend on the ranks (see ``batches.py``)."""
    saved = json.loads(state["signature"])
    if "world_size" in saved:  # written before elastic resume: its data order was per rank
        if saved["world_size"] != 1:
            raise DaramError(
                f"--resume: the checkpoint was written by an older daram on {saved['world_size']} ranks, whose data "
                "order differs from this one's; finish it with that daram, or start a new run in another --out"
            )
        saved["global_batch_rows"] = saved["train.batch_size"] * saved.pop("train.grad_accum")
        del saved["world_size"]
        state["signature"] = json.dumps(saved)
    rows, per_micro = saved["global_batch_rows"], cfg.train.batch_size * dist.world
    if rows % per_micro:
        raise DaramError(
            f"--resume: the run's global batch is {rows} rows per step; {dist.world} rank(s) of train.batch_size "
            f"{cfg.train.batch_size} cannot make it up (it needs a number of ranks that divides {rows // cfg.train.batch_size})"
        )
    if rows // per_micro != cfg.train.grad_accum and dist.main:
        print(f"--resume on {dist.world} rank(s): train.grad_accum {cfg.train.grad_accum} -> {rows // per_micro}, the "
              f"same {rows} rows per step", file=sys.stderr)
    return cfg.replace("train", grad_accum=rows // per_micro)


def _settings_of_checkpoint(cfg: Config, saved: dict, given: set[str]) -> Config:
    """The checkpointed run's settings, with the ``given`` ones that may change (``RESUMABLE_CHANGES``, e.g.
    ``--out``, ``--device``, and ``--store``) taken from ``cfg``; a given setting that would change the computation and
    differs from the checkpoint's is refused, naming both values."""
    sections = {}
    for section, values in saved.items():
        current = getattr(cfg, section)
        known = {f.name for f in dataclasses.fields(current)}
        merged = {k: v for k, v in values.items() if k in known}
        for name in known & set(values):
            key = f"{section}.{name}"
            if key not in given:
                continue
            now, then = getattr(current, name), values[name]
            # The store may move (another mount in the next session): its tokens fingerprint, in the signature,
            # still has to match.
            if (section == "train" and name in RESUMABLE_CHANGES) or section == "store":
                merged[name] = now
            elif json.loads(json.dumps(now)) != then:
                raise DaramError(
                    f"--resume: {key} is {now!r} here but {then!r} in the checkpointed run; --resume reads the run's "
                    "settings from its checkpoint, so leave it out (or start a new run in another --out)"
                )
        sections[section] = type(current)(**merged)
    return dataclasses.replace(cfg, **sections)


def _check_writable(out: Path) -> None:
    """Fail now, in one line, rather than at the first metrics line or after an hour at the first checkpoint."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DaramError(f"train.out {out}: cannot write there ({exc.strerror or type(exc).__name__})") from None


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


def _from_before_new_settings(saved: dict, current: dict) -> dict:
    """A checkpoint written before a setting existed ran as that setting's default does (e.g. student.arch gpt2):
    its missing key counts as the default, so the run resumes unless the setting now differs (refused, named)."""
    defaults = json.loads(json.dumps({
        **{f"train.{k}": v for k, v in dataclasses.asdict(TrainConfig()).items()},
        **{f"student.{k}": v for k, v in dataclasses.asdict(StudentConfig()).items()},
    }))
    return {**{k: defaults[k] for k in current if k not in saved and k in defaults}, **saved}


def _signature(cfg: Config, dist: Distributed, store: Store, teacher, online_teacher) -> dict:
    """What a resumed run must share with the checkpointed one for the losses to continue exactly."""
    # the global batch, not the ranks or grad_accum: a run resumes on another number of ranks (elastic)
    train = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in (*RESUMABLE_CHANGES, "grad_accum")}
    return {
        **{f"train.{k}": v for k, v in train.items()},
        **{f"student.{k}": v for k, v in dataclasses.asdict(cfg.student).items()},
        "global_batch_rows": cfg.train.batch_size * cfg.train.grad_accum * dist.world,
        "store.tokens_fingerprint": store.manifest.tokens_fingerprint,
        "teacher": None if teacher is None else {k: teacher.settings()[k] for k in ("teacher", "kind", "width", "temperature", "draws", "seed")},
        "online_teacher": online_teacher,
    }


# --- fit ---------------------------------------------------------------------------------------------


def fit(training: Training, should_stop: Callable[[Training], bool] | None = None, available: set[int] | None = None) -> Stop:
    """Train until the run ends or is asked to stop; see :class:`Stop`. ``available``: the training shards the
    loop may read (default: all); the run stops before a step that needs another one. ``should_stop(training)``
    is asked between steps."""
    from tqdm import tqdm

    train, dist = training.train, training.dist
    readable = _readable_until(training, available)
    batches = Prefetcher(
        iter_batches(training.store, training.plan, training.micro, training.targets.reads_teacher, stop=readable), depth=train.prefetch
    )
    bar = tqdm(total=training.total_steps, initial=training.step, unit="step", desc="student-train", disable=not dist.main,
               dynamic_ncols=True, file=sys.stderr)
    since_log = {"tokens": 0, "seconds": 0.0}
    try:
        while True:
            # Stop only between steps: a checkpoint then holds whole steps, which is what an exact resume needs.
            training.stop = _end_of_run(training) or _next_step_unreadable(training, readable) or _stop_requested(training, should_stop)
            if training.stop is not None:
                return training.stop
            started, cpu_started = time.perf_counter(), time.process_time()
            step = training.next_step_micro_batches()
            group = [next(batches) for _ in range(len(step) // dist.world)]  # this rank's share of the step
            losses, grad_norm, lr = _train_step(training, group)
            training.step += 1
            training.micro += len(step)
            training.step_seconds.append(time.perf_counter() - started)
            training.step_cpu_seconds.append(time.process_time() - cpu_started)
            training.train_seconds += training.step_seconds[-1]
            since_log["tokens"] += len(step) * training.tokens_per_micro
            since_log["seconds"] += training.step_seconds[-1]  # training time only: evaluations and checkpoints left out
            bar.update(1)

            if training.step % train.log_every == 0 or training.step == training.total_steps:
                _log_step(training, dist.mean(losses.tolist()), grad_norm, lr, since_log)
                bar.set_postfix(loss=f"{training.last['loss']:.4f}", tok_s=f"{training.last['tokens_per_s']:,.0f}")
                since_log = {"tokens": 0, "seconds": 0.0}
            if train.eval_every and training.step % train.eval_every == 0 and training.step < training.total_steps:
                evaluate(training)
                if dist.main:
                    plot_curves(training.out)
            if train.checkpoint_every and training.step % train.checkpoint_every == 0 and training.step < training.total_steps:
                checkpoint(training)
    finally:
        batches.close()
        bar.close()


def _train_step(training: Training, group: list) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One optimizer step over ``group``'s micro-batches: (mean loss, KL, CE of this rank, grad norm, lr)."""
    train, dist = training.train, training.dist
    losses = torch.zeros(3, dtype=torch.float64, device=dist.device)
    for i, batch in enumerate(group):
        tokens = torch.from_numpy(batch.tokens).to(dist.device, non_blocking=True)
        # Under DDP the gradients are averaged across ranks once, on the step's last micro-batch.
        with no_sync(training.wrapped, sync=i == len(group) - 1), _autocast(training):
            objective = DistillObjective(
                next_token_labels(tokens), training.targets(batch, tokens), training.temperature, train.alpha_kd, train.alpha_ce
            )
            loss, kd, ce = training.wrapped(tokens, objective)
            training.scaler.scale(loss / len(group)).backward()  # backward before the next forward: see StudentWithLoss
        losses += torch.stack([loss.detach(), kd, ce]).double() / len(group)
    training.scaler.unscale_(training.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(training.model.parameters(), train.grad_clip)
    # A non-finite loss would poison the weights for good: stop before the optimizer applies it. (Under fp16 an
    # infinite gradient is the scaler's business: it skips that step and lowers its scale.)
    if not torch.isfinite(losses).all() or (not training.scaler.is_enabled() and not torch.isfinite(grad_norm)):
        shards = sorted({batch.shard for batch in group})
        raise DaramError(
            f"step {training.step + 1}: the loss is {float(losses[0]):.4g} (KL {float(losses[1]):.4g}, CE {float(losses[2]):.4g}) "
            f"on shard{'s' if len(shards) > 1 else ''} {', '.join(map(str, shards))}; training stopped and nothing was "
            f"exported (the last checkpoint, if any, is intact). Check the teacher dump (`daram verify`, its "
            f"temperature) and train.lr"
        )
    training.scaler.step(training.optimizer)
    training.scaler.update()
    training.optimizer.zero_grad(set_to_none=True)
    lr = training.scheduler.get_last_lr()[0]
    training.scheduler.step()
    return losses, grad_norm, lr


def _log_step(training: Training, means: list[float], grad_norm: torch.Tensor, lr: float, since_log: dict) -> None:
    loss, kd, ce = means
    training.last = {
        "step": training.step, "loss": loss, "kd": kd if training.train.alpha_kd > 0 else None, "ce": ce,
        "objective": objective_formula(training.train.alpha_kd, training.train.alpha_ce, training.temperature),
        "lr": lr, "tokens_per_s": since_log["tokens"] / since_log["seconds"], "grad_norm": float(grad_norm),
        **{k: v for k, v in training.plan.describe(training.micro).items() if k != "micro_batches"},
    }
    training.metrics.write(training.last)


def _end_of_run(training: Training) -> Stop | None:
    """Which limit ended the run, if one did: ``train.max_steps`` or the end of the epochs."""
    if training.step < training.total_steps:
        return None
    train = training.train
    steps = plural(training.step, "step")
    if train.max_steps and training.step == train.max_steps and training.micro < training.plan.total_batches:
        return Stop("max_steps", f"stopped at --max-steps {train.max_steps} (train.max_steps)")
    epochs = plural(train.epochs, "epoch")
    note = f"; --max-steps {train.max_steps} was not reached" if train.max_steps and training.step < train.max_steps else ""
    return Stop("epochs", f"train.epochs = {train.epochs}: the data ended after {steps} ({epochs} of {_shards(training)}){note}")


def _shards(training: Training) -> str:
    return plural(len(training.shards), "shard")


def _readable_until(training: Training, available: set[int] | None) -> int:
    """The first micro-batch at or after the current one that reads a shard outside ``available`` (the total
    when there is none), after checking the teacher dumps of the available shards not checked yet."""
    if available is None:
        available = set(training.shards)
    if training.targets.reads_teacher:
        unchecked = sorted(set(training.plan.shards_from(training.micro)) & (available - training.checked_shards))
        if unchecked:
            training.teacher = training.store.teacher_manifest()  # fresh: shards may have been dumped since setup
            check_teacher_shards(training.store, training.teacher, unchecked, "train.shards")
            training.checked_shards |= set(unchecked)
    micro = training.micro
    while micro < training.plan.total_batches and training.plan.shard_of(micro) in available:
        index, within = training.plan.locate(micro)
        micro += training.plan.passes[index].batches - within  # to the end of this shard's pass
    return min(micro, training.plan.total_batches)


def _next_step_unreadable(training: Training, readable: int) -> Stop | None:
    needed = training.next_step_micro_batches()
    if needed and needed[-1] >= readable:
        shard = training.plan.shard_of(readable)
        return Stop("shards", f"step {training.step + 1} needs shard {shard}, which is not available yet")
    return None


def _stop_requested(training: Training, should_stop: Callable[[Training], bool] | None) -> Stop | None:
    # Keep time for the next step and for the checkpoint after it: the run must stop *before* the limit.
    reserve = 2 * max(training.step_seconds[-20:], default=0.0) + training.checkpoint_seconds
    reason = training.pause.reason if training.pause.requested(reserve) else None
    if reason is None and should_stop is not None and should_stop(training):
        reason = "requested"
    # Every rank must stop at the same step, or the others would wait forever in the next all-reduce.
    if training.dist.any(reason is not None):
        return Stop("paused", reason or "another rank was asked to stop")
    return None


def _autocast(training: Training):
    if training.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(training.dist.device.type, dtype=training.autocast_dtype)


# --- evaluation and checkpoints (fit calls them now and then; finish once more) ---------------------


def evaluate(training: Training) -> dict | None:
    """Held-out metrics of the student on ``train.heldout_shard`` (rank 0 computes, the others wait)."""
    train = training.train
    if training.heldout_shard < 0:
        return None
    result = None
    if training.dist.main:
        with _autocast(training):
            teacher_model = training.targets.model if isinstance(training.targets, OnlineTeacher) else None
            result = heldout_metrics(
                training.model, training.store, training.heldout_shard, training.temperature, train.eval_rows, train.batch_size,
                training.dist.device, teacher_model=teacher_model,
            )
        training.metrics.write({"step": training.step, "split": "heldout", **result})
        training.heldout = result
    training.dist.barrier()
    return result


def checkpoint(training: Training) -> Path | None:
    """The checkpoint of the current step (all ranks call this); None when it already exists."""
    started = time.perf_counter()
    path = save_checkpoint(training.out, training.step, training.dist, {
        "step": training.step,
        "micro_batches": training.micro,
        "data_position": {**training.plan.describe(training.micro), "shuffle_seed": training.train.seed},
        "signature": json.dumps(training.signature, sort_keys=True),
        "model": training.model.state_dict(),
        "optimizer": training.optimizer.state_dict(),
        "scheduler": training.scheduler.state_dict(),
        "scaler": training.scaler.state_dict(),
    }, settings={section: dataclasses.asdict(getattr(training.cfg, section)) for section in ("store", "train", "student")})
    training.checkpoint_seconds = time.perf_counter() - started
    return path


# --- finish ------------------------------------------------------------------------------------------


def finish(training: Training, continue_with: str | None = None) -> dict:
    """After :func:`fit`: the last checkpoint; for a finished run also the held-out evaluation, the exported
    model and the loss curve, each announced as it starts (they take a while on a large student). Returns
    the summary, also printed as one line; a paused run prints how to continue instead (``continue_with``,
    by default ``daram student-train --resume --out OUT``)."""
    stop = training.stop or Stop("paused", "fit was not run")
    if stop.finished and training.micro == training.start_micro and (training.out / "model.safetensors").is_file():
        # a rerun of a finished run: its checkpoint, held-out record and export are all written already
        training.say(f"already complete at step {training.step}: the student is in {training.out}; nothing to do")
        return _summary(training, stop)
    training.say(stop.message if stop.finished else f"stopping: {stop.message}")
    with _phase(training, f"checkpoint of step {training.step}") as done:
        path = checkpoint(training)
        if path is not None and training.dist.main:
            done(f"{path} ({checkpoint_bytes(path) / 1e6:,.1f} MB)")
    if stop.finished:
        if training.heldout_shard >= 0:
            rows = min(training.train.eval_rows, training.store.manifest.rows_per_shard[training.heldout_shard])
            with _phase(training, f"held-out evaluation on shard {training.heldout_shard} ({plural(rows, 'row')})") as done:
                result = evaluate(training)
                if result is not None:
                    done(f"KL {result['kl']:.4f}, CE {result['ce']:.4f}")
        if training.dist.main:
            with _phase(training, f"export of the model to {training.out}"):
                try:
                    export_student(training.model, training.tokenizer, training.out)
                except OSError as exc:
                    raise DaramError(
                        f"train.out {training.out}: cannot write the model ({exc.strerror or type(exc).__name__}); the "
                        f"checkpoint of step {training.step} holds its weights: free space, then rerun with --resume"
                    ) from None
            with _phase(training, "loss curve") as done:
                done(str(plot_curves(training.out)))
    summary = _summary(training, stop)
    if stop.finished:
        training.say(summary_line(summary, training.targets.name))
    else:
        command = continue_with or f"daram student-train --resume --out {training.out}"
        training.say(f"paused at step {training.step} of {training.total_steps} ({stop.message}); continue with: {command}")
    return summary


@contextlib.contextmanager
def _phase(training: Training, what: str):
    """``what ...`` before a slow step and ``done in N s: detail`` after, so the console never goes quiet."""
    started = time.perf_counter()
    detail: list[str] = []
    training.say(f"{what} ...")
    yield detail.append
    training.say(f"  done in {time.perf_counter() - started:.1f} s" + (f": {detail[0]}" if detail else ""))


def _summary(training: Training, stop: Stop) -> dict:
    return {
        "steps": training.step,
        "ended": stop.message,
        "paused": not stop.finished,
        "tokens": training.micro * training.tokens_per_micro,
        "tokens_this_run": (training.micro - training.start_micro) * training.tokens_per_micro,  # less than tokens after a --resume
        "seconds": training.train_seconds,
        "step_seconds": training.step_seconds,  # wall time of each step of this process (the first pays for warm-up)
        "step_cpu_seconds": training.step_cpu_seconds,  # CPU time of this process (all threads) per step: steadier under load
        "mean_step_s": float(np.mean(training.step_seconds[1:] or training.step_seconds)) if training.step_seconds else 0.0,
        "last": training.last,
        "heldout": training.heldout,
        "out": str(training.out),
    }


# --- the command --------------------------------------------------------------------------------------


def run_student_train(cfg: Config, resume: bool = False, online_teacher: str | None = None,
                      given: set[str] | None = None) -> dict:
    """setup -> fit -> finish; returns the summary. SIGTERM, SIGINT and ``run.time_limit`` pause the run
    cleanly (checkpoint, a "paused" line, ``summary["paused"]``); ``--resume`` continues it.

    ``online_teacher`` (default ``train.online_teacher``; a model directory or hub id) replaces the
    stored teacher by that model run in the loop: full-vocabulary KD at ``train.temperature``, the
    teacher arrays are not read. It is the seed project's recipe, kept as the baseline that stored
    formats are judged against (``benchmarks/fidelity.py``), not the product path.
    """
    training = setup(cfg, resume=resume, online_teacher=online_teacher, given=given)
    try:
        with training.pause:
            fit(training)
            return finish(training)
    finally:
        stop_distributed(training.dist)
