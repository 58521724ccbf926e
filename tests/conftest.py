"""Shared fixtures.

What tests can build they build here, once per session, as `daram demo` does: Korean sentences from the
demo's generator, a byte-level BPE trained on them, tiny teachers over that vocabulary. So a clone without
../shared still prepares, dumps, trains and resumes. Real data (the KoGPT2 tokenizer, real sentences,
KoBEST/NSMC) comes from ../shared/data (or $DARAM_SHARED_DATA); the tests that need it skip without it.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub id fails at once instead of retrying for ~25 s
# Every process this test session starts inherits this mark, so one left behind is found at the end
# (the machine runs other sessions' processes too, which must not be blamed on this one).
SESSION_MARK = f"DARAM_TEST_SESSION={uuid.uuid4().hex}"
os.environ["DARAM_TEST_SESSION"] = SESSION_MARK.split("=", 1)[1]
ORPHAN_GRACE_S = 10.0  # how long a process of a finished command may take to end

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    return Path(os.environ.get("DARAM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = _shared_data()
    if not path.is_dir() or not any(path.iterdir()):  # an empty directory: a clone's placeholder
        pytest.skip(f"shared data not found at {path} (set DARAM_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def kogpt2_tokenizer_dir(shared_data: Path) -> Path:
    path = shared_data / "tokenizers" / "kogpt2-base-v2"
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"KoGPT2 tokenizer not found at {path}")
    return path


@pytest.fixture(scope="session")
def korean_sentences(shared_data: Path) -> Path:
    path = shared_data / "korean_corpus" / "sentences.txt"
    if not path.is_file():
        pytest.skip(f"Korean sentences not found at {path}")
    return path


@pytest.fixture(scope="session")
def corpus_lines() -> list[str]:
    """4,000 sentences from the demo's Korean generator (seeded): text for stores and tiny teachers alike.

    Tokenized by ``tokenizer_dir``, 0.7 of these sentences make as many rows as one real sentence with KoGPT2:
    the tests take 421, 656, ... where they took 600, 900, ... real ones, so their stores keep their shapes.
    """
    from daram.pipeline.job.demo_corpus import demo_sentences

    return demo_sentences(4000, seed=0)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, corpus_lines: list[str]) -> Path:
    """The demo's byte-level BPE with 2,048 ids, trained here on ``corpus_lines`` (well under a second).

    About 10 tokens a sentence, like KoGPT2's 7 on real text, at a 25th of KoGPT2's logits per position.
    """
    from daram.pipeline.job.demo import train_tokenizer

    tmp = tmp_path_factory.mktemp("tokenizer")
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(corpus_lines) + "\n", encoding="utf-8")
    return train_tokenizer(corpus, tmp / "bpe-2048", vocab_size=2048)


def save_tiny_gpt2(out: Path, tokenizer_dir: Path, seed: int = 0, n_embd: int = 32, n_layer: int = 2,
                   init_std: float = 0.02, train_lines: list[str] | None = None, steps: int = 0):
    """A tiny GPT-2 over ``tokenizer_dir``'s vocabulary (``steps`` of `train_small_teacher` on ``train_lines``
    when given), saved with its tokenizer like a hub model. Returns ``out``."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from daram.pipeline.models import gpt2, train_small_teacher

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = gpt2(len(tokenizer), n_embd=n_embd, n_head=2, n_layer=n_layer, n_positions=256, tokenizer=tokenizer,
                 init_std=init_std)
    if steps:
        ids = [i for line in train_lines for i in tokenizer(line)["input_ids"] + [tokenizer.eos_token_id]]
        rows = np.array(ids[: len(ids) // 64 * 64]).reshape(-1, 64)
        train_small_teacher(model, rows, steps=steps, batch_size=8, lr=3e-2, seed=seed, desc="tests: train teacher")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def other_tokenizer_model(tmp_path_factory, corpus_lines: list[str]) -> Path:
    """A tiny GPT-2 saved with a tokenizer that is not the session one (a 400-id BPE on other pre-tokenization):
    what every check of a model's tokenizer against a store must refuse."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.train_from_iterator(corpus_lines[:500], trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "</s>", "<pad>"]))
    tmp = tmp_path_factory.mktemp("other_tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>").save_pretrained(
        tmp / "tokenizer")
    return save_tiny_gpt2(tmp / "model", tmp / "tokenizer", n_embd=16, n_layer=1)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tokenizer_dir: Path) -> Path:
    """A tiny random GPT-2 (2 layers, 32 wide) over the session tokenizer, saved with it like a hub model."""
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny_teacher"), tokenizer_dir)


@pytest.fixture(scope="session")
def korean_lines(korean_sentences: Path) -> list[str]:
    """The first 3,000 real Korean sentences: enough for a few shards of short rows."""
    with korean_sentences.open(encoding="utf-8") as handle:
        return [next(handle).strip() for _ in range(3000)]


def prepare_store(tmp: Path, tokenizer_dir: Path, lines: list[str], seq_len: int = 64, num_shards: int = 2,
                  rows_per_chunk: int = 16, name: str = "store.zarr") -> Path:
    """Run the real `prepare` on ``lines`` (one unit per line) and return the store's path."""
    from daram.config import load_config
    from daram.pipeline.prepare.prepare import run_prepare

    corpus = tmp / f"{name}.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    store = tmp / name
    cfg = load_config(overrides={
        "store.path": str(store), "prepare.tokenizer": str(tokenizer_dir), "prepare.seq_len": seq_len,
        "prepare.num_shards": num_shards, "prepare.rows_per_chunk": rows_per_chunk,
        "prepare.sources": [{"path": str(corpus), "unit": "line"}],
    })
    run_prepare(cfg)
    return store


@pytest.fixture
def prepared_store(tmp_path: Path, tokenizer_dir: Path, corpus_lines: list[str]) -> Path:
    """A fresh store per test: 600 sentences, session-tokenizer tokens, rows of 64, 2 shards, 16-row chunks."""
    return prepare_store(tmp_path, tokenizer_dir, corpus_lines[:421])


@pytest.fixture(scope="session")
def trained_tiny_teacher_dir(tmp_path_factory, tokenizer_dir: Path, corpus_lines: list[str]) -> Path:
    """The tiny teacher's shape trained 50 steps on the last 1,000 of ``corpus_lines`` (stores are built from the
    first ones), so its distributions are real ones: something for distillation to transfer."""
    return save_tiny_gpt2(tmp_path_factory.mktemp("trained_tiny_teacher"), tokenizer_dir,
                          train_lines=corpus_lines[-1000:], steps=50)


def write_teacher_dump(store_path: Path, teacher_dir: Path, kind: str = "topk", width: int = 16,
                       temperature: float = 2.0, draws: int = 50, seed: int = 0, shards: list[int] | None = None,
                       complete: bool = True) -> None:
    """Fill a store's teacher arrays from ``teacher_dir``'s logits through the Store API alone (independent of
    `daram teacher-dump`): top-k ids + log_softmax(logits / T), or ``draws`` samples as unique ids + counts.
    The one test dump writer; ``complete=False`` leaves the shards unrecorded, as a crash before the end would."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from daram.storage import Store, TeacherManifest

    store = Store.open(str(store_path), mode="r+")
    manifest = store.manifest
    model = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    teacher = store.init_teacher(TeacherManifest(
        teacher=str(teacher_dir), revision="main", dtype="float32", temperature=temperature, kind=kind, width=width,
        vocab_size=manifest.tokenizer.vocab_size, tokens_fingerprint=manifest.tokens_fingerprint,
        rows_per_chunk=manifest.rows_per_chunk, draws=draws if kind == "sampled" else 0, seed=seed,
    ))
    generator = torch.Generator().manual_seed(seed)
    for shard in range(manifest.num_shards) if shards is None else shards:
        with store.shard_lock(shard):
            target = store.teacher_shard(shard, teacher, create=True)
            captured = []
            for chunk, (lo, hi) in enumerate(store.chunk_ranges(shard)):
                tokens = torch.from_numpy(store.read_tokens(shard, lo, hi).astype(np.int64))
                with torch.no_grad():
                    logp = torch.log_softmax(model(tokens).logits / temperature, -1)
                if kind == "topk":
                    values, ids = logp.topk(width, -1)
                    values = values.half()
                    captured.append(values.float().exp().sum(-1).mean().item())
                else:
                    drawn = torch.multinomial(logp.exp().flatten(0, 1), draws, replacement=True, generator=generator)
                    dense = torch.zeros(drawn.shape[0], logp.shape[-1]).scatter_add_(1, drawn, torch.ones(drawn.shape))
                    counts, ids = dense.sort(dim=-1, descending=True, stable=True)
                    ids = torch.where(counts > 0, ids, 0)  # padding: count 0, id 0, after the drawn ids
                    values = counts[:, :width].to(torch.uint8).view(*logp.shape[:2], width)
                    ids = ids[:, :width].view(*logp.shape[:2], width)
                target.write_chunk(chunk, (ids.numpy().astype(np.uint16), values.numpy()))
            if complete:
                stats = {"rows": store.shard_rows(shard)}
                if captured:
                    stats["captured_mass_mean"] = float(np.mean(captured))
                store.record_teacher_shard(shard, stats)


# --- no process outlives its command --------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state, ppid, pgrp, session, ...); None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "?"


def _live_pids(matches) -> list[int]:
    """The live (not zombie) processes for which ``matches(pid, stat)`` holds."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] != "Z" and matches(int(entry.name), stat):
                pids.append(int(entry.name))
    return pids


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        stat = _stat(pid)
        if stat is None:
            return False
        pid = int(stat[1])
    return False


def descendants(pid: int) -> list[int]:
    return _live_pids(lambda other, stat: other != pid and _descends_from(other, pid))


def sigkill_alone(process) -> list[tuple[int, str]]:
    """SIGKILL ``process`` alone, as an out-of-memory killer or a preempted node does: not its children.
    Returns its descendants at that moment (pid and start time), for :func:`survivors`."""
    family = [(pid, stat[19]) for pid in descendants(process.pid) if (stat := _stat(pid)) is not None]
    process.send_signal(signal.SIGKILL)
    process.wait()
    return family


def survivors(family: list[tuple[int, str]], grace: float = ORPHAN_GRACE_S) -> list[str]:
    """Those of ``family`` (see :func:`sigkill_alone`) still alive ``grace`` seconds later, by pid and command
    line: empty when none outlived the killed command."""
    deadline = time.monotonic() + grace
    while True:
        alive = [pid for pid, started in family if (stat := _stat(pid)) is not None and stat[0] != "Z" and stat[19] == started]
        if not alive or time.monotonic() > deadline:
            return [f"pid {pid} (parent {(_stat(pid) or ['?', '?'])[1]}): {_cmdline(pid)}" for pid in alive]
        time.sleep(0.1)


def _orphans() -> list[int]:
    """This session's processes that are no longer descendants of it: started by a command that ended
    without them."""
    me = os.getpid()

    def ours(pid: int, stat: list[str]) -> bool:
        if pid == me or _descends_from(pid, me):
            return False
        try:
            return SESSION_MARK.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # another user's process, or gone
            return False

    return _live_pids(ours)


def pytest_sessionfinish(session, exitstatus):
    """Fail the session if a process it started outlived its command (checked for ORPHAN_GRACE_S)."""
    deadline = time.monotonic() + ORPHAN_GRACE_S
    while (orphans := _orphans()) and time.monotonic() < deadline:
        time.sleep(0.2)
    if orphans:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"pid {pid} (parent {(_stat(pid) or ['?', '?'])[1]}): {_cmdline(pid)}" for pid in orphans]
        message = "processes started by this test session outlived their command:\n  " + "\n  ".join(lines)
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(message, red=True)
        else:
            print(message)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


S3_BUCKET = "daram-test"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API on localhost: moto's standalone server, spoken to through s3fs as a bucket would be. The
    endpoint and (fake) credentials go into the environment, so subprocesses (`daram ...`) find them the usual
    way (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...). Yields the endpoint URL."""
    import logging

    import moto.server as server_module  # the dev extra installs moto[server] and s3fs: never skipped silently

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")
    before = {name: os.environ.get(name) for name in names}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_ENDPOINT_URL=endpoint,
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    import boto3

    boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
    yield endpoint
    server.stop()
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def s3_url(s3_server) -> str:
    """A fresh store URL in the test bucket."""
    import uuid

    return f"s3://{S3_BUCKET}/{uuid.uuid4().hex}/store.zarr"
