"""Any causal-LM student: gpt2, llama and qwen2 (tied and untied heads, rotary positions, grouped-query attention)
built from the student settings, trained by the fused sliced loss (equal to plain autograd for each), exported for
transformers 4.x and 5.x; models whose logits are not ``hidden @ W^T`` refused naming the attribute."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import prepare_store, write_teacher_dump
from transformers import AutoModelForCausalLM, AutoTokenizer

from daram.config import StudentConfig, load_config
from daram.errors import DaramError
from daram.pipeline.architectures import check_plain_head, default_intermediate_size, new_student, student_shape
from daram.pipeline.losses import DistillObjective, SparseTarget, final_hidden, head_weight, next_token_labels, sliced_distill_loss
from daram.pipeline.train.student_train import run_student_train

from .train.test_export import LOAD_IN_OTHER_VERSION, transformers4_python  # noqa: F401 (a fixture)

ARCHS = ["gpt2", "llama", "qwen2"]


def tiny(arch: str, **settings) -> StudentConfig:
    return StudentConfig(arch=arch, n_embd=32, n_head=4, n_layer=2, **settings)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("tied", [True, False])
def test_each_architecture_is_built_to_the_settings(arch, tied):
    kv = {} if arch == "gpt2" else {"n_kv_head": 2}
    model = new_student(tiny(arch, tie_embeddings=tied, intermediate_size=48, **kv), 300, 128)
    config = model.config
    assert config.model_type == arch and config.vocab_size == 300
    assert (config.hidden_size, config.num_attention_heads, config.num_hidden_layers) == (32, 4, 2)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    mlp = [m for name, m in model.named_modules() if name.endswith("mlp")][0]
    assert 48 in {p.shape[0] for p in mlp.parameters()}  # the MLP's hidden width
    if arch != "gpt2":
        assert config.num_key_value_heads == 2 and not hasattr(model.base_model, "wpe")  # rotary: no position table
    assert default_intermediate_size("gpt2", 768) == 3072 and default_intermediate_size("llama", 768) == 2048


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("tied", [True, False])
def test_the_sliced_loss_equals_plain_autograd_for_each_architecture(arch, tied):
    torch.manual_seed(0)
    model = new_student(tiny(arch, tie_embeddings=tied), 300, 128)
    tokens = torch.randint(0, 300, (2, 12))
    ids = torch.randint(0, 300, (2, 12, 5))
    probs = torch.softmax(torch.randn(2, 12, 5), -1)
    objective = DistillObjective(next_token_labels(tokens), SparseTarget(ids, probs), 2.0, 0.8, 0.2)
    loss, _, _ = sliced_distill_loss(final_hidden(model, tokens), head_weight(model), objective, loss_slice=5)
    fused = torch.autograd.grad(loss, list(model.parameters()))

    logits = model(input_ids=tokens).logits
    logq = torch.log_softmax(logits / 2.0, -1).gather(-1, ids)
    kl = (torch.xlogy(probs, probs) - probs * logq).sum(-1).mean()
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    dense = 0.8 * 4 * kl + 0.2 * ce
    assert loss.item() == pytest.approx(dense.item(), rel=1e-5)
    for got, expected in zip(fused, torch.autograd.grad(dense, list(model.parameters()))):
        assert torch.allclose(got, expected, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("model_type, attribute, value", [
    ("gemma2", "final_logit_softcapping", 30.0), ("cohere", "logit_scale", 0.0625), ("granite", "logits_scaling", 8.0),
])
def test_a_config_whose_logits_are_not_hidden_times_w_is_refused_naming_the_attribute(tmp_path, model_type, attribute, value):
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=4, num_key_value_heads=4, head_dim=8, max_position_embeddings=128,
                                  **{attribute: value})
    path = tmp_path / "config.json"
    config.to_json_file(path)
    with pytest.raises(DaramError, match=rf"student.arch '{path}': \w+ has {attribute} = {value}: its logits are not hidden @ W\^T"):
        new_student(StudentConfig(arch=str(path)), 300, 64)


def test_a_head_bias_or_other_post_processing_is_refused():
    model = new_student(tiny("gpt2", tie_embeddings=False), 300, 64)
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(300))
    with pytest.raises(DaramError, match=r"a bias on its LM head \(lm_head.bias\)"):
        check_plain_head(model, "student")
    model = new_student(tiny("gpt2"), 300, 64)
    model.lm_head.register_forward_hook(lambda module, args, out: out * 1.5)  # a logit scale by hand
    with pytest.raises(DaramError, match="post-processes its logits after the LM head"):
        check_plain_head(model, "student")


def test_bad_student_settings_are_refused():
    with pytest.raises(DaramError, match="student.arch must be gpt2, llama, qwen2 or the path of a config.json"):
        StudentConfig(arch="mamba")
    with pytest.raises(DaramError, match=r"student.n_head \(4\) must be a multiple of student.n_kv_head \(3\)"):
        tiny("llama", n_kv_head=3)
    with pytest.raises(DaramError, match="gpt2 has no grouped-query attention"):
        tiny("gpt2", n_kv_head=2)
    with pytest.raises(DaramError, match="neither gpt2, llama, qwen2 nor a config.json file"):
        new_student(StudentConfig(arch="missing/config.json"), 300, 64)


@pytest.fixture(scope="module")
def kd_store(tmp_path_factory, tokenizer_dir, corpus_lines, trained_tiny_teacher_dir) -> Path:
    path = prepare_store(tmp_path_factory.mktemp("arch_store"), tokenizer_dir, corpus_lines[:208], seq_len=32,
                         num_shards=2, rows_per_chunk=8)
    write_teacher_dump(path, trained_tiny_teacher_dir, kind="topk", width=8)
    return path


def train(store: Path, out: Path, arch: str, **settings):
    overrides = {
        "store.path": str(store), "train.out": str(out), "train.shards": "0", "train.heldout_shard": 1,
        "student.arch": arch, "student.n_embd": 32, "student.n_head": 4, "student.n_layer": 2,
        "train.batch_size": 4, "train.max_steps": 3, "train.lr": 3e-3, "train.warmup_steps": 1, "train.eval_rows": 4,
        "train.loss_slice": 16, "train.device": "cpu", "train.log_every": 1,
    }
    return run_student_train(load_config(overrides={**overrides, **settings}))


@pytest.mark.parametrize("arch, settings", [
    ("gpt2", {}), ("llama", {"student.n_kv_head": 2}), ("qwen2", {"student.tie_embeddings": False}),
])
def test_tiny_students_of_each_architecture_train_export_and_reload(arch, settings, kd_store, tmp_path, tokenizer_dir):
    summary = train(kd_store, tmp_path / arch, arch, **settings)
    assert math.isfinite(summary["last"]["loss"]) and math.isfinite(summary["heldout"]["kl"])
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / arch).eval()
    assert loaded.config.model_type == arch
    config = json.loads((tmp_path / arch / "config.json").read_text())
    if arch != "gpt2":  # what transformers 4.x reads
        assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] and config["torch_dtype"] == "float32"
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / arch)
    assert tokenizer.model_max_length == 1024  # the student's positions
    ids = tokenizer("오늘 날씨가", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = loaded(ids).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] == 2048


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_dump_train_export_load_and_quick_eval(arch, tmp_path, tokenizer_dir, corpus_lines, trained_tiny_teacher_dir,
                                               shared_data, transformers4_python):
    """The whole path for each architecture: `teacher-dump`, `student-train`, the export loaded by transformers 5.x
    and 4.x with the same logits, and `daram eval`'s quick protocol on two tasks."""
    from typer.testing import CliRunner

    from daram.cli import app

    runner = CliRunner()
    store = prepare_store(tmp_path, tokenizer_dir, corpus_lines[:208], seq_len=32, num_shards=2, rows_per_chunk=8)
    result = runner.invoke(app, ["teacher-dump", "--store", str(store), "--teacher", str(trained_tiny_teacher_dir),
                                 "--dtype", "float32", "--device", "cpu", "--all"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "student"
    result = runner.invoke(app, ["student-train", "--store", str(store), "--out", str(out), "--arch", arch,
                                 "--shards", "0", "--heldout-shard", "1", "--n-embd", "32", "--n-head", "4",
                                 "--n-layer", "2", "--batch-size", "4", "--grad-accum", "1", "--max-steps", "4",
                                 "--device", "cpu", "--set", "train.eval_rows=4", "--set", "train.warmup_steps=1"])
    assert result.exit_code == 0, result.output

    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = AutoTokenizer.from_pretrained(out)("오늘 날씨가", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = loaded(ids).logits.flatten()
    result = subprocess.run([transformers4_python, "-c", LOAD_IN_OTHER_VERSION, str(out), "오늘 날씨가"],
                            capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    other = json.loads(result.stdout.strip().splitlines()[-1])
    assert other["version"].startswith("4.") and other["ids"] == ids.tolist()
    torch.testing.assert_close(torch.tensor(other["logits"]), expected, rtol=1e-4, atol=1e-4)

    report = tmp_path / "eval"
    result = runner.invoke(app, ["eval", "--model", str(out), "--name", arch, "--data", str(shared_data), "--out",
                                 str(report), "--protocol", "quick", "--tasks", "copa,nsmc", "--max-train", "16",
                                 "--max-dev", "8", "--max-test", "16", "--epochs", "1", "--runs", "1"])
    assert result.exit_code == 0, result.output
    scores = json.loads((report / "report.json").read_text(encoding="utf-8"))["finetune"][arch]
    assert set(scores) == {"copa", "nsmc"} and all(0 <= t["dev_selected"]["score"][0] <= 1 for t in scores.values())


@pytest.mark.parametrize("arch, settings", [("gpt2", {}), ("llama", {"n_kv_head": 2}), ("qwen2", {"intermediate_size": 80})])
def test_the_plan_counts_each_architecture_blocks_weights(arch, settings, tmp_path):
    """`daram plan`'s student FLOPs count the matrices the model really has, a config.json's shape included."""
    student = tiny(arch, **settings)
    model = new_student(student, 300, 64)
    matrices = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and (".h." in name or ".layers." in name))
    assert student_shape(student) == (2, 32, matrices // 2)
    model.config.to_json_file(tmp_path / "config.json")
    assert student_shape(StudentConfig(arch=str(tmp_path / "config.json"))) == (2, 32, matrices // 2)
