import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import descendants, prepare_store, sigkill_alone, survivors
from daram.config import load_config
from daram.errors import DaramError
from daram.pipeline.hf import load_tokenizer
from daram.pipeline.prepare.prepare import WorkDir, _work_path, run_prepare
from daram.pipeline.prepare.sources import regex_sentences
from daram.storage import Store


def config(tmp_path, tokenizer_dir, sources, **prepare):
    return load_config(overrides={
        "store.path": str(tmp_path / "s.zarr"), "prepare.tokenizer": str(tokenizer_dir), "prepare.sources": sources,
        **{f"prepare.{k}": v for k, v in {"seq_len": 32, "num_shards": 2, "rows_per_chunk": 8, "workers": 1, **prepare}.items()},
    })


def decoded_units(store_path, tokenizer) -> list[str]:
    """Every stored token, in shard order, decoded and split at EOS."""
    store = Store.open(str(store_path))
    stream = np.concatenate([store.read_tokens(s).reshape(-1) for s in range(store.manifest.num_shards)])
    eos = store.manifest.tokenizer.eos_id
    cuts = np.flatnonzero(stream == eos)
    pieces = np.split(stream[: cuts[-1]], cuts[:-1] + 1)
    return [tokenizer.decode(p[p != eos].tolist()).strip() for p in pieces]


def test_prepare_real_sentences_round_trip_in_order(tmp_path, kogpt2_tokenizer_dir, korean_lines):
    lines = korean_lines[:800]
    path = prepare_store(tmp_path, kogpt2_tokenizer_dir, lines, seq_len=128, num_shards=2)
    tokenizer = load_tokenizer(str(kogpt2_tokenizer_dir))
    units = decoded_units(path, tokenizer)
    # every complete unit comes back, in order (the tokenizer's NFKC normalisation aside)
    assert len(units) > 700
    expected = [tokenizer.decode(tokenizer(line, add_special_tokens=False)["input_ids"]).strip() for line in lines[: len(units)]]
    assert units == expected

    group = zarr.open_group(str(path), mode="r")  # plain zarr, the paths docs/store-format.md gives
    manifest = group.attrs["daram"]
    assert manifest["format"] == "daram-store" and manifest["format_version"] == 2
    assert manifest["tokenizer"]["vocab_size"] == 51200 and manifest["tokenizer"]["eos_id"] == 1
    assert manifest["num_shards"] == 2 and manifest["seq_len"] == 128
    rows = [group[f"tokens/shard-0000{s}"] for s in range(2)]
    assert all(r.dtype == np.uint16 and r.shape[1] == 128 for r in rows)
    assert [r.shape[0] for r in rows] == manifest["rows_per_shard"]
    assert abs(rows[0].shape[0] - rows[1].shape[0]) <= 1
    (source,) = manifest["sources"]
    assert source["units"] == 800 and source["skipped_lines"] == 0
    assert source["tokens"] == sum(manifest["rows_per_shard"]) * 128 + manifest["dropped_tail_tokens"]


def test_sources_in_curriculum_order_and_formats(tmp_path, kogpt2_tokenizer_dir, korean_lines):
    text = tmp_path / "a.txt"
    text.write_text("\n".join(korean_lines[:40]) + "\n\n" + "\n".join(korean_lines[40:80]) + "\n")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "id": i}, ensure_ascii=False) for i, t in enumerate(korean_lines[80:160])) + "\nnot json\n")
    modu = tmp_path / "modu"
    modu.mkdir()
    (modu / "doc.json").write_text(json.dumps({"id": "X", "document": [
        {"id": "d1", "paragraph": [{"id": "p1", "form": " ".join(korean_lines[160:166])}, {"id": "p2", "form": korean_lines[166]}]}
    ]}, ensure_ascii=False))
    cfg = config(tmp_path, kogpt2_tokenizer_dir, [
        {"path": str(text), "unit": "paragraph", "name": "paragraphs"},
        {"path": str(jsonl), "format": "jsonl", "unit": "line"},
        {"path": str(modu), "format": "modu", "unit": "sentence"},
    ], num_shards=1)
    manifest = run_prepare(cfg)
    stats = {s.name: s for s in manifest.sources}
    assert [s.name for s in manifest.sources] == ["paragraphs", str(jsonl), str(modu)]
    assert stats["paragraphs"].units == 2
    assert stats[str(jsonl)].units == 80 and stats[str(jsonl)].skipped_lines == 1
    assert stats[str(modu)].units >= 7  # one paragraph of six sentences is split into sentences
    tokenizer = load_tokenizer(str(kogpt2_tokenizer_dir))
    units = decoded_units(cfg.store.path, tokenizer)
    assert units[0].startswith(tokenizer.decode(tokenizer(korean_lines[0])["input_ids"]).strip())
    assert units[2] == tokenizer.decode(tokenizer(korean_lines[80])["input_ids"]).strip()


def test_invalid_utf8_lines_are_skipped_and_counted(tmp_path, tokenizer_dir, corpus_lines):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(("\n".join(corpus_lines[:200]) + "\n").encode() + b"\xff\xfe broken\n" + "끝.\n".encode())
    manifest = run_prepare(config(tmp_path, tokenizer_dir, [{"path": str(corpus), "unit": "line"}]))
    assert manifest.sources[0].skipped_lines == 1 and manifest.sources[0].units == 201


def test_regex_sentence_fallback():
    assert regex_sentences("비가 온다. 정말요? 네! 그래요…  끝") == ["비가 온다.", "정말요?", "네!", "그래요…", "끝"]


@pytest.mark.parametrize("make,message", [
    (lambda p: str(p / "missing.txt"), "no such file"),
    (lambda p: str(p / "*.nothing"), "matches no files"),
    (lambda p: (p / "empty.txt").write_text("\n \n") and str(p / "empty.txt"), "holds no text"),
])
def test_bad_sources(tmp_path, tokenizer_dir, make, message):
    cfg = config(tmp_path, tokenizer_dir, [{"path": make(tmp_path)}])
    with pytest.raises(DaramError, match=message):
        run_prepare(cfg)
    assert not (tmp_path / "s.zarr").exists()


def test_no_sources_and_too_little_text(tmp_path, tokenizer_dir):
    with pytest.raises(DaramError, match="no sources"):
        run_prepare(config(tmp_path, tokenizer_dir, []))
    small = tmp_path / "small.txt"
    small.write_text("짧은 문장.\n")
    with pytest.raises(DaramError, match="fewer than num_shards"):
        run_prepare(config(tmp_path, tokenizer_dir, [{"path": str(small)}]))


def test_bad_tokenizer_is_one_line(tmp_path, corpus_lines):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(corpus_lines[:50]))
    with pytest.raises(DaramError, match="cannot load tokenizer"):
        run_prepare(config(tmp_path, tmp_path / "no-tokenizer", [{"path": str(corpus)}]))


def test_existing_store_needs_overwrite_and_is_kept_on_failure(tmp_path, tokenizer_dir, corpus_lines):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(corpus_lines[:300]))
    cfg = config(tmp_path, tokenizer_dir, [{"path": str(corpus), "unit": "line"}])
    first = run_prepare(cfg)
    with pytest.raises(DaramError, match="already exists"):
        run_prepare(cfg)
    broken = cfg.replace("prepare", sources=[{"path": str(tmp_path / "gone.txt")}])
    with pytest.raises(DaramError, match="no such file"):
        run_prepare(broken, overwrite=True)
    assert Store.open(cfg.store.path).manifest == first  # the old store survives a failed overwrite
    corpus.write_text("\n".join(corpus_lines[300:600]))
    second = run_prepare(cfg, overwrite=True)
    assert second.tokens_fingerprint != first.tokens_fingerprint
    assert Store.open(cfg.store.path).manifest == second
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left behind


# --- every core, resumable, atomic -----------------------------------------------------------


def store_files(path) -> dict[str, bytes]:
    """Every file of a store by relative path: what "byte-identical" compares."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("unit,splitter", [
    ("line", "regex"), ("sentence", "regex"), ("paragraph", "regex"),
    pytest.param("sentence", "kiwi", marks=pytest.mark.slow),  # seconds to load kiwi in each worker
])
def test_any_number_of_workers_gives_the_same_bytes(tmp_path, tokenizer_dir, corpus_lines, monkeypatch, unit, splitter):
    # Catches blocks coming back out of order (or being dropped or doubled) when several processes encode them.
    monkeypatch.setattr("daram.pipeline.prepare.prepare.BLOCK_CHARS", 1500)  # many blocks, so order matters
    corpus = tmp_path / "c.txt"
    lines = corpus_lines[:400] if splitter == "regex" else corpus_lines[:120]
    corpus.write_text("\n\n".join(" ".join(lines[i : i + 4]) for i in range(0, len(lines), 4)) + "\n")
    stores = {}
    for workers in (1, 3):
        cfg = config(tmp_path, tokenizer_dir, [{"path": str(corpus), "unit": unit}], workers=workers,
                     sentence_splitter=splitter, seq_len=16, **{"num_shards": 3})
        cfg = dataclasses.replace(cfg, store=dataclasses.replace(cfg.store, path=str(tmp_path / f"w{workers}.zarr")))
        manifest = run_prepare(cfg)
        stores[workers] = store_files(tmp_path / f"w{workers}.zarr")
    # four sentences a line, blank lines between: one unit per line, or about four after splitting
    assert manifest.sources[0].units == len(lines) // 4 if unit != "sentence" else manifest.sources[0].units > len(lines) * 0.8
    assert stores[1] == stores[3]


def test_one_prepare_at_a_time_per_store(tmp_path, tokenizer_dir, corpus_lines):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(corpus_lines[:300]))
    cfg = config(tmp_path, tokenizer_dir, [{"path": str(corpus)}])
    held = WorkDir.claim(cfg.store.path, "someone else's", "")
    try:
        with pytest.raises(DaramError, match="another `daram prepare` is writing"):
            run_prepare(cfg)
    finally:
        held.release()
    run_prepare(cfg)  # the journal of a different recipe is thrown away, not resumed
    assert not _work_path(cfg.store.path).exists()


RUN_PREPARE = """
import sys
import daram.pipeline.prepare.prepare as prepare
prepare.BLOCK_CHARS = 400  # many small blocks: many moments to be killed at
sys.argv = ["daram", "prepare", *sys.argv[1:]]
from daram.cli import main
main()
"""


def _prepare_command(tmp_path, tokenizer_dir, corpus, store) -> list[str]:
    return [sys.executable, "-c", RUN_PREPARE, "--store", str(store), "--tokenizer", str(tokenizer_dir),
            "--source", str(corpus), "--unit", "sentence", "--seq-len", "16", "--num-shards", "6", "--rows-per-chunk", "4",
            "--set", "prepare.sentence_splitter=regex", "--set", "prepare.workers=2"]


def _killed(command, when) -> bool:
    """Run ``command``; SIGKILL its main process alone (as an OOM killer does) once ``when()`` holds, and check that
    its workers end with it. True when it was killed."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while process.poll() is None:
        if when():
            workers = sigkill_alone(process)
            # before: the workers lived on with parent 1, blocked on the result pipe, holding the work
            # directory's lock, so every rerun was refused
            assert survivors(workers) == []
            return True
        time.sleep(0.01)
    assert process.returncode == 0, process.stderr.read().decode()
    return False


def _journal(store) -> dict:
    try:
        return json.loads((store.parent / f".{store.name}.preparing" / "journal.json").read_text())
    except (OSError, ValueError):
        return {}


def test_sigkilled_prepare_resumes_to_the_same_bytes(tmp_path, tokenizer_dir, corpus_lines, monkeypatch, capsys):
    # Catches a resume that re-tokenizes from the wrong place (a block doubled or lost), keeps a torn
    # block, or re-writes shards out of order: the store would differ from a clean run's.
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(corpus_lines[:1500]) + "\n")
    store = tmp_path / "resumed.zarr"
    # killed while tokenizing, then while writing shards
    assert _killed(_prepare_command(tmp_path, tokenizer_dir, corpus, store), lambda: _journal(store).get("blocks", 0) >= 5)
    assert not store.exists()  # nothing half-made where the store goes
    assert _killed(_prepare_command(tmp_path, tokenizer_dir, corpus, store), lambda: len(_journal(store).get("shards", [])) >= 2)
    assert not store.exists()
    # the same settings in this process (one worker instead of two: the journal does not care)
    monkeypatch.setattr("daram.pipeline.prepare.prepare.BLOCK_CHARS", 400)
    settings = {"unit": "sentence"}, {"seq_len": 16, "num_shards": 6, "rows_per_chunk": 4, "sentence_splitter": "regex", "workers": 1}
    for path in (store, tmp_path / "clean.zarr"):
        cfg = config(tmp_path, tokenizer_dir, [{"path": str(corpus), **settings[0]}], **settings[1])
        run_prepare(dataclasses.replace(cfg, store=dataclasses.replace(cfg.store, path=str(path))))
        if path == store:
            assert "resuming the interrupted prepare" in capsys.readouterr().err
    assert store_files(store) == store_files(tmp_path / "clean.zarr")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _prepare_past_two_blocks(tmp_path, tokenizer_dir, corpus_lines):
    """A prepare running in a subprocess, past its second tokenized block: (process, its command, its store)."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(corpus_lines[:1500]) + "\n")
    store = tmp_path / "s.zarr"
    command = _prepare_command(tmp_path, tokenizer_dir, corpus, store)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while _journal(store).get("blocks", 0) < 2:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.01)
    return process, command, store


def _assert_kept_and_resumed(command, store) -> None:
    """The stopped prepare kept its blocks (and wrote no store); the same command resumes from them."""
    assert _journal(store).get("blocks", 0) >= 2 and not store.exists()
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0 and "resuming the interrupted prepare" in rerun.stderr, rerun.stderr


def test_sigterm_stops_prepare_with_one_line_and_keeps_its_work_to_resume(tmp_path, tokenizer_dir, corpus_lines):
    # Preemption sends SIGTERM: before, prepare died with exit 143 and not a word, so the user could not
    # know that the same command resumes.
    process, command, store = _prepare_past_two_blocks(tmp_path, tokenizer_dir, corpus_lines)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 75, stderr  # paused: the same command resumes
    assert stderr.splitlines()[-1] == ("interrupted: the work directory beside the store is kept; "
                                       "run the same command again to resume from it")
    _assert_kept_and_resumed(command, store)


def test_a_worker_ended_by_sigterm_stops_prepare_in_one_line_and_keeps_its_work(tmp_path, tokenizer_dir, corpus_lines):
    # Catches a worker that ignores SIGTERM (it inherited the main process's handler and hung), and the work
    # directory deleted by the very error that says "rerun the same command to resume".
    process, command, store = _prepare_past_two_blocks(tmp_path, tokenizer_dir, corpus_lines)
    workers = descendants(process.pid)
    os.kill(workers[0], signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 2, stderr
    assert stderr.splitlines()[-1].startswith("error: a prepare worker process died"), stderr
    _assert_kept_and_resumed(command, store)


def _random_moment(store, chance: random.Random, blocks: int, shards: int):
    """A moment to kill at: while tokenizing (after a random number of blocks) or while writing shards (after a
    random number of them, before the last), a random few milliseconds later."""
    later = chance.uniform(0, 0.05)
    if chance.random() < 0.5:
        after = chance.randrange(blocks)
        reached = lambda: _journal(store).get("blocks", 0) > after or bool(_journal(store).get("sources"))
    else:
        after = chance.randrange(shards - 1)
        reached = lambda: len(_journal(store).get("shards", [])) > after
    since: list[float] = []

    def when() -> bool:
        if not since and reached():
            since.append(time.monotonic())
        return bool(since) and time.monotonic() - since[0] >= later

    return when


@pytest.mark.parametrize("kills", [2, pytest.param(20, marks=pytest.mark.slow)])
def test_sigkill_at_random_moments_resumes_to_the_same_bytes(tmp_path, tokenizer_dir, corpus_lines, kills):
    # Each round: SIGKILL prepare's main process alone at a random moment, tokenizing or writing shards; no
    # worker outlives it (see _killed) and the rerun resumes and ends with a clean run's bytes.
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(corpus_lines[:3000]) + "\n")
    clean, store = tmp_path / "clean.zarr", tmp_path / "resumed.zarr"
    subprocess.run(_prepare_command(tmp_path, tokenizer_dir, corpus, clean), check=True, capture_output=True)
    blocks = corpus.stat().st_size // (3 * 400)  # about: a block is 3 * BLOCK_CHARS bytes of lines
    chance = random.Random(18)
    rounds = 0
    for _ in range(2 * kills):  # a prepare that finished its store before its moment came is not a round
        killed = _killed(_prepare_command(tmp_path, tokenizer_dir, corpus, store), _random_moment(store, chance, blocks, 6))
        if killed and not store.exists():
            rerun = subprocess.run(_prepare_command(tmp_path, tokenizer_dir, corpus, store), capture_output=True, text=True)
            assert rerun.returncode == 0 and "resuming the interrupted prepare" in rerun.stderr, rerun.stderr
            rounds += 1
        assert store_files(store) == store_files(clean)
        shutil.rmtree(store)
        if rounds == kills:
            break
    assert rounds == kills


def test_paragraph_units_over_sentence_lines_warn_once(tmp_path, kogpt2_tokenizer_dir, korean_lines, capsys):
    # Catches the silent 2.7 MB unit: a one-sentence-per-line file read as paragraphs.
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(korean_lines[:2000]) + "\n")
    paragraphs = tmp_path / "paragraphs.txt"
    paragraphs.write_text("\n\n".join(" ".join(korean_lines[i : i + 3]) for i in range(0, 600, 3)) + "\n")
    cfg = config(tmp_path, kogpt2_tokenizer_dir, [{"path": str(sentences), "unit": "paragraph"},
                                                 {"path": str(paragraphs), "unit": "paragraph"}], seq_len=16, workers=1)
    run_prepare(cfg)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1, warnings
    assert f"source {sentences}: paragraph units of up to" in warnings[0] and "[prepare.sources.unit]" in warnings[0]
