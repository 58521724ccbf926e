"""The documentation is kept true: docs/cli.md is what the CLI says, the code blocks of
docs/store-format.md and the README run against real stores, and every command line in the docs
names real commands and options."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from conftest import REPO, prepare_store
from daram import docgen
from daram.config import Config
from daram.storage import teacher_format

DOCS = sorted((REPO / "docs").glob("*.md"))
README = REPO / "README.md"
# Every kind of teacher dump, the default among them (whatever config.py makes it).
KINDS = sorted({"topk", "sampled", "draws", "draw_ranks", Config().teacher.kind})


def code_blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M)


def test_cli_md_matches_the_cli():
    assert docgen.render() == docgen.CLI_MD.read_text(encoding="utf-8"), (
        "docs/cli.md is out of date: run `python -m daram.docgen`"
    )
    assert docgen.main(["--check"]) == 0


def test_cli_md_documents_every_command_and_setting():
    text = docgen.CLI_MD.read_text(encoding="utf-8")
    for name, _ in docgen.command_help():
        assert f"## {name}\n" in text
    from daram.config import Config

    for section in ("store", "prepare", "teacher", "student", "train", "eval", "demo"):
        assert f"### [{section}]" in text
        for key in getattr(Config(), section).__dataclass_fields__:
            if key != "sources":
                assert f"| `{key}` |" in text, f"[{section}].{key} missing from docs/cli.md"


def test_command_lines_in_the_docs_name_real_commands_and_options():
    import click
    import typer

    from daram.cli import app

    group = typer.main.get_command(app)
    ctx = click.Context(group)
    options = {
        name: {opt for p in group.get_command(ctx, name).get_params(ctx) for opt in p.opts + p.secondary_opts}
        for name in group.list_commands(ctx)
    }
    checked = 0
    for path in [*DOCS, README]:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        fenced = re.findall(r"^```(?!python)[a-z]*\n(.*?)^```", text, re.S | re.M)
        inline = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M))
        for snippet in fenced + inline:
            for line in snippet.splitlines():
                for command, rest in re.findall(r"(?:^|[\s(])daram ([a-z][a-z-]*)([^#|;&\n]*)", line):
                    assert command in options, f"{path.name}: `daram {command}` is not a command ({line.strip()})"
                    for flag in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", rest):
                        assert flag in options[command], f"{path.name}: `daram {command}` has no option {flag}"
                    checked += 1
    assert checked > 20  # the docs do show command lines; the pattern still finds them


@pytest.fixture(scope="module")
def dumped_stores(tmp_path_factory, tokenizer_dir, corpus_lines, tiny_teacher_dir) -> dict[str, Path]:
    """Real stores of 4 shards (session-tokenizer tokens), one per kind of dump by the tiny teacher (top-8, 20 draws)."""
    from daram.config import load_config
    from daram.pipeline.dump.teacher_dump import run_teacher_dump

    prepared = prepare_store(tmp_path_factory.mktemp("docs-prepared"), tokenizer_dir, corpus_lines[:208],
                             seq_len=32, num_shards=4, rows_per_chunk=16)
    stores = {}
    for kind in KINDS:
        work = tmp_path_factory.mktemp(f"docs-{kind}") / "work"
        path = work / "store.zarr"
        shutil.copytree(prepared, path)  # the same tokens, two kinds of dump
        cfg = load_config(overrides={
            "store.path": str(path), "teacher.model": str(tiny_teacher_dir), "teacher.dtype": "float32",
            "teacher.device": "cpu", "teacher.kind": kind,
            **({"teacher.top_k": 8} if kind == "topk" else {"teacher.draws": 20}),  # a setting of another kind is refused
        })
        run_teacher_dump(cfg, all_shards=True)
        stores[kind] = work.parent
    return stores


@pytest.mark.parametrize("kind", KINDS)
def test_store_format_code_blocks_run(kind, dumped_stores, monkeypatch, capsys):
    blocks = code_blocks(REPO / "docs" / "store-format.md", "python")
    assert len(blocks) >= 5
    monkeypatch.chdir(dumped_stores[kind])  # the blocks read work/store.zarr
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/store-format.md", "exec"), namespace)
    assert namespace["teacher"]["kind"] == kind
    assert 0 <= namespace["top1_accuracy"] <= 1 and namespace["nbytes"] > 0
    assert "bytes per token" in capsys.readouterr().out


@pytest.mark.parametrize("kind", KINDS)
def test_readme_code_blocks_run(kind, dumped_stores, monkeypatch):
    """The README's numpy snippet on a store of every kind, the default one first of all (a snippet
    that read only top-k arrays failed on the default sampled store)."""
    monkeypatch.chdir(dumped_stores[kind])
    namespace: dict = {}
    for block in code_blocks(README, "python"):
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["teacher"]["kind"] == kind
    ids, p = namespace["ids"], namespace["p"]
    assert ids.shape[:2] == p.shape[:2] == (2, 32) and ((0 <= p) & (p <= 1)).all() and (p.sum(-1) <= 1 + 1e-2).all()


def test_scaling_sizes_disk_with_the_default_teacher_format():
    """docs/scaling.md's disk sizing uses the default format's figures; a new default must bring its own."""
    kind = Config().teacher.kind
    text = (REPO / "docs" / "scaling.md").read_text(encoding="utf-8")
    assert f'`teacher.kind = "{kind}"`, the default' in text, "docs/scaling.md: size disk with the default format"


def test_readme_states_the_default_teacher_format():
    """The README explains the default format; when config.py changes it, this says where to follow."""
    teacher = Config().teacher
    section = README.read_text(encoding="utf-8").split("## Which teacher format is the default")[1]
    first_paragraph = section.split("\n\n")[1]
    assert f'kind = "{teacher.kind}"' in first_paragraph
    if teacher_format(teacher.kind).drawn:
        assert f"{teacher.draws} draws" in first_paragraph and f"T = {teacher.temperature:g}" in first_paragraph


@pytest.mark.parametrize("kind", KINDS)
def test_own_trainer_code_blocks_run(kind, dumped_stores, monkeypatch, capsys):
    """docs/own-trainer.md's blocks read, resume and train from a store of every kind with daram.data and daram.losses."""
    blocks = code_blocks(REPO / "docs" / "own-trainer.md", "python")
    assert len(blocks) >= 3
    monkeypatch.chdir(dumped_stores[kind])
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/own-trainer.md", "exec"), namespace)
    assert namespace["batches"].teacher.kind == kind
    out = capsys.readouterr().out
    assert "step 3: loss" in out and "nan" not in out
