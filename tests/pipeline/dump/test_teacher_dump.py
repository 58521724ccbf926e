"""`daram teacher-dump` (top-k kind) end to end on a tiny GPT-2 over the session tokenizer's vocabulary."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import prepare_store, sigkill_alone, survivors
from daram.cli import app
from daram.config import load_config
from daram.errors import DaramError
from daram.pipeline.inspect import run_inspect, run_verify
from daram.pipeline.dump import teacher_dump
from daram.pipeline.dump.teacher_dump import run_teacher_dump, select_shards
from daram.storage import Store, TeacherShard, shard_name

T, K = 2.0, 8
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def store_path(tmp_path, tokenizer_dir, corpus_lines) -> Path:
    """200 real sentences -> 2 shards of ~25 rows x 32 tokens, 4-row chunks (7 per shard, the last partial)."""
    return prepare_store(tmp_path, tokenizer_dir, corpus_lines[:138], seq_len=32, num_shards=2, rows_per_chunk=4)


@pytest.fixture(scope="module")
def dumped(tmp_path_factory, tokenizer_dir, corpus_lines, tiny_teacher_dir) -> Path:
    """One complete top-k dump of both shards, shared by the read-only tests below."""
    tmp = tmp_path_factory.mktemp("dumped")
    path = prepare_store(tmp, tokenizer_dir, corpus_lines[:138], seq_len=32, num_shards=2, rows_per_chunk=4)
    result = dump(path, tiny_teacher_dir, "--all")
    assert result.exit_code == 0, result.output
    return path


def dump_args(store: Path, teacher: Path, *extra: str) -> list[str]:
    return ["teacher-dump", "--store", str(store), "--teacher", str(teacher), "--dtype", "float32", "--device", "cpu",
            "--temperature", str(T), "--kind", "topk", "--top-k", str(K), "--batch-size", "3", *extra]


def dump(store: Path, teacher: Path, *extra: str):
    return CliRunner().invoke(app, dump_args(store, teacher, *extra))


def reference_logprobs(teacher: Path, tokens: np.ndarray) -> torch.Tensor:
    """An independent recomputation: transformers' own forward, /T, full-vocabulary log_softmax (float64)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    with torch.inference_mode():
        logits = model(torch.from_numpy(tokens.astype(np.int64))).logits
    return torch.log_softmax(logits.double() / T, dim=-1)


def shard_files(store: Path, shard: int) -> dict[str, bytes]:
    root = store / "teacher" / shard_name(shard)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and "c" in p.parts}


def test_stored_topk_equals_transformers_recomputation(dumped, tiny_teacher_dir):
    store = Store.open(str(dumped))
    ids, logprobs = store.read_teacher(1)
    tokens = store.read_tokens(1)
    assert ids.shape == logprobs.shape == (*tokens.shape, K)
    assert ids.dtype == np.uint16 and logprobs.dtype == np.float16

    reference = reference_logprobs(tiny_teacher_dir, tokens)  # [rows, seq_len, vocab]: position t = logits[:, t]
    ref_values, ref_ids = reference.topk(K)
    stored = torch.from_numpy(logprobs.astype(np.float32)).double()
    # values: the reference rounded to float16, up to one float16 step where rounding straddles
    assert (stored - ref_values).abs().max() <= float(torch.finfo(torch.float16).eps) * ref_values.abs().max()
    # ids: identical, except where the reference itself ties (a float32 rounding apart)
    exact = (torch.from_numpy(ids.astype(np.int64)) == ref_ids).all(-1)
    assert exact.float().mean() > 0.99
    gathered = reference.gather(-1, torch.from_numpy(ids.astype(np.int64)))
    assert torch.allclose(gathered, ref_values, atol=1e-5, rtol=0)
    assert (np.diff(logprobs.astype(np.float32), axis=-1) <= 0).all()

    # log-probs are normalised over the full vocabulary: the kept mass is <= 1 and 1 - kept is the exact tail
    kept = np.exp(logprobs.astype(np.float64)).sum(-1)
    assert (kept <= 1 + 1e-3).all()
    np.testing.assert_allclose(1 - kept, 1 - reference.exp().topk(K).values.sum(-1).numpy(), atol=1e-4)


def test_manifest_and_stats(dumped, tiny_teacher_dir):
    store = Store.open(str(dumped))
    teacher = store.teacher_manifest()
    assert (teacher.kind, teacher.width, teacher.temperature, teacher.dtype) == ("topk", K, T, "float32")
    assert teacher.teacher == str(tiny_teacher_dir) and teacher.tokens_fingerprint == store.manifest.tokens_fingerprint
    assert teacher.is_complete(0) and teacher.is_complete(1)
    stats = teacher.shards["0"]
    assert stats["rows"] == store.shard_rows(0) and stats["tokens"] == store.shard_rows(0) * store.manifest.seq_len
    assert stats["shard_fingerprint"] == store.manifest.shard_fingerprints[0]
    assert stats["tokens_per_s"] > 0 and stats["device"] == "cpu" and stats["batch_size"] == 3

    _, logprobs = store.read_teacher(0)
    mass = np.exp(logprobs.astype(np.float32)).sum(-1)
    assert stats["captured_mass_mean"] == pytest.approx(float(mass.mean()), rel=1e-5)
    assert stats["captured_mass_p5"] == pytest.approx(float(np.percentile(mass, 5)), abs=2e-4)
    reference = reference_logprobs(tiny_teacher_dir, store.read_tokens(0))
    entropy = -(reference.exp() * reference).sum(-1)
    assert stats["entropy_mean"] == pytest.approx(float(entropy.mean()), rel=1e-5)


def test_inspect_and_verify_show_the_dump(dumped, capsys):
    cfg = load_config(overrides={"store.path": str(dumped)})
    run_inspect(cfg, sample=False)
    out = capsys.readouterr().out
    assert f"top-{K}" in out and "teacher complete" in out and "captured_mass_p5" in out and "entropy_mean" in out
    assert re.search(r"tokens_per_s [\d,]+ ", out) and "in 2 shards," in out  # a human number, a right plural
    assert run_verify(cfg)


def test_skips_complete_shards_and_refuses_other_settings(dumped, tiny_teacher_dir):
    before = shard_files(dumped, 0)
    result = dump(dumped, tiny_teacher_dir, "--all")
    assert result.exit_code == 0, result.output
    assert "shard 0: already complete, skipped" in result.stderr
    assert "0 shards dumped, 2 already complete" in result.stdout
    result = CliRunner().invoke(app, dump_args(dumped, tiny_teacher_dir, "--shard", "1") + ["--temperature", "1.0"])
    assert result.exit_code == 2 and "already holds a teacher dump with temperature=2.0" in result.stderr
    assert shard_files(dumped, 0) == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--shard", "2"], "shard 2 is out of range"),
        (["--shards", "0-5"], "shard 2 is out of range"),
        ([], "say which shards to dump"),
        (["--shard", "0", "--temperature", "0"], "teacher.temperature must be finite and > 0"),
        (["--shard", "0", "--temperature", "-1"], "teacher.temperature must be finite and > 0"),
        (["--shard", "0", "--temperature", "inf"], "teacher.temperature must be a finite number, got inf"),
        (["--shard", "0", "--temperature", "nan"], "teacher.temperature must be a finite number, got nan"),
        (["--shard", "0", "--time-limit", "soon"], "run.time_limit: cannot read 'soon'"),
        (["--shard", "0", "--top-k", "60000"], "exceeds the vocabulary"),
        (["--shard", "0", "--teacher", "/nonexistent/teacher"], "cannot load teacher '/nonexistent/teacher'"),
        (["--shard", "0", "--store", "/nonexistent/store.zarr"], "store not found: /nonexistent/store.zarr"),
    ],
)
def test_bad_input_is_one_line(store_path, tiny_teacher_dir, extra, message):
    result = CliRunner().invoke(app, dump_args(store_path, tiny_teacher_dir) + extra)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr and result.stderr.count("\n") == 1
    assert not (store_path / "teacher").exists()  # nothing written


def test_missing_tokens_shard(store_path, tiny_teacher_dir):
    import shutil

    shutil.rmtree(store_path / "tokens" / "shard-00001")
    result = dump(store_path, tiny_teacher_dir, "--all")
    assert result.exit_code == 2 and "tokens/shard-00001 is missing" in result.stderr
    assert not (store_path / "teacher").exists()


def test_teacher_with_another_tokenizer_is_refused(store_path, tokenizer_dir, other_tokenizer_model):
    from transformers import AutoTokenizer

    result = dump(store_path, other_tokenizer_model, "--shard", "0")
    assert result.exit_code == 2
    ids = len(AutoTokenizer.from_pretrained(other_tokenizer_model))
    assert f"teacher {str(other_tokenizer_model)!r} has another tokenizer ({ids} ids" in result.stderr
    assert f"{tokenizer_dir}: 2,048 ids" in result.stderr


def test_teacher_without_tokenizer_or_weights(tmp_path, store_path, tiny_teacher_dir):
    import shutil

    weights_only = tmp_path / "weights-only"
    shutil.copytree(tiny_teacher_dir, weights_only)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (weights_only / name).unlink(missing_ok=True)
    result = dump(store_path, weights_only, "--shard", "0")
    assert result.exit_code == 2 and "has no tokenizer" in result.stderr

    tokenizer_only = tmp_path / "tokenizer-only"
    shutil.copytree(tiny_teacher_dir, tokenizer_only)
    (tokenizer_only / "model.safetensors").unlink()
    result = dump(store_path, tokenizer_only, "--shard", "0")
    assert result.exit_code == 2 and "cannot load model" in result.stderr and result.stderr.count("\n") == 1


def test_a_lost_done_flag_or_chunk_file_is_repaired_by_dumping_the_shard_again(dumped, tiny_teacher_dir, tmp_path, capsys):
    """Issue 10 item 6: the manifest says complete, the chunks say otherwise; the repair verify prints works."""
    store_path = tmp_path / "store.zarr"
    shutil.copytree(dumped, store_path)
    store = Store.open(str(store_path), mode="r+")
    store.teacher_shard(0).clear_flags([2])  # a lost done flag
    (store_path / "teacher" / shard_name(1) / "topk_logprobs" / "c" / "4" / "0" / "0").unlink()  # a lost chunk file
    cfg = load_config(overrides={"store.path": str(store_path)})
    assert not run_verify(cfg)
    out = capsys.readouterr().out
    assert "teacher shard 0 chunk 2: written, but its done flag is lost\n     repair: daram teacher-dump --shard 0" in out
    assert "teacher shard 1 chunk 4 (rows 16-20): topk_logprobs file missing\n     repair: daram teacher-dump --shard 1" in out

    for shard, chunk in ((0, 2), (1, 4)):
        result = dump(store_path, tiny_teacher_dir, "--shard", str(shard))
        assert result.exit_code == 0, result.output
        assert f"recorded complete, but 1 chunk ({chunk}) lost a file or its done flag: dumping them again" in result.stderr
        assert shard_files(store_path, shard) == shard_files(dumped, shard)
    assert run_verify(cfg)


def test_a_released_shard_is_dumped_again_bit_identical(dumped, tiny_teacher_dir, tmp_path):
    """Issue 13 part 2: a released shard is not "already complete": teacher-dump brings it back."""
    store_path = tmp_path / "store.zarr"
    shutil.copytree(dumped, store_path)
    Store.open(str(store_path), mode="r+").release_shard(0)
    result = dump(store_path, tiny_teacher_dir, "--all")
    assert result.exit_code == 0, result.output
    assert "shard 0: released (deleted); dumping it again" in result.stderr and "1 already complete" in result.stdout
    assert shard_files(store_path, 0) == shard_files(dumped, 0)
    store = Store.open(str(store_path))
    assert store.shard_state(0).state == "complete" and store.teacher_manifest().released == {}


def test_a_held_lock_stops_a_second_writer(store_path, tiny_teacher_dir):
    store = Store.open(str(store_path), mode="r+")
    with store.shard_lock(1):
        result = dump(store_path, tiny_teacher_dir, "--shard", "1")
    assert result.exit_code == 2
    assert f"error: teacher shard 1 of {store_path} is being written by pid {os.getpid()}" in result.stderr


def test_all_dumps_the_free_shards_then_waits_for_a_held_one(store_path, tiny_teacher_dir, monkeypatch):
    """Another writer holds shard 1 until shard 0 is done, then stops: --all takes shard 1 over, exit 0."""
    monkeypatch.setattr(teacher_dump, "HELD_POLL_S", 0.2)
    store = Store.open(str(store_path), mode="r+")
    other_writer = store.shard_lock(1).acquire()

    def stop_after_shard_0():
        while (m := store.teacher_manifest()) is None or not m.is_complete(0):
            time.sleep(0.05)
        time.sleep(0.5)
        other_writer.release()

    threading.Thread(target=stop_after_shard_0, daemon=True).start()
    result = dump(store_path, tiny_teacher_dir, "--all")
    assert result.exit_code == 0, result.output
    assert "waiting for shards 1, held by other processes" in result.stderr
    assert store.teacher_manifest().is_complete(0) and store.teacher_manifest().is_complete(1)


@pytest.mark.slow
def test_two_all_runs_at_once_share_the_work(store_path, dumped, tiny_teacher_dir):
    code = f"import sys\nfrom daram.cli import main\nsys.argv = ['daram'] + {dump_args(store_path, tiny_teacher_dir, '--all')!r}\nmain()\n"
    runs = [run_daram(code) for _ in range(2)]
    errors = [run.communicate(timeout=600)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    for shard in (0, 1):
        assert shard_files(store_path, shard) == shard_files(dumped, shard)


def test_a_stale_lock_of_a_dead_process_is_taken_over(store_path, tiny_teacher_dir):
    store = Store.open(str(store_path), mode="r+")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = store.shard_lock(0)
    record = {**lock._new_record(), "pid": dead.pid}
    store.kv.set(lock.key(0), lock._encode(record))
    result = dump(store_path, tiny_teacher_dir, "--shard", "0")
    assert result.exit_code == 0, result.output
    assert store.teacher_manifest().is_complete(0) and lock.holder() is None


def test_torchrun_ranks_split_the_selection(store_path, monkeypatch):
    store = Store.open(str(store_path))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert select_shards(store, None, None, True) == [1]
    assert select_shards(store, None, "0", False) == []
    monkeypatch.setenv("RANK", "0")
    assert select_shards(store, None, "1,0", False) == [1]


def test_static_workers_split_the_selection(store_path, monkeypatch):
    # a SLURM array or a Kubernetes Indexed Job: task I of N takes shards I, I+N, ... of the selection
    store = Store.open(str(store_path))
    assert select_shards(store, None, None, True, "0/2") == [0] and select_shards(store, None, None, True, "1/2") == [1]
    assert select_shards(store, None, "1,0", False, "0/3") == [1] and select_shards(store, None, None, True, "2/3") == []
    for bad in ("2/2", "1", "a/b", "0/0"):
        with pytest.raises(DaramError, match="--worker expects I/N"):
            select_shards(store, None, None, True, bad)
    with pytest.raises(DaramError, match="--shard N is one already"):
        select_shards(store, 0, None, False, "0/2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DaramError, match="use one of them"):
        select_shards(store, None, None, True, "0/2")


def test_memory_url_store(tokenizer_dir, corpus_lines, tiny_teacher_dir, tmp_path):
    from daram.pipeline.prepare.prepare import run_prepare

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(corpus_lines[:42]) + "\n", encoding="utf-8")
    url = f"memory://daram-{uuid.uuid4().hex}"
    cfg = load_config(overrides={
        "store.path": url, "prepare.tokenizer": str(tokenizer_dir), "prepare.seq_len": 32,
        "prepare.num_shards": 1, "prepare.rows_per_chunk": 4, "prepare.sources": [{"path": str(corpus), "unit": "line"}],
        "teacher.model": str(tiny_teacher_dir), "teacher.dtype": "float32", "teacher.device": "cpu", "teacher.kind": "topk", "teacher.top_k": 4,
    })
    run_prepare(cfg)
    (stats,) = run_teacher_dump(cfg, shard=0).completed
    ids, logprobs = Store.open(url).read_teacher(0)
    assert ids.shape[-1] == 4 and stats["tokens"] == ids.shape[0] * ids.shape[1]


# --- kill -9 and resume -------------------------------------------------------------------------

TORN_WRITE = """
import os, signal, sys
from daram.storage import TeacherShard
write = TeacherShard.write_chunk
def torn(self, chunk, arrays, stats=None):
    if chunk == {chunk}:  # half a chunk on disk (ids, no log-probs, no flag), then the power goes
        lo = chunk * self.store.manifest.rows_per_chunk
        self.arrays[self.format.arrays[0].name][lo : lo + len(arrays[0])] = arrays[0]  # the kind's ids array
        os.kill(os.getpid(), signal.SIGKILL)
    write(self, chunk, arrays, stats)
TeacherShard.write_chunk = torn
from daram.cli import main
sys.argv = ["daram"] + {args!r}
main()
"""


def run_daram(code: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


def assert_resume_matches_clean_dump(store_path, dumped, tiny_teacher_dir):
    """Rerun shard 0 after a torn chunk 3: it resumes there and ends byte-identical to `dumped`."""
    resumed = dump(store_path, tiny_teacher_dir, "--shard", "0")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming: 3/7 chunks already written" in resumed.stderr
    assert shard_files(store_path, 0) == shard_files(dumped, 0)  # every chunk file, byte for byte
    stats_resumed = Store.open(str(store_path)).teacher_manifest().shards["0"]
    stats_clean = Store.open(str(dumped)).teacher_manifest().shards["0"]
    for key in ("captured_mass_mean", "captured_mass_p5", "entropy_mean", "tokens"):
        assert stats_resumed[key] == stats_clean[key]


class PowerCut(BaseException):
    """Stops a dump in the middle of a chunk write, with no chance to tidy up the chunk."""


def test_torn_chunk_then_resume_is_bit_identical(store_path, dumped, tiny_teacher_dir, monkeypatch):
    """In-process twin of the kill -9 test below: chunk 3 is half written (ids only) when the run dies."""
    write = TeacherShard.write_chunk

    def torn(self, chunk, arrays, stats=None):
        if chunk == 3:
            lo = chunk * self.store.manifest.rows_per_chunk
            self.arrays[self.format.arrays[0].name][lo : lo + len(arrays[0])] = arrays[0]  # the kind's ids array
            raise PowerCut
        write(self, chunk, arrays, stats)

    monkeypatch.setattr(TeacherShard, "write_chunk", torn)
    cfg = load_config(overrides={
        "store.path": str(store_path), "teacher.model": str(tiny_teacher_dir), "teacher.dtype": "float32",
        "teacher.device": "cpu", "teacher.temperature": T, "teacher.kind": "topk", "teacher.top_k": K,
        "teacher.batch_size": 3,
    })
    with pytest.raises(PowerCut):
        run_teacher_dump(cfg, shard=0)
    monkeypatch.setattr(TeacherShard, "write_chunk", write)
    store = Store.open(str(store_path))
    assert store.teacher_shard(0).flags().tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert (store_path / "teacher" / shard_name(0) / "topk_ids" / "c" / "3" / "0" / "0").is_file()  # the torn chunk's ids
    with pytest.raises(DaramError, match="topk_logprobs chunk 3 .* is missing"):  # ... and no log-probs to read as zeros
        store.read_teacher(0, 12, 16)

    assert_resume_matches_clean_dump(store_path, dumped, tiny_teacher_dir)


@pytest.mark.slow
def test_kill_mid_chunk_then_resume_is_bit_identical(store_path, dumped, tiny_teacher_dir):
    """`dumped` holds the same tokens, dumped without interruption."""
    args = dump_args(store_path, tiny_teacher_dir, "--shard", "0")
    process = run_daram(textwrap.dedent(TORN_WRITE).format(chunk=3, args=args))
    process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL
    store = Store.open(str(store_path))
    done = store.teacher_shard(0).flags()
    assert done.tolist()[:4] == [1, 1, 1, 0] and not store.teacher_manifest().is_complete(0)
    assert (store_path / "teacher" / shard_name(0) / "topk_ids" / "c" / "3" / "0" / "0").is_file()  # the torn chunk's ids
    with pytest.raises(DaramError, match="topk_logprobs chunk 3 .* is missing"):  # ... and no log-probs to read as zeros
        store.read_teacher(0, 12, 16)

    assert_resume_matches_clean_dump(store_path, dumped, tiny_teacher_dir)


@pytest.mark.slow
def test_kill_at_an_arbitrary_moment_then_resume(store_path, dumped, tiny_teacher_dir):
    args = dump_args(store_path, tiny_teacher_dir, "--all")
    process = run_daram(f"import sys\nfrom daram.cli import main\nsys.argv = ['daram'] + {args!r}\nmain()\n")
    flags = store_path / "teacher" / shard_name(0) / "chunks_done" / "c"
    deadline = time.time() + 240
    while not (flags.is_dir() and any(flags.iterdir())):  # the first chunk flag: the dump is under way
        assert process.poll() is None and time.time() < deadline, "dump ended before it could be killed"
        time.sleep(0.02)
    assert survivors(sigkill_alone(process)) == []  # its writer thread ends with it: nothing else is started
    store = Store.open(str(store_path))
    assert not (store.teacher_manifest().is_complete(0) and store.teacher_manifest().is_complete(1))

    assert dump(store_path, tiny_teacher_dir, "--all").exit_code == 0
    for shard in (0, 1):
        assert shard_files(store_path, shard) == shard_files(dumped, shard)
    assert len(Store.open(str(store_path)).teacher_shard(0).chunk_stats()) == 7


# --- refusals before the teacher loads, damaged tokens, non-finite values, clean pauses -------------


@pytest.fixture
def no_model_load(monkeypatch):
    """Makes loading the teacher fail loudly: what must be decided before it loads is decided before."""

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr("daram.pipeline.dump.teacher_dump.load_causal_lm", refuse)


def test_complete_shards_mismatched_settings_and_held_locks_are_decided_before_the_teacher_loads(
    dumped, store_path, tiny_teacher_dir, no_model_load
):
    result = dump(dumped, tiny_teacher_dir, "--all")
    assert result.exit_code == 0, result.output
    assert "shard 0: already complete, skipped" in result.stderr and "0 shards dumped, 2 already complete" in result.stdout
    result = dump(dumped, tiny_teacher_dir, "--shard", "1", "--top-k", "4")
    assert result.exit_code == 2 and "already holds a teacher dump with width=8" in result.stderr
    store = Store.open(str(store_path), mode="r+")
    with store.shard_lock(0):
        result = dump(store_path, tiny_teacher_dir, "--shard", "0")
    assert result.exit_code == 2 and "teacher shard 0 of" in result.stderr and "is being written by pid" in result.stderr


def test_dtype_is_not_part_of_the_dump_identity(store_path, tiny_teacher_dir):
    """Issue 10 item 15: float16 on one shard, then the advised float32 (auto on CPU) on the next."""
    args = [a for a in dump_args(store_path, tiny_teacher_dir) if a not in ("--dtype", "float32")]
    result = CliRunner().invoke(app, args + ["--shard", "0", "--dtype", "float16"])
    assert result.exit_code == 0, result.output
    assert "float16 on CPU is slow" in result.stderr
    result = CliRunner().invoke(app, args + ["--shard", "1"])  # auto: float32 on this CPU
    assert result.exit_code == 0, result.output
    teacher = Store.open(str(store_path)).teacher_manifest()
    assert teacher.dtype == "float16"  # the first dump's
    assert (teacher.shards["0"]["dtype"], teacher.shards["1"]["dtype"]) == ("float16", "float32")


@pytest.mark.parametrize("damage", ["deleted", "replaced", "flipped"])
def test_dump_refuses_tokens_that_do_not_match_the_fingerprint(store_path, tiny_teacher_dir, damage):
    """Issue 10 item 3: a lost chunk reads as zeros, a swapped one passes its checksum; both change the text."""
    chunks = store_path / "tokens" / shard_name(0) / "c"
    target = chunks / "1" / "0"
    if damage == "deleted":
        target.unlink()
    elif damage == "replaced":
        target.write_bytes((chunks / "2" / "0").read_bytes())
    else:
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        target.write_bytes(bytes(raw))
    result = dump(store_path, tiny_teacher_dir, "--shard", "0")
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and f"tokens/{shard_name(0)}" in result.stderr
    assert "daram prepare --overwrite" in result.stderr
    assert not (store_path / "teacher").exists()
    assert dump(store_path, tiny_teacher_dir, "--shard", "1").exit_code == 0  # the intact shard still dumps


def test_non_finite_logits_stop_the_dump_and_nothing_non_finite_is_written(tmp_path, store_path, tiny_teacher_dir):
    """Issue 10 item 4: a teacher whose embedding of one common token is inf gives NaN logits on its rows."""
    import json

    from transformers import AutoModelForCausalLM

    tokens = Store.open(str(store_path)).read_tokens(0)
    common = int(np.bincount(tokens[tokens >= 8].ravel()).argmax())  # not in the head check's probe (ids 0-7)
    broken = tmp_path / "broken-teacher"
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir)
    model.config.tie_word_embeddings = False  # only the input embedding breaks; the LM head stays finite
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    with torch.no_grad():
        model.get_input_embeddings().weight[common] = float("inf")
    model.save_pretrained(broken)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((tiny_teacher_dir / name).read_bytes())
    result = dump(store_path, broken, "--shard", "0")
    assert result.exit_code == 2, result.output
    error = result.stderr.splitlines()[-1]
    assert error.startswith("error: ") and "non-finite logits on shard 0, rows 0-4" in error
    assert not Store.open(str(store_path)).teacher_manifest().is_complete(0)
    for meta in store_path.rglob("zarr.json"):
        text = meta.read_text()
        assert "NaN" not in text and "Infinity" not in text, meta
        json.loads(text, parse_constant=lambda c: pytest.fail(f"{meta}: {c}"))


def test_time_limit_pauses_cleanly_and_a_rerun_finishes(store_path, dumped, tiny_teacher_dir):
    result = dump(store_path, tiny_teacher_dir, "--all", "--time-limit", "0.01s")
    assert result.exit_code == 75, result.output  # paused, not finished: a requeue loop runs it again
    assert "teacher-dump: paused (time limit 0s) with 2 shards left (0,1)" in result.stdout
    assert "run the same command again to continue" in result.stdout
    assert not list((store_path / "locks").glob("teacher-*"))
    result = dump(store_path, tiny_teacher_dir, "--all")
    assert result.exit_code == 0 and "2 shards dumped" in result.stdout
    assert shard_files(store_path, 0) == shard_files(dumped, 0)


def test_a_caller_with_its_own_pause_says_how_to_continue_itself(store_path, tiny_teacher_dir, capsys):
    # `daram run` pauses the dump inside it: the user typed `daram run`, so teacher-dump's own
    # "run the same command again" would name the wrong command.
    from daram.config import load_config
    from daram.pipeline.pause import Pause
    from daram.pipeline.dump.teacher_dump import run_teacher_dump

    cfg = load_config(overrides={"store.path": str(store_path), "teacher.model": str(tiny_teacher_dir),
                                 "teacher.device": "cpu", "teacher.kind": "topk", "teacher.top_k": K,
                                 "teacher.temperature": T})
    pause = Pause()
    pause.reason = "SIGTERM"  # arrived before the first chunk
    outcome = run_teacher_dump(cfg, shards="0,1", pause=pause, how_to_continue="")
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert outcome.completed == [] and line.startswith("teacher-dump: paused (SIGTERM) with 2 shards left (0,1)")
    assert line.endswith("the shard locks are released") and "same command" not in line


SIGTERM_AT_CHUNK = """
import os, signal, sys
from daram.storage import TeacherShard
write = TeacherShard.write_chunk
def preempted(self, chunk, arrays, stats=None):
    write(self, chunk, arrays, stats)
    if chunk == {chunk}:  # the scheduler preempts the job just after this chunk
        os.kill(os.getpid(), signal.SIGTERM)
TeacherShard.write_chunk = preempted
from daram.cli import main
sys.argv = ["daram"] + {args!r}
main()
"""


@pytest.mark.slow
def test_sigterm_pauses_after_the_chunk_releases_the_lock_and_resumes_bit_identical(store_path, dumped, tiny_teacher_dir):
    """Issue 10 item 7 / issue 13 part 3: SLURM preemption and notebook shutdown send SIGTERM."""
    args = dump_args(store_path, tiny_teacher_dir, "--shard", "0")
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SIGTERM_AT_CHUNK).format(chunk=2, args=args)],
        cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 75, stderr
    store = Store.open(str(store_path))
    assert store.shard_lock(0).holder() is None  # a requeued task on another host can start at once
    done = store.teacher_shard(0).flags().astype(int).tolist()
    # chunk 3 was being computed when chunk 2's write sent the signal; it is finished, nothing later is started
    written = sum(done)
    assert written in (3, 4) and done == [1] * written + [0] * (7 - written)
    assert f"shard 0: paused (SIGTERM) after {written}/7 chunks" in stderr
    assert "teacher-dump: paused (SIGTERM) with 1 shard left (0)" in stdout
    resumed = dump(store_path, tiny_teacher_dir, "--shard", "0")
    assert resumed.exit_code == 0 and f"resuming: {written}/7 chunks already written" in resumed.stderr
    assert shard_files(store_path, 0) == shard_files(dumped, 0)


def test_manifest_records_the_given_and_the_resolved_teacher(store_path, dumped, tiny_teacher_dir, monkeypatch):
    """Issue 10 item 20: a relative path given in one directory resolves from any other."""
    monkeypatch.chdir(tiny_teacher_dir.parent)
    result = dump(store_path, Path(tiny_teacher_dir.name), "--shard", "0")
    assert result.exit_code == 0, result.output
    teacher = Store.open(str(store_path)).teacher_manifest()
    assert teacher.teacher_given == tiny_teacher_dir.name
    assert teacher.teacher == str(tiny_teacher_dir.resolve()) and teacher.commit == ""  # a local directory
    # the absolute spelling of the same teacher continues the same dump
    assert dump(store_path, tiny_teacher_dir, "--shard", "1").exit_code == 0


def test_manifest_records_the_given_and_the_resolved_tokenizer(tmp_path, tokenizer_dir, corpus_lines, monkeypatch):
    """Issue 10 item 20, prepare's side: student-train and inspect load the tokenizer from any directory."""
    monkeypatch.chdir(tokenizer_dir.parent)
    store_path = prepare_store(tmp_path, Path(tokenizer_dir.name), corpus_lines[:40], seq_len=32, num_shards=1)
    tokenizer = Store.open(str(store_path)).manifest.tokenizer
    assert tokenizer.given == tokenizer_dir.name and tokenizer.commit == ""
    assert tokenizer.name_or_path == str(tokenizer_dir.resolve())


# --- no flag without effect: the settings only one kind reads pick or contradict the kind -----------------


def _dump_without_kind(store: Path, teacher: Path, *extra: str):
    return CliRunner().invoke(app, ["teacher-dump", "--store", str(store), "--teacher", str(teacher), "--dtype", "float32",
                                    "--device", "cpu", "--shard", "0", *extra])


def test_top_k_without_a_kind_dumps_topk_and_says_so_first(store_path, tiny_teacher_dir):
    result = _dump_without_kind(store_path, tiny_teacher_dir, "--top-k", "8")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "teacher-dump: teacher.kind = 'topk' (from teacher.top_k)"
    teacher = Store.open(str(store_path)).teacher_manifest()
    assert (teacher.kind, teacher.width) == ("topk", 8)


def test_draws_without_a_kind_keeps_the_default_kind_which_reads_them(store_path, tiny_teacher_dir):
    result = _dump_without_kind(store_path, tiny_teacher_dir, "--draws", "4")
    assert result.exit_code == 0, result.output
    teacher = Store.open(str(store_path)).teacher_manifest()
    assert (teacher.kind, teacher.draws) == ("draw_ranks", 4) and not result.output.startswith("teacher-dump: teacher.kind")


@pytest.mark.parametrize("flags, message", [
    (["--kind", "draws", "--top-k", "32"], "error: teacher.top_k is read only by topk dumps, but teacher.kind is 'draws'"),
    (["--kind", "topk", "--draws", "8"], "error: teacher.draws is read only by sampled, draws and draw_ranks dumps, but teacher.kind is 'topk'"),
    (["--kind", "draws", "--sample-width", "4"], "error: teacher.sample_width is read only by sampled dumps, but teacher.kind is 'draws'"),
    (["--top-k", "8", "--draws", "8"], "error: teacher.draws (sampled, draws and draw_ranks dumps) and teacher.top_k (topk dumps) belong"),
    (["--top-k", "60000"], "error: teacher.top_k=60000 exceeds the vocabulary of"),
])
def test_a_kind_setting_that_would_do_nothing_is_refused_in_one_line(store_path, tiny_teacher_dir, flags, message):
    result = _dump_without_kind(store_path, tiny_teacher_dir, *flags)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if not line.startswith("teacher-dump: teacher.kind = ")]
    assert len(errors) == 1 and errors[0].startswith(message), result.output
    assert Store.open(str(store_path)).teacher_manifest() is None  # refused before anything was written


def test_top_k_under_kind_draws_in_the_config_file_is_refused_naming_both(store_path, tiny_teacher_dir, tmp_path):
    config = tmp_path / "daram.toml"
    config.write_text('[teacher]\nkind = "draws"\ntop_k = 32\n', encoding="utf-8")
    result = _dump_without_kind(store_path, tiny_teacher_dir, "--config", str(config))
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: teacher.top_k is read only by topk dumps, but teacher.kind is 'draws': remove teacher.top_k, or set "
        "teacher.kind to a kind that reads it"]
