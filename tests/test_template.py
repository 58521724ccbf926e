import dataclasses
import re
import sys
import typing

import pytest

from daram import template
from daram.config import TeacherConfig, Config, load_config, setting_default

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_the_template_parses_back_to_exactly_the_defaults(tmp_path):
    path = tmp_path / "daram.toml"
    path.write_text(template.render(), encoding="utf-8")
    assert dataclasses.replace(load_config(path), source_file="") == Config()


def test_the_template_names_every_key_of_its_sections_with_its_help():
    text = template.render()
    keys = re.findall(r"^(\w+) = ", text, re.M) + re.findall(r"^#? ?\[+\w+\.(\w+)\]+$", text, re.M)
    keys += [key for key in template.PROTOCOL_KEYS if re.search(rf"^# {key} = ", text, re.M)]  # commented out
    keys += [f.name for f in dataclasses.fields(TeacherConfig)
             if template._kind_note("teacher", f.name) and re.search(rf"^# {f.name} = ", text, re.M)]
    for name, section in typing.get_type_hints(Config).items():
        if not dataclasses.is_dataclass(section) or name in template.SKIPPED_SECTIONS:
            continue
        assert f"\n[{name}]\n" in text
        for f in dataclasses.fields(section):
            assert f.name in keys, f"{name}.{f.name} missing from the template"
            # the help is there, whatever the line wrapping
            assert " ".join(f.metadata["help"].split()[:4]) in " ".join(text.replace("\n# ", " ").split())


def test_the_commented_example_sources_load_as_a_curriculum(tmp_path):
    """Uncommenting the examples, as the template tells the user to, gives a valid config."""
    before, marker, after = template.render().partition("# For example (uncomment and edit):\n")
    examples, blank, rest = after.partition("\n\n")
    uncommented = before + re.sub(r"^# ?", "", examples, flags=re.M) + blank + rest
    path = tmp_path / "daram.toml"
    path.write_text(uncommented, encoding="utf-8")
    sources = load_config(path).prepare.sources
    assert sources == template.EXAMPLE_SOURCES
    assert [s.unit for s in sources][-1] == "sentence" and sources[0].format == "jsonl"


def all_settings():
    """(section.key, field) of every setting, nested tables included."""
    def walk(cls, prefix):
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            inner = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else hint
            yield f"{prefix}{f.name}", f
            if dataclasses.is_dataclass(inner):
                yield from walk(inner, f"{prefix}{f.name}.")
    return list(walk(Config, ""))


@pytest.mark.parametrize("key,f", all_settings(), ids=[k for k, _ in all_settings()])
def test_every_setting_is_declared_with_its_help(key, f):
    """A field added with dataclasses.field() or without help would be undocumented everywhere."""
    assert f.metadata.get("help", "").strip(), f"{key} has no help: declare it with setting(default, 'help')"
    assert f.metadata["help"].rstrip().endswith((".", ")")), f"{key}: help is a sentence"


def test_toml_value_round_trips():
    values = {"s": 'a "quoted" 한국어 \\ path', "f": 6e-5, "i": 3, "b": False, "l": ("x", "y"), "t": {"boolq": 5e-6}}
    text = "\n".join(f"{k} = {template.toml_value(v)}" for k, v in values.items())
    parsed = tomllib.loads(text)
    assert parsed == {**values, "l": ["x", "y"]}


def test_required_source_path_has_no_default():
    (path,) = [f for f in dataclasses.fields(template.SourceConfig) if f.name == "path"]
    assert setting_default(path) is dataclasses.MISSING
