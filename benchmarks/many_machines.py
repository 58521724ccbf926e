"""Many machines, one store: `teacher-dump --all` by 1 and by 2 worker processes against a real S3 API (moto's
server on localhost), the requests and bytes a shard costs there, and the share of its session a following
trainer (`daram run --follow`) spends waiting for shards.

Every side is a fresh dump of the same K shards into the same store (the teacher arrays, records and claims are
deleted between calls, the token shards stay). Each worker is its own `daram` process, as on separate machines,
so on a 2-core machine 2 workers share the cores: the ratio says what the claims cost and what parallel work
gains here, not what 2 machines gain. Requests are counted at the server (every HTTP request, the file system's
own included); bytes are what daram's store layer sent and received (one in-process dump of one shard).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/many_machines.py                # 4 shards, 2 x 64 teacher
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/many_machines.py --shards 6 --rounds 3
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from harness import SHARED, add_timing_arguments, compare, load_average

REPO = Path(__file__).resolve().parents[1]
BUCKET = "daram-bench"


class RequestCounter(logging.Handler):
    """moto's server logs one line per HTTP request (werkzeug): count them."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "HTTP/1.1" in record.getMessage():
            self.requests += 1


def start_server() -> tuple[object, RequestCounter]:
    from moto.server import ThreadedMotoServer

    counter = RequestCounter()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False
    werkzeug.addHandler(counter)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_ENDPOINT_URL=f"http://{host}:{port}",
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true", HF_HUB_OFFLINE="1")
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return server, counter


def save_teacher(path: Path, layers: int, width: int) -> Path:
    """A random KoGPT2-vocabulary GPT-2 with the KoGPT2 tokenizer beside it: what `teacher-dump` loads."""
    from daram.pipeline.models import gpt2

    torch.manual_seed(0)
    gpt2(51200, width, 2, layers, n_positions=1024).eval().save_pretrained(path)
    tokenizer = SHARED / "tokenizers" / "kogpt2-base-v2"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tokenizer / name, path / name)
    return path


CONFIG = """
[store]
path = "{store}"
[prepare]
tokenizer = "{tokenizer}"
seq_len = {seq_len}
num_shards = {shards}
rows_per_chunk = 8
[[prepare.sources]]
path = "{corpus}"
unit = "line"
[teacher]
model = "{teacher}"
kind = "draws"
draws = 16
device = "cpu"
dtype = "float32"
batch_size = 8
[student]
n_embd = 64
n_head = 2
n_layer = 2
[train]
out = "student"
shards = "1-{last}"
heldout_shard = 0
batch_size = 8
grad_accum = 1
eval_rows = 8
checkpoint_every = 0
eval_every = 0
log_every = 10
device = "cpu"
"""


def daram(cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "daram", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finished(process: subprocess.Popen) -> str:
    out, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{process.args}: exit {process.returncode}\n{err[-3000:]}")
    return err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4, help="K: shards dumped per call")
    parser.add_argument("--rows", type=int, default=48, help="rows per shard (about)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--parts", default="dump,requests,follow",
                        help="which measurements: dump (1 vs 2 workers), requests (per shard), follow (idle share)")
    add_timing_arguments(parser, rounds=3)
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    server, counter = start_server()
    from daram.storage import Store

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lines = (SHARED / "korean_corpus" / "sentences.txt").read_text(encoding="utf-8").splitlines()
        (work / "corpus.txt").write_text("\n".join(lines[: args.rows * args.seq_len * args.shards // 10]) + "\n")
        teacher = save_teacher(work / "teacher", args.layers, args.width)
        url = f"s3://{BUCKET}/bench/store.zarr"
        (work / "daram.toml").write_text(CONFIG.format(
            store=url, tokenizer=SHARED / "tokenizers" / "kogpt2-base-v2", seq_len=args.seq_len, shards=args.shards,
            corpus=work / "corpus.txt", teacher=teacher, last=args.shards - 1))
        finished(daram(work, "prepare"))
        store = Store.open(url, mode="r+")
        rows = store.manifest.rows_per_shard
        print(f"{args.shards} shards of {min(rows)}-{max(rows)} rows x {args.seq_len} tokens on {url}; teacher "
              f"{args.layers} x {args.width}, vocab 51200, draws-16")

        def workers(n: int):
            def side() -> float:
                fresh(url)
                started = time.perf_counter()
                for process in [daram(work, "teacher-dump", "--all") for _ in range(n)]:
                    finished(process)
                return time.perf_counter() - started
            return side

        if "dump" in parts:
            print("wall time of the whole dump (each worker loads the teacher itself):")
            result = compare({"1 worker": workers(1), "2 workers": workers(2)}, rounds=args.rounds,
                             warmup=args.warmup, clocks=("measured",))
            ratios = result.round_ratios("2 workers")
            print(f"2 workers / 1 worker = {result.ratio('2 workers'):.3f} wall (same-round min {min(ratios):.3f}, "
                  f"max {max(ratios):.3f}); load average {load_average():.2f}")
        if "requests" in parts:
            requests_per_shard(work, url, counter, args.shards)
        if "follow" in parts:
            idle_share(work, url, args.rounds)
    server.stop()


def fresh(url: str) -> None:
    """The dump, its records and claims gone; the token shards kept."""
    from daram.storage import Store

    store = Store.open(url, mode="r+")
    for prefix in ("teacher", "locks"):
        store.kv.delete_dir(prefix)
    store.kv.set("locks/zarr.json", b'{"zarr_format": 3, "node_type": "group", "attributes": {}}')


def requests_per_shard(work: Path, url: str, counter: RequestCounter, shards: int) -> None:
    """Requests and bytes of each shard's dump, in this process (the store layer counts its bytes)."""
    from daram.config import load_config
    from daram.pipeline.dump.teacher_dump import run_teacher_dump
    from daram.storage import Store
    from daram.storage import store as store_module

    fresh(url)
    opened = []
    open_remote = store_module.open_remote

    def counted(*args, **kwargs):
        opened.append(open_remote(*args, **kwargs))
        return opened[-1]

    cfg = load_config(work / "daram.toml")
    measured = []
    for shard in range(shards):  # the first shard also creates the teacher group
        opened.clear()
        store_module.open_remote = counted
        start = counter.requests
        run_teacher_dump(cfg, shard=shard)
        store_module.open_remote = open_remote
        measured.append((counter.requests - start, sum(o.bytes_written for o in opened),
                         sum(o.bytes_read for o in opened), Store.open(url).teacher_bytes(shard)))
    first, later = measured[0], measured[1:]
    print(f"first shard (creates the dump): {first[0]} HTTP requests, {first[1]:,} B sent, {first[2]:,} B received")
    for label, index in (("HTTP requests", 0), ("bytes sent", 1), ("bytes received", 2), ("teacher bytes stored", 3)):
        values = [m[index] for m in later]
        print(f"per later shard, {label}: median {statistics.median(values):,.0f} (min {min(values):,}, max {max(values):,})")
    print(f"({len(Store.open(url).chunk_ranges(1))} chunks per shard)")


def idle_share(work: Path, url: str, rounds: int) -> None:
    """The following trainer's idle share: one dump worker and `run --follow` started together."""
    shares = []

    def follow() -> float:
        fresh(url)
        shutil.rmtree(work / "student", ignore_errors=True)
        trainer = daram(work, "run", "--follow")
        worker = daram(work, "teacher-dump", "--all")
        finished(worker)
        err = finished(trainer)
        waited = re.search(r"follow: waited ([\d.]+)s for shards being dumped \((\d+)% of this session\)", err)
        shares.append(int(waited.group(2)))
        print(f"  trainer waited {waited.group(1)} s, {waited.group(2)}% of its session")
        return float(waited.group(1))

    print("the following trainer beside 1 dump worker:")
    compare({"trainer waiting": follow}, rounds=rounds, warmup=0, clocks=("measured",))
    print(f"idle share of the trainer's session: median {statistics.median(shares)}% (min {min(shares)}%, "
          f"max {max(shares)}%); load average {load_average():.2f}")


if __name__ == "__main__":
    main()
