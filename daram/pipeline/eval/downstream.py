"""Downstream tasks for ``daram eval``: KoBEST (BoolQ, COPA, WiC, HellaSwag, SentiNeg) and NSMC.

Every example becomes one or more *sequences*, each a tuple of text *segments* that the evaluator joins
with EOS (see ``evaluate.encode_examples``):

- classification tasks (BoolQ, WiC, SentiNeg, NSMC) have one sequence and ``num_labels`` classes;
- multiple-choice tasks (COPA, HellaSwag) have one sequence per choice; the label is the right choice.

Every example also keeps its record under the hub dataset's field names (``Example.doc``): zero- and
few-shot scoring (``daram.pipeline.eval.fewshot``) builds lm-evaluation-harness's prompts from it.

Data comes from a directory laid out like ``shared/data`` (``kobest/<Task>/{train,test}.tsv``,
``nsmc/ratings_test.txt`` and ``nsmc/ratings_train.txt`` or ``nsmc/raw/*.json``) or, without one, from
the Hugging Face datasets ``skt/kobest_v1`` and ``e9t/nsmc`` (the hub's current id of ``nsmc``).

Splits are train, dev and test. KoBEST ships a dev split; NSMC has none, so its dev split is a fixed draw
of ``NSMC_DEV_SIZE`` training examples, which its train split then leaves out.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daram.errors import DaramError
from daram.text import plural

SPLITS = ("train", "dev", "test")
HUB_SPLIT_NAMES = {"train": "train", "dev": "validation", "test": "test"}
NSMC_DEV_SIZE = 3000  # 9% of the 33,128 training reviews built from raw/ (a drawn subset, the same every run)
NSMC_DEV_SEED = 0
HUB_KOBEST = "skt/kobest_v1"
HUB_NSMC = "e9t/nsmc"

# COPA asks for the cause (원인) or the effect (결과) of the premise; the alternative is read as a
# continuation after the matching connective ("because" / "so"), the phrasing lm-eval-harness uses for KoBEST.
COPA_CONNECTIVES = {"원인": "왜냐하면", "결과": "그래서"}


@dataclass(frozen=True)
class Example:
    sequences: tuple[tuple[str, ...], ...]  # one per choice (multiple choice) or exactly one (classification)
    label: int
    doc: Mapping[str, str] = field(default_factory=dict, compare=False)  # the record, hub field names


@dataclass(frozen=True)
class Task:
    name: str  # the CLI / config name, e.g. "boolq"
    title: str  # as printed in reports, e.g. "BoolQ"
    kind: str  # "classify": a num_labels-way head on one sequence; "choice": a scalar per choice, softmax over choices
    num_labels: int  # classes, or choices per example
    metric: str  # "f1" (macro) or "accuracy": selects the best epoch and fills the report's score table
    read_files: Callable[[Path, str], list[Example]]  # (data dir, split) -> examples; split train, dev or test
    hub_dataset: tuple[str, str | None]  # (dataset id, config name) on the Hugging Face hub
    from_hub: Callable[[Mapping[str, Any]], Example]  # one hub record -> example
    dev_from_train: int = 0  # no dev split of its own: this many train examples become one

    @property
    def head_outputs(self) -> int:
        """Numbers the head produces per sequence."""
        return 1 if self.kind == "choice" else self.num_labels


# --- reading TSV files --------------------------------------------------------------------------


def read_tsv(path: Path, columns: tuple[str, ...], csv_quoting: bool = False) -> list[dict[str, str]]:
    """Rows of a tab-separated file with a header, as dicts keyed by the header; ``columns`` must be in it.

    ``csv_quoting`` parses ``"..."`` fields (HellaSwag needs it); otherwise quotes are literal text, as
    BoolQ and NSMC need (some of their fields begin with a ``"`` that is part of the text). CRLF and LF
    line endings both work. A row with the wrong number of fields is a DaramError naming the line.
    """
    if not path.is_file():
        raise DaramError(f"data file not found: {path}")
    quoting = csv.QUOTE_MINIMAL if csv_quoting else csv.QUOTE_NONE
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=quoting)
        try:
            header = next(reader, None)
            if header is None:
                raise DaramError(f"{path}: empty file")
            missing = [c for c in columns if c not in header]
            if missing:
                raise DaramError(f"{path}: no column {missing[0]!r} (columns: {', '.join(header)})")
            rows = []
            for fields in reader:
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise DaramError(f"{path}:{reader.line_num}: {plural(len(fields), 'field')}, the header has {len(header)}")
                rows.append(dict(zip(header, fields)))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DaramError(f"{path}:{reader.line_num}: cannot read ({type(exc).__name__}: {exc})") from None
    return rows


def parse_bool(text: str, where: str) -> int:
    """``TRUE``/``True``/``true`` -> 1, ``FALSE``/``False`` -> 0: KoBEST mixes the spellings."""
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise DaramError(f"{where}: expected True or False, got {text!r}")
    return int(value == "true")


def parse_int(text: str, allowed: range, where: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value not in allowed:
        raise DaramError(f"{where}: expected a label in {allowed.start}-{allowed.stop - 1}, got {text!r}")
    return value


def _kobest_file(data: Path, task_dir: str, split: str) -> Path:
    return data / "kobest" / task_dir / f"{split}.tsv"


def _copa_example(premise: str, question: str, alternatives: tuple[str, str], label: int, where: str) -> Example:
    connective = COPA_CONNECTIVES.get(question.strip())  # 6 train rows carry a trailing space
    if connective is None:
        raise DaramError(f"{where}: COPA question must be 원인 or 결과, got {question!r}")
    doc = {"premise": premise, "question": question, "alternative_1": alternatives[0], "alternative_2": alternatives[1]}
    return Example(tuple((premise, f"{connective} {alt}") for alt in alternatives), label, doc)


# --- KoBEST -------------------------------------------------------------------------------------


def read_boolq(data: Path, split: str) -> list[Example]:
    path = _kobest_file(data, "BoolQ", split)
    return [
        _boolq_example(row["Text"], row["Question"], parse_bool(row["Answer"], f"{path} ID {row['ID']}"))
        for row in read_tsv(path, ("ID", "Text", "Question", "Answer"))
    ]


def _boolq_example(paragraph: str, question: str, label: int) -> Example:
    return Example(((paragraph, question),), label, {"paragraph": paragraph, "question": question})


def read_copa(data: Path, split: str) -> list[Example]:
    path = _kobest_file(data, "COPA", split)
    examples = []
    for row in read_tsv(path, ("ID", "sentence", "question", "1", "2", "Answer")):
        where = f"{path} ID {row['ID']}"
        label = parse_int(row["Answer"], range(1, 3), where) - 1  # "1"/"2" -> choice 0/1
        examples.append(_copa_example(row["sentence"], row["question"], (row["1"], row["2"]), label, where))
    return examples


def read_wic(data: Path, split: str) -> list[Example]:
    # The target word is marked [like this] in both sentences; the marks stay, they point the model at it.
    path = _kobest_file(data, "WiC", split)
    return [
        _wic_example(row["Target"], row["SENTENCE1"], row["SENTENCE2"], parse_bool(row["ANSWER"], f"{path} ID {row['ID']}"))
        for row in read_tsv(path, ("ID", "Target", "SENTENCE1", "SENTENCE2", "ANSWER"))
    ]


def _wic_example(word: str, context_1: str, context_2: str, label: int) -> Example:
    return Example(((word, context_1, context_2),), label, {"word": word, "context_1": context_1, "context_2": context_2})


def read_hellaswag(data: Path, split: str) -> list[Example]:
    path = _kobest_file(data, "HellaSwag", split)
    examples = []
    # Some rows use CSV quoting ("...""빙고""..."); there is no ID column, so errors name the row.
    columns = ("context", "choice1", "choice2", "choice3", "choice4", "label")
    for i, row in enumerate(read_tsv(path, columns, csv_quoting=True)):
        endings = (row["choice1"], row["choice2"], row["choice3"], row["choice4"])
        examples.append(_hellaswag_example(row["context"], endings, parse_int(row["label"], range(4), f"{path} row {i + 1}")))
    return examples


def _hellaswag_example(context: str, endings: tuple[str, ...], label: int) -> Example:
    doc = {"context": context, **{f"ending_{k}": ending for k, ending in enumerate(endings, 1)}}
    return Example(tuple((context, ending) for ending in endings), label, doc)


def read_sentineg(data: Path, split: str) -> list[Example]:
    # train/dev have ID, Text, Label; test has 6 columns, where Text/Label is the negated sentence to classify.
    path = _kobest_file(data, "SentiNeg", split)
    return [
        _sentence_example(row["Text"], parse_int(row["Label"], range(2), f"{path} ID {row['ID']}"))
        for row in read_tsv(path, ("ID", "Text", "Label"))
    ]


def _sentence_example(sentence: str, label: int) -> Example:
    return Example(((sentence,),), label, {"sentence": sentence})


# --- NSMC ---------------------------------------------------------------------------------------


def nsmc_label(rating: int) -> int | None:
    """NSMC's labelling of a 1-10 rating: 1-4 negative (0), 9-10 positive (1), 5-8 left out (None)."""
    if 1 <= rating <= 4:
        return 0
    if 9 <= rating <= 10:
        return 1
    return None


def read_nsmc_ratings(path: Path) -> list[tuple[str, str, int]]:
    """(id, document, label) rows of an NSMC ``ratings_*.txt`` file."""
    return [
        (row["id"], row["document"], parse_int(row["label"], range(2), f"{path} id {row['id']}"))
        for row in read_tsv(path, ("id", "document", "label"))
    ]


def build_nsmc_train_from_raw(raw_dir: Path, test_ids: set[str]) -> list[tuple[str, str, int]]:
    """A training set from the original crawl files ``raw/*.json``, as ``shared/data/README.md`` describes.

    Reviews whose id is in the test split are excluded, whitespace runs collapse to one space (which
    reproduces NSMC's ``document``), and ratings map to labels by :func:`nsmc_label`.
    """
    files = sorted(raw_dir.glob("*.json"))
    if not files:
        raise DaramError(f"no NSMC training data: neither ratings_train.txt nor raw/*.json under {raw_dir.parent}")
    rows = []
    for file in files:
        try:
            reviews = json.loads(file.read_text(encoding="utf-8"))
            for review in reviews:
                if review["review_id"] in test_ids:
                    continue
                label = nsmc_label(int(review["rating"]))
                if label is not None:
                    rows.append((review["review_id"], re.sub(r"\s+", " ", review["review"]).strip(), label))
        except (ValueError, KeyError, TypeError) as exc:
            raise DaramError(f"{file}: not an NSMC crawl file ({type(exc).__name__}: {exc})") from None
    return rows


def read_nsmc(data: Path, split: str) -> list[Example]:
    folder = data / "nsmc"
    test_file = folder / "ratings_test.txt"
    if split == "test":
        rows = read_nsmc_ratings(test_file)
    elif (folder / "ratings_train.txt").is_file():
        rows = read_nsmc_ratings(folder / "ratings_train.txt")
    else:
        test_ids = {row_id for row_id, _, _ in read_nsmc_ratings(test_file)}
        rows = build_nsmc_train_from_raw(folder / "raw", test_ids)
    return [Example(((document,),), label, {"document": document}) for _, document, label in rows]


# --- the tasks ----------------------------------------------------------------------------------

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "boolq", "BoolQ", "classify", 2, "f1", read_boolq, (HUB_KOBEST, "boolq"),
            lambda r: _boolq_example(r["paragraph"], r["question"], int(r["label"])),
        ),
        Task(
            "copa", "COPA", "choice", 2, "f1", read_copa, (HUB_KOBEST, "copa"),
            lambda r: _copa_example(r["premise"], r["question"], (r["alternative_1"], r["alternative_2"]), int(r["label"]), HUB_KOBEST),
        ),
        Task(
            "wic", "WiC", "classify", 2, "f1", read_wic, (HUB_KOBEST, "wic"),
            lambda r: _wic_example(r["word"], r["context_1"], r["context_2"], int(r["label"])),
        ),
        Task(
            "hellaswag", "HellaSwag", "choice", 4, "f1", read_hellaswag, (HUB_KOBEST, "hellaswag"),
            lambda r: _hellaswag_example(r["context"], tuple(r[f"ending_{k}"] for k in range(1, 5)), int(r["label"])),
        ),
        Task(
            "sentineg", "SentiNeg", "classify", 2, "f1", read_sentineg, (HUB_KOBEST, "sentineg"),
            lambda r: _sentence_example(r["sentence"], int(r["label"])),
        ),
        Task(
            "nsmc", "NSMC", "classify", 2, "accuracy", read_nsmc, (HUB_NSMC, None),
            lambda r: Example(((r["document"] or "",),), int(r["label"]), {"document": r["document"] or ""}),
            dev_from_train=NSMC_DEV_SIZE,
        ),
    )
}


def get_tasks(names: tuple[str, ...] | list[str]) -> list[Task]:
    """Tasks by name, in the given order; an unknown or repeated name is a DaramError."""
    if not names:
        raise DaramError(f"eval.tasks is empty; choose from {', '.join(TASKS)}")
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise DaramError(f"unknown task {unknown[0]!r} in eval.tasks; choose from {', '.join(TASKS)}")
    if len(set(names)) != len(names):
        raise DaramError(f"eval.tasks names a task twice: {', '.join(names)}")
    return [TASKS[n] for n in names]


def load_split(task: Task, split: str, data: str) -> list[Example]:
    """A task's train, dev or test split from ``data`` (a shared/data-like directory), or from the hub if empty."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if task.dev_from_train and split != "test":
        return split_off_dev(_read_split(task, "train", data), task.dev_from_train)[split == "dev"]
    return _read_split(task, split, data)


def split_off_dev(examples: list[Example], size: int) -> tuple[list[Example], list[Example]]:
    """(train, dev): ``size`` examples (at most a tenth) drawn with a fixed seed become dev, the rest stay train;
    both keep file order."""
    size = min(size, len(examples) // 10)  # a small train file (a test's) keeps 90% for training
    chosen = set(random.Random(NSMC_DEV_SEED).sample(range(len(examples)), size))
    return ([e for i, e in enumerate(examples) if i not in chosen], [e for i, e in enumerate(examples) if i in chosen])


def _read_split(task: Task, split: str, data: str) -> list[Example]:
    if data:
        root = Path(data)
        if not root.is_dir():
            raise DaramError(f"eval data directory not found: {root}")
        examples = task.read_files(root, split)
    else:
        examples = [task.from_hub(record) for record in _hub_records(task, HUB_SPLIT_NAMES[split])]
    if not examples:
        raise DaramError(f"{task.title} {split} split is empty")
    return examples


def _hub_records(task: Task, split: str):
    try:
        import datasets
    except ImportError:
        raise DaramError(
            "eval.data is empty, so tasks come from the Hugging Face hub, but the `datasets` package is not "
            "installed: pip install 'daram[hub]', or pass --data DIR (a directory laid out like shared/data)"
        ) from None
    name, config = task.hub_dataset
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # offline, missing split, hub errors: all become one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DaramError(f"cannot load {name} ({config or 'default'}, {split}) from the hub: {first}; "
                         "pass --data DIR to read local files") from None


def subsample(examples: list[Example], limit: int, seed: int) -> list[Example]:
    """At most ``limit`` examples (0 = all), drawn with a fixed seed and kept in file order.

    A random draw rather than the first rows: some files are grouped by label (the NSMC train set built
    from raw/ starts with the negative-heavy files).
    """
    if limit <= 0 or limit >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]
