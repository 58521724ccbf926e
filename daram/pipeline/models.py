"""Building a GPT-2 and training a small one: the one place daram, its benchmarks and its tests make models.

Students (`student-train`), the demo's teacher, the benchmarks' teachers and the tests' tiny models are all
``gpt2(...)``; every small teacher is trained by ``train_small_teacher``, so a change of architecture or of the
teacher recipe is made once.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from daram.errors import DaramError
from daram.pipeline.schedule import lr_factor
from daram.text import plural


def gpt2(vocab_size: int, n_embd: int, n_head: int, n_layer: int, n_positions: int = 1024, dropout: float = 0.0,
         tokenizer=None, init_std: float = 0.02):
    """A new, randomly initialised ``GPT2LMHeadModel`` (seed torch first for a reproducible one).

    ``dropout`` is the residual, embedding and attention dropout alike. With ``tokenizer``, its BOS, EOS and
    PAD ids go into the config (BOS and PAD fall back to EOS, as `prepare` does), so ``generate`` and an
    exported model know them. Without one the config names no special ids: GPT2Config's default, English
    GPT-2's 50256, means nothing in another vocabulary.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    if min(vocab_size, n_embd, n_head, n_layer, n_positions) < 1 or n_embd % n_head or not 0 <= dropout < 1:
        raise DaramError(
            f"cannot build a GPT-2 with vocab_size {vocab_size}, n_embd {n_embd}, n_head {n_head}, n_layer {n_layer}, "
            f"n_positions {n_positions}, dropout {dropout}: sizes must be >= 1, n_embd a multiple of n_head, "
            "dropout in [0, 1)"
        )
    special = {"bos_token_id": None, "eos_token_id": None}
    if tokenizer is not None:
        eos = tokenizer.eos_token_id
        special = {
            "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos,
            "eos_token_id": eos,
            "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
        }
    config = GPT2Config(
        vocab_size=vocab_size, n_embd=n_embd, n_head=n_head, n_layer=n_layer, n_positions=n_positions,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, initializer_range=init_std, **special,
    )
    return GPT2LMHeadModel(config)


def train_small_teacher(model, rows: np.ndarray, steps: int, batch_size: int, lr: float, seed: int = 0,
                        desc: str = "train teacher") -> list[dict[str, float]]:
    """Train ``model`` in place with plain next-token cross-entropy on random rows of ``rows`` (rows x seq_len ids).

    The recipe is the students' own: AdamW (betas 0.9/0.95, weight decay 0.01), linear warm-up over a tenth
    of the steps, cosine decay to a tenth of ``lr``, gradients clipped at 1. Returns the loss curve and
    leaves the model in eval mode. A progress bar on stderr shows loss and tokens/s.
    """
    import torch
    from tqdm import tqdm


    if rows.ndim != 2 or len(rows) == 0 or rows.shape[1] < 2 or steps < 1 or batch_size < 1:
        raise DaramError(
            f"cannot train a teacher on {plural(len(rows), 'row')} of shape {tuple(rows.shape[1:])} for "
            f"{plural(steps, 'step')} of {plural(batch_size, 'row')}: it needs at least one row of 2 or more tokens, steps >= 1 and batch_size >= 1"
        )
    rows = rows.astype(np.int64, copy=False)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, steps, 0.1, "cosine"))
    pick = np.random.default_rng(seed)
    curve = []
    model.train()
    started = time.perf_counter()
    with tqdm(total=steps, unit="step", desc=desc, dynamic_ncols=True, file=sys.stderr) as bar:
        for step in range(steps):
            batch = torch.from_numpy(rows[pick.integers(0, len(rows), batch_size)])
            loss = model(input_ids=batch, labels=batch).loss  # labels are shifted inside the model
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            curve.append({"step": step + 1, "loss": loss.item()})
            tokens_per_s = (step + 1) * batch.numel() / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}", tok_s=f"{tokens_per_s:,.0f}")
            bar.update(1)
    model.eval()
    return curve
