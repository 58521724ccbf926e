"""Zero- and few-shot KoBEST by log-likelihood, as lm-evaluation-harness's ``kobest_*`` tasks score it.

No training: each choice is scored by the model's log-likelihood of ``" " + choice`` after the prompt, and the
most likely choice is the prediction (accuracy and macro-F1, the harness's ``acc`` and ``f1``; HellaSwag also
``acc_norm``, the log-likelihood divided by the choice's length in characters).

Kept identical to lm-evaluation-harness 0.4 (``lm_eval/tasks/kobest/*.yaml`` and ``utils.py``):
- the prompts and choices of ``HARNESS_PROMPTS``;
- the target delimiter ``" "`` between prompt and choice, and ``"\\n\\n"`` between few-shot examples, each
  example written as its prompt, the delimiter and its right choice;
- the scoring of ``HFLM``: trailing spaces of the context move to the continuation, the whole string is
  tokenized and split after the context's tokens (``_encode_pair``), the input is cut from the left to the
  model's positions, and the continuation tokens' log-probabilities are summed.
Not identical: the few-shot examples are drawn from the train split with our own seeded draw, so they are
not the harness's draws; the prompts around them are.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from daram.errors import DaramError
from daram.pipeline.eval.downstream import Example, Task
from daram.pipeline.eval.stats import accuracy, bootstrap_interval, macro_f1

TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
FEWSHOT_SEED = 1234  # the harness's default fewshot_random_seed
COPA_CONNECTORS = {"원인": " 왜냐하면", "결과": " 그래서"}  # the harness's, leading space included


def _boolq(doc: Mapping[str, str]) -> tuple[str, list[str]]:
    return f"{doc['paragraph']} 질문: {doc['question']} 답변: ", ["아니오", "예"]


def _copa(doc: Mapping[str, str]) -> tuple[str, list[str]]:
    return f"{doc['premise']} {COPA_CONNECTORS[doc['question'].strip()]}", [doc["alternative_1"], doc["alternative_2"]]


def _wic(doc: Mapping[str, str]) -> tuple[str, list[str]]:
    prompt = f"문장1: {doc['context_1']} 문장2: {doc['context_2']} 두 문장에서 {doc['word']}가 같은 뜻으로 쓰였나?"
    return prompt, ["아니오", "예"]


def _hellaswag(doc: Mapping[str, str]) -> tuple[str, list[str]]:
    return f"문장: {doc['context']}", [doc[f"ending_{k}"] for k in range(1, 5)]


def _sentineg(doc: Mapping[str, str]) -> tuple[str, list[str]]:
    return f"문장: {doc['sentence']} 긍부정:", ["부정", "긍정"]


# task -> doc -> (prompt, choices); the label indexes the choices
HARNESS_PROMPTS: dict[str, Callable[[Mapping[str, str]], tuple[str, list[str]]]] = {
    "boolq": _boolq, "copa": _copa, "wic": _wic, "hellaswag": _hellaswag, "sentineg": _sentineg,
}
HARNESS_TASK_NAMES = {name: f"kobest_{name}" for name in HARNESS_PROMPTS}


def shot_tasks(tasks: Sequence[Task]) -> list[Task]:
    """The tasks zero/few-shot scoring covers: those lm-evaluation-harness has a kobest prompt for (not NSMC)."""
    covered = [t for t in tasks if t.name in HARNESS_PROMPTS]
    if not covered:
        raise DaramError(f"eval.shots: none of the tasks has an lm-evaluation-harness kobest prompt; zero/few-shot "
                         f"scoring covers {', '.join(HARNESS_PROMPTS)}")
    return covered


def fewshot_context(task: str, example: Example, shots: Sequence[Example]) -> tuple[str, list[str]]:
    """(context, choices) of one example after ``shots`` solved examples, in the harness's layout."""
    prompt_of = HARNESS_PROMPTS[task]
    solved = []
    for shot in shots:
        prompt, choices = prompt_of(shot.doc)
        solved.append(prompt + TARGET_DELIMITER + choices[shot.label])
    prompt, choices = prompt_of(example.doc)
    return "".join(text + FEWSHOT_DELIMITER for text in solved) + prompt, choices


def draw_shots(train: Sequence[Example], count: int, examples: int, seed: int = FEWSHOT_SEED) -> list[list[Example]]:
    """``count`` train examples for each of ``examples`` test examples: one seeded stream, drawn in order."""
    if count > len(train):
        raise DaramError(f"eval.shots: {count} shots need {count} train examples, the split has {len(train)}")
    rng = random.Random(seed)
    return [rng.sample(list(train), count) if count else [] for _ in range(examples)]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The harness's ``_encode_pair``: trailing spaces of the context belong to the continuation, and the
    continuation's tokens are those of the whole string after the context's own tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


def model_positions(model) -> int:
    """The context the harness gives a model: the first of these config fields that is set."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, name, None)
        if value:
            return int(value)
    return 2048  # the harness's default


@torch.no_grad()
def loglikelihoods(model, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int, device,
                   desc: str = "log-likelihood") -> list[float]:
    """Sum of log p(continuation token | everything before it) for each (context ids, continuation ids) pair.

    Inputs are cut from the left to the model's positions, right-padded and run longest first (the padding
    sits after every scored position, so a causal model's scores do not see it).
    """
    limit = model_positions(model)
    inputs = []
    for context, continuation in pairs:
        if not continuation:
            raise DaramError("a choice encodes to no tokens; it cannot be scored")
        inputs.append((context + continuation)[-(limit + 1):][:-1])
    order = sorted(range(len(pairs)), key=lambda i: -len(inputs[i]))
    scores = [0.0] * len(pairs)
    model.eval()
    with tqdm(total=len(pairs), desc=desc, unit="seq", file=sys.stderr, leave=False) as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(inputs[i]) for i in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : len(inputs[i])] = torch.tensor(inputs[i])
            logprobs = torch.log_softmax(model(ids.to(device)).logits.float(), dim=-1).cpu()
            for row, i in enumerate(batch):
                continuation = pairs[i][1]
                end = len(inputs[i])
                targets = torch.tensor(continuation)
                picked = logprobs[row, end - len(continuation) : end].gather(1, targets[:, None])
                scores[i] = float(picked.sum())
            bar.update(len(batch))
    return scores


@dataclass(frozen=True)
class ShotRequests:
    """Every (context, continuation) the harness would send for one task at one number of shots."""

    requests: list[tuple[str, str]]  # flattened: example -> choice
    choices: list[list[str]]  # per example
    labels: list[int]


def build_requests(task: str, test: Sequence[Example], train: Sequence[Example], shots: int) -> ShotRequests:
    requests, all_choices = [], []
    for example, solved in zip(test, draw_shots(train, shots, len(test))):
        context, choices = fewshot_context(task, example, solved)
        requests += [(context, TARGET_DELIMITER + choice) for choice in choices]
        all_choices.append(choices)
    return ShotRequests(requests, all_choices, [e.label for e in test])


def score_shots(model, tokenizer, task: Task, train: Sequence[Example], test: Sequence[Example], shots: int,
                batch_size: int, device, label: str) -> dict[str, Any]:
    """Accuracy, macro-F1 (with a 95% bootstrap interval) and, for HellaSwag, acc_norm at ``shots`` shots."""
    built = build_requests(task.name, test, train, shots)
    scores = loglikelihoods(model, [encode_pair(tokenizer, c, x) for c, x in built.requests], batch_size, device,
                            f"{label} {shots}-shot")
    predictions, normalised, start = [], [], 0
    for choices in built.choices:
        example = scores[start : start + len(choices)]
        start += len(choices)
        predictions.append(max(range(len(choices)), key=lambda k: example[k]))  # ties: the first, as numpy's argmax
        normalised.append(max(range(len(choices)), key=lambda k: example[k] / len(choices[k])))
    entry = {
        "shots": shots,
        "examples": len(test),
        "accuracy": accuracy(predictions, built.labels),
        "f1": macro_f1(predictions, built.labels),
        "f1_interval": bootstrap_interval("f1", [predictions], built.labels),
    }
    if task.name == "hellaswag":
        entry["acc_norm"] = accuracy(normalised, built.labels)
    return entry
