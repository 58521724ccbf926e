"""Loading tokenizers and causal LMs from a hub id or a local directory, with one-line errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from daram.errors import DaramError
from daram.storage import TokenizerInfo


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def load_tokenizer(name_or_path: str):
    """A fast tokenizer through ``AutoTokenizer``; a missing path or unreachable hub id is a DaramError."""
    _quiet_transformers()
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise DaramError(f"cannot load tokenizer {name_or_path!r}: {_first_line(exc)}") from None
    if not tokenizer.is_fast:
        raise DaramError(f"tokenizer {name_or_path!r} has no fast (Rust) version; daram needs one for speed")
    return tokenizer


def vocab_size_of(tokenizer) -> int:
    """Ids the model must cover: the base vocabulary plus any added tokens."""
    return len(tokenizer)


def vocab_sha256(tokenizer) -> str:
    """sha256 of the (token, id) pairs sorted by id: equal iff two tokenizers map text to the same ids."""
    pairs = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode()).hexdigest()


def check_store_tokenizer(tokenizer, whose: str, store) -> None:
    """Refuse a tokenizer whose vocabulary is not the one ``store`` was prepared with: its ids would not line up."""
    want = store.manifest.tokenizer
    size, sha = vocab_size_of(tokenizer), vocab_sha256(tokenizer)
    if (size, sha) != (want.vocab_size, want.vocab_sha256):
        differs = [f"{size:,} ids against {want.vocab_size:,}"] if size != want.vocab_size else [
            "the same number of ids mapped to other tokens"]
        if tokenizer.eos_token_id != want.eos_id:
            differs.append(f"EOS id {tokenizer.eos_token_id} against {want.eos_id}")
        raise DaramError(
            f"{whose} has another tokenizer ({size:,} ids, vocab sha256 {sha[:12]}) than the store {store.url} "
            f"({want.name_or_path}: {want.vocab_size:,} ids, sha256 {want.vocab_sha256[:12]}): {'; '.join(differs)}. "
            "The stored token ids would not line up: use the tokenizer the store was prepared with (distilling "
            "across tokenizers is out of scope)"
        )


def resolved_source(given: str) -> str:
    """What loads a model or tokenizer from any directory: a local path made absolute, else the hub id."""
    path = Path(given).expanduser()
    return str(path.resolve()) if path.exists() else given


def loaded_commit(obj) -> str:
    """The hub commit a model (its config) or tokenizer was loaded from; "" for local directories."""
    config = getattr(obj, "config", None)
    commit = getattr(config, "_commit_hash", None) or getattr(obj, "init_kwargs", {}).get("_commit_hash")
    return commit or ""


def tokenizer_info(tokenizer, name_or_path: str) -> TokenizerInfo:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DaramError(f"tokenizer {name_or_path!r} has no EOS token; daram puts EOS between units")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return TokenizerInfo(
        name_or_path=resolved_source(name_or_path),
        vocab_size=vocab_size_of(tokenizer),
        vocab_sha256=vocab_sha256(tokenizer),
        eos_id=int(eos),
        pad_id=int(pad),
        given=name_or_path,
        commit=loaded_commit(tokenizer),
    )


def resolve_device(device: str):
    """``auto`` -> cuda when available, else cpu; a cuda request without a GPU is a DaramError."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DaramError(f"device {device!r} requested but no CUDA GPU is available (use --device cpu)")
    try:
        return torch.device(device)
    except RuntimeError:
        raise DaramError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None


def torch_dtype(name: str):
    import torch

    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def load_causal_lm(name_or_path: str, dtype: str = "float32", device: str = "cpu", revision: str = "main"):
    """``AutoModelForCausalLM`` in eval mode on ``device``; a model that cannot be loaded is a DaramError."""
    _quiet_transformers()
    from transformers import AutoModelForCausalLM

    target = resolve_device(device)
    kwargs = {"dtype": torch_dtype(dtype)}
    if not Path(name_or_path).exists():
        kwargs["revision"] = revision
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise DaramError(f"cannot load model {name_or_path!r}: {_first_line(exc)}") from None
    return model.to(target).eval()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
