"""Reading corpus sources into text units: the formats (text, JSONL, Modu JSON) and units (sentence, paragraph, line).

Each source yields its units in file order; files of a directory or glob are read in sorted
order, so the curriculum is reproducible. Lines that are not valid UTF-8 are skipped and counted.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from daram.config import SourceConfig
from daram.errors import DaramError


@dataclass
class SourceCounter:
    """Running counts for one source; becomes the manifest's SourceStats."""

    files: int = 0
    bytes: int = 0
    units: int = 0
    tokens: int = 0
    skipped_lines: int = 0


def resolve_files(source: SourceConfig) -> list[Path]:
    """A file, every file under a directory (sorted), or a glob's matches (sorted)."""
    path = Path(source.path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DaramError(f"source {source.path}: directory holds no files")
        return files
    if glob.has_magic(source.path):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise DaramError(f"source {source.path}: the pattern matches no files")
        return files
    raise DaramError(f"source {source.path}: no such file or directory")


def _decoded_lines(path: Path, counter: SourceCounter) -> Iterator[str]:
    """Lines of a file without line endings; a line that is not valid UTF-8 is skipped and counted."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle):
            counter.bytes += len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                counter.skipped_lines += 1
                continue
            if number == 0:
                line = line.removeprefix("\ufeff")
            yield line.rstrip("\r\n")


def _paragraphs(lines: Iterator[str]) -> Iterator[str]:
    """Blank-line-separated paragraphs; the lines of a paragraph are joined with newlines."""
    block: list[str] = []
    for line in lines:
        if line.strip():
            block.append(line.strip())
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


def _text_documents(path: Path, counter: SourceCounter, unit: str) -> Iterator[str]:
    lines = _decoded_lines(path, counter)
    if unit in ("line", "sentence"):  # sentences are split line by line: bounded work per splitter call
        return (line.strip() for line in lines if line.strip())
    return _paragraphs(lines)


def _jsonl_documents(path: Path, counter: SourceCounter, field: str) -> Iterator[str]:
    for line in _decoded_lines(path, counter):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            counter.skipped_lines += 1
            continue
        text = record.get(field) if isinstance(record, dict) else None
        if isinstance(text, str) and text.strip():
            yield text.strip()
        elif not isinstance(text, str):
            counter.skipped_lines += 1


def _modu_documents(path: Path, counter: SourceCounter) -> Iterator[str]:
    """Modu corpus JSON: ``{"document": [{"paragraph": [{"form": ...}, ...]}, ...]}``; one paragraph per unit."""
    raw = path.read_bytes()
    counter.bytes += len(raw)
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DaramError(f"{path}: not a valid Modu corpus JSON file ({str(exc).splitlines()[0]})") from None
    documents = data.get("document") if isinstance(data, dict) else None
    if not isinstance(documents, list):
        raise DaramError(f"{path}: Modu corpus JSON needs a top-level 'document' list")
    for document in documents:
        for paragraph in document.get("paragraph", []) if isinstance(document, dict) else []:
            form = paragraph.get("form") if isinstance(paragraph, dict) else None
            if isinstance(form, str) and form.strip():
                yield form.strip()


_SENTENCE_END = re.compile(r"(?<=[.?!。…])[\"'”’)\]]*\s+")


def regex_sentences(text: str) -> list[str]:
    """A simple fallback splitter: break after . ? ! and ellipses followed by whitespace."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def sentence_splitter(kind: str, workers: int) -> Callable[[list[str]], list[list[str]]]:
    """Korean sentence splitting: kiwipiepy's morphological splitter (``kind="kiwi"``, falling back to
    :func:`regex_sentences` with a warning when kiwipiepy is absent) or the regex splitter."""
    try:
        if kind != "kiwi":
            raise ImportError
        from kiwipiepy import Kiwi
    except ImportError:
        if kind == "kiwi":
            print("prepare: kiwipiepy is not installed; splitting sentences at punctuation (pip install kiwipiepy)")
        return lambda texts: [regex_sentences(t) for t in texts]
    kiwi = Kiwi(num_workers=workers)

    def split(texts: list[str]) -> list[list[str]]:
        return [[s.text.strip() for s in sents if s.text.strip()] for sents in kiwi.split_into_sents(texts)]

    return split


def iter_documents(source: SourceConfig, files: list[Path], counter: SourceCounter) -> Iterator[str]:
    """The source's texts before sentence splitting: lines, paragraphs, JSONL records or Modu paragraphs."""
    for path in files:
        counter.files += 1
        if source.format == "text":
            yield from _text_documents(path, counter, source.unit)
        elif source.format == "jsonl":
            for text in _jsonl_documents(path, counter, source.text_field):
                yield from (line.strip() for line in text.splitlines() if line.strip()) if source.unit == "line" else (text,)
        else:
            for text in _modu_documents(path, counter):
                yield from (line.strip() for line in text.splitlines() if line.strip()) if source.unit == "line" else (text,)
