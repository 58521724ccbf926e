import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daram import template
from daram.cli import app
from daram.config import load_config, setting_field

runner = CliRunner()


def test_help_does_not_import_torch():
    code = "import sys\nfrom daram.cli import app\nfrom typer.testing import CliRunner\n" \
           "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\n" \
           "assert 'torch' not in sys.modules and 'transformers' not in sys.modules and 'zarr' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_python_m_daram_works():
    out = subprocess.run([sys.executable, "-m", "daram", "--help"], capture_output=True, text=True, check=True)
    assert "teacher-dump" in out.stdout or "prepare" in out.stdout


def test_version_prints_the_package_version():
    from daram import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"daram {__version__}\n"


def test_init_writes_a_loadable_config_and_refuses_to_overwrite(tmp_path):
    target = tmp_path / "daram.toml"
    result = runner.invoke(app, ["init", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_text(encoding="utf-8") == template.render()
    result = runner.invoke(app, ["init", str(target)])
    assert result.exit_code == 2 and "already exists" in result.output


def test_every_flag_that_names_a_setting_shows_that_settings_own_help():
    """A flag that restates a setting in its own words drifts from config.py; this catches it."""
    import click
    import typer

    group = typer.main.get_command(app)
    ctx = click.Context(group)
    named = 0
    for name in group.list_commands(ctx):
        for param in group.get_command(ctx, name).get_params(ctx):
            keys = re.findall(r"\[([a-z_]+(?:\.[a-z_]+)+)\]$", getattr(param, "help", None) or "")
            if keys:
                assert param.help.startswith(setting_field(keys[0]).metadata["help"]), f"daram {name} {param.opts[0]}"
                named += 1
    assert named > 50


def test_a_flag_named_like_a_setting_takes_that_settings_help():
    """A new --seed or --device written with its own help= would restate a setting; this catches it.
    teacher-dump's and release's --shards select shards to work on, which no setting holds."""
    import dataclasses
    import typing

    import click
    import typer

    from daram.config import Config

    names = set()
    for section in typing.get_type_hints(Config).values():
        if dataclasses.is_dataclass(section):
            names |= {f.name for f in dataclasses.fields(section)}
    group = typer.main.get_command(app)
    ctx = click.Context(group)
    checked = 0
    for command in group.list_commands(ctx):
        for param in group.get_command(ctx, command).get_params(ctx):
            flag = param.opts[0]
            own = (command, flag) in {("teacher-dump", "--shards"), ("release", "--shards")}
            if param.param_type_name == "option" and flag.lstrip("-").replace("-", "_") in names and not own:
                checked += 1
                assert re.search(r"\[[a-z_.]+\]$", param.help or ""), f"daram {command} {flag}: use setting_option()"
    assert checked > 50  # (typer's parameters are not click's classes: an isinstance check here saw none)


def test_errors_are_one_line_without_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "daram", "inspect", "--store", str(tmp_path / "missing.zarr")],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith("error: store not found")
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("url, says", [
    ("gs://bucket/s.zarr", "pip install 'daram[gcs]'"),
    ("az://container/s.zarr", "pip install 'daram[azure]'"),
    ("nosuch://bucket/s.zarr", "fsspec knows no protocol nosuch://"),
])
def test_a_store_url_without_its_filesystem_is_one_line(tmp_path, url, says):
    # gs:// without gcsfs ended in an ImportError traceback from `daram prepare`
    module = {"gs": "gcsfs", "az": "adlfs"}.get(url.split(":")[0])
    if module and importlib.util.find_spec(module):
        pytest.skip(f"{module} is installed")
    (tmp_path / "c.txt").write_text("text\n")
    out = subprocess.run([sys.executable, "-m", "daram", "prepare", "--store", url, "--source", str(tmp_path / "c.txt")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"error: {url}: ") and says in out.stderr, out.stderr


def test_config_errors_reach_the_user_as_one_line(tmp_path):
    (tmp_path / "bad.toml").write_text("[store]\npth = 'x'\n")
    result = runner.invoke(app, ["verify", "--config", str(tmp_path / "bad.toml")])
    assert result.exit_code == 2 and "unknown key 'store.pth'" in result.output


def test_a_memory_store_is_refused_and_a_file_url_works(prepared_store):
    # memory:// would "succeed" and vanish with the process; file:// is the same store as its path
    result = runner.invoke(app, ["verify", "--store", "memory://daram-store"])
    assert result.exit_code == 2 and "memory:// stores live inside one process" in result.stderr
    assert result.stderr.count("\n") == 1
    result = runner.invoke(app, ["verify", "--tokens-only", "--store", f"file://{prepared_store}"])
    assert result.exit_code == 0, result.output
    assert "intact and complete" in result.stdout


def test_an_interrupted_student_train_says_how_to_resume(monkeypatch, tmp_path):
    # Ctrl-C that got past the clean pause: the line names --resume, the one way on for student-train.
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("daram.pipeline.train.student_train.run_student_train", interrupted)
    result = runner.invoke(app, ["student-train", "--store", str(tmp_path / "s.zarr")])
    assert result.exit_code == 75  # paused: its checkpoints are kept
    assert result.output.strip().splitlines()[-1] == "interrupted: rerun with --resume to continue from the last checkpoint"


def test_each_commands_overrides_come_from_its_own_setting_flags():
    """A flag declared with setting_option() knows its key: a command's overrides are its given flags, so no list
    in cli.py restates them (a flag missing from such a list was silently ignored)."""
    import ast
    import inspect

    from daram import cli
    from daram.config import setting_field

    from pathlib import Path

    tree = ast.parse(Path(cli.__file__).read_text(encoding="utf-8"))
    restated = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Dict)
                and any(isinstance(k, ast.Constant) and isinstance(k.value, str) and re.fullmatch(r"[a-z]+\.[a-z_]+", k.value)
                        for k in node.keys)]
    assert not restated, f"cli.py restates setting keys in a dict at lines {restated}"

    student = inspect.unwrap(cli.student_train)
    parameters = cli._setting_parameters(student)
    for key, _ in parameters.values():
        setting_field(key)  # every key names a real setting
    given = {name: 7 for name in parameters}
    assert set(cli.flag_settings(student, given)) == {key for key, _ in parameters.values()} >= {"train.heldout_shard", "store.path"}
    assert cli.flag_settings(student, {name: None for name in parameters}) == {}  # flags not given set nothing
    evaluate = inspect.unwrap(cli.eval)
    off = {name: None for name in cli._setting_parameters(evaluate)} | {"heldout": False}
    assert cli.flag_settings(evaluate, off) == {}  # an on-only switch left off is not given
    assert cli.flag_settings(evaluate, off | {"heldout": True}) == {"eval.heldout": True}


def test_the_config_reports_the_keys_the_user_set(tmp_path):
    config = tmp_path / "daram.toml"
    config.write_text('[train]\nlr = 1e-3\n[teacher]\ntop_k = 8\n', encoding="utf-8")
    from daram.config import load_config

    cfg = load_config(config, ["teacher.seed=3"], {"teacher.device": "cpu", "teacher.draws": None})
    assert cfg.given == {"train.lr", "teacher.top_k", "teacher.seed", "teacher.device"}


def test_exit_status_tells_finished_from_paused_refused_and_failed(monkeypatch, tmp_path):
    # A requeue loop (`until daram run; do :; done`) must tell "done" from "paused": 0, 75, 2, 1.
    from daram.cli import EXIT_PAUSED
    from daram.errors import DaramError

    outcomes = iter([{"paused": False}, {"paused": True}])
    monkeypatch.setattr("daram.pipeline.job.run.run_job", lambda cfg: next(outcomes))
    args = ["run", "--store", str(tmp_path / "s.zarr")]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, args).exit_code == EXIT_PAUSED == 75

    def refused(cfg):
        raise DaramError("nothing to do")

    monkeypatch.setattr("daram.pipeline.job.run.run_job", refused)
    assert runner.invoke(app, args).exit_code == 2

    def crashed(cfg):
        raise RuntimeError("a bug")

    monkeypatch.setattr("daram.pipeline.job.run.run_job", crashed)
    assert runner.invoke(app, args).exit_code == 1
    # the statuses are documented from the same constants
    page = (Path(__file__).parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    assert "| `75` | paused (`EX_TEMPFAIL`)" in page and "| `2` | refused" in page


def test_an_interrupted_plan_keeps_nothing_and_exits_130(monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("daram.pipeline.job.plan.run_plan", interrupted)
    result = runner.invoke(app, ["plan", "--store", str(tmp_path / "s.zarr")])
    assert result.exit_code == 130 and result.output.strip() == "interrupted"
