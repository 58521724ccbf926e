"""`daram plan`: a forecast of tokens, bytes, the disk window and GPU-hours before anything heavy runs."""

from __future__ import annotations

import json
import math
import re

import pytest
from typer.testing import CliRunner

from conftest import prepare_store
from daram.cli import app
from daram.config import Config
from daram.pipeline.job.plan import CORPUS_BYTES_PER_TOKEN, PEAK_FLOPS, _hours, forward_flops_per_token, window_size
from daram.storage import Store, shard_name, teacher_format

TEACHER_FLAGS = ["--set", "teacher.kind=sampled", "--set", "teacher.draws=16", "--set", "teacher.device=cpu",
                 "--set", "teacher.batch_size=4", "--set", "train.heldout_shard=3", "--set", "train.shards=0-2"]


def plan_json(store, teacher, *extra):
    result = CliRunner().invoke(app, ["plan", "--store", str(store), "--set", f"teacher.model={teacher}",
                                      *TEACHER_FLAGS, "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def teacher_bytes(store_path, shard):
    return sum(p.stat().st_size for p in (store_path / "teacher" / shard_name(shard)).rglob("*") if p.is_file() and "c" in p.parts)


def test_plan_json_on_a_small_real_store(tmp_path, tokenizer_dir, corpus_lines, tiny_teacher_dir):
    store_path = prepare_store(tmp_path, tokenizer_dir, corpus_lines[:421], seq_len=32, num_shards=4, rows_per_chunk=8)
    manifest = Store.open(str(store_path)).manifest
    plan = plan_json(store_path, tiny_teacher_dir, "--time-limit", "1h")
    for key in ("tokens", "teacher_bytes_per_token", "token_bytes", "window_shards", "dump_gpu_hours", "train_gpu_hours"):
        assert key in plan
    assert set(plan["dump_gpu_hours"]) == set(plan["train_gpu_hours"]) == {"P100", "T4", "A100", "H100"}
    assert plan["tokens"] == manifest.total_tokens and plan["tokens_source"] == "the store"
    assert plan["token_bytes"] == sum(p.stat().st_size for p in (store_path / "tokens").rglob("*") if p.is_file())
    assert plan["teacher_bytes_source"].startswith("measured:") and "dumped into memory" in plan["teacher_bytes_source"]
    assert plan["training_shards"] == [0, 1, 2] and plan["window_shards"] == 3  # no budget: all at once
    # the teacher's own shape (2 layers, 32 wide), not the reference's
    assert plan["dump_flops_per_token"] == forward_flops_per_token(2, 32, 2048, 32)
    assert plan["sessions"]["P100"] == 1

    # The measured figure forecasts the real dump: dump every shard and compare.
    result = CliRunner().invoke(app, ["teacher-dump", "--store", str(store_path), "--teacher", str(tiny_teacher_dir),
                                      "--all", *TEACHER_FLAGS])
    assert result.exit_code == 0, result.output
    per_shard = [teacher_bytes(store_path, s) for s in range(4)]
    actual = sum(per_shard) / manifest.total_tokens
    assert plan["teacher_bytes_per_token"] == pytest.approx(actual, rel=0.15)

    # With the dump in the store, its bytes are the figure; the budget decides the window.
    budget = int((per_shard[3] + 2.5 * max(per_shard[:3])) * 1.06)
    plan = plan_json(store_path, tiny_teacher_dir, "--disk-budget", str(budget))
    assert plan["teacher_bytes_source"] == "measured: 4 dumped shards in the store"
    stored = sum(Store.open(str(store_path)).teacher_bytes(s) for s in range(4))
    assert plan["teacher_bytes_per_token"] == pytest.approx(stored / manifest.total_tokens, abs=0.01)
    assert plan["window_shards"] == 2 and plan["disk_budget"] == budget
    plan = plan_json(store_path, tiny_teacher_dir, "--disk-budget", str(per_shard[3]))
    assert plan["window_shards"] == 0 and any("does not hold one training shard" in n for n in plan["notes"])


def test_plan_without_a_store_estimates_from_the_corpus_bytes(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes("가나다라마바사아자차\n".encode() * 20_000)
    result = CliRunner().invoke(app, [
        "plan", "--store", str(tmp_path / "none.zarr"), "--set", f'prepare.sources=[{{path="{corpus}"}}]',
        "--set", "prepare.seq_len=128", "--set", "prepare.num_shards=8", "--set", "train.shards=0-6",
        "--set", "train.heldout_shard=7", "--no-measure",
    ])
    assert result.exit_code == 0, result.output
    assert f"{int(corpus.stat().st_size / CORPUS_BYTES_PER_TOKEN) // 128 * 128:,} in 8 shards" in result.stdout
    default = Config().teacher  # the default kind's measured figure per draw, times its draws
    fmt = teacher_format(default.kind)
    assert f"{default.draws * fmt.bytes_per_slot:.1f} B/token" in result.stdout
    assert f"estimate: {fmt.bytes_per_slot:.2f} {fmt.bytes_note}" in result.stdout
    assert "MFU assumed, not measured" in result.stdout
    # a small job's GPU time in seconds or minutes, for people: it printed 2.17e-05 (hours)
    duration = r"(< 1 s|[\d.,]+ (s|min|h))"
    rows = [line for line in result.stdout.splitlines() if line.split(" ")[0] in PEAK_FLOPS]
    assert len(rows) == 4 and all(re.fullmatch(rf"\S+ +{duration} +{duration} +\S+", row) for row in rows), rows
    assert any(" s " in row or " min " in row for row in rows), rows
    assert not re.search(r"\de[+-]\d", result.stdout), result.stdout  # no scientific notation anywhere


@pytest.mark.parametrize("hours, shown", [(2.17e-05, "< 1 s"), (0.004, "14 s"), (0.02, "1.2 min"), (0.58, "35 min"),
                                          (8.82, "8.82 h"), (133, "133 h"), (1234.5, "1,234 h")])
def test_gpu_time_reads_as_hours_minutes_or_seconds(hours, shown):
    assert _hours(hours) == shown


def test_window_size_lets_the_largest_shards_decide():
    assert window_size([10, 30, 20], budget=0) == 3
    assert window_size([10, 30, 20], budget=53, fixed=0) == 2  # 30 + 20 fit, whichever pair comes
    assert window_size([10, 30, 20], budget=53, fixed=5) == 1
    assert window_size([10, 30, 20], budget=int(29 * 1.05)) == 0


def test_forward_flops_count_two_per_weight_of_a_real_gpt2():
    from daram.pipeline.models import gpt2

    model = gpt2(1000, n_embd=64, n_head=4, n_layer=3, n_positions=128)
    blocks = sum(p.numel() for n, p in model.named_parameters() if ".h." in n and p.dim() == 2)
    head = model.lm_head.weight.numel()
    attention = 2 * 3 * 128 * 64
    assert forward_flops_per_token(3, 64, 1000, 128) == pytest.approx(2 * (blocks + head) + attention, rel=0.01)
    assert PEAK_FLOPS["P100"] < PEAK_FLOPS["T4"] < PEAK_FLOPS["A100"] < PEAK_FLOPS["H100"]


def test_machines_divide_the_dump_wall_hours_and_say_the_sessions_each(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes("가나다라마바사아자차\n".encode() * 20_000)
    args = ["plan", "--store", str(tmp_path / "none.zarr"), "--set", f'prepare.sources=[{{path="{corpus}"}}]',
            "--set", "prepare.num_shards=8", "--set", "train.shards=0-6", "--set", "train.heldout_shard=7",
            "--no-measure", "--time-limit", "1s", "--json"]
    one = json.loads(CliRunner().invoke(app, args).stdout)
    three = json.loads(CliRunner().invoke(app, [*args, "--machines", "3"]).stdout)
    assert one["machines"] == 1 and one["dump_wall_hours"] == one["dump_gpu_hours"]
    assert three["machines"] == 3 and set(three["dump_wall_hours"]) == set(PEAK_FLOPS)
    for gpu, hours in three["dump_gpu_hours"].items():
        assert three["dump_wall_hours"][gpu] == pytest.approx(hours / 3, rel=1e-3)
        assert three["dump_sessions_per_machine"][gpu] == math.ceil(three["dump_wall_hours"][gpu] * 3600 / 1)
    assert three["train_gpu_hours"] == one["train_gpu_hours"]  # one machine trains: not divided
    # more machines than shards: the shards are the unit of work
    many = json.loads(CliRunner().invoke(app, [*args, "--machines", "20"]).stdout)
    assert many["dump_wall_hours"]["T4"] == pytest.approx(one["dump_gpu_hours"]["T4"] / 8, rel=1e-3)
    assert any("only 8 shards to share" in note for note in many["notes"])
    table = CliRunner().invoke(app, [*args[:-1], "--machines", "3"]).stdout
    assert "3 machines dump (teacher-dump --all on each), one trains (run --follow):" in table
    refused = CliRunner().invoke(app, [*args, "--machines", "0"])
    assert refused.exit_code == 2 and "--machines 0" in refused.output
