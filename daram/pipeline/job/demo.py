"""``daram demo``: the whole pipeline, offline, on a CPU, in minutes.

Setup: a corpus (the package's own generated Korean sentences, or lines sampled from --corpus),
a byte-level BPE tokenizer trained on it (or --tokenizer), and the real ``prepare`` into a store.
Then a small teacher GPT-2 is trained on the store's training shards, so its distributions carry
real structure, and the real pipeline runs in order: ``teacher-dump`` of every shard, ``student-train``
twice with the same steps (with KD, and CE-only with ``alpha_kd = 0``), and the held-out metrics
of the teacher and both students on the held-out shard. Finish: ``report.md`` (+ ``report.json``)
with the table, the store's bytes per token, the stage timings and two PNG plots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from daram.config import Config
from daram.errors import DaramError
from daram.text import plural

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.toml"
# --quick: a smaller run for the test suite (under about a minute on two cores). Applied between
# the config file and --set, so --set and flags still win.
QUICK_SETTINGS = (
    "demo.sentences=2000",
    "demo.vocab_size=1024",
    "demo.teacher_n_embd=64",
    "demo.teacher_n_layer=2",
    "demo.teacher_n_head=2",
    "demo.teacher_steps=120",
    "demo.teacher_lr=5e-3",
    "prepare.num_shards=3",
    "train.shards=0-1",
    "train.heldout_shard=2",
    "train.max_steps=60",
    "train.warmup_steps=5",
    "train.lr=1e-2",  # few steps: a higher rate (2e-2 diverged)
    "train.min_lr=1e-3",
    "train.eval_every=20",
    "student.n_embd=32",
)
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
REPORT_MD, REPORT_JSON = "report.md", "report.json"
MARKER = ".daram-demo"  # marks a directory the demo owns, so a rerun may replace what it wrote there
LOSS_PNG, KL_PNG = "loss_curves.png", "kl_to_teacher.png"


@dataclasses.dataclass(frozen=True)
class DemoPaths:
    """Where a demo run writes, all under one directory."""

    root: Path
    corpus: Path
    tokenizer: Path
    store: Path
    teacher: Path
    student_kd: Path
    student_ce: Path

    @classmethod
    def under(cls, root: Path) -> "DemoPaths":
        names = ("corpus.txt", "tokenizer", "store.zarr", "teacher", "student-kd", "student-ce")
        return cls(root, *(root / name for name in names))

    def outputs(self) -> list[Path]:
        """Everything a run writes, so a rerun starts clean without touching anything else in the directory."""
        written = [getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "root"]
        return [*written, *(self.root / name for name in (REPORT_MD, REPORT_JSON, LOSS_PNG, KL_PNG))]

    def claim(self) -> None:
        """Make ``root`` the demo's (new, empty or an earlier demo's) and clear an earlier run's outputs."""
        if self.root.is_dir() and any(self.root.iterdir()) and not (self.root / MARKER).is_file():
            raise DaramError(f"demo.workdir {self.root} is not empty and holds no earlier demo; choose a new directory")
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / MARKER).touch()
        for path in self.outputs():
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def demo_config(config: str | Path | None, sets: list[str] | tuple[str, ...], quick: bool, overrides: dict) -> Config:
    """configs/demo.toml (or ``config``), then --quick, then --set, then the flags."""
    from daram.config import load_config

    return load_config(config or DEMO_CONFIG, (*(QUICK_SETTINGS if quick else ()), *sets), overrides)


def run_demo(cfg: Config) -> dict[str, Any]:
    """Run every stage; returns what report.json holds."""
    if cfg.demo.corpus and not Path(cfg.demo.corpus).is_file():
        raise DaramError(f"demo.corpus: no such file: {cfg.demo.corpus}")
    if cfg.train.split(cfg.prepare.num_shards)[1] < 0:
        raise DaramError(f"train.heldout_shard: the demo scores its students on a held-out shard; name one of the "
                         f"{cfg.prepare.num_shards} shards")
    paths = DemoPaths.under(Path(cfg.demo.workdir))
    paths.claim()
    cfg = cfg.replace("demo", threads=cpu_threads(cfg.demo.threads))
    with torch_threads(cfg.demo.threads):
        return _run_stages(cfg, paths)


def cpu_threads(setting: int) -> int:
    """``setting``, or for 0 the cores not already busy (1-minute load average), at least one.

    Two torch threads on two cores that another job also uses ran the demo's teacher about 5x slower
    than one thread (docs/benchmarks.md): OpenMP threads spin waiting for each other.
    """
    if setting:
        return setting
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, (os.cpu_count() or 1) - busy)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's CPU threads for the duration, restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run_stages(cfg: Config, paths: DemoPaths) -> dict[str, Any]:
    demo = cfg.demo

    timings: dict[str, float] = {}
    stages = 7

    def stage(number: int, name: str, detail: str) -> float:
        print(f"[demo {number}/{stages}] {name}: {detail}", file=sys.stderr, flush=True)
        return time.perf_counter()

    # 1. corpus
    started = stage(1, "corpus", demo.corpus or f"{demo.sentences:,} generated sentences")
    corpus = write_corpus(cfg, paths.corpus)
    timings["corpus"] = time.perf_counter() - started

    # 2. tokenizer
    started = stage(2, "tokenizer", demo.tokenizer or f"byte-level BPE, {demo.vocab_size:,} ids, trained on the corpus")
    tokenizer_path = demo.tokenizer or str(train_tokenizer(paths.corpus, paths.tokenizer, demo.vocab_size))
    timings["tokenizer"] = time.perf_counter() - started

    # 3. prepare (the real command)
    from daram.pipeline.prepare.prepare import run_prepare

    cfg = _with(cfg, store={"path": str(paths.store)}, teacher={"model": str(paths.teacher)},
                prepare={"tokenizer": tokenizer_path, "sources": [{"path": str(paths.corpus), "unit": "line", "name": corpus["name"]}]})
    started = stage(3, "prepare", f"{paths.corpus} -> {paths.store}")
    manifest = run_prepare(cfg, overwrite=True)
    timings["prepare"] = time.perf_counter() - started
    train_shards, heldout = cfg.train.split(manifest.num_shards)

    # 4. the teacher
    started = stage(4, "teacher", f"GPT-2 {demo.teacher_n_layer}x{demo.teacher_n_embd}, {plural(demo.teacher_steps, 'step')} on shards {cfg.train.shards}")
    teacher_curve = train_teacher(cfg, train_shards, paths.teacher)
    timings["teacher training"] = time.perf_counter() - started

    # 5. teacher-dump of every shard (the real command)
    from daram.pipeline.dump.teacher_dump import run_teacher_dump

    started = stage(5, "teacher-dump", f"top-{cfg.teacher.top_k} at T={cfg.teacher.temperature:g}, all {manifest.num_shards} shards")
    run_teacher_dump(cfg, all_shards=True)
    timings["teacher-dump"] = time.perf_counter() - started

    # 6. two students with the same data, steps and seed: KD, and the CE-only baseline
    from daram.pipeline.train.student_train import run_student_train

    students = {"KD student": (paths.student_kd, cfg.train.alpha_kd), "CE-only student": (paths.student_ce, 0.0)}
    summaries = {}
    for i, (name, (out, alpha_kd)) in enumerate(students.items()):
        started = stage(6, f"student-train ({i + 1}/2)", f"{name}, alpha_kd={alpha_kd:g} -> {out}")
        summaries[name] = run_student_train(_with(cfg, train={"out": str(out), "alpha_kd": alpha_kd}))
        timings[f"student-train, {name}"] = time.perf_counter() - started

    # 7. held-out metrics of all three against the stored teacher
    started = stage(7, "held-out evaluation", f"shard {heldout}, {plural(manifest.rows_per_shard[heldout], 'row')}")
    models = {"teacher": paths.teacher, "CE-only student": paths.student_ce, "KD student": paths.student_kd}
    metrics = heldout_table(cfg, models, heldout)
    timings["held-out evaluation"] = time.perf_counter() - started

    report = {
        "settings": _settings(cfg, corpus, manifest),
        "heldout_shard": heldout,
        "metrics": metrics,
        "store": store_sizes(str(paths.store)),
        "students": {name: {"steps": s["steps"], "tokens": s["tokens"], "seconds": s["seconds"]} for name, s in summaries.items()},
        "teacher_curve": teacher_curve,
        "timings_s": timings,
        "outputs": {"student": str(paths.student_kd), "baseline": str(paths.student_ce), "teacher": str(paths.teacher),
                    "store": str(paths.store)},
    }
    write_report(report, paths)
    total = sum(timings.values())
    kd, ce = metrics["KD student"], metrics["CE-only student"]
    print(
        f"demo: done in {total:.0f}s; held-out perplexity KD {kd['perplexity']:.2f} vs CE-only {ce['perplexity']:.2f} "
        f"(teacher {metrics['teacher']['perplexity']:.2f}), KL to teacher {kd['kl']:.3f} vs {ce['kl']:.3f}; "
        f"report {paths.root / REPORT_MD}, student {paths.student_kd}"
    )
    return report


# --- stages ---------------------------------------------------------------------------------------


def write_corpus(cfg: Config, path: Path) -> dict[str, Any]:
    """The package's own sentences, or a seeded sample of --corpus lines (shuffled, so the held-out
    shard comes from the same mix as the training shards)."""
    demo = cfg.demo
    if not demo.corpus:
        from daram.pipeline.job.demo_corpus import write_demo_corpus

        write_demo_corpus(path, demo.sentences, demo.seed)
        return {"name": "daram demo corpus (generated)", "lines": demo.sentences}
    try:
        lines = [line.strip() for line in Path(demo.corpus).read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise DaramError(f"demo.corpus {demo.corpus}: not UTF-8 text") from None
    if not lines:
        raise DaramError(f"demo.corpus {demo.corpus}: holds no text")
    random.Random(demo.seed).shuffle(lines)
    path.write_text("\n".join(lines[: demo.sentences]) + "\n", encoding="utf-8")
    return {"name": f"{demo.corpus} (sample)", "lines": min(len(lines), demo.sentences)}


def train_tokenizer(corpus: Path, out: Path, vocab_size: int) -> Path:
    """A byte-level BPE (no unknown characters, like GPT-2's) trained on the corpus, saved for AutoTokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,  # well under a second on the demo corpus
    )
    tokenizer.train([str(corpus)], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS).save_pretrained(out)
    return out


def train_teacher(cfg: Config, shards: list[int], out: Path) -> list[dict[str, float]]:
    """Train a small GPT-2 on the training shards' rows (never the held-out one); save it with the tokenizer.

    Returns the loss curve (``train_small_teacher``: the students' own schedule, rows drawn at random).
    """
    import numpy as np
    import torch

    from daram.pipeline.hf import load_tokenizer
    from daram.pipeline.models import gpt2, train_small_teacher
    from daram.storage import Store

    demo = cfg.demo
    store = Store.open(cfg.store.path)
    info = store.manifest.tokenizer
    rows = np.concatenate([store.read_tokens(s) for s in shards])
    tokenizer = load_tokenizer(info.name_or_path)
    torch.manual_seed(demo.seed)
    # No dropout: a short run on little data, where dropout only slows it.
    model = gpt2(info.vocab_size, demo.teacher_n_embd, demo.teacher_n_head, demo.teacher_n_layer,
                 n_positions=store.manifest.seq_len, tokenizer=tokenizer)
    curve = train_small_teacher(model, rows, demo.teacher_steps, demo.teacher_batch_size, demo.teacher_lr,
                                seed=demo.seed, desc="demo: train teacher")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return curve


def heldout_table(cfg: Config, models: dict[str, Path], shard: int) -> dict[str, dict[str, Any]]:
    """heldout_metrics of each model on every row of the held-out shard, against the stored teacher."""
    from tqdm import tqdm

    from daram.pipeline.heldout import heldout_metrics
    from daram.pipeline.hf import load_causal_lm
    from daram.storage import Store

    store = Store.open(cfg.store.path)
    results = {}
    for name, path in tqdm(models.items(), desc="demo: held-out", unit="model", dynamic_ncols=True, file=sys.stderr):
        model = load_causal_lm(str(path), "float32", "cpu")
        results[name] = heldout_metrics(model, store, shard, batch_size=cfg.eval.heldout_batch_size)
        results[name]["parameters"] = sum(p.numel() for p in model.parameters())
    return results


def store_sizes(url: str) -> dict[str, Any]:
    """Tokens and stored bytes per token of the token shards and of the teacher dump."""
    from daram.storage import Store

    store = Store.open(url)
    tokens = store.manifest.total_tokens
    token_bytes, teacher_bytes = store.token_bytes(), store.teacher_bytes()
    return {
        "tokens": tokens,
        "token_bytes": token_bytes,
        "teacher_bytes": teacher_bytes,
        "token_bytes_per_token": token_bytes / tokens,
        "teacher_bytes_per_token": teacher_bytes / tokens,
    }


# --- report ---------------------------------------------------------------------------------------


def write_report(report: dict[str, Any], paths: DemoPaths) -> None:
    (paths.root / REPORT_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    plot_curves(paths)
    (paths.root / REPORT_MD).write_text(report_markdown(report), encoding="utf-8")


def plot_curves(paths: DemoPaths) -> None:
    """Two PNGs from the students' metrics.jsonl: training loss curves, and held-out KL to the teacher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from daram.pipeline.train.student_train import read_metrics

    runs = {"KD student": read_metrics(paths.student_kd), "CE-only student": read_metrics(paths.student_ce)}

    fig, ax = plt.subplots(figsize=(7, 4))
    for (name, records), color in zip(runs.items(), ("tab:blue", "tab:orange")):
        train = [r for r in records if r.get("split") != "heldout"]
        held = [r for r in records if r.get("split") == "heldout"]
        ax.plot([r["step"] for r in train], [r["ce"] for r in train], color=color, alpha=0.6, label=f"{name}: CE (train)")
        ax.plot([r["step"] for r in held], [r["ce"] for r in held], "o-", color=color, label=f"{name}: CE (held-out)")
    kd_train = [r for r in runs["KD student"] if r.get("split") != "heldout"]
    ax.plot([r["step"] for r in kd_train], [r["loss"] for r in kd_train], "--", color="tab:blue", alpha=0.5,
            label="KD student: total loss (train)")
    ax.set(xlabel="optimizer step", ylabel="nats per token", title="Student loss curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths.root / LOSS_PNG, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for (name, records), color in zip(runs.items(), ("tab:blue", "tab:orange")):
        held = [r for r in records if r.get("split") == "heldout"]
        ax.plot([r["step"] for r in held], [r["kl"] for r in held], "o-", color=color, label=name)
    ax.set(xlabel="optimizer step", ylabel="KL(teacher || student) at T, nats",
           title="Held-out KL to the teacher (top-k + tail bucket)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths.root / KL_PNG, dpi=110)
    plt.close(fig)


def report_markdown(report: dict[str, Any]) -> str:
    s, m, store = report["settings"], report["metrics"], report["store"]
    kd, ce = m["KD student"], m["CE-only student"]
    lines = [
        "# daram demo report",
        "",
        f"Corpus: {s['corpus']} ({s['corpus_lines']:,} lines). Tokenizer: {s['tokenizer']} ({s['vocab_size']:,} ids). "
        f"Store: {store['tokens']:,} tokens in {s['num_shards']} shards of rows of {s['seq_len']}; "
        f"training shards {s['train_shards']}, held-out shard {report['heldout_shard']}.",
        f"Teacher: GPT-2 {s['teacher_shape']} ({m['teacher']['parameters']:,} parameters), trained {plural(s['teacher_steps'], 'step')} "
        f"(final loss {report['teacher_curve'][-1]['loss']:.3f}); dumped as top-{s['top_k']} log-probs at T = {s['temperature']:g}.",
        f"Students: GPT-2 {s['student_shape']} ({kd['parameters']:,} parameters), {plural(report['students']['KD student']['steps'], 'step')} "
        f"each, same data order and seed; KD: loss = T^2 KL + {s['alpha_ce']:g} CE; CE-only: alpha_kd = 0.",
        "",
        f"## Held-out shard {report['heldout_shard']} ({kd['tokens']:,} next-token positions)",
        "",
        "| model | CE (nats) | perplexity | KL to teacher at T | top-1 agreement | ECE |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in m.items():
        lines.append(f"| {name} | {r['ce']:.4f} | {r['perplexity']:.2f} | {r['kl']:.4f} | {r['top1_agreement']:.1%} | {r['ece']:.4f} |")
    lines += [
        "",
        f"The KD student's held-out perplexity is {kd['perplexity']:.2f} against {ce['perplexity']:.2f} for the CE-only "
        f"baseline ({_change(kd['perplexity'], ce['perplexity'])}), and its KL to the teacher {kd['kl']:.4f} against "
        f"{ce['kl']:.4f} ({_change(kd['kl'], ce['kl'])}). The teacher's own row scores the stored dump against the model "
        "it came from: its KL is the float16 rounding of the stored log-probs (the tail bucket is exact).",
        "KL is the `bucket` form over the stored top-k ids plus one tail bucket (a lower bound of the full KL); "
        "ECE uses 15 equal-width confidence bins of the next-token prediction at T = 1.",
        "",
        "## Store",
        "",
        "| arrays | bytes | bytes per token |",
        "|---|---:|---:|",
        f"| tokens | {store['token_bytes']:,} | {store['token_bytes_per_token']:.2f} |",
        f"| teacher top-{s['top_k']} (ids + float16 log-probs) | {store['teacher_bytes']:,} | {store['teacher_bytes_per_token']:.1f} |",
        "",
        "## Stage timings",
        "",
        f"On {s['threads']} torch CPU thread{'s' if s['threads'] > 1 else ''}.",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *(f"| {name} | {seconds:.1f} |" for name, seconds in report["timings_s"].items()),
        f"| **total** | **{sum(report['timings_s'].values()):.1f}** |",
        "",
        "## Plots",
        "",
        f"![loss curves]({LOSS_PNG})",
        "",
        f"![KL to the teacher]({KL_PNG})",
        "",
        "## Outputs",
        "",
        *(f"- {name}: `{path}`" for name, path in report["outputs"].items()),
        "",
    ]
    return "\n".join(lines)


# --- helpers --------------------------------------------------------------------------------------


def _change(value: float, base: float) -> str:
    return f"{abs(value - base) / base:.1%} {'lower' if value < base else 'higher'}"


def _with(cfg: Config, **sections: dict[str, Any]) -> Config:
    for section, values in sections.items():
        cfg = cfg.replace(section, **values)
    return cfg


def _settings(cfg: Config, corpus: dict[str, Any], manifest) -> dict[str, Any]:
    d, st = cfg.demo, cfg.student
    return {
        "corpus": corpus["name"],
        "corpus_lines": corpus["lines"],
        "tokenizer": cfg.prepare.tokenizer,
        "vocab_size": manifest.tokenizer.vocab_size,
        "seq_len": manifest.seq_len,
        "num_shards": manifest.num_shards,
        "train_shards": cfg.train.shards,
        "teacher_shape": f"{plural(d.teacher_n_layer, 'layer')} x {d.teacher_n_embd} wide, {plural(d.teacher_n_head, 'head')}",
        "teacher_steps": d.teacher_steps,
        "top_k": cfg.teacher.top_k,
        "temperature": cfg.teacher.temperature,
        "student_shape": f"{plural(st.n_layer, 'layer')} x {st.n_embd} wide, {plural(st.n_head, 'head')}",
        "alpha_ce": cfg.train.alpha_ce,
        "threads": d.threads,
    }
