"""The runner: one chunk of rows through the teacher, into its kind's arrays in their stored dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import prepare_store
from daram.pipeline.dump.runner import TeacherRunner
from daram.pipeline.dump.uniforms import chunk_uniforms
from daram.storage import Store, teacher_format


@pytest.mark.parametrize("kind, width", [("topk", 5), ("sampled", 6), ("draws", 6)])
def test_a_chunk_comes_out_as_its_kinds_stored_arrays(tmp_path, tokenizer_dir, corpus_lines, tiny_teacher_dir, kind, width):
    store = Store.open(str(prepare_store(tmp_path, tokenizer_dir, corpus_lines[:60], seq_len=16, num_shards=1, rows_per_chunk=4)))
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir, dtype=torch.float32).eval()
    runner = TeacherRunner(model, kind, width, 1.0, torch.device("cpu"), 3, store.manifest)
    tokens = store.read_tokens(0, 0, 4)
    fmt = teacher_format(kind)
    with torch.inference_mode():
        result = runner.run_chunk(tokens, chunk_uniforms(0, 0, 0, tokens.size, width) if fmt.drawn else None)
    assert [a.dtype for a in result.arrays] == [np.dtype(s.numpy_dtype(store.manifest.token_dtype)) for s in fmt.arrays]
    assert all(a.shape == (4, 16, width) for a in result.arrays) and result.positions == 64
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.from_numpy(tokens.astype(np.int64))).logits, -1)
    entropy = -(logp.exp() * logp).sum(-1).sum().item()
    assert result.entropy_sum == pytest.approx(entropy, rel=1e-4)
    ids, probs = fmt.probabilities(result.arrays, type("Dump", (), {"draws": width})())
    if kind == "topk":  # the teacher's own top-k, batches of 3 rows never crossing the chunk
        assert np.array_equal(ids, logp.topk(width, -1).indices.numpy())
    else:  # an estimate that sums to 1 over ids the teacher gives mass
        assert np.allclose(probs.sum(-1), 1) and (np.take_along_axis(logp.numpy(), ids, -1)[probs > 0] > -np.inf).all()
    assert fmt.check_block(result.arrays, type("Dump", (), {"draws": width, "vocab_size": store.manifest.tokenizer.vocab_size})()) == []
