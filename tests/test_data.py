"""``daram.data.StoreBatches``: the store's rows in shard and chunk order, every kind decoded into (ids, probabilities,
tail), split by rank and DataLoader worker into the same stream, resumable from a position, and bad input refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import prepare_store
from typer.testing import CliRunner

from daram.cli import app
from daram.data import StoreBatches
from daram.errors import DaramError
from daram.storage import Store

KINDS = {"topk": ["--top-k", "8"], "sampled": ["--draws", "12", "--seed", "3"], "draws": ["--draws", "12", "--seed", "3"],
         "draw_ranks": ["--draws", "12", "--seed", "3"]}


def dumped_store(tmp: Path, tokenizer_dir: Path, lines: list[str], teacher: Path, kind: str, temperature: float = 2.0) -> Path:
    """Rows of 32 tokens in 2 shards of 4-row chunks, dumped by the real `teacher-dump` as ``kind``."""
    path = prepare_store(tmp, tokenizer_dir, lines[:138], seq_len=32, num_shards=2, rows_per_chunk=4)
    result = CliRunner().invoke(app, [
        "teacher-dump", "--store", str(path), "--teacher", str(teacher), "--dtype", "float32", "--device", "cpu",
        "--kind", kind, *KINDS[kind], "--temperature", str(temperature), "--batch-size", "4", "--all",
    ])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module", params=list(KINDS))
def store_of_kind(request, tmp_path_factory, tokenizer_dir, corpus_lines, tiny_teacher_dir) -> tuple[str, Path]:
    kind = request.param
    return kind, dumped_store(tmp_path_factory.mktemp(kind), tokenizer_dir, corpus_lines, tiny_teacher_dir, kind)


def stream(dataset) -> dict[str, torch.Tensor]:
    batches = list(dataset)
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def test_rows_come_in_shard_and_chunk_order_with_every_kind_decoded(store_of_kind):
    kind, path = store_of_kind
    store = Store.open(str(path))
    draws = store.teacher_manifest().draws
    got = stream(StoreBatches(path, batch_size=3))
    rows = sum(store.manifest.rows_per_shard) // 3 * 3
    tokens = np.concatenate([store.read_tokens(s) for s in range(2)])[:rows]
    assert torch.equal(got["input_ids"], torch.from_numpy(tokens.astype(np.int64)))
    stored_ids, stored_values = (np.concatenate(a)[:rows] for a in zip(*(store.read_teacher(s) for s in range(2))))
    ids, probs, tail = got["teacher_ids"], got["teacher_probs"], got["teacher_tail"]
    assert ids.dtype == torch.int64 and probs.dtype == tail.dtype == torch.float32
    assert ids.shape == probs.shape == (rows, 32, store.teacher_manifest().width) and tail.shape == (rows, 32)
    assert torch.equal(ids, torch.from_numpy(stored_ids.astype(np.int64)))
    if kind == "topk":  # exact probabilities of the k ids; the rest of the mass is the tail
        assert torch.equal(probs, torch.from_numpy(np.exp(stored_values.astype(np.float32))))
        assert torch.allclose(tail, (1 - probs.sum(-1)).clamp_min(0)) and tail.min() > 0
    else:  # unbiased estimates that sum to 1: no tail
        counts = stored_values if kind == "sampled" else stored_values * draws
        assert torch.allclose(probs * draws, torch.from_numpy(counts.astype(np.float32)))
        assert torch.allclose(probs.sum(-1), torch.ones(())) and not tail.any()


def test_ranks_read_disjoint_chunks_and_step_together(store_of_kind):
    _, path = store_of_kind
    whole = stream(StoreBatches(path, batch_size=2, teacher=False))["input_ids"]
    ranks = [StoreBatches(path, batch_size=2, teacher=False, rank=r, world=3) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1  # the same number of batches on every rank
    seen = [tuple(row.tolist()) for r in ranks for row in stream(r)["input_ids"]]
    assert len(seen) == len(set(seen)) and set(seen) <= {tuple(row.tolist()) for row in whole}
    first_chunks = [stream(r)["input_ids"][:4] for r in ranks]  # rank r starts with chunk r
    assert [torch.equal(c, whole[4 * r : 4 * r + 4]) for r, c in enumerate(first_chunks)] == [True] * 3


def test_workers_give_the_same_stream_and_a_position_resumes_it(store_of_kind):
    _, path = store_of_kind
    dataset = StoreBatches(path, batch_size=3)
    alone = stream(dataset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    with_workers = [b for b in loader]
    assert len(with_workers) == len(dataset)
    for key, value in alone.items():
        assert torch.equal(torch.cat([b[key] for b in with_workers]), value), key
    resumed = stream(torch.utils.data.DataLoader(StoreBatches(path, batch_size=3, start=5), batch_size=None, num_workers=2))
    assert torch.equal(resumed["input_ids"], alone["input_ids"][15:])
    assert torch.equal(resumed["teacher_probs"], alone["teacher_probs"][15:])


def test_bad_requests_are_refused_in_one_line(store_of_kind, prepared_store):
    _, path = store_of_kind
    with pytest.raises(DaramError, match="shards"):
        StoreBatches(path, batch_size=2, shards=[5])
    with pytest.raises(DaramError, match="rank 3"):
        StoreBatches(path, batch_size=2, rank=3, world=2)
    with pytest.raises(DaramError, match="past the end"):
        StoreBatches(path, batch_size=2, start=10_000)
    with pytest.raises(DaramError, match="no teacher dump"):
        StoreBatches(prepared_store, batch_size=2)
    assert len(StoreBatches(prepared_store, batch_size=2, teacher=False)) > 0  # tokens alone need no dump
