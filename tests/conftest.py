"""Shared fixtures. Real data comes from ../shared/data (or $DARAM_SHARED_DATA); tests skip without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub id fails at once instead of retrying for ~25 s

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    return Path(os.environ.get("DARAM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = _shared_data()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set DARAM_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def kogpt2_tokenizer_dir(shared_data: Path) -> Path:
    path = shared_data / "tokenizers" / "kogpt2-base-v2"
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"KoGPT2 tokenizer not found at {path}")
    return path


@pytest.fixture(scope="session")
def korean_sentences(shared_data: Path) -> Path:
    path = shared_data / "korean_corpus" / "sentences.txt"
    if not path.is_file():
        pytest.skip(f"Korean sentences not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, kogpt2_tokenizer_dir: Path) -> Path:
    """A tiny random GPT-2 over the real KoGPT2 vocabulary, saved with its tokenizer like a hub model."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(kogpt2_tokenizer_dir)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    out = tmp_path_factory.mktemp("tiny_teacher")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
