"""The trained student as a Hugging Face model directory that transformers 4.x and 5.x both load.

transformers 5's ``save_pretrained`` writes a tokenizer config that 4.x cannot read
(``"tokenizer_class": "TokenizersBackend"``) and that carries the flags it was loaded with
(``is_local``, ``local_files_only``). The tokenizer itself lives in ``tokenizer.json``, which both
versions read through ``PreTrainedTokenizerFast``, so the config names that class, drops the
load-time flags and caps ``model_max_length`` at the model's positions. For rotary students (llama, qwen2)
5.x writes ``rope_parameters`` where 4.x reads ``rope_theta``, and ``dtype`` where 4.x reads ``torch_dtype``: the
config carries both spellings.
"""

from __future__ import annotations

import json
from pathlib import Path

TOKENIZER_CLASS = "PreTrainedTokenizerFast"  # in 4.x and 5.x alike: the tokenizer from tokenizer.json
LOAD_TIME_KEYS = ("is_local", "local_files_only", "_commit_hash", "name_or_path", "token", "revision", "cache_dir")


def export_student(model, tokenizer, out: Path) -> None:
    """safetensors weights, config, generation config and tokenizer files in ``out``."""
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    positions = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    portable_tokenizer_config(Path(out) / "tokenizer_config.json", positions)
    portable_model_config(Path(out) / "config.json")


def portable_model_config(path: Path) -> None:
    config = json.loads(path.read_text(encoding="utf-8"))
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope and "rope_theta" not in config:
        config["rope_theta"] = rope["rope_theta"]
    if "dtype" in config and "torch_dtype" not in config:
        config["torch_dtype"] = config["dtype"]
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def portable_tokenizer_config(path: Path, max_positions: int) -> None:
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in LOAD_TIME_KEYS:
        config.pop(key, None)
    config["tokenizer_class"] = TOKENIZER_CLASS
    config["model_max_length"] = max_positions  # longer inputs would index past the position table
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
