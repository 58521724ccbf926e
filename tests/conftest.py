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


@pytest.fixture(scope="session")
def korean_lines(korean_sentences: Path) -> list[str]:
    """The first 3,000 real Korean sentences: enough for a few shards of short rows."""
    with korean_sentences.open(encoding="utf-8") as handle:
        return [next(handle).strip() for _ in range(3000)]


def prepare_store(tmp: Path, tokenizer_dir: Path, lines: list[str], seq_len: int = 64, num_shards: int = 2,
                  rows_per_chunk: int = 16, name: str = "store.zarr") -> Path:
    """Run the real `prepare` on ``lines`` (one unit per line) and return the store's path."""
    from daram.config import load_config
    from daram.pipeline.prepare import run_prepare

    corpus = tmp / f"{name}.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    store = tmp / name
    cfg = load_config(overrides={
        "store.path": str(store), "prepare.tokenizer": str(tokenizer_dir), "prepare.seq_len": seq_len,
        "prepare.num_shards": num_shards, "prepare.rows_per_chunk": rows_per_chunk,
        "prepare.sources": [{"path": str(corpus), "unit": "line"}],
    })
    run_prepare(cfg)
    return store


@pytest.fixture
def prepared_store(tmp_path: Path, kogpt2_tokenizer_dir: Path, korean_lines: list[str]) -> Path:
    """A fresh store per test: 600 real sentences, KoGPT2 tokens, rows of 64, 2 shards, 16-row chunks."""
    return prepare_store(tmp_path, kogpt2_tokenizer_dir, korean_lines[:600])
