"""What distillation buys in `daram demo`, and why the demo dumps at T = 1.

Runs the demo once (its teacher, store at the config's T, KD and CE-only students), then dumps the
same teacher over the same tokens at each other temperature, trains a KD student from each with the
same steps, data order and seed, and scores every student on the held-out shard against the T = 1
dump (so KL and top-1 agreement are comparable). Prints the ratios to the CE-only baseline measured
in this one run, and the demo's stage timings.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/demo_temperature.py [--quick] [--threads 1] [--temperatures 2]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from daram.pipeline.job.demo import cpu_threads, demo_config, run_demo, torch_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="work/bench-demo")
    parser.add_argument("--quick", action="store_true", help="the demo's --quick setting")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = the idle cores)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[2.0], help="other dump temperatures to try")
    args = parser.parse_args()

    cfg = demo_config(None, (), args.quick, {"demo.workdir": args.workdir, "demo.threads": args.threads})
    if cfg.teacher.temperature != 1.0:
        raise SystemExit("the demo config must dump at T = 1: the comparison scores every student at T = 1")
    started = time.perf_counter()
    report = run_demo(cfg)
    root = Path(args.workdir)
    students = {"CE-only": root / "student-ce", "KD, T = 1": root / "student-kd"}

    from daram.pipeline.prepare.prepare import run_prepare
    from daram.pipeline.train.student_train import run_student_train
    from daram.pipeline.dump.teacher_dump import run_teacher_dump
    from daram.storage import Store

    with torch_threads(cpu_threads(args.threads)):
        base = cfg.replace("store", path=str(root / "store.zarr")).replace("teacher", model=str(root / "teacher"))
        base = base.replace("prepare", tokenizer=report["settings"]["tokenizer"],
                            sources=[{"path": str(root / "corpus.txt"), "unit": "line"}])
        for temperature in args.temperatures:
            tag = f"T{temperature:g}"
            store, out = root / f"store-{tag}.zarr", root / f"student-kd-{tag}"
            shutil.rmtree(out, ignore_errors=True)
            other = base.replace("store", path=str(store)).replace("teacher", temperature=temperature)
            manifest = run_prepare(other, overwrite=True)  # the same corpus and tokenizer: the same tokens
            assert manifest.tokens_fingerprint == Store.open(base.store.path).manifest.tokens_fingerprint
            run_teacher_dump(other, all_shards=True)
            run_student_train(other.replace("train", out=str(out)))
            students[f"KD, T = {temperature:g}"] = out
        metrics = score(base, students, report["heldout_shard"])

    ce = metrics["CE-only"]
    print(f"\nheld-out shard {report['heldout_shard']}, every student scored against the T = 1 dump "
          f"({report['students']['KD student']['steps']} steps each; whole run {time.perf_counter() - started:.0f} s)")
    print(f"{'student':<12} {'CE':>7} {'ppl':>7} {'ppl / CE-only':>14} {'KL@T=1':>8} {'KL / CE-only':>13} {'top-1':>7}")
    for name, m in metrics.items():
        print(f"{name:<12} {m['ce']:7.4f} {m['perplexity']:7.2f} {m['perplexity'] / ce['perplexity']:14.3f} "
              f"{m['kl']:8.4f} {m['kl'] / ce['kl']:13.3f} {m['top1_agreement']:7.1%}")
    print(f"teacher      {report['metrics']['teacher']['ce']:7.4f} {report['metrics']['teacher']['perplexity']:7.2f}")
    print("stage timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["timings_s"].items())
          + f"; total {sum(report['timings_s'].values()):.1f}")


def score(cfg, students: dict[str, Path], shard: int) -> dict[str, dict]:
    from daram.pipeline.heldout import heldout_metrics
    from daram.pipeline.hf import load_causal_lm
    from daram.storage import Store

    store = Store.open(cfg.store.path)
    return {name: heldout_metrics(load_causal_lm(str(path), "float32", "cpu"), store, shard,
                                  batch_size=cfg.eval.heldout_batch_size) for name, path in students.items()}


if __name__ == "__main__":
    main()
