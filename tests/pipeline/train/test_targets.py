"""Target sources: what the reader must fetch, and targets whose KL is 0 when the student is the teacher."""

from __future__ import annotations

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from daram.pipeline.batches import Batch
from daram.pipeline.losses import SampledTarget, TopkTarget, student_logq_at
from daram.pipeline.train.targets import NoTargets, OnlineTeacher, StoredTargets
from daram.storage import TeacherManifest


def _teacher():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=16, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def _kl_of(target, logits, temperature):
    log_q = torch.log_softmax(logits / temperature, -1)
    return target.kl(student_logq_at(target, log_q, 0, logits.shape[1]), 0, logits.shape[1])


def _dump(kind: str, width: int, draws: int = 0) -> TeacherManifest:
    return TeacherManifest(teacher="t", revision="main", dtype="float32", temperature=2.0, kind=kind, width=width,
                           vocab_size=50, tokens_fingerprint="f", rows_per_chunk=4, draws=draws)


def test_stored_topk_targets_come_from_the_batch_arrays():
    teacher, tokens = _teacher(), torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        logits = teacher(tokens).logits
    values, ids = torch.log_softmax(logits / 2, -1).topk(50, -1)  # k = V: the bucket KL is the full KL
    batch = Batch(tokens.numpy(), ids.numpy(), values.numpy(), shard=0)
    source = StoredTargets(_dump("topk", 50), "bucket", torch.device("cpu"))
    target = source(batch, tokens)
    assert source.reads_teacher and isinstance(target, TopkTarget)
    assert _kl_of(target, logits, 2.0).abs().max() < 1e-5  # the teacher as its own student
    sampled = StoredTargets(_dump("sampled", 50, draws=50), "bucket", torch.device("cpu"))(
        Batch(tokens.numpy(), ids.numpy(), np.ones(ids.shape, np.float32), shard=0), tokens)
    assert isinstance(sampled, SampledTarget)


def test_online_teacher_and_ce_only_never_ask_the_reader_for_teacher_arrays():
    teacher, tokens = _teacher(), torch.randint(0, 50, (2, 6))
    batch = Batch(tokens.numpy(), None, None, shard=0)
    assert not NoTargets.reads_teacher and NoTargets()(batch, tokens) is None
    online = OnlineTeacher(teacher, temperature=2.0)
    assert not online.reads_teacher
    with torch.no_grad():
        logits = teacher(tokens).logits
    assert _kl_of(online(batch, tokens), logits, 2.0).abs().max() < 1e-5
