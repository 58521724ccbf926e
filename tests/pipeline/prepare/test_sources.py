import bz2
import gzip
import json
import os
import resource
import signal
import subprocess
import sys

import pytest

from daram.config import SourceConfig, load_config
from daram.errors import DaramError
from daram.pipeline.inspect import run_inspect
from daram.pipeline.prepare.prepare import run_prepare
from daram.pipeline.prepare.sources import SourceCounter, check_overlaps, iter_documents, resolve_files
from daram.storage import Store


def units_of(source: SourceConfig) -> list[str]:
    return list(iter_documents(source, resolve_files(source), SourceCounter()))


def lines_file(tmp_path, lines, name="c.txt"):
    path = tmp_path / name
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def test_skip_and_take_use_one_measure():
    with pytest.raises(DaramError, match="one measure"):
        SourceConfig(path="x", skip="10 lines", take="3MB")


@pytest.mark.parametrize("measure", ["bytes", "lines"])
def test_back_to_back_slices_cover_the_source_once_in_order(tmp_path, corpus_lines, measure):
    # Catches a line lost or read twice at a slice boundary, including boundaries inside a line
    # and at a file boundary (two files, read as one stream).
    first, second = lines_file(tmp_path / "d", corpus_lines[:70], "a.txt") if (tmp_path / "d").mkdir() is None else None, None
    second = lines_file(tmp_path / "d", corpus_lines[70:130], "b.txt")
    whole = units_of(SourceConfig(path=str(tmp_path / "d")))
    assert whole == corpus_lines[:130]
    step = 997 if measure == "bytes" else 17  # 997 bytes: cuts fall inside lines
    total = first.stat().st_size + second.stat().st_size if measure == "bytes" else 130
    pieces = []
    for start in range(0, total, step):
        amount = (lambda n: f"{n}B") if measure == "bytes" else (lambda n: f"{n} lines")
        pieces.append(units_of(SourceConfig(path=str(tmp_path / "d"), skip=amount(start) if start else "", take=amount(step))))
    assert [u for piece in pieces for u in piece] == whole
    assert all(pieces)


def test_a_byte_slice_starts_at_the_first_whole_line_and_seeks_past_earlier_files(tmp_path):
    directory = tmp_path / "d"
    directory.mkdir()
    (directory / "a.txt").write_text("aaaa\nbbbb\n")  # 10 bytes
    (directory / "b.txt").write_text("cccc\ndddd\neeee\n")
    counter = SourceCounter()
    source = SourceConfig(path=str(directory), skip="12B", take="5B")  # starts inside "cccc"
    assert list(iter_documents(source, resolve_files(source), counter)) == ["dddd"]
    assert counter.files == 1 and counter.bytes == 5  # a.txt was never opened


def test_modu_slices_count_paragraphs(tmp_path):
    doc = {"document": [{"paragraph": [{"form": f"문단 {i}."} for i in range(10)]}]}
    (tmp_path / "m.json").write_text(json.dumps(doc, ensure_ascii=False))
    source = SourceConfig(path=str(tmp_path / "m.json"), format="modu", unit="paragraph", skip="3 lines", take="4 lines")
    assert units_of(source) == [f"문단 {i}." for i in range(3, 7)]


def test_overlapping_slices_are_an_error_unless_repeated():
    a = SourceConfig(path="web.txt", take="300MB")
    b = SourceConfig(path="web.txt", skip="300MB", take="300MB")
    check_overlaps([a, b])
    with pytest.raises(DaramError, match="overlap in web.txt.*repeat = true"):
        check_overlaps([a, b, SourceConfig(path="web.txt", skip="500MB", take="300MB")])
    with pytest.raises(DaramError, match="overlap"):
        check_overlaps([a, SourceConfig(path="web.txt")])  # the whole source includes the slice
    check_overlaps([a, a.__class__(path="web.txt", take="300MB", repeat=True)])
    check_overlaps([a, SourceConfig(path="other.txt", take="300MB")])
    with pytest.raises(DaramError, match="different measures"):
        check_overlaps([a, SourceConfig(path="web.txt", skip="9 lines")])


def test_curriculum_of_slices_in_the_manifest_and_inspect(tmp_path, tokenizer_dir, corpus_lines, capsys):
    corpus = lines_file(tmp_path, corpus_lines[:600])
    half = corpus.stat().st_size // 2
    cfg = load_config(overrides={
        "store.path": str(tmp_path / "s.zarr"), "prepare.tokenizer": str(tokenizer_dir),
        "prepare.seq_len": 32, "prepare.num_shards": 2, "prepare.workers": 1,
        "prepare.sources": [
            {"path": str(corpus), "take": f"{half}B"},
            {"path": str(corpus), "skip": "100 lines", "take": "50 lines", "name": "again", "repeat": True},
            {"path": str(corpus), "skip": f"{half}B"},
        ],
    })
    manifest = run_prepare(cfg)
    first, again, rest = manifest.sources
    assert first.units + rest.units == 600 and again.units == 50
    assert first.bytes + rest.bytes == corpus.stat().st_size and first.take == f"{half}B" and rest.skip == f"{half}B"
    assert (first.name, again.name) == (f"{corpus} [take {half}B]", "again")
    capsys.readouterr()
    run_inspect(cfg, sample=False)
    out = capsys.readouterr().out
    assert f"[take {half}B]: 1 file, " in out and "50 lines, " in out and "[text; skip 100 lines, take 50 lines]" in out


# --- issue 10 items 5, 8 and 9: nothing garbage, nothing silent, nothing lost -------------------


def prepare_config(tmp_path, tokenizer_dir, path, **prepare):
    return load_config(overrides={
        "store.path": str(tmp_path / "s.zarr"), "prepare.tokenizer": str(tokenizer_dir), "prepare.workers": 1,
        "prepare.sources": [{"path": str(path)}],
        **{f"prepare.{k}": v for k, v in {"seq_len": 32, "num_shards": 2, **prepare}.items()},
    })


def test_compressed_files_in_a_directory_are_read_and_binary_ones_skipped_loudly(tmp_path, tokenizer_dir, corpus_lines, capsys):
    # Catches a .gz (or any binary) inside a directory source being tokenized as garbage.
    directory = tmp_path / "d"
    directory.mkdir()
    lines_file(directory, corpus_lines[:100], "a.txt")
    (directory / "b.txt.gz").write_bytes(gzip.compress("".join(f"{t}\n" for t in corpus_lines[100:200]).encode()))
    (directory / "c.txt.bz2").write_bytes(bz2.compress("".join(f"{t}\n" for t in corpus_lines[200:300]).encode()))
    (directory / "d.bin").write_bytes(bytes(range(256)) * 40)
    assert units_of(SourceConfig(path=str(directory))) == corpus_lines[:300]
    manifest = run_prepare(prepare_config(tmp_path, tokenizer_dir, directory))
    assert manifest.sources[0].units == 300 and manifest.sources[0].files == 3
    assert manifest.sources[0].skipped_lines == 0
    assert f"skipping binary file {directory / 'd.bin'}" in capsys.readouterr().out


def test_a_binary_file_as_a_source_is_refused_as_binary(tmp_path, tokenizer_dir):
    # Catches the binary file getting as far as "0 rows" (or, worse, becoming tokens).
    blob = tmp_path / "model.bin"
    blob.write_bytes(os.urandom(1 << 16) + b"\x00")
    with pytest.raises(DaramError, match=f"source {blob}: binary file"):
        run_prepare(prepare_config(tmp_path, tokenizer_dir, blob))
    # no NUL bytes to give it away: the undecodable lines do
    legacy = tmp_path / "cp949.txt"
    legacy.write_bytes(("".join(f"한국어 문장 {i}입니다.\n" for i in range(200))).encode("cp949"))
    with pytest.raises(DaramError, match=r"binary or not UTF-8: 200 of 200 lines undecodable"):
        run_prepare(prepare_config(tmp_path, tokenizer_dir, legacy))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cp949.txt", "model.bin"]  # nothing left behind


def test_skipped_lines_are_reported_on_the_console(tmp_path, tokenizer_dir, corpus_lines, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes("".join(f"{t}\n" for t in corpus_lines[:300]).encode() + b"\xff\xfe broken\n" * 3)
    run_prepare(prepare_config(tmp_path, tokenizer_dir, corpus))
    # On a line of its own (a carriage return starts one on a terminal), not glued after the progress bar's text
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert any(line.startswith(f"prepare: warning: source {corpus}: 3 undecodable lines skipped") for line in lines)


def test_seq_len_1_fails_cleanly_and_leaves_nothing(tmp_path, tokenizer_dir, corpus_lines):
    corpus = lines_file(tmp_path, corpus_lines[:100])
    with pytest.raises(DaramError, match="prepare.seq_len must be >= 2"):
        run_prepare(prepare_config(tmp_path, tokenizer_dir, corpus, seq_len=1))
    assert [p.name for p in tmp_path.iterdir()] == ["c.txt"]


def test_bad_input_found_late_leaves_no_work_directory(tmp_path, tokenizer_dir, corpus_lines):
    corpus = lines_file(tmp_path, corpus_lines[:20])
    with pytest.raises(DaramError, match="fewer than num_shards"):
        run_prepare(prepare_config(tmp_path, tokenizer_dir, corpus, num_shards=500))
    assert [p.name for p in tmp_path.iterdir()] == ["c.txt"]


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, resource.RLIM_INFINITY))  # a full disk, as the kernel reports it
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_a_full_disk_is_one_line_and_the_store_is_kept(tmp_path, tokenizer_dir, corpus_lines, capsys):
    # Catches the traceback (OSError from deep inside numpy or zarr) and a lost or half-replaced store.
    small, large = lines_file(tmp_path, corpus_lines[:200], "small.txt"), lines_file(tmp_path, corpus_lines[:3000], "large.txt")
    store = tmp_path / "s.zarr"
    run_prepare(prepare_config(tmp_path, tokenizer_dir, small))
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    full = subprocess.run(
        [sys.executable, "-m", "daram", "prepare", "--store", str(store), "--tokenizer", str(tokenizer_dir),
         "--seq-len", "32", "--num-shards", "2", "--set", "prepare.workers=1", "--source", str(large), "--overwrite"],
        capture_output=True, text=True, preexec_fn=_limit_file_size,
    )
    assert full.returncode == 2
    error = full.stderr.strip().splitlines()[-1]
    assert error.startswith("error: prepare stopped: no space left on the device") and "Traceback" not in full.stderr
    assert f"the store at {store} is unchanged" in error
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before
    # with room again, the same command resumes and finishes
    capsys.readouterr()
    run_prepare(prepare_config(tmp_path, tokenizer_dir, large), overwrite=True)
    assert "resuming the interrupted prepare" in capsys.readouterr().err
    assert Store.open(str(store)).manifest.sources[0].units == 3000


def test_the_seed_curriculum_config_holds_the_seed_order():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[3] / "configs" / "seed-curriculum.toml")
    names = [s.name for s in cfg.prepare.sources]
    assert names == ["web 1", "web 2", "unpublished works", *[f"web {i}" for i in range(3, 16)], "Korean Wikipedia",
                     *[f"Modu written {i}" for i in range(1, 11)]]
    web = [s for s in cfg.prepare.sources if s.name.startswith("web")]
    assert [s.span for s in web] == [(i * 300_000_000, (i + 1) * 300_000_000) for i in range(15)]  # back to back
    assert {s.unit for s in cfg.prepare.sources if s.format != "modu"} == {"sentence"}
    assert {s.unit for s in cfg.prepare.sources if s.format == "modu"} == {"paragraph"}
    check_overlaps(cfg.prepare.sources)


def test_entry_bytes_count_a_slice_once_and_the_forecast_uses_them(tmp_path):
    # Catches a curriculum of slices being sized (and forecast) as many copies of the whole source.
    from daram.pipeline.prepare.prepare import forecast_seconds, mb_per_s_per_core
    from daram.pipeline.prepare.sources import entry_bytes

    corpus = tmp_path / "c.txt"
    corpus.write_text("가나다라.\n" * 100_000)  # 1.4 MB
    size = corpus.stat().st_size
    parts = [SourceConfig(path=str(corpus), skip=f"{i * 500_000}B", take="500000B") for i in range(3)]
    assert [entry_bytes(p, [corpus]) for p in parts] == [500_000, 500_000, size - 1_000_000]
    assert entry_bytes(SourceConfig(path=str(corpus), take="10 lines"), [corpus]) == size  # lines: an upper bound
    settings = load_config(overrides={"prepare.sources": [{"path": str(corpus), "unit": "sentence", "take": "500000B"}]}).prepare
    assert forecast_seconds(settings, cores=2) == pytest.approx(0.5 / (2 * mb_per_s_per_core("sentence", "kiwi")))


@pytest.mark.parametrize("read_bytes", [1 << 22, 1000, 7])
def test_a_whole_source_reads_as_its_line_by_line_slice(tmp_path, korean_sentences, monkeypatch, read_bytes):
    # Catches the fast path of a whole source (megabytes decoded at once) parting from the line-by-line
    # path of a slice: a line lost at a read boundary, a CRLF or BOM kept, a bad line miscounted.
    from daram.pipeline.prepare import sources

    monkeypatch.setattr(sources, "_READ_BYTES", read_bytes)
    corpus = tmp_path / "c.txt"
    corpus.write_bytes("\ufeff첫 줄\r\n".encode() + korean_sentences.read_bytes()[:200_000].rsplit(b"\n", 1)[0]
                       + b"\n\xff\xfe bad\n\nlast \xea\xb0\x80 no newline")
    whole, sliced = SourceCounter(), SourceCounter()
    fast = list(iter_documents(SourceConfig(path=str(corpus)), [corpus], whole))
    slow = list(iter_documents(SourceConfig(path=str(corpus), skip="0B"), [corpus], sliced))
    assert fast == slow and fast[0] == "첫 줄" and fast[-1] == "last 가 no newline"
    assert whole == sliced and whole.skipped_lines == 1 and whole.bytes == corpus.stat().st_size


@pytest.mark.parametrize("read_bytes,piece_bytes", [(1 << 22, 1 << 16), (1000, 300), (7, 5)])
@pytest.mark.parametrize("skip,take", [("", ""), ("0B", ""), ("1234B", "50000B"), ("777B", "200B"), ("150000B", "")])
def test_raw_line_pieces_give_the_units_and_counts_of_the_line_reader(tmp_path, corpus_lines, monkeypatch,
                                                                      read_bytes, piece_bytes, skip, take):
    # Catches the workers' reading (raw pieces cut at line ends, decoded and stripped in each worker) parting
    # from the main process's line reader: a line lost or doubled at a read or piece boundary, a slice cut
    # at the wrong line, a BOM or CR kept, a bad line not counted, a file's last line without its newline.
    from daram.pipeline.prepare import sources

    monkeypatch.setattr(sources, "_READ_BYTES", read_bytes)
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    text = ("\n".join(corpus_lines) + "\n").encode()
    first.write_bytes("\ufeff첫 줄\r\n".encode() + text[:100_000].rsplit(b"\n", 1)[0]
                      + b"\n\xff\xfe bad\n\n  \nlast \xea\xb0\x80 no newline")
    second.write_bytes("\ufeff둘째 파일\n".encode() + text[-60_000:].split(b"\n", 1)[1])
    source = SourceConfig(path=str(tmp_path), skip=skip, take=take)
    assert sources.reads_line_pieces(source)
    by_line, by_piece = SourceCounter(), SourceCounter()
    expected = list(iter_documents(source, [first, second], by_line))
    units = []
    for piece in sources.iter_line_pieces(source, [first, second], by_piece, piece_bytes):
        got, skipped = sources.piece_units(piece)
        units += got
        by_piece.skipped_lines += skipped
    assert units == expected and by_piece == by_line
    assert expected  # every case reads something


@pytest.mark.parametrize("compressed", [False, True])
def test_raw_line_pieces_cut_slices_on_exact_line_starts(tmp_path, compressed):
    # Catches an off-by-one line where a slice's start or stop falls exactly on a line start: a compressed
    # file is not seeked, so its slice is cut inside the read chunk.
    from daram.pipeline.prepare import sources

    text = "".join(f"{i:03d}가나\n" for i in range(100)).encode()  # 10 bytes a line
    path = tmp_path / ("c.txt.gz" if compressed else "c.txt")
    path.write_bytes(gzip.compress(text) if compressed else text)
    source = SourceConfig(path=str(path), skip="30B", take="50B")
    counter = SourceCounter()
    units = [u for piece in sources.iter_line_pieces(source, [path], counter, 16) for u in sources.piece_units(piece)[0]]
    assert units == [f"{i:03d}가나" for i in range(3, 8)] == list(iter_documents(source, [path], SourceCounter()))
    assert counter.bytes == 50 and counter.lines == 5


@pytest.mark.parametrize("unit", ["line", "sentence", "paragraph"])
@pytest.mark.parametrize("skip,take", [("", ""), ("100B", "700B")])
def test_jsonl_pieces_give_the_units_and_counts_of_the_record_reader(tmp_path, corpus_lines, monkeypatch, unit, skip, take):
    # Catches the workers' JSONL parsing parting from the main process's: a bad or text-less record not
    # counted, a blank text kept, a record's lines not split for line units, a BOM left before the JSON.
    from daram.pipeline.prepare import sources

    monkeypatch.setattr(sources, "_READ_BYTES", 333)
    records = [json.dumps({"text": f"{a}\n{b}"}, ensure_ascii=False) for a, b in zip(corpus_lines[:40:2], corpus_lines[1:40:2])]
    records[3:3] = ["not json", json.dumps({"text": 5}), json.dumps(["a list"]), json.dumps({"text": "  "}), "", json.dumps({"body": "x"})]
    path = tmp_path / "r.jsonl"
    path.write_bytes("\ufeff".encode() + "\r\n".join(records).encode() + b"\n\xff\xfe\n")
    source = SourceConfig(path=str(path), format="jsonl", unit=unit, skip=skip, take=take)
    assert sources.reads_line_pieces(source)
    by_line, by_piece = SourceCounter(), SourceCounter()
    expected = list(iter_documents(source, [path], by_line))
    units = []
    for piece in sources.iter_line_pieces(source, [path], by_piece, 200):
        got, skipped = sources.piece_units(piece)
        units += got
        by_piece.skipped_lines += skipped
    assert units == expected and by_piece == by_line
    assert expected and by_line.skipped_lines >= (4 if not skip else 0)
