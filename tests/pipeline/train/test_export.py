"""The exported student: its tokenizer config loads in transformers 4.x as in 5.x, its weights are the model's."""

from __future__ import annotations

import json

import pytest
import torch

from daram.pipeline.train.export import export_student


@pytest.fixture(scope="module")
def tiny_model_and_tokenizer():
    """A 2-layer GPT-2 over a 300-id byte-level BPE trained here on a few Korean sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from daram.pipeline.models import gpt2

    text = ["오늘 날씨가 정말 좋다.", "내일은 비가 온다고 한다.", "한국어 문장을 배운다."] * 20
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>", "<pad>"],
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(0)
    # BOS falls back to EOS (id 0), PAD is id 1
    return gpt2(len(tokenizer), n_embd=16, n_head=2, n_layer=2, n_positions=64, tokenizer=tokenizer).eval(), tokenizer


def test_tokenizer_config_names_a_class_both_versions_have_and_no_load_time_flags(tiny_model_and_tokenizer, tmp_path):
    model, tokenizer = tiny_model_and_tokenizer
    export_student(model, tokenizer, tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # 5.x writes TokenizersBackend, unknown to 4.x
    assert not {"is_local", "local_files_only"} & set(config)
    assert config["model_max_length"] == 64  # the model's positions, not 1e30


def test_reloaded_export_gives_the_same_ids_and_logits(tiny_model_and_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    model, tokenizer = tiny_model_and_tokenizer
    export_student(model, tokenizer, tmp_path)
    loaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = loaded_tokenizer("오늘 날씨가", return_tensors="pt")["input_ids"]
    assert ids.tolist() == tokenizer("오늘 날씨가", return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    generated = pipeline("text-generation", model=loaded, tokenizer=loaded_tokenizer)("오늘", max_new_tokens=3, do_sample=False)
    assert generated[0]["generated_text"].startswith("오늘")
    assert loaded.generation_config.pad_token_id == 1 and loaded.generation_config.eos_token_id == 0


# transformers 4.x in a second venv, kept in pytest's cache between runs. It has its own transformers and
# tokenizers and borrows torch from this venv through a .pth file (never a second torch download).
TRANSFORMERS_4 = "transformers>=4.57,<5"
LOAD_IN_OTHER_VERSION = """
import json, sys, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
path, prompt = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path).eval()
ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
with torch.no_grad():
    logits = model(ids).logits
text = pipeline("text-generation", model=model, tokenizer=tokenizer)(prompt, max_new_tokens=3, do_sample=False)
print(json.dumps({"version": transformers.__version__, "class": type(tokenizer).__name__, "ids": ids.tolist(),
                  "logits": logits.flatten().tolist(), "text": text[0]["generated_text"],
                  "max_length": tokenizer.model_max_length}))
"""


@pytest.fixture(scope="session")
def transformers4_python(request, tmp_path_factory) -> str:
    import fcntl
    import subprocess
    import sysconfig
    import venv
    from pathlib import Path

    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider: then built per session
    root = Path(cache.mkdir("transformers4-venv")) if cache else tmp_path_factory.mktemp("transformers4-venv")
    python = root / "bin" / "python"
    ready = root / "ready"
    with (root.parent / f"{root.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions at once: one builds, the other waits and reuses
        if not python.exists() or not ready.is_file() or ready.read_text() != TRANSFORMERS_4:
            ready.unlink(missing_ok=True)
            venv.create(root, clear=True, with_pip=True)
            install = subprocess.run([str(python), "-m", "pip", "install", "-q", TRANSFORMERS_4],
                                     capture_output=True, text=True, timeout=900)
            if install.returncode != 0:
                pytest.skip(f"cannot install {TRANSFORMERS_4} from the package index: {install.stderr.strip()[-300:]}")
            site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip()
            (Path(site) / "daram-borrowed-torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
            ready.write_text(TRANSFORMERS_4)
    return str(python)


@pytest.mark.slow
def test_transformers_4_loads_the_export_with_auto_classes_and_pipeline(tiny_model_and_tokenizer, tmp_path,
                                                                         transformers4_python):
    import subprocess

    model, tokenizer = tiny_model_and_tokenizer
    export_student(model, tokenizer, tmp_path)
    result = subprocess.run([transformers4_python, "-c", LOAD_IN_OTHER_VERSION, str(tmp_path), "오늘 날씨가"],
                            capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["version"].startswith("4.")
    ids = tokenizer("오늘 날씨가", return_tensors="pt")["input_ids"]
    assert loaded["ids"] == ids.tolist() and loaded["max_length"] == 64
    with torch.no_grad():
        expected = model(ids).logits.flatten()
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, rtol=1e-5, atol=1e-5)
    assert loaded["text"].startswith("오늘 날씨가")
