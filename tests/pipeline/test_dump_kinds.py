"""The teacher kinds as objects: a new kind is its two halves, added here in this one file (a storage
``TeacherFormat`` and a torch ``DumpKind``), and dump -> verify -> inspect -> train run on it unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import prepare_store
from daram.cli import app
from daram.pipeline import dump_kinds
from daram.pipeline.losses import SparseTarget
from daram.storage import TEACHER_FORMATS, ArraySpec, Store, TeacherFormat, register, teacher_format
from daram.storage.formats import TOKEN_DTYPE


class Top1Format(TeacherFormat):
    """A toy kind: the teacher's most probable id per position, nothing else."""

    def width(self, settings, vocab_size, where):
        return 1

    def describe(self, dump):
        return "top-1 (a toy kind)"

    def decode(self, arrays, dump):
        return arrays[0], np.ones(arrays[0].shape, dtype=np.float32)

    def probabilities(self, arrays, dump):
        return arrays[0].astype(np.int64), np.ones(arrays[0].shape, dtype=np.float32)

    def statistics(self, blocks, dump):
        return {"distinct_top1": len(set().union(*(set(np.unique(b[0]).tolist()) for b in blocks)))}

    def summary(self, stats):
        return f"{stats['distinct_top1']} distinct top-1 ids"


def _top1_kernel(z, scratch, uniforms, width):
    log_p = torch.log_softmax(z, -1)
    return (z.argmax(-1, keepdim=True),), -(log_p.exp() * log_p).sum(-1)


@pytest.fixture
def top1_kind():
    register(Top1Format("top1", (ArraySpec("top1_ids", TOKEN_DTYPE),), (), False, 1.0, "B per id (a guess)"))
    dump_kinds.register(dump_kinds.DumpKind("top1", _top1_kernel, (), lambda ids, values, dump, tail: SparseTarget(ids, values)))
    yield "top1"
    TEACHER_FORMATS.pop("top1")
    dump_kinds.DUMP_KINDS.pop("top1")


def test_a_new_kind_in_one_file_runs_dump_verify_inspect_and_train(top1_kind, tmp_path, tokenizer_dir, corpus_lines,
                                                                      tiny_teacher_dir):
    store = prepare_store(tmp_path, tokenizer_dir, corpus_lines[:300], seq_len=32, num_shards=2, rows_per_chunk=8)
    cli = CliRunner()
    dumped = cli.invoke(app, ["teacher-dump", "--store", str(store), "--teacher", str(tiny_teacher_dir), "--kind", "top1",
                              "--dtype", "float32", "--device", "cpu", "--all"])
    assert dumped.exit_code == 0, dumped.output
    assert "distinct top-1 ids" in dumped.output

    opened = Store.open(str(store))
    ids, probs = opened.read_teacher_probs(0)
    tokens = opened.read_tokens(0)
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir).eval()
    with torch.no_grad():
        expected = teacher(torch.from_numpy(tokens.astype(np.int64))).logits.argmax(-1)
    assert ids.shape == (*tokens.shape, 1) and (probs == 1).all()
    assert (ids[..., 0] == expected.numpy()).mean() > 0.99  # float ties aside, the teacher's own argmax

    verified = cli.invoke(app, ["verify", "--store", str(store)])
    assert verified.exit_code == 0 and "intact and complete" in verified.output, verified.output
    inspected = cli.invoke(app, ["inspect", "--store", str(store), "--no-sample"])
    assert inspected.exit_code == 0 and "top-1 (a toy kind)" in inspected.output, inspected.output

    trained = cli.invoke(app, ["student-train", "--store", str(store), "--out", str(tmp_path / "student"), "--n-embd", "32",
                               "--n-head", "2", "--n-layer", "2", "--batch-size", "4", "--grad-accum", "1", "--max-steps", "2",
                               "--device", "cpu", "--set", "train.eval_rows=4"])
    assert trained.exit_code == 0, trained.output
    assert "held-out shard 1" in trained.output and "KL" in trained.output


def test_an_unknown_kind_fails_in_one_place_with_one_line(tmp_path):
    with pytest.raises(Exception, match="^unknown teacher kind 'top1'; this daram knows topk, sampled, draws, draw_ranks$"):
        dump_kinds.dump_kind("top1")
    assert teacher_format("draws").kind == "draws"


def test_the_torch_half_casts_values_to_the_dtypes_the_storage_half_stores():
    for kind, entry in dump_kinds.DUMP_KINDS.items():
        stored = [np.dtype(spec.dtype) for spec in teacher_format(kind).arrays[1:]]
        assert [np.dtype(str(d).removeprefix("torch.")) for d in entry.value_dtypes] == stored, kind


@pytest.mark.parametrize("kind", [k for k, f in TEACHER_FORMATS.items() if f.drawn])
def test_every_drawn_kind_stores_an_unbiased_estimate_of_the_tempered_teacher(kind):
    """The dump's kernel, the kind's storage encoding (draw ranks: a frequency table of skewed tokens) and its
    decoding, over 3,000 independent positions of one teacher distribution: every id's mean probability is
    within 5 standard errors of softmax(z / T); one position alone is far from it (the test can fail)."""
    from daram.storage.manifest import TeacherManifest

    vocab, draws, trials, temperature = 40, 6, 3000, 1.0
    fmt, torch_half = teacher_format(kind), dump_kinds.dump_kind(kind)
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(vocab, generator=g) * 2.0).expand(trials, vocab).contiguous()
    uniforms = torch.rand(trials, draws, generator=g)
    arrays, _ = torch_half.kernel(z.clone() / temperature, torch.empty_like(z), uniforms, draws)
    stored = (arrays[0].numpy().astype(np.uint16), *(a.to(d).numpy() for a, d in zip(arrays[1:], torch_half.value_dtypes)))
    tokens = np.random.default_rng(1).zipf(1.5, 5000).clip(max=vocab - 1).astype(np.uint16)
    tables = fmt.build_tables(tokens, vocab)
    dump = TeacherManifest("t", "-", "float32", temperature, kind, draws, vocab, "fp", 64, draws=draws)
    ids, probs = fmt.probabilities(fmt.encode(stored, tables) + tables, dump)
    dense = np.zeros((trials, vocab))
    np.add.at(dense, (np.arange(trials)[:, None].repeat(draws, 1), ids), probs)
    p = torch.softmax(z[0].double() / temperature, -1).numpy()
    stderr = dense.std(0) / np.sqrt(trials) + 1e-12
    assert np.allclose(dense.sum(1), 1.0, atol=1e-6)
    assert (np.abs(dense.mean(0) - p) <= 5 * stderr).all(), np.abs(dense.mean(0) - p) / stderr
    assert np.abs(dense[0] - p).max() > 10 * stderr.max()
