"""``daram eval``: fine-tune causal LMs on KoBEST and NSMC and write the comparison report.

The protocol (the reference study's): for each model and task, fine-tune the whole model on the train
split and score the test split after every epoch; the task's score is the best epoch's. Macro-F1 selects
the best epoch on KoBEST and accuracy on NSMC; both are recorded everywhere.

How a causal LM classifies (GPT-1 style): the segments of an input are joined with EOS and end with EOS,
and a linear head reads the hidden state of that last token.
- classification (BoolQ, WiC, SentiNeg, NSMC): the head gives one logit per class;
- multiple choice (COPA, HellaSwag): each (context, choice) sequence gets one scalar from the head and a
  softmax runs over the choices (GPT2DoubleHeadsModel's multiple-choice head). The LM's own conditional
  log-likelihood is not used: every task is then fine-tuned the same way, by cross-entropy through a head.

Optimisation: AdamW (weight decay 0), no warm-up, linear decay to 0, gradients clipped at norm 1 (the
Hugging Face Trainer's defaults), one fixed seed for the head, dropout and the example order, so every
model sees the same batches. "Fine-tune seconds" time the training steps only, not the scoring.

``daram eval --heldout`` instead scores each model on store shards against the stored teacher
(perplexity, KL, top-1 agreement, ECE) with ``daram.pipeline.heldout.heldout_metrics``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from daram.config import Config, EvalConfig, parse_shards
from daram.errors import DaramError
from daram.pipeline.batches import check_teacher_shards
from daram.pipeline.downstream import TASKS, Example, Task, get_tasks, load_split, subsample
from daram.pipeline.heldout import heldout_metrics
from daram.pipeline.hf import check_store_tokenizer, load_causal_lm, load_tokenizer, resolve_device
from daram.storage import Store
from daram.text import plural

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"
HELDOUT_JSON = "heldout.json"
HELDOUT_MD = "heldout.md"
GRAD_CLIP = 1.0

# --- metrics ------------------------------------------------------------------------------------


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    if len(predictions) != len(labels) or not labels:
        raise ValueError("predictions and labels must be non-empty and of equal length")
    return sum(int(p == y) for p, y in zip(predictions, labels)) / len(labels)


def macro_f1(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Unweighted mean of per-class F1 over the classes seen in labels or predictions.

    Per class, F1 = 2TP / (2TP + FP + FN), which is 0 when TP = 0; this is scikit-learn's
    ``f1_score(labels, predictions, average="macro")``.
    """
    if len(predictions) != len(labels) or not labels:
        raise ValueError("predictions and labels must be non-empty and of equal length")
    scores = []
    for c in sorted(set(labels) | set(predictions)):
        tp = sum(1 for p, y in zip(predictions, labels) if p == c and y == c)
        fp = sum(1 for p, y in zip(predictions, labels) if p == c and y != c)
        fn = sum(1 for p, y in zip(predictions, labels) if p != c and y == c)
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


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


def batches(indices: Sequence[int], size: int) -> list[list[int]]:
    return [list(indices[i : i + size]) for i in range(0, len(indices), size)]


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


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def finetune_task(
    model_path: str,
    tokenizer,
    task: Task,
    train: list[Example],
    test: list[Example],
    settings: EvalConfig,
    device,
    label: str,
) -> dict[str, Any]:
    """Fine-tune a fresh copy of ``model_path`` on ``train`` for ``settings.epochs``, scoring ``test`` after each.

    Returns the report entry: the best epoch's f1 / accuracy, fine-tune seconds and every epoch's scores.
    """
    lr = settings.learning_rates[task.name]
    torch.manual_seed(settings.seed)  # the head's init and dropout
    lm = load_causal_lm(model_path, "float32", str(device))
    max_length = min(settings.max_length, getattr(lm.config, "max_position_embeddings", settings.max_length))
    if max_length < settings.max_length:
        print(f"{label}: the model has {max_length} positions; sequences are cut to {max_length} tokens", file=sys.stderr)
    model = LastTokenScorer.from_causal_lm(lm, task.head_outputs).to(device)
    del lm  # the LM head goes with it

    separator = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else separator
    train_split = encode_examples(tokenizer, train, max_length, separator)
    test_split = encode_examples(tokenizer, test, max_length, separator)
    n_choices = len(train[0].sequences)
    micro = settings.micro_batch_size or settings.batch_size

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    total_steps = settings.epochs * math.ceil(len(train_split) / settings.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total_steps)
    order_rng = torch.Generator().manual_seed(settings.seed)  # the same example order for every model

    epochs = []
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = torch.randperm(len(train_split), generator=order_rng).tolist()
        loss_sum = 0.0
        bar = tqdm(total=len(train_split), desc=f"{label} {epoch}/{settings.epochs}", unit="ex", file=sys.stderr)
        _sync(device)
        started = time.perf_counter()
        for batch in batches(order, settings.batch_size):
            # gradient accumulation: micro-batches of the batch, each loss weighted by its share
            for part in batches(batch, micro):
                input_ids, attention_mask, last_index, labels = collate(train_split, part, pad)
                logits = model(input_ids.to(device), attention_mask.to(device), last_index.to(device), n_choices)
                loss = F.cross_entropy(logits, labels.to(device)) * (len(part) / len(batch))
                loss.backward()
                loss_sum += loss.item() * len(batch)
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update(len(batch))
            bar.set_postfix(loss=f"{loss_sum / bar.n:.4f}")
        _sync(device)
        train_seconds = time.perf_counter() - started

        scored = time.perf_counter()
        predictions = predict(model, test_split, n_choices, micro, pad, device, f"{label} scoring")
        scores = {
            "epoch": epoch,
            "f1": macro_f1(predictions, test_split.labels),
            "accuracy": accuracy(predictions, test_split.labels),
            "train_loss": loss_sum / len(train_split),
            "seconds": train_seconds,
            "eval_seconds": time.perf_counter() - scored,
        }
        epochs.append(scores)
        bar.set_postfix(loss=f"{scores['train_loss']:.4f}", f1=f"{scores['f1']:.4f}", acc=f"{scores['accuracy']:.4f}")
        bar.close()

    best = max(epochs, key=lambda e: (e[task.metric], -e["epoch"]))  # ties go to the earlier epoch
    return {
        "f1": best["f1"],
        "accuracy": best["accuracy"],
        "metric": task.metric,
        "best_epoch": best["epoch"],
        "seconds": sum(e["seconds"] for e in epochs),
        "eval_seconds": sum(e["eval_seconds"] for e in epochs),
        "learning_rate": lr,
        "batch_size": settings.batch_size,
        "max_length": max_length,
        "train_examples": len(train_split),
        "test_examples": len(test_split),
        "epochs": epochs,
    }


# --- the command --------------------------------------------------------------------------------


def model_names(settings: EvalConfig) -> list[str]:
    if not settings.models:
        raise DaramError("no model to evaluate: pass --model DIR_OR_ID (repeatable) or set eval.models")
    names = list(settings.names or settings.models)
    if len(set(names)) != len(names):
        raise DaramError(f"two models share a report name ({', '.join(names)}); give distinct --name values")
    return names


def run_eval(cfg: Config) -> dict[str, Any]:
    """Downstream fine-tuning (or, with ``eval.heldout``, held-out fidelity) for every model; writes the report."""
    if cfg.eval.heldout:
        return run_heldout(cfg)
    settings = cfg.eval
    names = model_names(settings)
    tasks = get_tasks(settings.tasks)
    unknown = sorted(set(settings.learning_rates) - set(TASKS))
    if unknown:
        raise DaramError(f"eval.learning_rates.{unknown[0]}: no such task")
    device = resolve_device(settings.device)

    # Everything that can fail fast does, before hours of fine-tuning: data, tokenizers, the output folder.
    data = {
        task.name: (
            subsample(load_split(task, "train", settings.data), settings.max_train, settings.seed),
            subsample(load_split(task, "test", settings.data), settings.max_test, settings.seed),
        )
        for task in tasks
    }
    tokenizers = [load_tokenizer(path) for path in settings.models]
    for path, tokenizer in zip(settings.models, tokenizers):
        if tokenizer.eos_token_id is None:
            raise DaramError(f"tokenizer of {path!r} has no EOS token; eval ends every segment with it")
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)

    report: dict[str, dict[str, Any]] = {}
    for name, path, tokenizer in zip(names, settings.models, tokenizers):
        report[name] = {}
        for task in tasks:
            train, test = data[task.name]
            entry = finetune_task(path, tokenizer, task, train, test, settings, device, f"{name} {task.title}")
            report[name][task.name] = entry
            print(
                f"{name} {task.title}: best epoch {entry['best_epoch']}/{settings.epochs}, macro-F1 {entry['f1']:.4f}, "
                f"accuracy {entry['accuracy']:.4f}, fine-tune {entry['seconds']:.1f} s",
                file=sys.stderr,
            )
            write_report(report, tasks, out, plot=False)  # after every task, so a long run keeps what it finished
    write_report(report, tasks, out)
    print(f"eval: {plural(len(names), 'model')} x {plural(len(tasks), 'task')}; wrote {out / REPORT_MD}, {REPORT_JSON}, {REPORT_PNG}")
    return report


# --- the report ---------------------------------------------------------------------------------


def _score(entry: dict[str, Any]) -> float:
    return entry[entry["metric"]]


def _relative(value: float, base: float | None) -> str:
    return "" if base is None or base == 0 else f" ({100 * value / base:.1f}%)"


def _reduction(value: float, base: float | None) -> str:
    if base is None or base == 0:
        return ""
    change = 100 * (1 - value / base)
    return f" ({change:.1f}% less)" if change >= 0 else f" ({-change:.1f}% more)"


def report_markdown(report: dict[str, dict[str, Any]], tasks: list[Task]) -> str:
    names = list(report)
    baseline = report[names[0]]
    shown = [t for t in tasks if any(t.name in report[n] for n in names)]
    header = "| model | " + " | ".join(t.title for t in shown)
    rule = "|---|" + "---|" * len(shown)

    lines = [
        "# daram eval",
        "",
        f"Each model fine-tuned on every task's train split and scored on its test split after every epoch; each "
        f"score is the best epoch's: macro-F1 for KoBEST, accuracy for NSMC. In parentheses: % of `{names[0]}`.",
        "",
        "## Scores",
        "",
        header + " | mean |",
        rule + "---|",
    ]
    for name in names:
        cells, values = [], []
        for task in shown:
            entry = report[name].get(task.name)
            if entry is None:
                cells.append("–")
                continue
            base = baseline.get(task.name)
            value = _score(entry)
            values.append(value)
            cells.append(f"{value:.4f}" + ("" if name == names[0] or base is None else _relative(value, _score(base))))
        mean = sum(values) / len(values) if len(values) == len(shown) else None
        if name == names[0]:
            base_mean = mean
        mean_cell = "–" if mean is None else f"{mean:.4f}" + ("" if name == names[0] else _relative(mean, base_mean))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean_cell} |")

    lines += ["", "## Fine-tune seconds", "", f"Training steps of all epochs, scoring excluded. In parentheses: "
              f"time saved against `{names[0]}`.", "", header + " | total |", rule + "---|"]
    base_total = sum(e["seconds"] for e in baseline.values()) if len(baseline) == len(shown) else None
    for name in names:
        cells = []
        for task in shown:
            entry = report[name].get(task.name)
            base = baseline.get(task.name)
            if entry is None:
                cells.append("–")
                continue
            cells.append(f"{entry['seconds']:.1f}" + ("" if name == names[0] or base is None else _reduction(entry["seconds"], base["seconds"])))
        complete = len(report[name]) == len(shown)
        total = sum(e["seconds"] for e in report[name].values())
        total_cell = (f"{total:.1f}" + ("" if name == names[0] else _reduction(total, base_total))) if complete else "–"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {total_cell} |")

    lines += ["", "## Best epochs, both metrics", "",
              "| model | task | macro-F1 | accuracy | best epoch | epochs | train / test examples | lr | max length |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        for task in shown:
            e = report[name].get(task.name)
            if e is not None:
                lines.append(
                    f"| {name} | {task.title} | {e['f1']:.4f} | {e['accuracy']:.4f} | {e['best_epoch']} | {len(e['epochs'])} "
                    f"| {e['train_examples']} / {e['test_examples']} | {e['learning_rate']:g} | {e['max_length']} |"
                )
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, dict[str, Any]], tasks: list[Task], path: Path) -> None:
    """Grouped bars per task: the scores (left) and fine-tune seconds (right), one colour per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report)
    shown = [t for t in tasks if any(t.name in report[n] for n in names)]
    width = 0.8 / len(names)
    fig, (scores_ax, seconds_ax) = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(shown)), 4))
    for m, name in enumerate(names):
        xs = [i + (m - (len(names) - 1) / 2) * width for i in range(len(shown))]
        entries = [report[name].get(t.name) for t in shown]
        scores_ax.bar(xs, [_score(e) if e else 0 for e in entries], width, label=name)
        seconds_ax.bar(xs, [e["seconds"] if e else 0 for e in entries], width, label=name)
    labels = [f"{t.title}\n({'F1' if t.metric == 'f1' else 'acc'})" for t in shown]
    for ax, title in ((scores_ax, "best-epoch score"), (seconds_ax, "fine-tune seconds")):
        ax.set_xticks(range(len(shown)), labels)
        ax.set_title(title)
    scores_ax.set_ylim(0, 1)
    scores_ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict[str, dict[str, Any]], tasks: list[Task], out: Path, plot: bool = True) -> None:
    """report.json and report.md, and with ``plot`` the bar chart report.png."""
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / REPORT_MD).write_text(report_markdown(report, tasks), encoding="utf-8")
    if plot:
        plot_report(report, tasks, out / REPORT_PNG)


# --- held-out fidelity --------------------------------------------------------------------------


def heldout_spec(cfg: Config) -> str:
    """The shards to score: eval.heldout_shards, else the shard training kept out (train.heldout_shard)."""
    if cfg.eval.heldout_shards:
        return cfg.eval.heldout_shards
    if cfg.train.heldout_shard >= 0:
        return str(cfg.train.heldout_shard)
    raise DaramError("no held-out shard: pass --shards N, or set eval.heldout_shards or train.heldout_shard")


def run_heldout(cfg: Config) -> dict[str, dict[str, dict[str, Any]]]:
    """Perplexity, KL and top-1 agreement with the stored teacher, and ECE, per model and shard (heldout.json/.md)."""
    settings = cfg.eval
    names = model_names(settings)
    store = Store.open(cfg.store.path)
    shards = parse_shards(heldout_spec(cfg), store.manifest.num_shards, "--shards")
    check_teacher_shards(store, store.teacher_manifest(), shards, "eval --heldout")
    # The stored ids are the store tokenizer's: a model with another vocabulary would be scored on the wrong tokens.
    for path in settings.models:
        check_store_tokenizer(load_tokenizer(path), f"model {path!r}", store)
    device = resolve_device(settings.device)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tqdm(total=len(names) * len(shards), desc="held-out", unit="shard", file=sys.stderr) as bar:
        for name, path in zip(names, settings.models):
            model = load_causal_lm(path, "float32", str(device))
            results[name] = {}
            for shard in shards:
                bar.set_postfix(model=name, shard=shard)
                results[name][str(shard)] = heldout_metrics(
                    model, store, shard, max_rows=settings.heldout_rows or None,
                    batch_size=settings.heldout_batch_size, device=device,
                )
                bar.update()
            del model
    (out / HELDOUT_JSON).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / HELDOUT_MD).write_text(heldout_markdown(results, store.url), encoding="utf-8")
    print(f"eval --heldout: {plural(len(names), 'model')} x {plural(len(shards), 'shard')}; wrote {out / HELDOUT_MD}, {HELDOUT_JSON}")
    return results


def heldout_markdown(results: dict[str, dict[str, dict[str, Any]]], store_url: str) -> str:
    lines = [
        "# daram eval --heldout",
        "",
        f"Store `{store_url}`. Perplexity and ECE (15 bins) of next-token prediction at T = 1; KL(teacher || model) "
        "at the store's temperature from the stored teacher distributions (top-k stores: k ids plus one tail "
        "bucket); top-1: how often the model's most probable id is the teacher's.",
        "",
        "| model | shard | perplexity | KL | top-1 agreement | ECE | tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, shards in results.items():
        for shard, m in shards.items():
            lines.append(
                f"| {name} | {shard} | {m['perplexity']:.2f} | {m['kl']:.4f} (T={m['temperature']:g}) "
                f"| {m['top1_agreement']:.4f} | {m['ece']:.4f} | {m['tokens']} |"
            )
    return "\n".join(lines) + "\n"
