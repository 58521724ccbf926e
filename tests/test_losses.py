"""``daram.losses.kd_loss``: at the same batch and weights it is `student-train`'s loss and gradient for every kind,
and a batch that does not fit the logits is refused in one line."""

from __future__ import annotations

import pytest
import torch
from test_data import KINDS, dumped_store

from daram.config import load_config
from daram.data import StoreBatches
from daram.errors import DaramError
from daram.losses import kd_loss, kd_loss_terms
from daram.pipeline.batches import iter_batches
from daram.pipeline.losses import DistillObjective, next_token_labels
from daram.pipeline.train.student_train import setup
from daram.pipeline.train.distributed import stop_distributed


@pytest.fixture(scope="module", params=list(KINDS))
def store_of_kind(request, tmp_path_factory, tokenizer_dir, corpus_lines, trained_tiny_teacher_dir):
    """A trained teacher: its KL to a new student is large enough for a relative tolerance to mean something."""
    kind = request.param
    return kind, dumped_store(tmp_path_factory.mktemp(kind), tokenizer_dir, corpus_lines, trained_tiny_teacher_dir, kind)


@pytest.mark.parametrize("alpha_kd, alpha_ce", [(1.0, 0.0), (0.7, 0.3), (0.0, 1.0)])
def test_kd_loss_is_student_train_loss_and_gradient(store_of_kind, tmp_path, alpha_kd, alpha_ce):
    kind, path = store_of_kind
    cfg = load_config(overrides={
        "store.path": str(path), "train.out": str(tmp_path / "out"), "train.shards": "0-1", "train.heldout_shard": -1, "train.shuffle": False,
        "student.n_embd": 32, "student.n_head": 2, "student.n_layer": 2, "train.batch_size": 3, "train.loss_slice": 8,
        "train.alpha_kd": alpha_kd, "train.alpha_ce": alpha_ce, "train.device": "cpu",
    })
    run = setup(cfg)
    try:
        params = list(run.model.parameters())
        ours = StoreBatches(path, batch_size=3)
        for k, batch in zip((0, 4), (b for i, b in enumerate(iter_batches(run.store, run.plan)) if i in (0, 4))):
            tokens = torch.from_numpy(batch.tokens)
            objective = DistillObjective(next_token_labels(tokens), run.targets(batch, tokens), run.temperature,
                                         alpha_kd, alpha_ce)
            loss, kd, ce = run.wrapped(tokens, objective)
            expected = torch.autograd.grad(loss, params)
            mine = ours.batch(k)
            assert torch.equal(mine["input_ids"], tokens)
            logits = run.model(input_ids=mine["input_ids"]).logits
            got, got_kd, got_ce = kd_loss_terms(logits, mine, run.temperature, alpha_kd, alpha_ce, loss_slice=5)
            # float32 sums of terms near log V = 7.6 in another order: equal to a few ulps of those terms
            assert got.item() == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
            assert (got_kd.item(), got_ce.item()) == pytest.approx((kd.item(), ce.item()), rel=1e-5, abs=1e-6)
            grads = torch.autograd.grad(kd_loss(logits, mine, run.temperature, alpha_kd, alpha_ce), params)
            for g, e in zip(grads, expected):
                assert torch.allclose(g, e, rtol=1e-4, atol=1e-7)
    finally:
        stop_distributed(run.dist)


def test_a_batch_that_does_not_fit_the_logits_is_refused(store_of_kind):
    _, path = store_of_kind
    batch = StoreBatches(path, batch_size=2).batch(0)
    logits = torch.zeros(2, 32, 2048)
    with pytest.raises(DaramError, match="outside the student's 100 logits"):
        kd_loss(logits[..., :100], batch, 2.0)
    with pytest.raises(DaramError, match=r"student_logits \(2, 31, 2048\)"):
        kd_loss(logits[:, :31], batch, 2.0)
    with pytest.raises(DaramError, match="lacks teacher_tail"):
        kd_loss(logits, {k: v for k, v in batch.items() if k != "teacher_tail"}, 2.0)
    with pytest.raises(DaramError, match="temperature 0"):
        kd_loss(logits, batch, 0)
    assert kd_loss(logits, {"input_ids": batch["input_ids"]}, 2.0, alpha_kd=0, alpha_ce=1).item() == pytest.approx(
        torch.log(torch.tensor(2048.0)).item())  # CE-only needs no teacher: uniform logits give log V
