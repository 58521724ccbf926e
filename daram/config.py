"""Typed configuration: one frozen dataclass per ``daram.toml`` section.

Precedence, lowest to highest: dataclass defaults, ``daram.toml`` (or ``--config FILE``),
``--set section.key=value``, then the command's own flags. An unknown key or a value of the
wrong type is a :class:`DaramError` that names the key.
"""

from __future__ import annotations

import dataclasses
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

DEFAULT_CONFIG_NAME = "daram.toml"


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None) -> Any:
    """A config field whose ``help`` is its only description: the CLI flag's help, its line in
    docs/cli.md and its comment in the template ``daram init`` writes all come from here."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def setting_help(key: str) -> str:
    """The help of ``section.key`` followed by ``[section.key]``: what a CLI flag shows."""
    section, _, name = key.partition(".")
    cls = typing.get_type_hints(Config)[section]
    for f in dataclasses.fields(cls):
        if f.name == name:
            text = f.metadata.get("help", "")
            return f"{text} [{key}]" if text else f"[{key}]"
    raise KeyError(key)
REFERENCE_TEACHER = "skt/ko-gpt-trinity-1.2B-v0.5"


@dataclass(frozen=True)
class StoreConfig:
    path: str = "work/store.zarr"  # local path or any fsspec URL zarr supports


@dataclass(frozen=True)
class SourceConfig:
    path: str  # a file, a directory (every file in it, sorted) or a glob
    format: str = "text"  # text | jsonl | modu
    unit: str = "paragraph"  # sentence | paragraph | line
    text_field: str = "text"  # the JSONL key that holds the text
    name: str = ""  # shown in the manifest; defaults to the path

    def __post_init__(self) -> None:
        _check_choice("prepare.sources.format", self.format, ("text", "jsonl", "modu"))
        _check_choice("prepare.sources.unit", self.unit, ("sentence", "paragraph", "line"))


@dataclass(frozen=True)
class PrepareConfig:
    tokenizer: str = REFERENCE_TEACHER  # the teacher's tokenizer: a hub id or a local directory
    seq_len: int = 512  # tokens per row (the context both models see)
    num_shards: int = 16
    rows_per_chunk: int = 64  # rows per Zarr chunk; the unit of atomic writes and of resume
    sources: tuple[SourceConfig, ...] = ()
    workers: int = 2  # tokenizer threads
    sentence_splitter: str = "kiwi"  # kiwi (morphological, accurate, slow) | regex (punctuation, fast)

    def __post_init__(self) -> None:
        _check_choice("prepare.sentence_splitter", self.sentence_splitter, ("kiwi", "regex"))
        _check_positive("prepare.seq_len", self.seq_len)
        _check_positive("prepare.num_shards", self.num_shards)
        _check_positive("prepare.rows_per_chunk", self.rows_per_chunk)
        _check_positive("prepare.workers", self.workers)


@dataclass(frozen=True)
class TeacherConfig:
    model: str = REFERENCE_TEACHER  # a hub id or a local directory
    revision: str = "main"  # hub revision (branch, tag or commit) of the teacher
    dtype: str = "float16"  # float16 | bfloat16 | float32
    device: str = "auto"  # auto | cuda | cpu | cuda:N
    temperature: float = 2.0
    kind: str = "topk"  # topk | sampled
    top_k: int = 64  # top-k dumps: ids kept per position
    draws: int = 50  # sampled dumps: draws per position (1-255; counts are uint8)
    sample_width: int = 0  # sampled dumps: unique ids kept per position (S); 0 = draws, so none are ever dropped
    batch_size: int = 0  # rows per forward; 0 = automatic (backs off on CUDA out-of-memory)
    seed: int = 0  # sampled dumps: the draws are a pure function of (seed, shard, chunk)

    def __post_init__(self) -> None:
        _check_choice("teacher.dtype", self.dtype, ("float16", "bfloat16", "float32"))
        _check_choice("teacher.kind", self.kind, ("topk", "sampled"))
        if not self.temperature > 0:
            raise DaramError(f"teacher.temperature must be > 0, got {self.temperature}")
        _check_positive("teacher.top_k", self.top_k)
        _check_positive("teacher.draws", self.draws)
        if self.sample_width < 0:
            raise DaramError(f"teacher.sample_width must be >= 0 (0 = draws), got {self.sample_width}")
        if self.batch_size < 0:
            raise DaramError(f"teacher.batch_size must be >= 0 (0 = automatic), got {self.batch_size}")


@dataclass(frozen=True)
class StudentConfig:
    n_embd: int = 768  # student width
    n_head: int = 8  # student attention heads
    n_layer: int = 4  # student layers
    init_from: str = ""  # optional HF id or directory to start from instead of random weights
    dropout: float = 0.0  # residual, embedding and attention dropout of a new student

    def __post_init__(self) -> None:
        for name in ("n_embd", "n_head", "n_layer"):
            _check_positive(f"student.{name}", getattr(self, name))
        if not 0 <= self.dropout < 1:
            raise DaramError(f"student.dropout must be in [0, 1), got {self.dropout}")
        if self.n_embd % self.n_head:
            raise DaramError(f"student.n_embd ({self.n_embd}) must be divisible by student.n_head ({self.n_head})")


@dataclass(frozen=True)
class TrainConfig:
    out: str = "work/student"  # where the student's save_pretrained directory, checkpoints and metrics go
    shards: str = "all"  # curriculum order: "3", "0-7", "0,2,5" or "all"
    heldout_shard: int = -1  # a shard kept out of training for periodic evaluation; -1 = none
    epochs: int = 1
    batch_size: int = 8  # rows per micro-batch
    grad_accum: int = 4  # micro-batches per optimizer step
    lr: float = 6e-4  # peak learning rate (AdamW)
    min_lr: float = 6e-5  # learning rate at the end of the decay
    warmup_steps: int = 200  # linear warm-up steps
    schedule: str = "cosine"  # cosine | linear
    max_steps: int = 0  # 0 = run the epochs to the end
    weight_decay: float = 0.1  # AdamW weight decay (not on biases and LayerNorm)
    grad_clip: float = 1.0  # max gradient norm (a large value effectively turns clipping off)
    precision: str = "auto"  # auto | fp32 | fp16 | bf16
    alpha_kd: float = 1.0  # 0 gives a CE-only baseline from the same command
    alpha_ce: float = 0.1  # weight of the cross-entropy on the real next token
    tail: str = "bucket"  # bucket | renormalize (top-k stores)
    temperature: float = 0.0  # 0 = the teacher manifest's T
    allow_temperature_mismatch: bool = False  # let train.temperature differ from the dump's T
    loss_slice: int = 128  # sequence positions per loss slice (bounds float32 logits memory)
    shuffle: bool = True  # seeded shuffle of rows within a shard
    seed: int = 0  # seeds weights, shuffle and dropout
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end); 0 = only at the end
    eval_every: int = 500  # steps between held-out evaluations (and one at the end); 0 = only at the end
    eval_rows: int = 64
    log_every: int = 10  # optimizer steps between metrics.jsonl lines
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: each rank's local GPU)
    prefetch: int = 4  # micro-batches read ahead by the background reader

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
        if self.alpha_kd < 0 or self.alpha_ce < 0 or self.alpha_kd + self.alpha_ce == 0:
            raise DaramError("train.alpha_kd and train.alpha_ce must be >= 0 and not both 0")


# Fine-tuning learning rate per task; configs/reference.toml gives the source of each.
DEFAULT_EVAL_LEARNING_RATES = {
    "boolq": 5e-6,
    "copa": 5e-6,
    "wic": 1e-6,
    "hellaswag": 5e-6,
    "sentineg": 5e-6,
    "nsmc": 5e-6,
}


@dataclass(frozen=True)
class EvalConfig:
    models: tuple[str, ...] = ()  # causal LMs to compare (hub ids or directories); the first is the baseline
    names: tuple[str, ...] = ()  # their names in the report; empty = the ids / directories as given
    tasks: tuple[str, ...] = ("boolq", "copa", "wic", "hellaswag", "sentineg", "nsmc")  # tasks to fine-tune and score, in report order
    data: str = ""  # a directory laid out like shared/data; empty = Hugging Face datasets (online)
    out: str = "work/eval"  # where report.md, report.json and report.png go
    epochs: int = 20
    batch_size: int = 64  # examples per optimizer step
    micro_batch_size: int = 0  # examples per forward/backward (gradient accumulation); 0 = batch_size
    max_length: int = 512  # tokens per sequence; longer inputs lose the end of their longest segment
    max_train: int = 0  # 0 = the whole train split
    max_test: int = 0  # test examples per task (0 = all)
    seed: int = 42  # seed of the head, dropout and example order
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # per task; keys given in daram.toml replace these defaults one by one
    learning_rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EVAL_LEARNING_RATES))  # per-task fine-tuning learning rate
    heldout: bool = False  # held-out fidelity on store shards instead of the downstream tasks
    heldout_shards: str = ""  # "63", "60-63"; empty = train.heldout_shard
    heldout_rows: int = 0  # rows per shard; 0 = all
    heldout_batch_size: int = 8  # rows per held-out forward

    def __post_init__(self) -> None:
        object.__setattr__(self, "learning_rates", {**DEFAULT_EVAL_LEARNING_RATES, **self.learning_rates})
        for name in ("epochs", "batch_size", "heldout_batch_size"):
            _check_positive(f"eval.{name}", getattr(self, name))
        for name in ("micro_batch_size", "max_train", "max_test", "heldout_rows"):
            if getattr(self, name) < 0:
                raise DaramError(f"eval.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_length < 8:
            raise DaramError(f"eval.max_length must be >= 8, got {self.max_length}")
        for task, lr in self.learning_rates.items():
            if not lr > 0:
                raise DaramError(f"eval.learning_rates.{task} must be > 0, got {lr}")
        if self.names and len(self.names) != len(self.models):
            raise DaramError(f"eval.names has {len(self.names)} names for {len(self.models)} models")


@dataclass(frozen=True)
class DemoConfig:
    """``daram demo``: the whole pipeline on a corpus and teacher it makes itself (configs/demo.toml)."""

    workdir: str = "work/demo"  # everything the demo writes goes here
    corpus: str = ""  # a text file, one unit per line; empty = the package's own generated Korean corpus
    tokenizer: str = ""  # a tokenizer directory or hub id; empty = train a byte-level BPE on the corpus
    sentences: int = 6000  # sentences generated, or lines sampled from `corpus`
    seed: int = 0  # of the generated corpus (or the sample of `corpus`) and of the teacher's training
    vocab_size: int = 2048  # of the trained tokenizer
    teacher_n_embd: int = 128  # width of the teacher GPT-2 trained for the demo
    teacher_n_layer: int = 4  # its layers
    teacher_n_head: int = 4  # its attention heads
    teacher_steps: int = 300  # its training steps (on the training shards only)
    teacher_batch_size: int = 16  # rows per step
    teacher_lr: float = 3e-3  # peak learning rate (warm-up over a tenth of the steps, cosine decay to a tenth)
    threads: int = 0  # torch CPU threads; 0 = the cores not busy with other work when the demo starts

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
class Config:
    store: StoreConfig = field(default_factory=StoreConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    source_file: str = ""  # where it was read from; empty = defaults only

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
    for assignment in sets:
        key, sep, text = assignment.partition("=")
        if not sep or "." not in key:
            raise DaramError(f"--set expects section.key=value, got {assignment!r}")
        _assign(raw, key.strip(), _parse_value(text.strip()))
    for key, value in (overrides or {}).items():
        if value is not None:
            _assign(raw, key, value)
    return _build(Config, {**raw, "source_file": source}, "")


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


def reference_config_text() -> str:
    """The commented reference ``daram.toml`` that ``daram init`` writes."""
    return (Path(__file__).parent / "configs" / "reference.toml").read_text(encoding="utf-8")


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
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise DaramError(f"config: unknown key {key!r} (known: {', '.join(sorted(names - {'source_file'}))})")
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
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    raise DaramError(f"config: {key} must be {hint.__name__}, got {value!r}")


def _check_positive(key: str, value: int) -> None:
    if value <= 0:
        raise DaramError(f"{key} must be > 0, got {value}")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DaramError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
