"""Typed configuration: one frozen dataclass per ``daram.toml`` section.

Precedence, lowest to highest: dataclass defaults, ``daram.toml`` (or ``--config FILE``),
``--set section.key=value``, then the command's own flags. An unknown key or a value of the
wrong type is a :class:`DaramError` that names the key.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from daram.errors import DaramError
from daram.text import plural
from daram.units import parse_amount, parse_duration, parse_size

DEFAULT_CONFIG_NAME = "daram.toml"


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None) -> Any:
    """A config field whose ``help`` is its only description: the CLI flag's help, its line in
    docs/cli.md and its comment in the template ``daram init`` writes all come from here."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def setting_field(key: str) -> dataclasses.Field:
    """The field of ``section.key`` (``prepare.sources.unit`` reaches into a list of tables)."""
    cls: Any = Config
    *path, name = key.split(".")
    for part in path:
        cls = _table_type(typing.get_type_hints(cls)[part])
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(key)


def setting_help(key: str, note: str = "") -> str:
    """The help of ``section.key``, then ``note`` (what only the flag does), then ``[section.key]``:
    what a CLI flag shows."""
    return " ".join(filter(None, (setting_field(key).metadata["help"], note, f"[{key}]")))


def setting_default(f: dataclasses.Field) -> Any:
    """A field's built-in default (``MISSING`` for a required one)."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _table_type(hint: Any) -> type:
    """The dataclass behind a section (``TeacherConfig``) or a list of tables (``tuple[SourceConfig, ...]``)."""
    if typing.get_origin(hint) is tuple:
        hint = typing.get_args(hint)[0]
    if not dataclasses.is_dataclass(hint):
        raise KeyError(hint)
    return hint


REFERENCE_TEACHER = "skt/ko-gpt-trinity-1.2B-v0.5"


@dataclass(frozen=True)
class StoreConfig:
    path: str = setting(
        "work/store.zarr",
        "Local path or any fsspec URL zarr supports (s3://bucket/daram.zarr, gs://..., az://...; extras daram[s3], daram[gcs], daram[azure]).",
    )
    options: dict[str, str] = setting(
        help="Options of a remote store's file system (fsspec storage options), e.g. { endpoint_url = "
        "\"https://<account>.r2.cloudflarestorage.com\", profile = \"r2\" }; unset ones come from the usual "
        "environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_PROFILE, ...).",
        factory=dict,
    )


@dataclass(frozen=True)
class SourceConfig:
    path: str = setting(help="A file, a directory (every file under it, sorted) or a glob. The same path may "
                             "appear many times, sliced with skip/take.")
    format: str = setting(
        "text",
        "text (one unit per line, or blank-line-separated paragraphs) | jsonl | modu (document[].paragraph[].form).",
    )
    unit: str = setting(
        "line",
        "What goes between two EOS tokens. line: each non-empty line (the default: most text dumps hold one "
        "document, paragraph or sentence per line, and a line never glues a whole file into one unit); "
        "paragraph: blank-line-separated blocks of a text file, a whole JSONL record or Modu paragraph; "
        "sentence: Korean sentences (see prepare.sentence_splitter).",
    )
    text_field: str = setting("text", "The JSONL key that holds the text.")
    name: str = setting("", "Shown in the manifest and by inspect; empty = the path (and the slice).")
    skip: str = setting("", 'How much of the source to pass over first: "600MB" (bytes of the files; of the paragraph '
                            'text for modu) or "20000 lines" (lines; Modu paragraphs). Empty = none.')
    take: str = setting("", 'How much to read after skip, in the same measure: "300MB" or "20000 lines". A line '
                            "belongs to the slice in which it starts. Empty = to the end.")
    repeat: bool = setting(False, "Let this entry overlap an earlier entry of the same path (text repeated on purpose); "
                                  "without it an overlap is an error.")

    def __post_init__(self) -> None:
        _check_choice("prepare.sources.format", self.format, ("text", "jsonl", "modu"))
        _check_choice("prepare.sources.unit", self.unit, ("sentence", "paragraph", "line"))
        measures = {parse_amount(v, f"prepare.sources.{k}")[1] for k, v in (("skip", self.skip), ("take", self.take)) if v}
        if len(measures) > 1:
            raise DaramError(f"source {self.path}: skip and take must use one measure (both bytes or both lines)")

    @property
    def measure(self) -> str:
        """``"bytes"`` or ``"lines"``: how skip and take count; ``""`` for a whole source."""
        for text, key in ((self.take, "take"), (self.skip, "skip")):
            if text:
                return parse_amount(text, f"prepare.sources.{key}")[1]
        return ""

    @property
    def span(self) -> tuple[int, int | None]:
        """``(start, stop)`` in :attr:`measure`; ``stop`` None = to the end."""
        start = parse_amount(self.skip, "prepare.sources.skip")[0] if self.skip else 0
        return start, start + parse_amount(self.take, "prepare.sources.take")[0] if self.take else None

    @property
    def label(self) -> str:
        """The name shown for this entry: its name, else its path with its slice."""
        if self.name:
            return self.name
        cut = ", ".join(f"{k} {v}" for k, v in (("skip", self.skip), ("take", self.take)) if v)
        return f"{self.path} [{cut}]" if cut else self.path


@dataclass(frozen=True)
class PrepareConfig:
    tokenizer: str = setting(
        REFERENCE_TEACHER,
        "The teacher's tokenizer (hub id or local directory): the student inherits it, so ids line up with the stored logits.",
    )
    seq_len: int = setting(512, "Tokens per row: the context both models see (at least 2).")
    num_shards: int = setting(64, "Shards the ordered token stream is split into, contiguously: the units of dumping and of the curriculum.")
    rows_per_chunk: int = setting(64, "Rows per Zarr chunk: the unit of atomic writes, checksums and resume.")
    sources: tuple[SourceConfig, ...] = setting(
        (),
        "The corpus, read in this order: the curriculum. Shards split the ordered stream contiguously, so "
        "`student-train --shards all` sees the sources in exactly this order.",
    )
    workers: int = setting(0, "Processes that split and tokenize blocks of text in parallel; 0 = every core. "
                              "The store is byte-identical for any number.")
    sentence_splitter: str = setting(
        "kiwi",
        "For unit = \"sentence\": kiwi (kiwipiepy's morphological splitter: accurate, about 0.2 MB/s per core) "
        "| regex (split after . ? ! …: fast, misses sentences without punctuation).",
    )

    def __post_init__(self) -> None:
        _check_choice("prepare.sentence_splitter", self.sentence_splitter, ("kiwi", "regex"))
        if self.seq_len < 2:
            raise DaramError(f"prepare.seq_len must be >= 2 (a row predicts each next token), got {self.seq_len}")
        _check_positive("prepare.num_shards", self.num_shards)
        _check_positive("prepare.rows_per_chunk", self.rows_per_chunk)
        if self.workers < 0:
            raise DaramError(f"prepare.workers must be >= 0 (0 = every core), got {self.workers}")


@dataclass(frozen=True)
class TeacherConfig:
    model: str = setting(REFERENCE_TEACHER, "The teacher: a hub id or a local directory.")
    revision: str = setting("main", "Hub revision (branch, tag or commit) of the teacher.")
    dtype: str = setting(
        "auto",
        "auto | float16 | bfloat16 | float32: the teacher's weights and forward pass; auto = float16 on CUDA, float32 "
        "on a CPU (where float16 is slow). Not part of the dump's identity: shards dumped in different dtypes may "
        "share a store (docs/store-format.md).",
    )
    device: str = setting("auto", "auto (cuda when available, else cpu) | cpu | cuda | cuda:N.")
    temperature: float = setting(
        1.0,
        "Softmax temperature T of the stored distributions; student-train reads it from the store. 1 keeps the "
        "teacher's own distribution, the one its held-out KL is measured against; T = 2 flattens a 51,200-id "
        "vocabulary until every draw is a new id (docs/benchmarks.md, format v2).",
    )
    kind: str = setting(
        "draw_ranks",
        "What is stored per position (without it, a setting only one kind reads picks that kind: --top-k 32 "
        "dumps topk). draw_ranks: `draws` ids drawn systematically from softmax(logits/T) (one uniform per position, "
        "the draws evenly spaced along the CDF), stored as steps of their ranks in the shard's token counts; an "
        "unbiased estimate of the teacher in 6.7-10.6 B/token with the tokens at 6 draws (a peaked and a flat small "
        "teacher). draws (format v2): independent draws stored as sorted ids. sampled: draws kept as unique ids + "
        "counts (v1). topk: the `top_k` most probable ids with full-vocabulary log-probs, so the tail mass is exact "
        "(see train.tail). docs/benchmarks.md compares their fidelity and bytes per token.",
    )
    top_k: int = setting(64, "topk dumps: ids kept per position.")
    draws: int = setting(
        6,
        "draw_ranks, draws and sampled dumps: draws per position (sampled: 1-255, counts are uint8). 6 fits the seed "
        "corpus's 1.45B tokens in 16 GB with the tokens; 16 keeps more of online training's gain for about twice "
        "the bytes (README, \"Which teacher format is the default\").",
    )
    sample_width: int = setting(
        0,
        "sampled dumps: unique ids kept per position (S); 0 = draws, so none is ever dropped (each padding slot "
        "costs about 1 byte/token on disk). A smaller S drops the rarest draws where a position has more unique "
        "ids, counted as truncated_positions in the shard statistics.",
    )
    batch_size: int = setting(0, "Rows per forward; 0 = automatic, backing off on CUDA out-of-memory.")
    seed: int = setting(0, "Seed of the draws (draw_ranks, draws and sampled dumps): they are a pure function of (seed, shard, chunk).")
    lease: str = setting(
        "15m",
        "How long a shard's claim lasts without a heartbeat (renewed 4 times per lease while its dump runs) before "
        "another machine takes the shard over, keeping its written chunks. Longer than the hosts' clock skew.",
    )

    def __post_init__(self) -> None:
        _check_choice("teacher.dtype", self.dtype, ("auto", "float16", "bfloat16", "float32"))
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise DaramError(f"teacher.temperature must be finite and > 0, got {self.temperature}")
        _check_temperature("teacher.temperature", self.temperature)
        _check_positive("teacher.top_k", self.top_k)
        _check_positive("teacher.draws", self.draws)
        if self.sample_width < 0:
            raise DaramError(f"teacher.sample_width must be >= 0 (0 = draws), got {self.sample_width}")
        if self.batch_size < 0:
            raise DaramError(f"teacher.batch_size must be >= 0 (0 = automatic), got {self.batch_size}")


@dataclass(frozen=True)
class StudentConfig:
    arch: str = setting(
        "gpt2",
        "Architecture of a new student: gpt2 (learned positions), llama or qwen2 (rotary positions, gated MLP, "
        "grouped-query attention), or the path of a transformers config.json, whose own shape then replaces "
        "n_embd / n_head / n_layer / n_kv_head / intermediate_size / tie_embeddings. Its logits must be "
        "hidden @ W^T (no head bias, logit scale or soft-capping).",
    )
    n_embd: int = setting(768, "Student width.")
    n_head: int = setting(8, "Student attention heads.")
    n_layer: int = setting(4, "Student layers.")
    n_kv_head: int = setting(0, "Key/value heads of a llama or qwen2 student (grouped-query attention); 0 = n_head. gpt2 has none of its own.")
    intermediate_size: int = setting(
        0, "MLP width; 0 = the architecture's default: 4 x n_embd for gpt2, 8/3 x n_embd rounded up to a multiple of 64 "
           "for llama and qwen2 (a gated MLP of the same parameter count).")
    tie_embeddings: bool = setting(True, "Share the token embedding with the LM head (False: the head has its own weight).")
    init_from: str = setting(
        "",
        "Start from this causal LM (hub id or directory) instead of random weights; its own shape then replaces "
        "n_embd / n_head / n_layer, and its tokenizer must be the store's.",
    )
    dropout: float = setting(
        0.0, "Residual, embedding and attention dropout of a new student (llama and qwen2 have attention dropout "
             "only); 0 suits one pass over a large corpus.")

    def __post_init__(self) -> None:
        for name in ("n_embd", "n_head", "n_layer"):
            _check_positive(f"student.{name}", getattr(self, name))
        if self.arch not in ("gpt2", "llama", "qwen2") and not self.arch.endswith(".json"):
            raise DaramError(f"student.arch must be gpt2, llama, qwen2 or the path of a config.json, got {self.arch!r}")
        if self.n_kv_head < 0 or self.intermediate_size < 0:
            raise DaramError(f"student.n_kv_head ({self.n_kv_head}) and student.intermediate_size "
                             f"({self.intermediate_size}) must be >= 0 (0 = the architecture's default)")
        if self.n_kv_head and self.n_head % self.n_kv_head:
            raise DaramError(f"student.n_head ({self.n_head}) must be a multiple of student.n_kv_head ({self.n_kv_head})")
        if self.arch == "gpt2" and self.n_kv_head not in (0, self.n_head):
            raise DaramError(f"student.n_kv_head {self.n_kv_head}: gpt2 has no grouped-query attention (use llama or qwen2, or 0)")
        if not 0 <= self.dropout < 1:
            raise DaramError(f"student.dropout must be in [0, 1), got {self.dropout}")
        if self.n_embd % self.n_head:
            raise DaramError(f"student.n_embd ({self.n_embd}) must be divisible by student.n_head ({self.n_head})")


LAST_SHARD = -2  # train.heldout_shard: the store's last shard


@dataclass(frozen=True)
class TrainConfig:
    out: str = setting("work/student", "Output directory: the student's save_pretrained directory, checkpoints and metrics.")
    shards: str = setting(
        "all", "Shards in curriculum order: 3, 0-7, 0,2,5 or all (every shard but the held-out one). Keep the held-out shard out."
    )
    heldout_shard: int = setting(
        LAST_SHARD,
        f"A shard kept out of training for periodic held-out evaluation; {LAST_SHARD} = the store's last shard (none for "
        "a one-shard store), resolved and printed when training starts; -1 = none.",
    )
    epochs: int = setting(1, "Passes over the shards.")
    batch_size: int = setting(8, "Rows per micro-batch (per rank).")
    grad_accum: int = setting(8, "Micro-batches per optimizer step.")
    lr: float = setting(6e-4, "Peak learning rate (AdamW).")
    min_lr: float = setting(6e-5, "Learning rate at the end of the decay.")
    warmup_steps: int = setting(500, "Linear warm-up steps.")
    schedule: str = setting("cosine", "Decay after the warm-up: cosine | linear.")
    max_steps: int = setting(0, "Stop after this many optimizer steps; 0 = run the epochs to the end.")
    weight_decay: float = setting(0.1, "AdamW weight decay (not on biases and LayerNorm).")
    grad_clip: float = setting(1.0, "Max gradient norm (a large value effectively turns clipping off).")
    precision: str = setting(
        "auto",
        "auto (bf16 where the GPU supports it, fp16 + grad scaler on older GPUs such as P100 and T4, fp32 on CPU) "
        "| fp32 | fp16 | bf16.",
    )
    alpha_kd: float = setting(
        1.0, "Weight of T^2 * KL(teacher || student at T) in the loss; 0 = the CE-only baseline from the same command."
    )
    alpha_ce: float = setting(
        0.5,
        "Weight of the cross-entropy on the real next token. 0.5 with draws at T = 1 (chosen at 16 draws): it kept "
        "the student's held-out CE better than CE-only's on a peaked teacher, where 0.1 (the seed's) left it worse "
        "(docs/benchmarks.md, format v2).",
    )
    tail: str = setting(
        "bucket",
        "topk stores only: bucket (KL over the k kept ids plus one bucket for the exact tail mass) | renormalize "
        "(over the k ids only).",
    )
    temperature: float = setting(
        0.0, "KD temperature; 0 = the teacher dump's T (another value needs train.allow_temperature_mismatch)."
    )
    allow_temperature_mismatch: bool = setting(False, "Let train.temperature differ from the teacher dump's T.")
    loss_slice: int = setting(
        128,
        "Sequence positions per loss slice: the LM head and loss run slice by slice, so the float32 logits of a "
        "whole micro-batch never exist at once.",
    )
    shuffle: bool = setting(True, "Seeded shuffle: chunk order within a shard, then rows within windows of 8 chunks.")
    seed: int = setting(0, "Seed of the weights, shuffle and dropout.")
    checkpoint_every: int = setting(500, "Steps between checkpoints (one is also written at the end); 0 = only at the end.")
    eval_every: int = setting(500, "Steps between held-out evaluations (one also runs at the end); 0 = only at the end.")
    eval_rows: int = setting(64, "Rows of the held-out shard scored at each evaluation.")
    log_every: int = setting(10, "Optimizer steps between metrics.jsonl lines.")
    device: str = setting("auto", "auto (cuda when available, else cpu) | cpu | cuda | cuda:N; under torchrun each rank uses its local GPU.")
    prefetch: int = setting(4, "Micro-batches the background reader keeps ready.")
    online_teacher: str = setting(
        "",
        "Baseline only: distil from this teacher model (directory or hub id) run in the loop with its full logits "
        "at train.temperature, as the seed project did, instead of the stored dump; '' = the store. It is the "
        "reference benchmarks/fidelity.py judges stored formats against, and costs a teacher forward per step.",
    )

    def __post_init__(self) -> None:
        _check_choice("train.schedule", self.schedule, ("cosine", "linear"))
        _check_choice("train.precision", self.precision, ("auto", "fp32", "fp16", "bf16"))
        _check_choice("train.tail", self.tail, ("bucket", "renormalize"))
        for name in ("epochs", "batch_size", "grad_accum", "loss_slice", "eval_rows", "log_every", "prefetch"):
            _check_positive(f"train.{name}", getattr(self, name))
        for name in ("warmup_steps", "max_steps", "checkpoint_every", "eval_every"):
            if getattr(self, name) < 0:
                raise DaramError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.lr or not 0 <= self.min_lr <= self.lr:
            raise DaramError(f"train.lr must be > 0 and train.min_lr in [0, lr]; got lr={self.lr}, min_lr={self.min_lr}")
        if not self.grad_clip > 0:
            raise DaramError(f"train.grad_clip must be > 0, got {self.grad_clip}")
        if self.temperature < 0:
            raise DaramError(f"train.temperature must be >= 0 (0 = the teacher manifest's), got {self.temperature}")
        if self.temperature:
            _check_temperature("train.temperature", self.temperature)
        if self.alpha_kd < 0 or self.alpha_ce < 0 or self.alpha_kd + self.alpha_ce == 0:
            raise DaramError("train.alpha_kd and train.alpha_ce must be >= 0 and not both 0")
        if self.heldout_shard < LAST_SHARD:
            raise DaramError(f"train.heldout_shard must be a shard, -1 (none) or {LAST_SHARD} (the last), got {self.heldout_shard}")

    def heldout(self, num_shards: int) -> int:
        """The held-out shard of a store of ``num_shards`` (-1 = none), checked against it."""
        if self.heldout_shard == LAST_SHARD:
            return num_shards - 1 if num_shards > 1 else -1
        if self.heldout_shard >= num_shards:
            raise DaramError(f"train.heldout_shard: shard {self.heldout_shard} is out of range; the store has shards "
                             f"0-{num_shards - 1}")
        return self.heldout_shard

    def split(self, num_shards: int) -> tuple[list[int], int]:
        """(training shards in curriculum order, held-out shard or -1) of a store of ``num_shards``: ``all``
        trains on every shard but the held-out one; a held-out shard named in an explicit list is refused."""
        heldout = self.heldout(num_shards)
        shards = parse_shards(self.shards, num_shards, "train.shards")
        if self.shards.strip() == "all":
            shards = [s for s in shards if s != heldout]
        elif heldout in shards:
            raise DaramError(f"train.heldout_shard {heldout} is also in train.shards ({self.shards})")
        return shards, heldout

    def describe_split(self, num_shards: int) -> str:
        """One line naming the shards trained on and held out, and where the held-out one came from."""
        shards, heldout = self.split(num_shards)
        why = " (the store's last; train.heldout_shard)" if self.heldout_shard == LAST_SHARD else ""
        held = f"held-out shard {heldout}{why}" if heldout >= 0 else "no held-out shard" + (
            " (a one-shard store)" if self.heldout_shard == LAST_SHARD else "")
        return f"training shards {_spans(shards)}; {held}"


# Fine-tuning learning rate per task under the seed's protocol. BoolQ 5e-6 and WiC 1e-6 are the seed's, which
# takes them from the KoBEST paper; it names no rate for the others, so they reuse BoolQ's (our choice, not tuned).
DEFAULT_EVAL_LEARNING_RATES = {
    "boolq": 5e-6,
    "copa": 5e-6,
    "wic": 1e-6,
    "hellaswag": 5e-6,
    "sentineg": 5e-6,
    "nsmc": 5e-6,
}
LEARNING_RATE_SOURCES = {
    "seed": {task: "the seed (KoBEST paper)" if task in ("boolq", "wic") else "ours: the seed's BoolQ rate, no rate given"
             for task in DEFAULT_EVAL_LEARNING_RATES},
    "quick": {task: "ours: 3 short epochs need a larger rate than 20 long ones" for task in DEFAULT_EVAL_LEARNING_RATES},
}

# `eval.protocol`: a named set of eval settings, layered between the built-in defaults and what a config file or a
# flag sets. "seed" is the reference study's (20 epochs, batch 64, length 512, its learning rates); "quick" fits a
# CPU (small subsets, short sequences, 3 epochs); "custom" adds nothing to the defaults.
EVAL_PROTOCOLS: dict[str, dict[str, Any]] = {
    "seed": {"epochs": 20, "batch_size": 64, "max_length": 512, "max_train": 0, "max_dev": 0, "max_test": 0,
             "learning_rates": dict(DEFAULT_EVAL_LEARNING_RATES)},
    "quick": {"epochs": 3, "batch_size": 16, "max_length": 128, "max_train": 480, "max_dev": 200, "max_test": 400,
              "learning_rates": {task: 3e-5 for task in DEFAULT_EVAL_LEARNING_RATES}},
    "custom": {},
}


@dataclass(frozen=True)
class EvalConfig:
    models: tuple[str, ...] = setting(
        ("skt/kogpt2-base-v2", "work/student"),
        "Causal LMs to compare (hub ids or directories). The first is the baseline: the report gives the others' "
        "scores as % of it and their time saved.",
    )
    names: tuple[str, ...] = setting((), "Their names in the report, in order; empty = the ids / directories as given.")
    tasks: tuple[str, ...] = setting(
        ("boolq", "copa", "wic", "hellaswag", "sentineg", "nsmc"), "Tasks to fine-tune and score, in report order."
    )
    data: str = setting(
        "", "A directory laid out like shared/data (kobest/<Task>/*.tsv, nsmc/...); empty = Hugging Face datasets (online)."
    )
    out: str = setting("work/eval", "Report directory: report.md, report.json, report.png and seconds.png.")
    protocol: str = setting(
        "seed",
        "seed | quick | custom: the preset under the other eval settings, which replace its values one by one. seed: the "
        "reference study's protocol (20 epochs, batch 64, length 512, its learning rates); quick: subsets for a CPU "
        "(3 epochs, batch 16, length 128, a few hundred examples); custom: the built-in defaults only. The report "
        "gives the test score at the epoch chosen on dev, and beside it the seed's rule (the best test epoch).",
    )
    runs: int = setting(3, "Fine-tuning seeds per model and task (seed, seed + 1, ...); scores are their mean ± std.")
    shots: tuple[int, ...] = setting(
        (), "Zero/few-shot KoBEST by log-likelihood with lm-evaluation-harness's kobest prompts, one score per number "
        "of shots, e.g. [0, 5]; empty = none."
    )
    finetune: bool = setting(True, "Fine-tune on the tasks; false = only the zero/few-shot scores of shots.")
    epochs: int = setting(20, "Fine-tuning epochs per task; dev and test are scored after every epoch.")
    batch_size: int = setting(64, "Examples per optimizer step.")
    micro_batch_size: int = setting(
        0, "Examples per forward/backward when a whole batch does not fit in memory (gradients accumulate); 0 = batch_size."
    )
    max_length: int = setting(512, "Tokens per sequence; longer inputs lose the end of their longest segment.")
    max_train: int = setting(0, "Train examples per task, for CPU-sized runs; 0 = the whole split.")
    max_dev: int = setting(0, "Dev examples per task (they choose the reported epoch); 0 = the whole split.")
    max_test: int = setting(0, "Test examples per task; 0 = the whole split.")
    seed: int = setting(42, "Seed of the heads, dropout and example order of the first run; also of the subsets.")
    device: str = setting("auto", "auto (cuda when available, else cpu) | cpu | cuda | cuda:N.")
    learning_rates: dict[str, float] = setting(
        help="AdamW learning rate per task (no warm-up, then a linear decay to 0 over the epochs, the HF Trainer's "
        "defaults); keys given replace the protocol's one by one. Under seed, boolq and wic: the reference study's "
        "rates (from the KoBEST paper). The others: our choice, not tuned; the study gives none, so they reuse its "
        "BoolQ rate. Under quick: 3e-5 for every task (ours: 3 short epochs need a larger rate).",
        factory=lambda: dict(DEFAULT_EVAL_LEARNING_RATES),
    )
    heldout: bool = setting(
        False, "Score store shards instead of the tasks: perplexity, KL and top-1 agreement with the stored teacher, and ECE."
    )
    heldout_shards: str = setting("", "Held-out shards to score, e.g. 63 or 60-63; empty = train.heldout_shard.")
    heldout_rows: int = setting(0, "Held-out rows scored per shard; 0 = all.")
    heldout_batch_size: int = setting(8, "Rows per held-out forward.")

    @staticmethod
    def under_protocol(values: dict[str, Any]) -> dict[str, Any]:
        """``values`` (as read from a file and flags) over their protocol's preset; learning rates merge per task."""
        protocol = values.get("protocol", "seed")
        _check_choice("eval.protocol", protocol, tuple(EVAL_PROTOCOLS))
        preset = EVAL_PROTOCOLS[protocol]
        merged = {**preset, **values}
        if "learning_rates" in preset and isinstance(values.get("learning_rates"), dict):
            merged["learning_rates"] = {**preset["learning_rates"], **values["learning_rates"]}
        return merged

    def protocol_departures(self) -> dict[str, Any]:
        """The settings that differ from ``eval.protocol``'s preset, as key -> value (empty for custom)."""
        preset = EVAL_PROTOCOLS[self.protocol]
        return {key: getattr(self, key) for key, value in preset.items() if getattr(self, key) != value}

    def __post_init__(self) -> None:
        object.__setattr__(self, "learning_rates", {**DEFAULT_EVAL_LEARNING_RATES, **self.learning_rates})
        _check_choice("eval.protocol", self.protocol, tuple(EVAL_PROTOCOLS))
        for name in ("epochs", "batch_size", "heldout_batch_size", "runs"):
            _check_positive(f"eval.{name}", getattr(self, name))
        if any(shots < 0 for shots in self.shots) or len(set(self.shots)) != len(self.shots):
            raise DaramError(f"eval.shots must be distinct numbers >= 0, got {list(self.shots)}")
        for name in ("micro_batch_size", "max_train", "max_dev", "max_test", "heldout_rows"):
            if getattr(self, name) < 0:
                raise DaramError(f"eval.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_length < 8:
            raise DaramError(f"eval.max_length must be >= 8, got {self.max_length}")
        for task, lr in self.learning_rates.items():
            if not lr > 0:
                raise DaramError(f"eval.learning_rates.{task} must be > 0, got {lr}")
        if self.names and len(self.names) != len(self.models):
            raise DaramError(f"eval.names has {plural(len(self.names), 'name')} for {plural(len(self.models), 'model')}")


@dataclass(frozen=True)
class DemoConfig:
    """``daram demo``: the whole pipeline on a corpus and teacher it makes itself (configs/demo.toml)."""

    workdir: str = setting(
        "work/demo", "Where everything the demo writes goes: a new or empty directory, or an earlier demo's."
    )
    corpus: str = setting(
        "",
        "A text file, one unit per line, of which a seeded sample of `sentences` lines is used; empty = the "
        "package's own generated Korean corpus (nine topics, three speech styles).",
    )
    tokenizer: str = setting("", "A tokenizer directory or hub id; empty = train a byte-level BPE of `vocab_size` ids on the corpus.")
    sentences: int = setting(6000, "Sentences generated, or lines sampled from `corpus`.")
    seed: int = setting(0, "Seed of the generated corpus (or the sample of `corpus`) and of the teacher's training.")
    vocab_size: int = setting(
        2048,
        "Ids of the trained tokenizer. The generated corpus saturates near 3,500 word-level merges; 2,048 ids keep "
        "particles and endings as their own tokens, so the models have grammar to learn.",
    )
    teacher_n_embd: int = setting(128, "Width of the teacher GPT-2 trained for the demo (about a minute on two cores).")
    teacher_n_layer: int = setting(4, "The demo teacher's layers.")
    teacher_n_head: int = setting(4, "The demo teacher's attention heads.")
    teacher_steps: int = setting(300, "Training steps of the demo teacher (on the training shards only).")
    teacher_batch_size: int = setting(16, "Rows per step of the demo teacher's training.")
    teacher_lr: float = setting(3e-3, "The demo teacher's peak learning rate (warm-up over a tenth of the steps, cosine decay to a tenth).")
    threads: int = setting(
        0,
        "torch CPU threads; 0 = the cores not busy with other work when the demo starts (1-minute load average), at "
        "least one: two threads fighting another job for two cores ran about 5x slower than one.",
    )

    def __post_init__(self) -> None:
        for name in ("sentences", "vocab_size", "teacher_n_embd", "teacher_n_layer", "teacher_n_head",
                     "teacher_steps", "teacher_batch_size"):
            _check_positive(f"demo.{name}", getattr(self, name))
        if self.teacher_n_embd % self.teacher_n_head:
            raise DaramError(
                f"demo.teacher_n_embd ({self.teacher_n_embd}) must be divisible by demo.teacher_n_head ({self.teacher_n_head})"
            )
        if not self.teacher_lr > 0:
            raise DaramError(f"demo.teacher_lr must be > 0, got {self.teacher_lr}")
        if self.threads < 0:
            raise DaramError(f"demo.threads must be >= 0 (0 = torch's default), got {self.threads}")


@dataclass(frozen=True)
class SessionConfig:
    """Sessions and disk: what `daram run` (and the clean pause of teacher-dump) needs."""

    time_limit: str = setting(
        "", "Stop cleanly before this much wall time (e.g. 11h30m, 90m) and say how to continue; empty = no limit."
    )
    disk_budget: str = setting(
        "", "The most bytes of teacher shards on disk at any moment of a windowed run (e.g. 18GB, 40MB); empty = no limit."
    )

    def __post_init__(self) -> None:
        parse_duration(self.time_limit, "run.time_limit")
        parse_size(self.disk_budget, "run.disk_budget")


@dataclass(frozen=True)
class Config:
    store: StoreConfig = setting(help="Where the store lives.", factory=StoreConfig)
    prepare: PrepareConfig = setting(help="`daram prepare`: the corpus -> token shards.", factory=PrepareConfig)
    teacher: TeacherConfig = setting(help="`daram teacher-dump`, phase one: the teacher and what it stores.", factory=TeacherConfig)
    student: StudentConfig = setting(help="The student `daram student-train` builds.", factory=StudentConfig)
    train: TrainConfig = setting(help="`daram student-train`, phase two: training from the store.", factory=TrainConfig)
    eval: EvalConfig = setting(help="`daram eval`: fine-tuning on KoBEST and NSMC, or held-out fidelity (--heldout).", factory=EvalConfig)
    demo: DemoConfig = setting(help="`daram demo` only (it reads the package's configs/demo.toml, not ./daram.toml).", factory=DemoConfig)
    run: SessionConfig = setting(help="Sessions and disk: the time limit of a clean pause, the disk budget of the whole run.", factory=SessionConfig)
    source_file: str = setting("", "Where the config was read from; empty = defaults only.")
    given: frozenset[str] = field(default=frozenset(), compare=False, metadata={
        "help": "The section.key settings the user set (config file, --set, flags): filled in by load_config, no key of a file."})

    def was_given(self, key: str) -> bool:
        return key in self.given

    def replace(self, section: str, **values: Any) -> "Config":
        """A copy with some keys of one section replaced (values are type-checked)."""
        current = dataclasses.asdict(getattr(self, section))
        current.update(values)
        return dataclasses.replace(self, **{section: _build(type(getattr(self, section)), current, section)})


def load_config(
    path: str | Path | None = None,
    sets: list[str] | tuple[str, ...] = (),
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Read ``path`` (or ./daram.toml when present), then apply ``--set`` strings and flag overrides.

    ``overrides`` maps ``"section.key"`` to a value; ``None`` values (flags not given) are skipped.
    """
    raw: dict[str, Any] = {}
    source = ""
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise DaramError(f"config file not found: {file}")
    else:
        file = Path(DEFAULT_CONFIG_NAME)
    if file.is_file():
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise DaramError(f"{file}: not valid TOML: {exc}") from None
        source = str(file)
    given = {f"{section}.{key}" for section, table in raw.items() if isinstance(table, dict) for key in table}
    for assignment in sets:
        key, sep, text = assignment.partition("=")
        if not sep or "." not in key:
            raise DaramError(f"--set expects section.key=value, got {assignment!r}")
        _assign(raw, key.strip(), _parse_value(text.strip()))
        given.add(key.strip())
    for key, value in (overrides or {}).items():
        if value is not None:
            _assign(raw, key, value)
            given.add(key)
    return dataclasses.replace(_build(Config, {**raw, "source_file": source}, ""), given=frozenset(given))


def parse_shards(spec: str, num_shards: int, setting: str = "--shards") -> list[int]:
    """``"3"``, ``"0-7"``, ``"0,2,5"``, ``"1-3,7"`` or ``"all"`` -> shard indices, in the given order."""
    spec = spec.strip()
    if spec == "all":
        return list(range(num_shards))
    shards: list[int] = []
    try:
        for part in spec.split(","):
            lo, dash, hi = part.strip().partition("-")
            first, last = int(lo), int(hi) if dash else int(lo)
            if last < first:
                raise ValueError
            shards.extend(range(first, last + 1))
    except ValueError:
        raise DaramError(f"{setting}: cannot read {spec!r}; use 3, 0-7, 0,2,5 or all") from None
    bad = [s for s in shards if not 0 <= s < num_shards]
    if bad:
        raise DaramError(f"{setting}: shard {bad[0]} is out of range; the store has shards 0-{num_shards - 1}")
    if len(set(shards)) != len(shards):
        raise DaramError(f"{setting}: {spec!r} names a shard twice")
    return shards


def _spans(shards: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    parts, start = [], None
    for i, s in enumerate(shards):
        if start is None:
            start = s
        if i + 1 == len(shards) or shards[i + 1] != s + 1:
            parts.append(str(start) if start == s else f"{start}-{s}")
            start = None
    return ",".join(parts)


# --- building and checking -------------------------------------------------------------------


def _assign(raw: dict[str, Any], dotted: str, value: Any) -> None:
    section, _, key = dotted.partition(".")
    target = raw.setdefault(section, {})
    if not isinstance(target, dict):
        raise DaramError(f"config: {section} must be a table")
    target[key] = value


def _parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax when it parses (numbers, booleans, lists), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise DaramError(f"config: {where or 'top level'} must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.compare}  # Config.given is no key of a file
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise DaramError(f"config: unknown key {key!r} (known: {', '.join(sorted(names - {'source_file'}))})")
    if cls is EvalConfig:
        data = EvalConfig.under_protocol(data)
    values = {name: _coerce(hints[name], value, f"{where}.{name}" if where else name) for name, value in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:  # a required key is missing
        raise DaramError(f"config: {where}: {exc}") from None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin is tuple:
        (item,) = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if isinstance(value, str) and item is str:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise DaramError(f"config: {key} must be a list, got {value!r}")
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise DaramError(f"config: {key} must be a table, got {value!r}")
        return {str(k): _coerce(item, v, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise AssertionError(f"unsupported config type for {key}")  # keep the config types simple
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # TOML and --set read inf and nan; no setting of daram means either
                raise DaramError(f"config: {key} must be a finite number, got {value!r}")
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    raise DaramError(f"config: {key} must be {hint.__name__}, got {value!r}")


# Outside this range a KD temperature silently stops being KD: below it softmax(logits / T) is the argmax
# (the run is CE on the teacher's greedy tokens), above it the distribution is uniform to float16.
TEMPERATURE_RANGE = (0.05, 20.0)


def _check_temperature(key: str, value: float) -> None:
    low, high = TEMPERATURE_RANGE
    if not low <= value <= high:
        what = "the teacher's argmax alone (CE on its greedy tokens)" if value < low else "a uniform distribution"
        raise DaramError(f"{key} must be in [{low}, {high}], got {value}: that temperature stores {what}, not distillation")


def _check_positive(key: str, value: int) -> None:
    if value <= 0:
        raise DaramError(f"{key} must be > 0, got {value}")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DaramError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
