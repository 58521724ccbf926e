"""The ``daram`` command line: parse flags, load the config, call one pipeline function.

Heavy imports (torch, transformers, zarr) happen inside the commands so ``daram --help`` is instant.
"""

from __future__ import annotations

import functools
from inspect import signature, unwrap
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from daram.config import setting_help
from daram.errors import DaramError

app = typer.Typer(
    name="daram",
    help=(
        "Offline-logit knowledge distillation for Korean GPT models.\n\n"
        "Phase one runs the teacher alone and stores its tempered next-token distributions in a Zarr store "
        "(teacher-dump); phase two trains a small student (GPT-2 by default; llama, qwen2: student.arch) "
        "from that store (student-train), or your own trainer reads it (daram.data). "
        "Settings come from ./daram.toml (write one with `daram init`), --config FILE, "
        "--set section.key=value, and the flags of each command, in rising precedence."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Options every command shares.
ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="Config file (default: ./daram.toml when present).")
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override any setting: --set train.lr=3e-4 (repeatable)."),
]


def setting_option(key: str, *names: str, note: str = "") -> typer.models.OptionInfo:
    """A flag that sets ``key``: its help is the setting's own (daram/config.py), plus a ``note``
    on what only the flag does. The flag knows its key: :func:`flag_settings` reads it back."""
    option = typer.Option(*names, help=setting_help(key, note))
    option.daram_key = key
    return option


@functools.cache
def _setting_parameters(fn: Callable) -> dict[str, tuple[str, Any]]:
    """A command's parameters declared with :func:`setting_option`: name -> (section.key, default)."""
    hints = typing.get_type_hints(fn, include_extras=True)
    found = {}
    for name, parameter in signature(fn).parameters.items():
        for meta in getattr(hints.get(name), "__metadata__", ()):
            if hasattr(meta, "daram_key"):
                found[name] = (meta.daram_key, parameter.default)
    return found


def flag_settings(fn: Callable, values: dict[str, Any]) -> dict[str, Any]:
    """``section.key -> value`` of the setting flags a command was given, read from its own parameters (``values``:
    its ``locals()``). A flag left at its default is not given (``None``; ``False`` for an on-only switch); a flag of
    a list of tables (``prepare.sources.path``) is the command's to place."""
    flags = {}
    for name, (key, default) in _setting_parameters(unwrap(fn)).items():
        value = values[name]
        if value is None or (value is False and default is False) or key.count(".") > 1:
            continue
        flags[key] = value
    return flags


StoreOpt = Annotated[Optional[str], setting_option("store.path", "--store")]


def _print_version(value: bool) -> None:
    if value:
        from daram import __version__

        typer.echo(f"daram {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print daram's version and exit.")
    ] = False,
) -> None:
    pass


# Exit statuses, for a scheduler's requeue loop (`until daram run; do :; done`, SLURM --requeue): 0 finished;
# EXIT_PAUSED stopped cleanly (time limit, SIGTERM, SIGINT) with its work kept, the same command continues;
# 2 refused (bad input, one line); 1 failed (a bug or crash: a traceback) or, for verify, not intact.
EXIT_FAILED, EXIT_REFUSED, EXIT_PAUSED = 1, 2, 75  # 75 is sysexits.h's EX_TEMPFAIL: "try again later"

# What an interruption that got past the clean pause (a second Ctrl-C; SIGTERM for prepare) leaves, and how to
# go on. A command named here keeps its work and exits EXIT_PAUSED; any other keeps nothing and exits 130.
AFTER_INTERRUPT = {
    "prepare": ": the work directory beside the store is kept; run the same command again to resume from it",
    "teacher_dump": ": every written chunk is kept; run the same command again to continue",
    "student_train": ": rerun with --resume to continue from the last checkpoint",
    "run": ": every finished chunk and checkpoint is kept; run the same command again to continue",
}


def command(fn: Callable) -> Callable:
    """Register ``fn`` as a command whose :class:`DaramError` becomes one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DaramError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_REFUSED) from None
        except KeyboardInterrupt:
            after = AFTER_INTERRUPT.get(fn.__name__)
            typer.echo(f"interrupted{after or ''}", err=True)
            raise typer.Exit(EXIT_PAUSED if after else 130) from None

    return app.command()(wrapper)


def _exit_paused(paused: bool) -> None:
    """A command that paused (its work kept, a line saying how to continue) must not exit like a finished one."""
    if paused:
        raise typer.Exit(EXIT_PAUSED)


def _config(config: Optional[Path], sets: Optional[list[str]], overrides: dict[str, Any]):
    from daram.config import load_config
    from daram.storage import check_persistent

    cfg = load_config(config, sets or (), overrides)
    check_persistent(cfg.store.path)
    return cfg


@command
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the config.")] = Path("daram.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented daram.toml: the reference setup, every key at its built-in default with its help."""
    from daram import template

    if path.exists() and not force:
        raise DaramError(f"{path} already exists; pass --force to overwrite it")
    path.write_text(template.render(), encoding="utf-8")
    typer.echo(f"wrote {path}: list your corpus under [[prepare.sources]] (the examples there are commented out), then run `daram prepare`")


@command
def prepare(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    store: StoreOpt = None,
    tokenizer: Annotated[
        Optional[str], setting_option("prepare.tokenizer")
    ] = None,
    source: Annotated[
        Optional[list[str]],
        setting_option(
            "prepare.sources.path", note="Repeatable, in curriculum order; replaces [[prepare.sources]]."
        ),
    ] = None,
    format_: Annotated[Optional[str], setting_option("prepare.sources.format", "--format", note="Of every --source.")] = None,
    unit: Annotated[Optional[str], setting_option("prepare.sources.unit", note="Of every --source.")] = None,
    seq_len: Annotated[Optional[int], setting_option("prepare.seq_len")] = None,
    num_shards: Annotated[Optional[int], setting_option("prepare.num_shards")] = None,
    rows_per_chunk: Annotated[Optional[int], setting_option("prepare.rows_per_chunk")] = None,
    workers: Annotated[Optional[int], setting_option("prepare.workers")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing store.")] = False,
) -> None:
    """Tokenize the sources in curriculum order and pack them into token shards.

    Runs on every core; a killed prepare resumes when rerun with the same settings."""
    overrides = flag_settings(prepare, locals())
    if source:
        overrides["prepare.sources"] = [
            {"path": p, **({"format": format_} if format_ else {}), **({"unit": unit} if unit else {})} for p in source
        ]
    elif format_ or unit:
        raise DaramError("--format and --unit describe --source files; set them per source in daram.toml otherwise")
    cfg = _config(config, set_, overrides)
    from daram.pipeline.prepare.prepare import run_prepare

    run_prepare(cfg, overwrite=overwrite)


@command
def teacher_dump(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    store: StoreOpt = None,
    shard: Annotated[Optional[int], typer.Option(help="Dump one shard (e.g. $SLURM_ARRAY_TASK_ID).")] = None,
    shards: Annotated[Optional[str], typer.Option(help="Dump several: 0-7, 0,2,5 or all.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Dump every shard; complete ones are skipped.")] = False,
    teacher: Annotated[Optional[str], setting_option("teacher.model")] = None,
    revision: Annotated[Optional[str], setting_option("teacher.revision")] = None,
    kind: Annotated[Optional[str], setting_option("teacher.kind")] = None,
    top_k: Annotated[Optional[int], setting_option("teacher.top_k")] = None,
    draws: Annotated[Optional[int], setting_option("teacher.draws")] = None,
    sample_width: Annotated[
        Optional[int], setting_option("teacher.sample_width")
    ] = None,
    seed: Annotated[Optional[int], setting_option("teacher.seed")] = None,
    temperature: Annotated[Optional[float], setting_option("teacher.temperature")] = None,
    batch_size: Annotated[
        Optional[int], setting_option("teacher.batch_size")
    ] = None,
    device: Annotated[Optional[str], setting_option("teacher.device")] = None,
    dtype: Annotated[Optional[str], setting_option("teacher.dtype")] = None,
    time_limit: Annotated[Optional[str], setting_option("run.time_limit")] = None,
    lease: Annotated[Optional[str], setting_option("teacher.lease")] = None,
    worker: Annotated[
        Optional[str],
        typer.Option("--worker", help="I/N: take every N-th shard of the selection from the I-th (0-based), e.g. "
                                      "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT or $JOB_COMPLETION_INDEX/N."),
    ] = None,
) -> None:
    """Phase one: run the teacher over token shards and store its tempered distributions (teacher.kind).

    Resumable (kill it, rerun the same command), pauses cleanly on SIGTERM / Ctrl-C / --time-limit
    (after the current chunk, claims released, exit 75), one process per shard (a claim in the store, renewed
    while it works and taken over once stale: --lease), and shareable: `--all` on any number of machines
    sharing one store (a bucket) claims the next free shard in order; `--worker I/N` or torchrun (rank r of w
    takes shards r, r+w, ...) split the selection statically. A SLURM job array runs one shard per task:

    \b
      #SBATCH --array=0-63%16 --gres=gpu:1 --requeue
      daram teacher-dump --config daram.toml --shard "$SLURM_ARRAY_TASK_ID"
    """
    cfg = _config(config, set_, flag_settings(teacher_dump, locals()))
    from daram.pipeline.dump.teacher_dump import run_teacher_dump

    outcome = run_teacher_dump(cfg, shard=shard, shards=shards, all_shards=all_, worker=worker)
    _exit_paused(bool(outcome.paused))


@command
def plan(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    store: StoreOpt = None,
    disk_budget: Annotated[Optional[str], setting_option("run.disk_budget")] = None,
    time_limit: Annotated[Optional[str], setting_option("run.time_limit")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON instead of a table.")] = False,
    machines: Annotated[
        int, typer.Option("--machines", help="Machines that share the dump (teacher-dump --all on each): its wall hours "
                                             "and the sessions each machine needs.")
    ] = 1,
    measure: Annotated[
        bool,
        typer.Option(help="Measure the teacher's bytes per token on a few hundred rows (loads the teacher); "
                          "--no-measure uses the estimate from docs/benchmarks.md."),
    ] = True,
    measured: Annotated[
        Optional[str],
        typer.Option("--measured", metavar="FILE",
                     help="The JSON of benchmarks/gpu_suite.py: its measured MFU of the dump and of training replaces "
                          "the assumed one (the notes say so)."),
    ] = None,
) -> None:
    """Forecast the whole job before running it: tokens, bytes of the token and teacher shards, the window of
    shards that fits --disk-budget, GPU-hours of the dump and of training on P100 / T4 / A100 / H100 (FLOPs
    per token at an assumed MFU, or the one --measured FILE holds), and the sessions of --time-limit they fill."""
    cfg = _config(config, set_, flag_settings(plan, locals()))
    from daram.pipeline.job.plan import run_plan

    run_plan(cfg, as_json=as_json, measure=measure, measured=measured, machines=machines)


@command
def release(
    shards: Annotated[str, typer.Option("--shards", help="Shards to release (or restore), e.g. 0-7 or 0,2,5.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    store: StoreOpt = None,
    to: Annotated[
        Optional[str], typer.Option("--to", help="Move the arrays to this fsspec URL (a directory, s3://...) instead of deleting them.")
    ] = None,
    restore: Annotated[bool, typer.Option("--restore", help="Bring released shards back from where they were moved.")] = False,
    from_: Annotated[
        Optional[str], typer.Option("--from", help="--restore: take the shards from this URL instead of where they were moved.")
    ] = None,
) -> None:
    """Free the disk of complete teacher shards: move their arrays to --to URL, or delete them. The store keeps
    their statistics and reports them released; `teacher-dump` dumps a released shard again, and
    `release --restore` brings moved ones back."""
    cfg = _config(config, set_, flag_settings(release, locals()))
    from daram.pipeline.job.release import run_release

    run_release(cfg, shards, to=to, restore=restore, source=from_)


@command
def inspect(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    store: StoreOpt = None,
    sample: Annotated[bool, typer.Option(help="Decode one sample row to text (loads the tokenizer).")] = True,
) -> None:
    """Show what a store holds: manifests, shards, teacher-dump status and statistics, bytes per token."""
    cfg = _config(config, set_, flag_settings(inspect, locals()))
    from daram.pipeline.inspect import run_inspect

    run_inspect(cfg, sample=sample)


@command
def verify(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    store: StoreOpt = None,
    tokens_only: Annotated[
        bool, typer.Option("--tokens-only", help="Check the token shards alone (a store with no teacher dump yet).")
    ] = False,
) -> None:
    """Read every chunk and check it, printing the command that repairs each problem. Exit 0 only when the
    store is intact and complete: every shard's dump complete, or released (`daram release`); 1 otherwise."""
    cfg = _config(config, set_, flag_settings(verify, locals()))
    from daram.pipeline.inspect import run_verify

    if not run_verify(cfg, tokens_only=tokens_only):
        raise typer.Exit(1)


@command
def eval(  # noqa: A001 - the command's name
    config: ConfigOpt = None,
    set_: SetOpt = None,
    model: Annotated[
        Optional[list[str]],
        setting_option("eval.models", "--model", note="Repeatable; replaces the list."),
    ] = None,
    name: Annotated[
        Optional[list[str]], setting_option("eval.names", "--name", note="Repeatable: one per --model, in order.")
    ] = None,
    tasks: Annotated[
        Optional[str], setting_option("eval.tasks", note="Comma-separated, e.g. boolq,copa.")
    ] = None,
    data: Annotated[
        Optional[str], setting_option("eval.data")
    ] = None,
    out: Annotated[Optional[str], setting_option("eval.out")] = None,
    protocol: Annotated[Optional[str], setting_option("eval.protocol")] = None,
    runs: Annotated[Optional[int], setting_option("eval.runs")] = None,
    shots: Annotated[Optional[str], setting_option("eval.shots", note="As a flag: comma-separated, e.g. 0,5.")] = None,
    finetune: Annotated[Optional[bool], setting_option("eval.finetune", "--finetune/--no-finetune")] = None,
    epochs: Annotated[Optional[int], setting_option("eval.epochs")] = None,
    batch_size: Annotated[Optional[int], setting_option("eval.batch_size")] = None,
    micro_batch_size: Annotated[
        Optional[int], setting_option("eval.micro_batch_size")
    ] = None,
    max_length: Annotated[Optional[int], setting_option("eval.max_length")] = None,
    max_train: Annotated[Optional[int], setting_option("eval.max_train")] = None,
    max_dev: Annotated[Optional[int], setting_option("eval.max_dev")] = None,
    max_test: Annotated[Optional[int], setting_option("eval.max_test")] = None,
    seed: Annotated[Optional[int], setting_option("eval.seed")] = None,
    lr: Annotated[
        Optional[list[str]], setting_option("eval.learning_rates", "--lr", note="As a flag: --lr boolq=5e-6 (repeatable).")
    ] = None,
    device: Annotated[Optional[str], setting_option("eval.device")] = None,
    heldout: Annotated[
        bool, setting_option("eval.heldout", "--heldout")
    ] = False,
    store: StoreOpt = None,
    shards: Annotated[
        Optional[str], setting_option("eval.heldout_shards", note="With --heldout.")
    ] = None,
    heldout_rows: Annotated[Optional[int], setting_option("eval.heldout_rows", note="With --heldout.")] = None,
) -> None:
    """Fine-tune models on KoBEST and NSMC (or score held-out shards) and write a comparison report."""
    overrides = flag_settings(eval, locals())
    overrides.pop("eval.learning_rates", None)  # --lr task=rate merges into the protocol's rates below
    if shots is not None:
        overrides["eval.shots"] = _shot_counts(shots)
    if model and not name:  # new --model values without --name: the report names them by their ids / directories
        overrides["eval.names"] = []
    cfg = _config(config, set_, overrides)
    if lr:
        rates = dict(cfg.eval.learning_rates)
        for item in lr:
            task, sep, value = item.partition("=")
            try:
                rates[task.strip()] = float(value)
            except ValueError:
                sep = ""
            if not sep:
                raise DaramError(f"--lr expects task=rate, e.g. boolq=5e-6; got {item!r}")
        cfg = cfg.replace("eval", learning_rates=rates)
    from daram.pipeline.eval.evaluate import run_eval

    run_eval(cfg)


def _shot_counts(text: str | None) -> list[int] | None:
    """``--shots 0,5`` -> [0, 5]; an empty string -> [] (no zero/few-shot scoring)."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DaramError(f"--shots expects comma-separated numbers of shots, e.g. 0,5; got {text!r}") from None


@command
def student_train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    store: StoreOpt = None,
    out: Annotated[Optional[str], setting_option("train.out")] = None,
    shards: Annotated[
        Optional[str], setting_option("train.shards")
    ] = None,
    heldout_shard: Annotated[
        Optional[int], setting_option("train.heldout_shard")
    ] = None,
    arch: Annotated[Optional[str], setting_option("student.arch")] = None,
    n_embd: Annotated[Optional[int], setting_option("student.n_embd")] = None,
    n_head: Annotated[Optional[int], setting_option("student.n_head")] = None,
    n_layer: Annotated[Optional[int], setting_option("student.n_layer")] = None,
    init_from: Annotated[
        Optional[str], setting_option("student.init_from")
    ] = None,
    alpha_kd: Annotated[
        Optional[float], setting_option("train.alpha_kd")
    ] = None,
    alpha_ce: Annotated[Optional[float], setting_option("train.alpha_ce")] = None,
    tail: Annotated[
        Optional[str], setting_option("train.tail")
    ] = None,
    temperature: Annotated[
        Optional[float], setting_option("train.temperature")
    ] = None,
    epochs: Annotated[Optional[int], setting_option("train.epochs")] = None,
    batch_size: Annotated[Optional[int], setting_option("train.batch_size")] = None,
    grad_accum: Annotated[Optional[int], setting_option("train.grad_accum")] = None,
    lr: Annotated[Optional[float], setting_option("train.lr")] = None,
    max_steps: Annotated[Optional[int], setting_option("train.max_steps")] = None,
    seed: Annotated[Optional[int], setting_option("train.seed")] = None,
    precision: Annotated[Optional[str], setting_option("train.precision")] = None,
    device: Annotated[Optional[str], setting_option("train.device")] = None,
    time_limit: Annotated[Optional[str], setting_option("run.time_limit")] = None,
    online_teacher: Annotated[Optional[str], setting_option("train.online_teacher")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue exactly from the last checkpoint in --out, with the settings "
                                            "saved in it (a flag that contradicts them is refused).")
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow", help="Train while other machines dump (teacher-dump --all): in shard order, "
                                            "waiting for each shard's dump to complete and naming who holds it.")
    ] = False,
    disk_budget: Annotated[
        Optional[str], setting_option("run.disk_budget", note="With --follow on a remote store: its local shard cache.")
    ] = None,
) -> None:
    """Phase two: train the student from the stored teacher distributions (torchrun for several GPUs).

    SIGTERM, Ctrl-C and --time-limit pause it cleanly after the current step (checkpoint, exit 75);
    `daram student-train --resume --out DIR` continues it exactly.
    """
    cfg = _config(config, set_, flag_settings(student_train, locals()))
    if follow:
        from daram.pipeline.job.follow import follow_command

        if cfg.train.online_teacher:
            raise DaramError("--follow trains from the stored dump; an online teacher (train.online_teacher) needs none")
        again = f"daram student-train --follow --resume --out {cfg.train.out}"
        _exit_paused(follow_command(cfg, resume=resume, given=set(cfg.given), continue_with=again)["paused"])
        return
    if disk_budget is not None:
        raise DaramError("--disk-budget bounds the local shard cache of --follow; student-train reads the store in place")
    from daram.pipeline.train.student_train import run_student_train

    _exit_paused(run_student_train(cfg, resume=resume, given=set(cfg.given))["paused"])


@command
def run(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    store: StoreOpt = None,
    out: Annotated[Optional[str], setting_option("train.out")] = None,
    disk_budget: Annotated[Optional[str], setting_option("run.disk_budget")] = None,
    time_limit: Annotated[Optional[str], setting_option("run.time_limit")] = None,
    teacher: Annotated[Optional[str], setting_option("teacher.model", "--teacher")] = None,
    kind: Annotated[Optional[str], setting_option("teacher.kind")] = None,
    top_k: Annotated[Optional[int], setting_option("teacher.top_k")] = None,
    draws: Annotated[Optional[int], setting_option("teacher.draws")] = None,
    temperature: Annotated[Optional[float], setting_option("teacher.temperature")] = None,
    dtype: Annotated[Optional[str], setting_option("teacher.dtype")] = None,
    sample_width: Annotated[Optional[int], setting_option("teacher.sample_width")] = None,
    shards: Annotated[Optional[str], setting_option("train.shards")] = None,
    heldout_shard: Annotated[Optional[int], setting_option("train.heldout_shard")] = None,
    n_embd: Annotated[Optional[int], setting_option("student.n_embd")] = None,
    n_head: Annotated[Optional[int], setting_option("student.n_head")] = None,
    n_layer: Annotated[Optional[int], setting_option("student.n_layer")] = None,
    alpha_kd: Annotated[Optional[float], setting_option("train.alpha_kd")] = None,
    alpha_ce: Annotated[Optional[float], setting_option("train.alpha_ce")] = None,
    precision: Annotated[Optional[str], setting_option("train.precision")] = None,
    epochs: Annotated[Optional[int], setting_option("train.epochs")] = None,
    batch_size: Annotated[Optional[int], setting_option("train.batch_size")] = None,
    grad_accum: Annotated[Optional[int], setting_option("train.grad_accum")] = None,
    lr: Annotated[Optional[float], setting_option("train.lr")] = None,
    max_steps: Annotated[Optional[int], setting_option("train.max_steps")] = None,
    seed: Annotated[Optional[int], setting_option("train.seed")] = None,
    device: Annotated[
        Optional[str], setting_option("train.device", note="Also the teacher's device [teacher.device].")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", help="Dump nothing here: train while other machines dump (teacher-dump --all on "
                                            "each), in shard order, then export. --disk-budget bounds the local shard "
                                            "cache of a remote store.")
    ] = False,
) -> None:
    """The whole job from daram.toml, idempotent: prepare (when the store is missing), then windows of teacher
    dump + training + release that keep the teacher shards under --disk-budget, then export.

    Training is one run (one schedule, optimizer and data order): its student equals student-train's over a
    complete dump. SIGTERM, Ctrl-C and --time-limit pause it cleanly (exit 75); the same command continues it.
    Run `daram plan` first to see what fits. Settings without a flag here: --set section.key=value.
    """
    flags = flag_settings(run, locals())
    if device is not None:
        flags["teacher.device"] = device  # --device is the teacher's too
    cfg = _config(config, set_, flags)
    if follow:
        from daram.pipeline.job.follow import follow_command

        _exit_paused(follow_command(cfg, resume=None, continue_with="run the same command again to continue")["paused"])
        return
    from daram.pipeline.job.run import run_job

    _exit_paused(run_job(cfg)["paused"])


@command
def demo(
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="Config file (default: the package's configs/demo.toml).")
    ] = None,
    set_: SetOpt = None,
    workdir: Annotated[
        Optional[str],
        setting_option("demo.workdir"),
    ] = None,
    corpus: Annotated[
        Optional[str],
        setting_option("demo.corpus"),
    ] = None,
    tokenizer: Annotated[
        Optional[str], setting_option("demo.tokenizer")
    ] = None,
    sentences: Annotated[
        Optional[int], setting_option("demo.sentences")
    ] = None,
    teacher_steps: Annotated[Optional[int], setting_option("demo.teacher_steps")] = None,
    max_steps: Annotated[Optional[int], setting_option("train.max_steps", note="Of each of the two students.")] = None,
    threads: Annotated[Optional[int], setting_option("demo.threads")] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="A smaller run (about a minute on 2 cores): fewer sentences, smaller models, fewer steps.")
    ] = False,
) -> None:
    """The whole pipeline offline on a CPU in minutes: corpus -> tokenizer -> teacher -> prepare ->
    teacher-dump -> student-train (KD and CE-only) -> held-out evaluation -> report.md with plots.

    Needs no network and no files: the package generates its own Korean corpus. --corpus FILE
    --tokenizer DIR run it on real text instead.
    """
    from daram.pipeline.job.demo import demo_config, run_demo

    cfg = demo_config(config, set_ or (), quick, flag_settings(demo, locals()))
    run_demo(cfg)


def main() -> None:
    try:
        app(prog_name="daram")
    except SystemExit as done:
        distributed = sys.modules.get("daram.pipeline.train.distributed")
        if distributed is not None and distributed.GROUP_STARTED:  # a torchrun rank: see exit_rank
            code = done.code
            distributed.exit_rank(code if isinstance(code, int) else (0 if code is None else 1))
        raise


if __name__ == "__main__":
    sys.exit(main())
