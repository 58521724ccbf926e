import sys
from pathlib import Path

import pytest

from daram.config import Config, load_config, parse_shards, setting_help
from daram.errors import DaramError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "daram" / "configs").glob("*.toml"))


def test_the_defaults_are_a_consistent_reference_setup():
    """`daram init` writes the defaults, so they must run as they are: every shard trained on but
    the held-out one, the teacher's own tokenizer, and the baseline first in the eval report."""
    cfg = Config()
    assert (cfg.student.n_embd, cfg.student.n_head, cfg.student.n_layer) == (768, 8, 4)
    shards, heldout = cfg.train.split(cfg.prepare.num_shards)
    assert sorted([*shards, heldout]) == list(range(cfg.prepare.num_shards)) and heldout == cfg.prepare.num_shards - 1
    assert cfg.prepare.tokenizer == cfg.teacher.model
    assert cfg.eval.models[0] == "skt/kogpt2-base-v2" and cfg.eval.models[-1] == cfg.train.out


def test_the_demo_config_lists_only_what_differs_from_the_defaults():
    """A key restated at its default hides which settings the demo really changes, and stays behind
    when the default moves."""
    (demo,) = [p for p in CONFIGS if p.name == "demo.toml"]
    cfg, defaults = load_config(demo), Config()
    for section, values in tomllib.loads(demo.read_text(encoding="utf-8")).items():
        for key in values:
            assert getattr(getattr(cfg, section), key) != getattr(getattr(defaults, section), key), f"{section}.{key}"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.source_file == str(path)


def test_unknown_key_names_the_key(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text("[teacher]\ntop_kk = 3\n")
    with pytest.raises(DaramError, match="'teacher.top_kk'"):
        load_config(path)


def test_wrong_type_names_the_key(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text('[prepare]\nseq_len = "long"\n')
    with pytest.raises(DaramError, match="prepare.seq_len must be int"):
        load_config(path)


def test_unknown_section_and_bad_source(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text("[trainer]\nlr = 1\n")
    with pytest.raises(DaramError, match="'trainer'"):
        load_config(path)
    path.write_text('[[prepare.sources]]\npath = "x"\nformat = "csv"\n')
    with pytest.raises(DaramError, match="prepare.sources.format"):
        load_config(path)


def test_invalid_values_are_refused():
    with pytest.raises(DaramError, match="temperature must be finite and > 0"):
        load_config(overrides={"teacher.temperature": 0.0})
    # a temperature that is not KD any more: it was accepted, and the run was CE-only without a word
    with pytest.raises(DaramError, match=r"teacher.temperature must be in \[0.05, 20.0\], got 1e-30: .*argmax"):
        load_config(overrides={"teacher.temperature": 1e-30})
    with pytest.raises(DaramError, match=r"train.temperature must be in .*got 1000.0: .*uniform"):
        load_config(overrides={"train.temperature": 1000.0})
    assert load_config(overrides={"teacher.temperature": 0.05, "train.temperature": 20.0}).train.temperature == 20.0
    with pytest.raises(DaramError, match="divisible"):
        load_config(overrides={"student.n_embd": 100, "student.n_head": 8})


@pytest.mark.parametrize("key, value", [("train.lr", "inf"), ("train.alpha_kd", "nan"), ("eval.learning_rates.copa", "-inf")])
def test_a_float_setting_that_is_not_finite_is_refused(tmp_path, key, value):
    # lr = inf passed `lr > 0`, trained a step into NaN weights, checkpointed them, then crashed in the held-out pass
    section, name = key.rsplit(".", 1)
    message = rf"config: {key} must be a finite number, got {value}"
    path = tmp_path / "d.toml"
    path.write_text(f"[{section}]\n{name} = {value}\n")
    with pytest.raises(DaramError, match=message):
        load_config(path)
    with pytest.raises(DaramError, match=message):
        load_config(sets=[f"{section}={{{name}={value}}}" if section == "eval.learning_rates" else f"{key}={value}"])
    if section != "eval.learning_rates":  # a flag (--lr inf)
        with pytest.raises(DaramError, match=message):
            load_config(overrides={key: float(value)})


def test_precedence_file_then_set_then_flags(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text("[teacher]\ntop_k = 8\ntemperature = 1.5\n[train]\nlr = 0.1\n")
    cfg = load_config(path, sets=["teacher.top_k=16", "train.tail=renormalize"], overrides={"teacher.top_k": 32, "train.lr": None})
    assert cfg.teacher.top_k == 32  # flag beats --set beats file
    assert cfg.teacher.temperature == 1.5  # file beats default
    assert cfg.train.tail == "renormalize" and cfg.train.lr == 0.1  # a flag left unset does not override


def test_set_parses_toml_values_and_rejects_garbage():
    cfg = load_config(sets=["train.shuffle=false", "eval.tasks=[\"copa\",\"wic\"]", "store.path=s3://b/x.zarr"])
    assert cfg.train.shuffle is False and cfg.eval.tasks == ("copa", "wic") and cfg.store.path == "s3://b/x.zarr"
    with pytest.raises(DaramError, match="section.key=value"):
        load_config(sets=["shuffle"])


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(DaramError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_replace_type_checks():
    cfg = Config().replace("teacher", top_k=8)
    assert cfg.teacher.top_k == 8
    with pytest.raises(DaramError, match="teacher.top_k"):
        Config().replace("teacher", top_k="8")


@pytest.mark.parametrize(
    "spec,expected", [("3", [3]), ("0-3", [0, 1, 2, 3]), ("5,0,2", [5, 0, 2]), ("1-2,7", [1, 2, 7]), ("all", list(range(8)))]
)
def test_parse_shards(spec, expected):
    assert parse_shards(spec, 8) == expected


@pytest.mark.parametrize("spec,message", [("8", "out of range"), ("3-1", "cannot read"), ("a", "cannot read"), ("1,1", "twice")])
def test_parse_shards_errors(spec, message):
    with pytest.raises(DaramError, match=message):
        parse_shards(spec, 8)


def test_setting_help_reaches_nested_keys_and_refuses_unknown_ones():
    assert setting_help("prepare.sources.unit").endswith("[prepare.sources.unit]")
    assert setting_help("teacher.top_k", "Flag note.").endswith("per position. Flag note. [teacher.top_k]")
    with pytest.raises(KeyError):
        setting_help("teacher.topk")
