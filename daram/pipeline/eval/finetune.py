"""Fine-tuning one model on one task with one seed: ``daram eval``'s recipe, setup -> fit -> finish.

How a causal LM classifies (GPT-1 style): the segments of an input are joined with EOS and end with EOS,
and a linear head reads the hidden state of that last token.
- classification (BoolQ, WiC, SentiNeg, NSMC): the head gives one logit per class;
- multiple choice (COPA, HellaSwag): each (context, choice) sequence gets one scalar from the head and a
  softmax runs over the choices (GPT2DoubleHeadsModel's multiple-choice head). The LM's own conditional
  log-likelihood is not used here (``daram.pipeline.eval.fewshot`` scores it, without training).

Optimisation: AdamW (weight decay 0), no warm-up, linear decay to 0, gradients clipped at norm 1 (the
Hugging Face Trainer's defaults). The seed fixes the head's initialisation, dropout and the example order,
so every model sees the same batches under one seed. "Fine-tune seconds" time the training steps only.

After every epoch the dev and the test split are scored. Two rules then pick the epoch whose test score is
reported: the seed's (the best test epoch, which selects on the test set and so flatters every model) and
ours (the best dev epoch, which a reviewer can trust). Both are kept, named as such.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from daram.config import EvalConfig
from daram.errors import DaramError
from daram.pipeline.eval.downstream import Example, Task
from daram.pipeline.eval.stats import accuracy, macro_f1
from daram.pipeline.hf import load_causal_lm

GRAD_CLIP = 1.0

# --- encoding -----------------------------------------------------------------------------------


def fit_lengths(lengths: Sequence[int], budget: int) -> list[int]:
    """Segment lengths that fit ``budget`` tokens, shortening the longest segments first.

    The longest segments are cut down to a common cap (the largest that fits), and any budget left
    goes one token each to the segments that were cut, first ones first. Short segments (a question,
    a target word) survive whole while a long paragraph loses its end.
    """
    if sum(lengths) <= budget:
        return list(lengths)
    lo, hi = 0, max(lengths)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in lengths) <= budget:
            lo = mid
        else:
            hi = mid - 1
    capped = [min(n, lo) for n in lengths]
    spare = budget - sum(capped)
    for i, n in enumerate(lengths):
        if spare and n > lo:
            capped[i] += 1
            spare -= 1
    return capped


@dataclass(frozen=True)
class EncodedSplit:
    sequences: list[list[list[int]]]  # example -> choice -> token ids (segments joined by EOS, EOS last)
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


def encode_examples(tokenizer, examples: list[Example], max_length: int, separator_id: int) -> EncodedSplit:
    """Token ids of every sequence: each segment followed by ``separator_id``, at most ``max_length`` in all."""
    texts = [segment for example in examples for sequence in example.sequences for segment in sequence]
    ids = iter(tokenizer(texts, add_special_tokens=False)["input_ids"])
    encoded = []
    for example in examples:
        choices = []
        for sequence in example.sequences:
            segments = [next(ids) for _ in sequence]
            tokens: list[int] = []
            for segment, keep in zip(segments, fit_lengths([len(s) for s in segments], max_length - len(segments))):
                tokens += segment[:keep] + [separator_id]
            choices.append(tokens)
        encoded.append(choices)
    return EncodedSplit(encoded, [example.label for example in examples])


def collate(split: EncodedSplit, indices: Sequence[int], pad_id: int):
    """(input_ids, attention_mask, last_index, labels) for some examples; choices are flattened into rows.

    Rows are right-padded to the longest in the batch; ``last_index`` is each row's final real token.
    """
    rows = [sequence for i in indices for sequence in split.sequences[i]]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[r, : len(row)] = 1
    last_index = attention_mask.sum(dim=1) - 1
    labels = torch.tensor([split.labels[i] for i in indices], dtype=torch.long)
    return input_ids, attention_mask, last_index, labels


def batches(indices: Sequence[int], size: int) -> list[list[int]]:
    return [list(indices[i : i + size]) for i in range(0, len(indices), size)]


# --- the model ----------------------------------------------------------------------------------


class LastTokenScorer(nn.Module):
    """A causal LM's transformer body plus a linear head on each row's last real token.

    Classification: ``outputs`` logits per row. Multiple choice: one score per (context, choice) row, and the
    rows of an example are regrouped so that a softmax runs over its choices.
    """

    def __init__(self, body: nn.Module, hidden_size: int, outputs: int, init_std: float) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(hidden_size, outputs)
        nn.init.normal_(self.head.weight, std=init_std)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_causal_lm(cls, lm, outputs: int) -> "LastTokenScorer":
        """Keep the body, drop the LM head (its full-vocabulary logits are not needed); the new head is
        initialised like the model's own weights (normal, the config's ``initializer_range``)."""
        body = lm.base_model
        if body is lm:
            raise DaramError(f"{type(lm).__name__} has no separate transformer body to put a classification head on")
        return cls(body, lm.config.hidden_size, outputs, getattr(lm.config, "initializer_range", 0.02))

    def forward(self, input_ids, attention_mask, last_index, n_choices: int):
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]
        # (examples * choices, outputs) -> (examples, choices * outputs): class logits, or one score per choice
        return self.head(last).view(-1, n_choices * self.head.out_features)


def predict(model, split: EncodedSplit, n_choices: int, batch_size: int, pad_id: int, device, desc: str) -> list[int]:
    """The argmax class / choice of every example, in order. Longest first, so batches pad little."""
    order = sorted(range(len(split)), key=lambda i: -max(len(s) for s in split.sequences[i]))
    predictions = [0] * len(split)
    model.eval()
    with torch.no_grad(), tqdm(total=len(split), desc=desc, unit="ex", file=sys.stderr, leave=False) as bar:
        for batch in batches(order, batch_size):
            input_ids, attention_mask, last_index, _ = collate(split, batch, pad_id)
            logits = model(input_ids.to(device), attention_mask.to(device), last_index.to(device), n_choices)
            for i, p in zip(batch, logits.argmax(dim=-1).tolist()):
                predictions[i] = p
            bar.update(len(batch))
    return predictions


# --- choosing the reported epoch ----------------------------------------------------------------


def best_test_epoch(epochs: Sequence[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The seed's rule: the epoch with the best *test* score (ties go to the earlier epoch). It selects on
    the test set, so it is optimistic, most for the models whose score varies most between epochs."""
    return max(epochs, key=lambda e: (e["test"][metric], -e["epoch"]))


def dev_selected_epoch(epochs: Sequence[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Our rule: the epoch with the best *dev* score (ties go to the earlier epoch); its test score is reported."""
    return max(epochs, key=lambda e: (e["dev"][metric], -e["epoch"]))


def split_scores(predictions: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    return {"f1": macro_f1(predictions, labels), "accuracy": accuracy(predictions, labels)}


# --- the recipe ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskData:
    train: list[Example]
    dev: list[Example]
    test: list[Example]


@dataclass
class FinetuneRun:
    """Everything one (model, task, seed) fine-tuning holds while it runs."""

    task: Task
    label: str  # for progress bars, e.g. "student BoolQ seed 42"
    seed: int
    epochs: int
    batch_size: int
    micro_batch_size: int
    learning_rate: float
    max_length: int
    device: torch.device
    pad_id: int
    n_choices: int
    model: LastTokenScorer
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    order_rng: torch.Generator
    train: EncodedSplit
    dev: EncodedSplit
    test: EncodedSplit
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per finished epoch
    test_predictions: list[list[int]] = field(default_factory=list)  # per epoch, for the bootstrap interval


def setup(model_path: str, tokenizer, task: Task, data: TaskData, settings: EvalConfig, seed: int, device,
          label: str) -> FinetuneRun:
    """A fresh copy of ``model_path`` with a new head, the encoded splits, the optimizer and its schedule."""
    torch.manual_seed(seed)  # the head's init and dropout
    lm = load_causal_lm(model_path, "float32", str(device))
    max_length = min(settings.max_length, getattr(lm.config, "max_position_embeddings", settings.max_length))
    if max_length < settings.max_length:
        print(f"{label}: the model has {max_length} positions; sequences are cut to {max_length} tokens", file=sys.stderr)
    model = LastTokenScorer.from_causal_lm(lm, task.head_outputs).to(device)
    del lm  # the LM head goes with it

    separator = tokenizer.eos_token_id
    learning_rate = settings.learning_rates[task.name]
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    total_steps = settings.epochs * math.ceil(len(data.train) / settings.batch_size)
    return FinetuneRun(
        task=task, label=label, seed=seed, epochs=settings.epochs, batch_size=settings.batch_size,
        micro_batch_size=settings.micro_batch_size or settings.batch_size, learning_rate=learning_rate,
        max_length=max_length, device=device,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else separator,
        n_choices=len(data.train[0].sequences), model=model, optimizer=optimizer,
        schedule=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total_steps),
        order_rng=torch.Generator().manual_seed(seed),  # the same example order for every model under this seed
        train=encode_examples(tokenizer, data.train, max_length, separator),
        dev=encode_examples(tokenizer, data.dev, max_length, separator),
        test=encode_examples(tokenizer, data.test, max_length, separator),
    )


def train_epoch(run: FinetuneRun, bar: tqdm) -> tuple[float, float]:
    """One pass over the train split in the seed's order: (mean train loss, seconds of the training steps)."""
    run.model.train()
    order = torch.randperm(len(run.train), generator=run.order_rng).tolist()
    loss_sum = 0.0
    _sync(run.device)
    started = time.perf_counter()
    for batch in batches(order, run.batch_size):
        # gradient accumulation: micro-batches of the batch, each loss weighted by its share
        for part in batches(batch, run.micro_batch_size):
            input_ids, attention_mask, last_index, labels = collate(run.train, part, run.pad_id)
            logits = run.model(input_ids.to(run.device), attention_mask.to(run.device), last_index.to(run.device),
                               run.n_choices)
            loss = F.cross_entropy(logits, labels.to(run.device)) * (len(part) / len(batch))
            loss.backward()
            loss_sum += loss.item() * len(batch)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), GRAD_CLIP)
        run.optimizer.step()
        run.schedule.step()
        run.optimizer.zero_grad(set_to_none=True)
        bar.update(len(batch))
        bar.set_postfix(loss=f"{loss_sum / bar.n:.4f}")
    _sync(run.device)
    return loss_sum / len(run.train), time.perf_counter() - started


def score_epoch(run: FinetuneRun) -> tuple[dict[str, float], dict[str, float], list[int]]:
    """(dev scores, test scores, test predictions) of the model as it stands."""
    predict_args = (run.n_choices, run.micro_batch_size, run.pad_id, run.device)
    dev = predict(run.model, run.dev, *predict_args, f"{run.label} dev")
    test = predict(run.model, run.test, *predict_args, f"{run.label} test")
    return split_scores(dev, run.dev.labels), split_scores(test, run.test.labels), test


def fit(run: FinetuneRun) -> FinetuneRun:
    """Train ``run.epochs`` epochs; after each, score dev and test and record both."""
    for epoch in range(1, run.epochs + 1):
        with tqdm(total=len(run.train), desc=f"{run.label} {epoch}/{run.epochs}", unit="ex", file=sys.stderr) as bar:
            train_loss, seconds = train_epoch(run, bar)
            scored = time.perf_counter()
            dev, test, test_predictions = score_epoch(run)
            run.history.append({"epoch": epoch, "train_loss": train_loss, "seconds": seconds, "dev": dev, "test": test,
                                "eval_seconds": time.perf_counter() - scored})
            run.test_predictions.append(test_predictions)
            bar.set_postfix(loss=f"{train_loss:.4f}", dev=f"{dev[run.task.metric]:.4f}", test=f"{test[run.task.metric]:.4f}")
    return run


def finish(run: FinetuneRun) -> dict[str, Any]:
    """The run's report entry: both rules' epochs and scores, seconds, settings, every epoch's scores, and the
    test predictions of the dev-selected epoch (the bootstrap interval resamples them)."""
    metric = run.task.metric
    seed_rule, dev_rule = best_test_epoch(run.history, metric), dev_selected_epoch(run.history, metric)
    return {
        "seed": run.seed,
        "seed_rule": {"epoch": seed_rule["epoch"], **seed_rule["test"]},
        "dev_selected": {"epoch": dev_rule["epoch"], "dev": dev_rule["dev"][metric], **dev_rule["test"]},
        "seconds": sum(e["seconds"] for e in run.history),
        "eval_seconds": sum(e["eval_seconds"] for e in run.history),
        "learning_rate": run.learning_rate,
        "batch_size": run.batch_size,
        "max_length": run.max_length,
        "examples": {"train": len(run.train), "dev": len(run.dev), "test": len(run.test)},
        "epochs": run.history,
        "dev_selected_predictions": run.test_predictions[dev_rule["epoch"] - 1],
    }


def finetune_task(model_path: str, tokenizer, task: Task, data: TaskData, settings: EvalConfig, seed: int, device,
                  label: str) -> dict[str, Any]:
    """setup -> fit -> finish: one fine-tuning run's report entry."""
    return finish(fit(setup(model_path, tokenizer, task, data, settings, seed, device, label)))


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
