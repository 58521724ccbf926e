"""Fidelity of stored teacher formats: students trained with equal steps, data and seed, on real teachers.

What it compares, per teacher and seed (every student sees the same rows in the same order, the
same initial weights and the same learning-rate schedule):

- ``CE-only``: the student alone (alpha_kd 0, alpha_ce 1);
- ``online T=2`` / ``online T=1``: the seed's recipe, the teacher in the loop with its full logits
  (alpha_kd 1, alpha_ce 0.1; ``online T=2`` is the seed's own setting);
- ``online default``: the fair ceiling of a stored format, online full-logit KD with the default dump's own
  objective (config.py's ``teacher.temperature`` and ``train.alpha_ce``, alpha_kd 1);
- stored formats, each produced from the same teacher logits by the dump's own kernel for its kind
  (``daram/pipeline/dump_kinds.py``) and encoded and decoded by the kind's storage half
  (``daram/storage/formats.py``, tables included), so a format is judged exactly as it would be stored,
  without writing a dump per format: v1's ``top-64`` and ``sampled-50`` at T = 2, v2's ``draws`` (``D``
  sorted draws per position, stored and trained at T = 1; alpha_ce 0.1, or the default's 0.5 where the
  name says so) and ``draw_ranks`` (``D`` systematic draws, one uniform per position and the draws evenly
  spaced along the CDF, stored as frequency ranks in steps).

Teachers: ``../shared/data/teachers/ko-small`` (flat, about 7 nats at T = 1) and ``ko-small-sharp``
(the same ranking, about 2.8 nats). The store is a real ``prepare`` of the lines of
``korean_corpus/sentences.txt`` the teachers never saw (0-based even lines); students train on
shards 0-6 and are scored on shard 7 (``--heldout-rows`` rows from ``--heldout-start``; the default's
alpha_ce was chosen on its first 32 rows, so a report of the default uses rows after those): held-out
CE against the real next token, and the exact KL(teacher at T = 1 || student at T = 1) over the full
vocabulary.

Bytes per token: each format's arrays for the first ``--bytes-rows`` rows of shard 0, encoded and
compressed as a dump of shard 0 stores them (``daram.storage.measure_teacher_bytes``: the kind's codecs,
chunks of 64 rows), plus the token shards' own bytes per token. Unique ids: distinct ids per position with a nonzero probability.

    nice -n 10 .venv/bin/python benchmarks/fidelity.py --teacher ko-small --json /tmp/fid-flat.json
    nice -n 10 .venv/bin/python benchmarks/fidelity.py --teacher ko-small-sharp --json /tmp/fid-sharp.json
    .venv/bin/python benchmarks/fidelity.py --report /tmp/fid-flat.json /tmp/fid-sharp.json
    nice -n 10 .venv/bin/python benchmarks/fidelity.py --teacher ko-small --heldout-start 32 \
        --runs "CE-only,online T=2,online default,draws-16 T=1 alpha_ce=0.5" --json /tmp/fid-flat-default.json
    .venv/bin/python benchmarks/fidelity.py --steps 4 --seeds 0 --heldout-rows 4 --bytes-rows 8   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

SHARED = Path(os.environ.get("DARAM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
HELDOUT = 7
BYTES_CHUNK_ROWS = 64


@dataclass(frozen=True)
class Format:
    """A stored format: a kind of ``daram/storage/formats.py``, its width, the T it is stored and trained at.
    Every step goes through the kind's own objects, so the benchmark never branches on a kind's name."""

    kind: str
    temperature: float
    width: int = 0  # topk: k; the drawn kinds: draws per position
    alpha_ce: float = 0.1  # the weight of the CE on the real next token beside alpha_kd = 1

    def dump(self, vocab_size: int):
        """The manifest a dump of this format would record (what the kind's decoding and target read)."""
        from daram.storage import TeacherManifest, teacher_format

        draws = self.width if teacher_format(self.kind).drawn else 0
        return TeacherManifest("benchmark", "-", "float32", self.temperature, self.kind, self.width, vocab_size, "-",
                               BYTES_CHUNK_ROWS, draws=draws)

    def kernel_arrays(self, logits, generator) -> tuple:
        """What the dump's kernel for the kind (``daram/pipeline/dump_kinds.py``) gives for these positions
        (logits ``(n, V)``), in its stored dtypes, before the kind's encoding."""
        import torch

        from daram.pipeline.dump_kinds import dump_kind
        from daram.storage import teacher_format

        kind = dump_kind(self.kind)
        z = torch.div(logits, self.temperature)
        uniforms = torch.rand(z.shape[0], self.width, generator=generator) if teacher_format(self.kind).drawn else None
        (ids, *values), _ = kind.kernel(z, torch.empty_like(z), uniforms, self.width)
        return (ids.numpy().astype("uint16"), *(v.to(d).numpy() for v, d in zip(values, kind.value_dtypes)))

    def stored_and_back(self, arrays, tables, dump):
        """The kernel's arrays encoded as the store holds them, then decoded as training reads them:
        (ids int64, values float32)."""
        from daram.storage import teacher_format

        fmt = teacher_format(self.kind)
        ids, values = fmt.decode(fmt.encode(arrays, tables) + tuple(tables), dump)
        return ids.astype("int64"), values.astype("float32")

    def target(self, ids, values, dump):
        from daram.pipeline.dump_kinds import dump_kind

        return dump_kind(self.kind).target(ids, values, dump, "bucket")


FORMATS = {
    "top-64 T=2 (v1)": Format("topk", 2.0, 64),
    "sampled-50 T=2 (v1)": Format("sampled", 2.0, 50),
    "draws-8 T=1": Format("draws", 1.0, 8),
    "draws-16 T=1": Format("draws", 1.0, 16),
    "draws-16 T=1 alpha_ce=0.5": Format("draws", 1.0, 16, alpha_ce=0.5),
    "draws-12 T=1 alpha_ce=0.5": Format("draws", 1.0, 12, alpha_ce=0.5),
    "draws-8 T=1 alpha_ce=0.5": Format("draws", 1.0, 8, alpha_ce=0.5),
    "draws-6 T=1 alpha_ce=0.5": Format("draws", 1.0, 6, alpha_ce=0.5),
    "draws-4 T=1 alpha_ce=0.5": Format("draws", 1.0, 4, alpha_ce=0.5),
    # systematic draws (the kind's own kernel), stored as steps of frequency ranks
    **{f"draw_ranks-{d} systematic T=1 alpha_ce=0.5": Format("draw_ranks", 1.0, d, alpha_ce=0.5) for d in (16, 12, 8, 6, 4)},
    "draws-16 T=1 alpha_ce=1": Format("draws", 1.0, 16, alpha_ce=1.0),
}
BASELINES = ("CE-only", "online T=2", "online T=1")
SAME_OBJECTIVE = "online default"  # online with the default dump's T and alpha_ce: the ceiling of a stored format
ONLINE = (*BASELINES[1:], SAME_OBJECTIVE)


def default_objective() -> tuple[float, float]:
    """(T, alpha_ce) of the default dump and training, as config.py declares them."""
    from daram.config import load_config

    config = load_config()
    return config.teacher.temperature, config.train.alpha_ce


def prepare_store(work: Path, seq_len: int):
    """The real `prepare` over the sentences the teachers never saw (8 shards, rows of seq_len)."""
    from daram.config import load_config
    from daram.pipeline.prepare.prepare import run_prepare
    from daram.storage import Store

    path = work / f"store-L{seq_len}.zarr"
    if not Store.exists(str(path)):
        lines = (SHARED / "korean_corpus" / "sentences.txt").read_text(encoding="utf-8").splitlines()
        unseen = work / "unseen-lines.txt"
        unseen.write_text("\n".join(lines[0::2]) + "\n", encoding="utf-8")
        run_prepare(load_config(overrides={
            "store.path": str(path), "prepare.tokenizer": str(SHARED / "tokenizers" / "kogpt2-base-v2"),
            "prepare.seq_len": seq_len, "prepare.num_shards": 8, "prepare.rows_per_chunk": BYTES_CHUNK_ROWS,
            "prepare.sources": [{"path": str(unseen), "unit": "line"}],
        }))
    return Store.open(str(path))


def format_bytes(store, teacher, fmt: Format, rows: int, seed: int) -> tuple[float, float]:
    """(bytes per token of the format's arrays as a dump of shard 0 stores them, mean distinct ids per position):
    the kind's encoding, the store's chunks and codecs (``measure_teacher_bytes``, what ``daram plan`` measures
    with). A dump builds a kind's tables (draw ranks: the token frequencies) from its shard's tokens; a
    shard of the reference job holds about 22M tokens, so the tables here come from every token of this
    small store (about 0.26M), the nearest it has to a real shard."""
    import numpy as np
    import torch

    from daram.pipeline.losses import final_hidden, head_weight
    from daram.storage import measure_teacher_bytes, teacher_format

    vocab = store.manifest.tokenizer.vocab_size
    kind, dump, shard_tokens = teacher_format(fmt.kind), fmt.dump(vocab), store.read_tokens(0)
    every_token = np.concatenate([store.read_tokens(s).ravel() for s in range(store.manifest.num_shards)])
    tables = kind.build_tables(every_token, vocab)
    generator = torch.Generator().manual_seed(seed)
    columns, unique, positions = [], 0.0, 0
    for lo in range(0, rows, BYTES_CHUNK_ROWS):
        block = torch.from_numpy(shard_tokens[lo : min(lo + BYTES_CHUNK_ROWS, rows)].astype(np.int64))
        with torch.no_grad():
            arrays = fmt.kernel_arrays((final_hidden(teacher, block) @ head_weight(teacher).T).flatten(0, 1), generator)
        probs = kind.probabilities(kind.encode(arrays, tables) + tables, dump)[1]
        unique += float((probs != 0).sum())
        positions += probs.shape[0]
        columns.append([a.reshape(tuple(block.shape) + a.shape[1:]) for a in arrays])
    arrays = tuple(np.concatenate(column) for column in zip(*columns))
    stored = measure_teacher_bytes(kind, arrays, BYTES_CHUNK_ROWS, every_token, vocab)
    return stored / arrays[0][..., 0].size, unique / positions


def run_seed(store, teacher, seed: int, args) -> dict:
    """Every student of one seed, trained in lockstep on the same batches; returns their held-out metrics."""
    import numpy as np
    import torch

    from daram.pipeline.losses import (
        IGNORE, DenseTarget, DistillObjective, Workspace, final_hidden, head_weight, next_token_labels, sliced_distill_loss,
    )
    from daram.pipeline.models import gpt2
    from daram.pipeline.schedule import lr_factor
    from daram.storage import teacher_format

    online = {"online T=2": (2.0, 0.1), "online T=1": (1.0, 0.1), SAME_OBJECTIVE: default_objective()}
    runs = {name: run for name, run in {"CE-only": None, **online, **FORMATS}.items() if name in args.runs}
    students = {}
    for name in runs:
        torch.manual_seed(seed)  # the same initial weights for every student of this seed
        model = gpt2(store.manifest.tokenizer.vocab_size, args.n_embd, args.n_head, args.n_layer)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
        students[name] = (model, optimizer, Workspace())
    rows = np.concatenate([store.read_tokens(s) for s in range(HELDOUT)]).astype(np.int64)
    # the stored kinds' tables (lossless: they change bytes, never a student) and manifests
    vocab = store.manifest.tokenizer.vocab_size
    tables = {run.kind: teacher_format(run.kind).build_tables(rows, vocab) for run in runs.values() if isinstance(run, Format)}
    dumps = {name: run.dump(vocab) for name, run in runs.items() if isinstance(run, Format)}
    order = np.random.default_rng(seed).integers(0, len(rows), (args.steps, args.batch_size))
    generator = torch.Generator().manual_seed(10_000 + seed)
    weight = head_weight(teacher)
    seconds = {name: 0.0 for name in runs}
    started = time.perf_counter()
    for step in range(args.steps):
        tokens = torch.from_numpy(rows[order[step]])
        labels = next_token_labels(tokens)
        with torch.no_grad():
            logits = final_hidden(teacher, tokens) @ weight.T  # (B, L, V) float32
        flat = logits.flatten(0, 1)
        for name, run in runs.items():
            model, optimizer, workspace = students[name]
            t0 = time.process_time()
            for group in optimizer.param_groups:
                group["lr"] = args.lr * lr_factor(step, max(1, args.steps // 10), args.steps, 0.1, "cosine")
            if run is None:
                objective = DistillObjective(labels, None, 1.0, 0.0, 1.0)
            elif isinstance(run, tuple):  # online: (T, alpha_ce)
                objective = DistillObjective(labels, DenseTarget(lambda a, b: logits[:, a:b], run[0]), run[0], 1.0, run[1])
            else:
                ids, values = run.stored_and_back(run.kernel_arrays(flat, generator), tables[run.kind], dumps[name])
                shape = tokens.shape + ids.shape[1:]
                target = run.target(torch.from_numpy(ids).view(shape), torch.from_numpy(values).view(shape), dumps[name])
                objective = DistillObjective(labels, target, run.temperature, 1.0, run.alpha_ce)
            loss, _, _ = sliced_distill_loss(final_hidden(model, tokens), head_weight(model), objective, tokens.shape[1],
                                             workspace=workspace)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds[name] += time.process_time() - t0
        if (step + 1) % 25 == 0 or step + 1 == args.steps:
            print(f"  seed {seed}: step {step + 1}/{args.steps} ({time.perf_counter() - started:.0f} s, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)

    # Held-out: exact CE and KL(teacher at T=1 || student at T=1), every student on the same positions.
    sums = {name: [0.0, 0.0] for name in runs}
    ce_positions = kl_positions = 0
    held = store.read_tokens(HELDOUT, args.heldout_start, args.heldout_start + args.heldout_rows).astype(np.int64)
    with torch.no_grad():
        for lo in range(0, len(held), args.batch_size):
            tokens = torch.from_numpy(held[lo : lo + args.batch_size])
            labels = next_token_labels(tokens)
            has_label = labels != IGNORE
            log_p = torch.log_softmax(final_hidden(teacher, tokens) @ weight.T, -1)
            for name in runs:
                model = students[name][0]
                log_q = torch.log_softmax(final_hidden(model, tokens) @ head_weight(model).T, -1)
                ce = -log_q.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
                sums[name][0] += float(ce[has_label].sum())
                sums[name][1] += float((log_p.exp() * (log_p - log_q)).sum())
            ce_positions += int(has_label.sum())
            kl_positions += tokens.numel()
    return {name: {"ce": s[0] / ce_positions, "kl": s[1] / kl_positions, "cpu_s_per_step": seconds[name] / args.steps}
            for name, s in sums.items()}


def spread(values: list[float], percent: bool = False) -> str:
    """Mean ± sample standard deviation over seeds."""
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.0%} ± {sd:.0%}" if percent else f"{mean:.3f} ± {sd:.3f}"


def merged(paths: list[str]) -> list[dict]:
    """One record per teacher: the seeds' results of every file of that teacher, merged by seed."""
    by_teacher: dict[str, dict] = {}
    for path in paths:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        into = by_teacher.setdefault(data["teacher"], {**data, "seeds": [], "formats": {}})
        into["formats"] |= data["formats"]
        for seed in data["seeds"]:
            same = [s for s in into["seeds"] if s["seed"] == seed["seed"]]
            if same:
                same[0]["results"] |= seed["results"]
            else:
                into["seeds"].append({"seed": seed["seed"], "results": dict(seed["results"])})
    return list(by_teacher.values())


def report(paths: list[str]) -> None:
    """Per teacher: each student's metrics and its share of the online recipes' gains over CE-only (mean ± sd over
    seeds), then each format's held-out CE minus CE-only's (for where online does not beat CE-only)."""
    for data in merged(paths):
        seeds = [s for s in data["seeds"] if "CE-only" in s["results"] and any(o in s["results"] for o in ONLINE)]
        if not seeds:
            print(f"\n(teacher {data['teacher']}: no seed with CE-only and an online arm in these files; add the run that has them)")
            continue
        runs = [name for name in [*BASELINES, SAME_OBJECTIVE, *FORMATS] if all(name in s["results"] for s in seeds)]
        onlines = [name for name in ONLINE if name in runs]
        print(f"\n### teacher `{data['teacher']}` (entropy at T = 1: {data['teacher_entropy']:.2f} nats); "
              f"seeds {', '.join(str(s['seed']) for s in seeds)}; students {data['args']['n_layer']}x{data['args']['n_embd']}, "
              f"{data['args']['steps']} steps of {data['args']['batch_size']} x {data['args']['seq_len']}; "
              f"tokens {data['token_bytes']:.2f} B/token; held-out rows {data['args'].get('heldout_start', 0)}-"
              f"{data['args'].get('heldout_start', 0) + data['args']['heldout_rows'] - 1} of shard {HELDOUT}\n")
        if SAME_OBJECTIVE in runs:
            temperature, alpha_ce = data.get("default_objective", default_objective())
            print(f"{SAME_OBJECTIVE}: online KD at T = {temperature:g}, alpha_ce {alpha_ce:g} (the default's objective)\n")
        shares_header = "".join(f" CE share vs {o} | KL share vs {o} |" for o in onlines)
        print(f"| student | B/token (teacher + tokens) | unique ids | held-out CE | KL(T=1) |{shares_header} CE minus CE-only's |")
        print("|---|---:|---:|---:|---:|" + "---:|---:|" * len(onlines) + "---:|")
        for name in runs:
            metric = {m: [s["results"][name][m] for s in seeds] for m in ("ce", "kl")}
            shares = []
            for online in onlines:
                for m in ("ce", "kl"):
                    gains = [s["results"]["CE-only"][m] - s["results"][online][m] for s in seeds]
                    per_seed = [(s["results"]["CE-only"][m] - s["results"][name][m]) / g for s, g in zip(seeds, gains)]
                    # A share of a gain that is not there means nothing: there, compare with CE-only (last column).
                    shares.append(spread(per_seed, percent=True) if min(gains) > 0 else "n/a: online no better")
            fmt = data["formats"].get(name)
            size = f"{fmt['bytes'] + data['token_bytes']:.1f}" if fmt else f"{data['token_bytes']:.1f}"
            unique = f"{fmt['unique']:.1f}" if fmt else "-"
            worse = spread([s["results"][name]["ce"] - s["results"]["CE-only"]["ce"] for s in seeds])
            print(f"| {name} | {size} | {unique} | {spread(metric['ce'])} | {spread(metric['kl'])} | "
                  + "".join(f"{share} | " for share in shares) + f"{worse} |")
        for online in onlines:
            gains = {m: spread([s["results"]["CE-only"][m] - s["results"][online][m] for s in seeds]) for m in ("ce", "kl")}
            print(f"\n{online}: gain over CE-only in held-out CE {gains['ce']}, in KL {gains['kl']} (positive = online better)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="ko-small", help="a directory under ../shared/data/teachers, or a path")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--heldout-rows", type=int, default=32)
    parser.add_argument("--heldout-start", type=int, default=0, help="first scored row of shard 7 (rows 0-31 chose the "
                        "default's alpha_ce: score the default on later rows)")
    parser.add_argument("--bytes-rows", type=int, default=128)
    parser.add_argument("--bytes-only", action="store_true", help="measure bytes per token and unique ids, train nothing")
    parser.add_argument("--workdir", default="/tmp/daram-fidelity")
    parser.add_argument("--json", help="write the results here (rewritten after every seed)")
    parser.add_argument("--report", nargs="+", metavar="JSON", help="print the table of earlier runs and exit; files of "
                        "one teacher are merged seed by seed (a later run may train only some students)")
    parser.add_argument("--runs", default=",".join([*BASELINES, SAME_OBJECTIVE, *FORMATS]),
                        help="the students to train, by name (comma-separated; the baselines, the same-objective online "
                        "arm and every format)")
    args = parser.parse_args()
    args.runs = args.runs.split(",")
    unknown = [name for name in args.runs if name not in {*BASELINES, SAME_OBJECTIVE, *FORMATS}]
    if unknown and not args.report:
        parser.error(f"unknown run {unknown[0]!r}; the runs are: {', '.join([*BASELINES, SAME_OBJECTIVE, *FORMATS])}")
    if args.report:
        report(args.report)
        return

    import torch

    from daram.pipeline.hf import load_causal_lm

    torch.set_num_threads(1)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    store = prepare_store(work, args.seq_len)
    teacher_dir = Path(args.teacher) if Path(args.teacher).is_dir() else SHARED / "teachers" / args.teacher
    teacher = load_causal_lm(str(teacher_dir), "float32", "cpu").eval()
    token_bytes = store.token_bytes() / store.manifest.total_tokens
    formats = {}
    for name, fmt in FORMATS.items():
        if name not in args.runs:
            continue
        size, unique = format_bytes(store, teacher, fmt, args.bytes_rows, seed=0)
        formats[name] = {"bytes": size, "unique": unique}
        print(f"{name}: {size:.2f} B/token (+ {token_bytes:.2f} tokens), {unique:.1f} unique ids per position", flush=True)
    if args.bytes_only:
        return
    with torch.no_grad():
        sample = torch.from_numpy(store.read_tokens(HELDOUT, 0, 8).astype("int64"))
        log_p = torch.log_softmax(teacher(sample).logits, -1)
        entropy = float(-(log_p.exp() * log_p).sum(-1).mean())
    data = {"teacher": args.teacher, "teacher_entropy": entropy, "token_bytes": token_bytes, "formats": formats,
            "default_objective": default_objective(), "args": vars(args), "seeds": []}
    for seed in (int(s) for s in args.seeds.split(",")):
        data["seeds"].append({"seed": seed, "results": run_seed(store, teacher, seed, args)})
        if args.json:
            Path(args.json).write_text(json.dumps(data, indent=1), encoding="utf-8")
        for name, r in data["seeds"][-1]["results"].items():
            print(f"  {name}: CE {r['ce']:.4f}, KL {r['kl']:.4f}", flush=True)
    if args.json:
        report([args.json])


if __name__ == "__main__":
    main()
