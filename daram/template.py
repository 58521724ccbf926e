"""The commented ``daram.toml`` that ``daram init`` writes, generated from daram/config.py.

Every key appears with its built-in default and its ``setting()`` help as the comment above it, so
the template cannot disagree with the defaults or the docs; ``tests/test_template.py`` checks that it
parses back to exactly ``Config()``. The only hand-written part is the example curriculum of
``[[prepare.sources]]``, commented out because the corpus is the one thing every user must choose.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
import typing
from typing import Any

from daram.config import EVAL_PROTOCOLS, Config, SourceConfig, setting_default
from daram.storage import kinds_reading
from daram.text import plural

WIDTH = 100
# Sections `daram init` leaves out: [demo] configures `daram demo`, which reads its own file.
SKIPPED_SECTIONS = ("demo",)
# Keys eval.protocol sets: written commented out, or a file's own value would hide the protocol's.
PROTOCOL_KEYS = {key for preset in EVAL_PROTOCOLS.values() for key in preset}


def _kind_note(section: str, key: str) -> str:
    """Teacher settings that pick or constrain the dump's kind are written commented out: a file that sets one
    refuses a flag that contradicts it (``--top-k 32`` against ``kind = "draws"``)."""
    if section != "teacher":
        return ""
    if key == "kind":
        return " Uncomment to fix it; unset, a setting only one kind reads picks the kind."
    kinds = kinds_reading(key)
    return f" Read only by {' and '.join(kinds)} dumps; uncomment to change it." if kinds else ""

# What a real curriculum looks like: web text first, then books, Wikipedia, edited prose.
EXAMPLE_SOURCES = (
    SourceConfig(name="web corpus, part 1", path="data/web/part-1/*.jsonl", format="jsonl"),
    SourceConfig(name="unpublished corpus", path="data/unpublished/", format="text"),
    SourceConfig(name="web corpus, rest", path="data/web/part-2/*.jsonl", format="jsonl"),
    SourceConfig(name="Korean Wikipedia dump", path="data/kowiki/*.txt", format="text"),
    SourceConfig(name="written corpus (Modu)", path="data/modu-written/*.json", format="modu", unit="sentence"),
)


def render() -> str:
    """The whole template."""
    cfg = Config()
    lines = [
        "# daram.toml: the reference setup, as `daram init` writes it (every value is the built-in default).",
        f"# Teacher {cfg.teacher.model} -> a GPT-2 student with {plural(cfg.student.n_layer, 'layer')}, "
        f"{cfg.student.n_embd} wide, {plural(cfg.student.n_head, 'head')}.",
        "# Point [[prepare.sources]] at your corpus; everything else can stay as it is.",
        "# Every key can also be set with a flag (`--top-k 32`) or `--set section.key=value`;",
        "# `daram <command> --help` lists the flags and docs/cli.md every key.",
    ]
    for section in dataclasses.fields(Config):
        if not dataclasses.is_dataclass(getattr(cfg, section.name)) or section.name in SKIPPED_SECTIONS:
            continue
        lines += ["", *comment(section.metadata["help"]), f"[{section.name}]"]
        lines += _section(section.name, getattr(cfg, section.name))
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    """``value`` as TOML (strings, numbers, booleans, lists and inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def comment(text: str, indent: str = "") -> list[str]:
    """``text`` as TOML comment lines; lines after the first are indented by ``indent``."""
    glued = text.replace(" = ", "\xa0=\xa0")  # never break a line inside "0 = none"
    lines = textwrap.wrap(glued, WIDTH, initial_indent="# ", subsequent_indent="# " + indent, break_on_hyphens=False)
    return [line.replace("\xa0", " ") for line in lines]


def _section(name: str, values: Any) -> list[str]:
    """Plain keys first; tables and lists of tables after them, as TOML requires."""
    lines, tables = [], []
    hints = typing.get_type_hints(type(values))
    for f in dataclasses.fields(values):
        value = getattr(values, f.name)
        by_protocol = "# " if name == "eval" and f.name in PROTOCOL_KEYS else ""
        by_kind = _kind_note(name, f.name)
        if typing.get_origin(hints[f.name]) is dict:
            tables += ["", *comment(f.metadata["help"]), f"[{name}.{f.name}]"]
            tables += [f"{by_protocol}{k} = {toml_value(v)}" for k, v in value.items()]
        elif f.name == "sources" and name == "prepare":
            tables += ["", *comment(f.metadata["help"]), *_sources_example(f"{name}.{f.name}")]
        elif by_kind:
            lines += [*comment(f.metadata["help"] + by_kind), f"# {f.name} = {toml_value(value)}"]
        elif by_protocol:
            lines += [*comment(f.metadata["help"] + " Set by protocol; uncomment to change it."),
                      f"{by_protocol}{f.name} = {toml_value(value)}"]
        else:
            lines += [*comment(f.metadata["help"]), f"{f.name} = {toml_value(value)}"]
    return lines + tables


def _sources_example(key: str) -> list[str]:
    """The keys of one source, then the example curriculum, commented out."""
    lines = [f"# One [[{key}]] table per source:"]
    for f in dataclasses.fields(SourceConfig):
        default = setting_default(f)
        shown = "required" if default is dataclasses.MISSING else f"default {toml_value(default)}"
        lines += comment(f"- {f.name} ({shown}): {f.metadata['help']}", indent="  ")
    lines.append("# For example (uncomment and edit):")
    for source in EXAMPLE_SOURCES:
        lines.append(f"# [[{key}]]")
        lines += [f"# {name} = {toml_value(getattr(source, name))}" for name in ("name", "path")]
        for f in dataclasses.fields(SourceConfig):
            value = getattr(source, f.name)
            if f.name not in ("name", "path") and value != setting_default(f):
                lines.append(f"# {f.name} = {toml_value(value)}")
        lines.append("#")
    return lines[:-1]
