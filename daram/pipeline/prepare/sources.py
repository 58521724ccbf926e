"""Reading corpus sources into text units: the formats (text, JSONL, Modu JSON), slices and units.

Each source entry yields its units in file order; files of a directory or glob are read in sorted
order, so the curriculum is reproducible. An entry may read a slice of its source (``skip`` /
``take``, in bytes or lines of the files taken one after another): a line belongs to the slice in
which it starts, so back-to-back slices cover the source exactly once. Files compressed with gzip,
bzip2 or xz are read decompressed (their positions count decompressed bytes); other binary files
are refused when named directly and skipped with a warning inside a directory. Lines that are not
valid UTF-8 are skipped, counted, and reported on the console.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import json
import lzma
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from daram.config import SourceConfig
from daram.errors import DaramError

# How a file announces a compression we read transparently: magic bytes -> opener.
_COMPRESSED = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ\x00": lzma.open}
# Magic bytes of containers and compressions we cannot read as text.
_BINARY_MAGIC = (b"PK\x03\x04", b"\x28\xb5\x2f\xfd", b"7z\xbc\xaf\x27\x1c", b"Rar!", b"\x89PNG", b"%PDF", b"\x7fELF")
_SNIFF_BYTES = 8192
_READ_BYTES = 1 << 22  # a whole source is read and decoded 4 MB at a time


@dataclass
class SourceCounter:
    """Running counts for one source entry; becomes the manifest's SourceStats."""

    files: int = 0
    bytes: int = 0
    units: int = 0
    tokens: int = 0
    skipped_lines: int = 0
    lines: int = 0  # lines (Modu: paragraphs) read inside the slice
    sentence_like_paragraphs: int = 0  # paragraphs of many lines that each end like a sentence


def resolve_files(source: SourceConfig) -> list[Path]:
    """A file, every readable file under a directory (sorted), or a glob's matches (sorted).

    A directory's binary files are skipped with a warning; a binary file named directly is an error.
    """
    path = Path(source.path).expanduser()
    if path.is_file():
        kind = sniff(path)
        if kind == "binary":
            raise DaramError(f"source {source.path}: binary file (not UTF-8 text, nor gzip/bzip2/xz); refusing to tokenize it")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    elif glob.has_magic(source.path):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise DaramError(f"source {source.path}: the pattern matches no files")
    else:
        raise DaramError(f"source {source.path}: no such file or directory")
    binary = [p for p in files if sniff(p) == "binary"]
    for p in binary:
        print(f"prepare: warning: source {source.path}: skipping binary file {p} (not UTF-8 text, nor gzip/bzip2/xz)")
    files = [p for p in files if p not in binary]
    if not files:
        raise DaramError(f"source {source.path}: holds no text files" + (f" ({len(binary)} binary skipped)" if binary else ""))
    return files


def sniff(path: Path) -> str:
    """``"text"``, ``"compressed"`` (gzip, bzip2, xz) or ``"binary"``, from the first bytes of the file."""
    with path.open("rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    if any(head.startswith(magic) for magic in _COMPRESSED):
        return "compressed"
    if any(head.startswith(magic) for magic in _BINARY_MAGIC) or b"\x00" in head:
        return "binary"  # UTF-8 text never holds NUL; UTF-16 and most binary formats do
    return "text"


def _open(path: Path) -> BinaryIO:
    with path.open("rb") as handle:
        head = handle.read(8)
    for magic, opener in _COMPRESSED.items():
        if head.startswith(magic):
            return opener(path, "rb")
    return path.open("rb")


def _sliced_lines(source: SourceConfig, files: list[Path], counter: SourceCounter) -> Iterator[bytes]:
    """The raw lines of the files taken one after another that start inside the entry's slice."""
    measure = source.measure
    start, stop = source.span
    position = 0  # of the next line: bytes or lines since the first file's start
    for path in files:
        if stop is not None and position >= stop:
            return
        compressed = sniff(path) == "compressed"
        size = path.stat().st_size
        if measure == "bytes" and not compressed and position + size <= start:
            position += size  # the whole file lies before the slice: never read it
            continue
        counter.files += 1
        with _open(path) as handle:
            if measure == "bytes" and not compressed and position < start:
                handle.seek(start - position - 1)
                if handle.read(1) != b"\n":
                    handle.readline()  # the rest of a line that started before the slice
                position += handle.tell()
            for raw in handle:
                here = position
                position += len(raw) if measure == "bytes" else 1
                if here < start:
                    continue
                if stop is not None and here >= stop:
                    return
                counter.bytes += len(raw)
                counter.lines += 1
                yield raw


def _whole_lines(files: list[Path], counter: SourceCounter) -> Iterator[str]:
    """Every line of the files, decoded (see :func:`_decoded_lines`), without line endings: the fast path
    of a source read whole. Reads megabytes at a time."""
    for path in files:
        counter.files += 1
        with _open(path) as handle:
            rest = b""
            while chunk := handle.read(_READ_BYTES):
                chunk = rest + chunk
                cut = chunk.rfind(b"\n") + 1
                rest = chunk[cut:]
                yield from _decoded_block(chunk[:cut], counter)
            yield from _decoded_block(rest, counter)


def _decoded_block(data: bytes, counter: SourceCounter) -> Iterator[str]:
    if not data:
        return
    counter.bytes += len(data)
    counter.lines += _line_count(data)
    yield from _decoded_lines(data, counter)


def _decoded_lines(data: bytes, counter: SourceCounter) -> list[str]:
    """Whole lines of bytes as text, without line endings or a BOM. A block is decoded in one call; only a
    block holding invalid UTF-8 is decoded line by line, so that exactly its bad lines are skipped and counted."""
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raws = data.split(b"\n")
        if raws[-1] == b"":
            raws.pop()
        return list(_decoded(iter(raws), counter))
    if lines[-1] == "":
        lines.pop()  # the block ends with a line ending
    if b"\r" in data or b"\xef\xbb\xbf" in data:  # a CRLF file, or a BOM at the start of some file's first line
        lines = [line.removeprefix("\ufeff").rstrip("\r") for line in lines]
    return lines


def _line_count(data: bytes) -> int:
    """Lines in a non-empty block of whole lines (the last may lack its line ending)."""
    return data.count(b"\n") + (not data.endswith(b"\n"))


@dataclass(frozen=True)
class LinePiece:
    """Whole lines of an entry as raw bytes; a worker turns them into units with :func:`piece_units`."""

    data: bytes
    jsonl_field: str = ""  # JSONL: the key that holds each record's text; "" = lines of a text file
    unit: str = "line"


def reads_line_pieces(source: SourceConfig) -> bool:
    """Whether an entry's units come from its lines one by one (text lines or sentences, or JSONL records)
    and its slice, if any, is in bytes: then :func:`iter_line_pieces` reads it, and decoding, JSON parsing
    and stripping happen in the workers. Text paragraphs span lines and stay with :func:`iter_documents`."""
    by_line = source.format == "jsonl" or (source.format == "text" and source.unit != "paragraph")
    return by_line and source.measure in ("", "bytes")


def iter_line_pieces(source: SourceConfig, files: list[Path], counter: SourceCounter, piece_bytes: int) -> Iterator[LinePiece]:
    """The raw bytes of an entry's lines (those that start inside its byte slice), in pieces of whole lines
    of about ``piece_bytes``; :func:`piece_units` turns a piece into the units :func:`iter_documents` gives.

    The main process only cuts bytes at line ends (no per-line Python), so on many cores it keeps
    every worker busy; the pieces are the same for any number of workers.
    """
    field = source.text_field if source.format == "jsonl" else ""
    start, stop = source.span
    position = 0  # bytes (decompressed) since the first file's start
    for path in files:
        if stop is not None and position >= stop:
            return
        compressed = sniff(path) == "compressed"
        size = path.stat().st_size
        if not compressed and position + size <= start:
            position += size  # the whole file lies before the slice: never read it
            continue
        counter.files += 1
        with _open(path) as handle:
            if not compressed and position < start:
                handle.seek(start - position - 1)
                if handle.read(1) != b"\n":
                    handle.readline()  # the rest of a line that started before the slice
                position += handle.tell()
            rest = b""
            while True:
                chunk = handle.read(_READ_BYTES)
                data = rest + chunk
                cut = data.rfind(b"\n") + 1 if chunk else len(data)  # whole lines; the file's last may lack its newline
                lines, rest = data[:cut], data[cut:]
                first = _line_start(lines, start - position)
                last = len(lines) if stop is None else _line_start(lines, stop - position)
                position += len(lines)
                lo = first
                while lo < last:
                    hi = min(_line_start(lines, lo + piece_bytes), last)
                    piece = lines[lo:hi]
                    counter.bytes += len(piece)
                    counter.lines += _line_count(piece)
                    yield LinePiece(piece, field, source.unit)
                    lo = hi
                if last < len(lines):
                    return  # the slice ends inside this chunk
                if not chunk:
                    break


def _line_start(lines: bytes, offset: int) -> int:
    """Index of the first line of ``lines`` (whole lines) that starts at or after ``offset``."""
    if offset <= 0:
        return 0
    if offset >= len(lines):
        return len(lines)
    if lines[offset - 1] == 0x0A:
        return offset
    end = lines.find(b"\n", offset)
    return len(lines) if end < 0 else end + 1


def piece_units(piece: LinePiece) -> tuple[list[str], int]:
    """A piece's units and how many of its lines were skipped (not UTF-8; JSONL: not JSON, or without a
    text): what :func:`iter_documents` gives for the same lines."""
    counter = SourceCounter()
    lines = _decoded_lines(piece.data, counter)
    if not piece.jsonl_field:
        return [unit for unit in map(str.strip, lines) if unit], counter.skipped_lines
    texts = _jsonl_texts(lines, counter, piece.jsonl_field)
    return list(_split_lines(texts) if piece.unit == "line" else texts), counter.skipped_lines


def _decoded(raws: Iterator[bytes], counter: SourceCounter) -> Iterator[str]:
    """Lines without line endings; a line that is not valid UTF-8 is skipped and counted."""
    for raw in raws:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            counter.skipped_lines += 1
            continue
        yield line.removeprefix("\ufeff").rstrip("\r\n")


_SENTENCE_FINAL = re.compile(r"[.?!。…다요죠까][\"'”’)\]]*$")


def _paragraphs(lines: Iterator[str], counter: SourceCounter) -> Iterator[str]:
    """Blank-line-separated paragraphs; the lines of a paragraph are joined with newlines."""
    block: list[str] = []
    for line in lines:
        if line.strip():
            block.append(line.strip())
        elif block:
            yield _paragraph(block, counter)
            block = []
    if block:
        yield _paragraph(block, counter)


def _paragraph(block: list[str], counter: SourceCounter) -> str:
    # Many lines that nearly all end like a sentence: the file is likely one sentence per line.
    if len(block) >= 16 and sum(bool(_SENTENCE_FINAL.search(line)) for line in block) >= 0.8 * len(block):
        counter.sentence_like_paragraphs += 1
    return "\n".join(block)


def _jsonl_texts(lines: Iterator[str], counter: SourceCounter, field: str) -> Iterator[str]:
    for line in lines:
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


def _modu_paragraphs(source: SourceConfig, files: list[Path], counter: SourceCounter) -> Iterator[str]:
    """Modu corpus JSON: ``{"document": [{"paragraph": [{"form": ...}, ...]}, ...]}``; one paragraph per unit.

    A slice counts the paragraphs' UTF-8 bytes (the JSON around them is not text) or the paragraphs.
    """
    measure = source.measure
    start, stop = source.span
    position = 0
    for path in files:
        if stop is not None and position >= stop:
            return
        with _open(path) as handle:
            raw = handle.read()
        try:
            data = json.loads(raw.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise DaramError(f"{path}: not a valid Modu corpus JSON file ({str(exc).splitlines()[0]})") from None
        documents = data.get("document") if isinstance(data, dict) else None
        if not isinstance(documents, list):
            raise DaramError(f"{path}: Modu corpus JSON needs a top-level 'document' list")
        counter.files += 1
        for document in documents:
            for paragraph in document.get("paragraph", []) if isinstance(document, dict) else []:
                form = paragraph.get("form") if isinstance(paragraph, dict) else None
                if not (isinstance(form, str) and form.strip()):
                    continue
                size = len(form.encode("utf-8"))
                here = position
                position += size if measure == "bytes" else 1
                if here < start:
                    continue
                if stop is not None and here >= stop:
                    return
                counter.bytes += size
                counter.lines += 1
                yield form.strip()


def _split_lines(texts: Iterator[str]) -> Iterator[str]:
    for text in texts:
        yield from (line.strip() for line in text.splitlines() if line.strip())


def iter_documents(source: SourceConfig, files: list[Path], counter: SourceCounter) -> Iterator[str]:
    """The entry's texts before sentence splitting: lines, paragraphs, JSONL records or Modu paragraphs.

    Sentence units come out line by line (text files) so that each splitter call has bounded work.
    """
    if source.format == "modu":
        texts = _modu_paragraphs(source, files, counter)
        return _split_lines(texts) if source.unit == "line" else texts
    if source.measure:
        lines = _decoded(_sliced_lines(source, files, counter), counter)
    else:
        lines = _whole_lines(files, counter)
    if source.format == "jsonl":
        texts = _jsonl_texts(lines, counter, source.text_field)
        return _split_lines(texts) if source.unit == "line" else texts
    if source.unit == "paragraph":
        return _paragraphs(lines, counter)
    return (line.strip() for line in lines if line.strip())


def entry_bytes(source: SourceConfig, files: list[Path]) -> int:
    """About how many bytes of text an entry reads: its slice of the files' sizes (a slice in lines, or of
    compressed files, counts the whole files: an upper bound)."""
    total = sum(p.stat().st_size for p in files)
    if source.measure != "bytes" or any(sniff(p) == "compressed" for p in files):
        return total
    start, stop = source.span
    return max(0, min(total, stop if stop is not None else total) - start)


def check_overlaps(sources: tuple[SourceConfig, ...] | list[SourceConfig]) -> None:
    """Entries that read the same text twice are an error, unless the entry that repeats says ``repeat = true``:
    the entries without it must read each part of a path at most once."""
    earlier: dict[str, list[SourceConfig]] = {}
    for source in sources:
        if source.repeat:
            continue
        key = f"{source.format}:{Path(source.path).expanduser().resolve()}"
        for other in earlier.get(key, []):
            if source.measure and other.measure and source.measure != other.measure:
                raise DaramError(
                    f"sources {other.label!r} and {source.label!r} slice {source.path} in different measures "
                    "(bytes and lines), so they cannot be checked for overlap; use one measure, or set repeat = true"
                )
            (a0, a1), (b0, b1) = other.span, source.span
            if a0 < (b1 if b1 is not None else float("inf")) and b0 < (a1 if a1 is not None else float("inf")):
                raise DaramError(
                    f"sources {other.label!r} and {source.label!r} overlap in {source.path}; fix skip/take, "
                    "or set repeat = true on the later one to read that text twice on purpose"
                )
        earlier.setdefault(key, []).append(source)


_SENTENCE_END = re.compile(r"(?<=[.?!。…])[\"'”’)\]]*\s+")


def regex_sentences(text: str) -> list[str]:
    """A simple fallback splitter: break after . ? ! and ellipses followed by whitespace."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def kiwi_available() -> bool:
    try:
        import kiwipiepy  # noqa: F401
    except ImportError:
        return False
    return True


def sentence_splitter(kind: str) -> Callable[[list[str]], list[list[str]]]:
    """Korean sentence splitting on one core: kiwipiepy's morphological splitter (``kind="kiwi"``) or
    :func:`regex_sentences`. Parallelism comes from running one splitter per worker process."""
    if kind != "kiwi":
        return lambda texts: [regex_sentences(t) for t in texts]
    from kiwipiepy import Kiwi

    kiwi = Kiwi(num_workers=1)

    def split(texts: list[str]) -> list[list[str]]:
        return [[s.text.strip() for s in sents if s.text.strip()] for sents in kiwi.split_into_sents(texts)]

    return split
