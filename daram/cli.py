"""The ``daram`` command line: parse flags, load the config, call one pipeline function.

Heavy imports (torch, transformers, zarr) happen inside the commands so ``daram --help`` is instant.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from daram.errors import DaramError

app = typer.Typer(
    name="daram",
    help=(
        "Offline-logit knowledge distillation for Korean GPT models.\n\n"
        "Phase one runs the teacher alone and stores tempered top-k log-probs in a Zarr store "
        "(teacher-dump); phase two trains a small GPT-2 student from that store (student-train). "
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
StoreOpt = Annotated[Optional[str], typer.Option("--store", help="Store path or fsspec URL [store.path].")]


def command(fn: Callable) -> Callable:
    """Register ``fn`` as a command whose :class:`DaramError` becomes one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DaramError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: finished chunks are kept; rerun the same command to continue", err=True)
            raise typer.Exit(130) from None

    return app.command()(wrapper)


def _config(config: Optional[Path], sets: Optional[list[str]], **overrides):
    from daram.config import load_config

    return load_config(config, sets or (), overrides)


@command
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the config.")] = Path("daram.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented daram.toml for the reference setup (Trinity 1.2B -> 768/8/4 student)."""
    from daram.config import reference_config_text

    if path.exists() and not force:
        raise DaramError(f"{path} already exists; pass --force to overwrite it")
    path.write_text(reference_config_text(), encoding="utf-8")
    typer.echo(f"wrote {path}: edit [prepare.sources] to point at your corpus, then run `daram prepare`")


@command
def prepare(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    store: StoreOpt = None,
    tokenizer: Annotated[
        Optional[str], typer.Option(help="Tokenizer: hub id or local directory [prepare.tokenizer].")
    ] = None,
    source: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Source file, directory or glob, in curriculum order (repeatable). Replaces [[prepare.sources]]; "
            "format/unit come from --format/--unit."
        ),
    ] = None,
    format_: Annotated[
        Optional[str], typer.Option("--format", help="Format of --source files: text | jsonl | modu.")
    ] = None,
    unit: Annotated[Optional[str], typer.Option(help="Unit of --source files: sentence | paragraph | line.")] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="Tokens per row [prepare.seq_len].")] = None,
    num_shards: Annotated[Optional[int], typer.Option(help="Shards to split the stream into [prepare.num_shards].")] = None,
    rows_per_chunk: Annotated[Optional[int], typer.Option(help="Rows per Zarr chunk [prepare.rows_per_chunk].")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing store.")] = False,
) -> None:
    """Tokenize the sources in curriculum order and pack them into token shards."""
    overrides = {
        "store.path": store,
        "prepare.tokenizer": tokenizer,
        "prepare.seq_len": seq_len,
        "prepare.num_shards": num_shards,
        "prepare.rows_per_chunk": rows_per_chunk,
    }
    if source:
        overrides["prepare.sources"] = [
            {"path": p, **({"format": format_} if format_ else {}), **({"unit": unit} if unit else {})} for p in source
        ]
    elif format_ or unit:
        raise DaramError("--format and --unit describe --source files; set them per source in daram.toml otherwise")
    cfg = _config(config, set_, **overrides)
    from daram.pipeline.prepare import run_prepare

    run_prepare(cfg, overwrite=overwrite)


@command
def inspect(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    store: StoreOpt = None,
    sample: Annotated[bool, typer.Option(help="Decode one sample row to text (loads the tokenizer).")] = True,
) -> None:
    """Show what a store holds: manifests, shards, teacher-dump status and statistics, bytes per token."""
    cfg = _config(config, set_, **{"store.path": store})
    from daram.pipeline.inspect import run_inspect

    run_inspect(cfg, sample=sample)


@command
def verify(config: ConfigOpt = None, set_: SetOpt = None, store: StoreOpt = None) -> None:
    """Read every chunk and check it; exit 0 only when the whole store is intact and complete."""
    cfg = _config(config, set_, **{"store.path": store})
    from daram.pipeline.inspect import run_verify

    if not run_verify(cfg):
        raise typer.Exit(1)


def main() -> None:
    app(prog_name="daram")


if __name__ == "__main__":
    sys.exit(main())
