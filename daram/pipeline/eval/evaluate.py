"""``daram eval``: fine-tune causal LMs on KoBEST and NSMC, score them zero/few-shot, and write the report.

For each model: its size and shape (the model table); with ``eval.shots``, zero/few-shot KoBEST by
log-likelihood with lm-evaluation-harness's prompts (``fewshot``); with ``eval.finetune``, for each task and each
of ``eval.runs`` seeds, a full fine-tuning (``finetune``: setup -> fit -> finish) that scores dev and test after
every epoch. The report (``report``) gives the test score at the epoch chosen on dev, mean ± std over the
seeds with a 95% bootstrap interval, beside the seed's rule (the best test epoch), each named as such.

``eval.protocol`` names the preset under the settings: ``seed`` (the reference study's 20 epochs, batch 64,
length 512 and learning rates; what ``daram init`` writes) or ``quick`` (subsets for a CPU).

``daram eval --heldout`` instead scores each model on store shards against the stored teacher
(perplexity, KL, top-1 agreement, ECE) with ``daram.pipeline.heldout.heldout_metrics``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from daram.config import (
    DEFAULT_EVAL_LEARNING_RATES,
    EVAL_PROTOCOLS,
    LEARNING_RATE_SOURCES,
    Config,
    EvalConfig,
    parse_shards,
)
from daram.errors import DaramError
from daram.pipeline.batches import check_teacher_shards
from daram.pipeline.eval.downstream import TASKS, Task, get_tasks, load_split, subsample
from daram.pipeline.eval.report import model_facts, write_report
from daram.pipeline.eval.stats import bootstrap_interval, mean_std
from daram.pipeline.eval.fewshot import score_shots, shot_tasks
from daram.pipeline.eval.finetune import TaskData, finetune_task
from daram.pipeline.heldout import heldout_metrics
from daram.pipeline.hf import check_store_tokenizer, load_causal_lm, load_tokenizer, resolve_device
from daram.storage import Store
from daram.text import plural

HELDOUT_JSON = "heldout.json"
HELDOUT_MD = "heldout.md"
SHOTS_BATCH_SIZE = 4  # sequences per log-likelihood forward: 4 x 1,024 positions x 51,200 ids of logits is 0.8 GB


def model_names(settings: EvalConfig) -> list[str]:
    if not settings.models:
        raise DaramError("no model to evaluate: pass --model DIR_OR_ID (repeatable) or set eval.models")
    names = list(settings.names or settings.models)
    if len(set(names)) != len(names):
        raise DaramError(f"two models share a report name ({', '.join(names)}); give distinct --name values")
    return names


def finetune_seeds(settings: EvalConfig) -> list[int]:
    return [settings.seed + i for i in range(settings.runs)]


def load_task_data(task: Task, settings: EvalConfig) -> TaskData:
    """The three splits of a task, each cut to its eval.max_* with the base seed (the same subset for every run)."""
    def split(name: str, limit: int):
        return subsample(load_split(task, name, settings.data), limit, settings.seed)

    return TaskData(split("train", settings.max_train), split("dev", settings.max_dev), split("test", settings.max_test))


def summarise_runs(task: Task, runs: list[dict[str, Any]], test_labels: list[int]) -> dict[str, Any]:
    """One task's entry over its seeds: each rule's score (the task's metric), F1 and accuracy as [mean, std];
    the dev-selected mean's 95% bootstrap interval over the test examples; seconds as [mean, std]; the runs
    themselves without their predictions."""
    summary: dict[str, Any] = {"metric": task.metric}
    for rule in ("dev_selected", "seed_rule"):
        summary[rule] = {
            "score": list(mean_std([run[rule][task.metric] for run in runs])),
            "f1": list(mean_std([run[rule]["f1"] for run in runs])),
            "accuracy": list(mean_std([run[rule]["accuracy"] for run in runs])),
            "epochs": [run[rule]["epoch"] for run in runs],
        }
    summary["dev_selected"]["interval"] = list(
        bootstrap_interval(task.metric, [run["dev_selected_predictions"] for run in runs], test_labels)
    )
    summary["seconds"] = list(mean_std([run["seconds"] for run in runs]))
    summary["runs"] = [{k: v for k, v in run.items() if k != "dev_selected_predictions"} for run in runs]
    return summary


def protocol_record(settings: EvalConfig) -> dict[str, Any]:
    """What the report says of the protocol: its name, the settings that depart from it, the values in force and
    each learning rate's source."""
    preset_rates = EVAL_PROTOCOLS[settings.protocol].get("learning_rates", DEFAULT_EVAL_LEARNING_RATES)
    sources = LEARNING_RATE_SOURCES.get(settings.protocol, LEARNING_RATE_SOURCES["seed"])
    return {
        "name": settings.protocol,
        "departures": {k: v for k, v in settings.protocol_departures().items() if k != "learning_rates"},
        "epochs": settings.epochs, "batch_size": settings.batch_size, "max_length": settings.max_length,
        "max_train": settings.max_train, "max_dev": settings.max_dev, "max_test": settings.max_test,
        "seeds": finetune_seeds(settings), "shots": list(settings.shots), "finetune": settings.finetune,
        "learning_rates": {
            task: {"rate": settings.learning_rates[task],
                   "source": sources[task] if settings.learning_rates[task] == preset_rates[task] else "set for this run"}
            for task in settings.tasks
        },
    }


def shots_entry(model, tokenizer, task: Task, data: TaskData, settings: EvalConfig, device, label: str) -> dict[str, Any]:
    """Zero/few-shot scores of one model on one task, keyed by the number of shots."""
    return {str(count): score_shots(model, tokenizer, task, data.train, data.test, count, SHOTS_BATCH_SIZE, device, label)
            for count in settings.shots}


def finetune_entry(path: str, tokenizer, task: Task, data: TaskData, settings: EvalConfig, device,
                   label: str) -> dict[str, Any]:
    """One model fine-tuned on one task under every seed, summarised; one line on stderr says the result."""
    runs = [finetune_task(path, tokenizer, task, data, settings, seed, device, f"{label} seed {seed}")
            for seed in finetune_seeds(settings)]
    entry = summarise_runs(task, runs, [e.label for e in data.test])
    (mean, std), (low, high) = entry["dev_selected"]["score"], entry["dev_selected"]["interval"]
    print(f"{label}: {task.metric} at the dev-chosen epoch {mean:.4f} ± {std:.4f} [{low:.3f}, {high:.3f}] over "
          f"{plural(len(runs), 'seed')}; best test epoch (the seed's rule) {entry['seed_rule']['score'][0]:.4f}; "
          f"fine-tune {entry['seconds'][0]:.1f} s per run", file=sys.stderr)
    return entry


def run_eval(cfg: Config) -> dict[str, Any]:
    """The model table, zero/few-shot scores and fine-tuning for every model (or, with ``eval.heldout``,
    held-out fidelity); writes the report after every task, so a long run keeps what it finished."""
    if cfg.eval.heldout:
        return run_heldout(cfg)
    settings = cfg.eval
    names = model_names(settings)
    tasks = get_tasks(settings.tasks)
    unknown = sorted(set(settings.learning_rates) - set(TASKS))
    if unknown:
        raise DaramError(f"eval.learning_rates.{unknown[0]}: no such task")
    if not settings.finetune and not settings.shots:
        raise DaramError("nothing to evaluate: eval.finetune is false and eval.shots is empty")
    scored_by_shots = shot_tasks(tasks) if settings.shots else []
    device = resolve_device(settings.device)

    # Everything that can fail fast does, before hours of fine-tuning: data, tokenizers, the output folder.
    data = {task.name: load_task_data(task, settings) for task in tasks}
    tokenizers = [load_tokenizer(path) for path in settings.models]
    for path, tokenizer in zip(settings.models, tokenizers):
        if tokenizer.eos_token_id is None:
            raise DaramError(f"tokenizer of {path!r} has no EOS token; eval ends every segment with it")
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)

    report: dict[str, Any] = {"protocol": protocol_record(settings), "models": {}, "shots": {}, "finetune": {}}
    for name, path, tokenizer in zip(names, settings.models, tokenizers):
        model = load_causal_lm(path, "float32", str(device))
        report["models"][name] = model_facts(model, path)
        if settings.shots:
            report["shots"][name] = {}
            for task in scored_by_shots:
                report["shots"][name][task.name] = shots_entry(model, tokenizer, task, data[task.name], settings,
                                                               device, f"{name} {task.title}")
                write_report(report, tasks, out, plot=False)
        del model  # fine-tuning loads a fresh copy per run
        if settings.finetune:
            report["finetune"][name] = {}
            for task in tasks:
                report["finetune"][name][task.name] = finetune_entry(path, tokenizer, task, data[task.name], settings,
                                                                     device, f"{name} {task.title}")
                write_report(report, tasks, out, plot=False)
    written = write_report(report, tasks, out)
    print(f"eval: {plural(len(names), 'model')} x {plural(len(tasks), 'task')}; wrote "
          + ", ".join(str(p) if i == 0 else p.name for i, p in enumerate(written)))
    return report


# --- held-out fidelity --------------------------------------------------------------------------


def heldout_spec(cfg: Config, num_shards: int) -> str:
    """The shards to score: eval.heldout_shards, else the shard training kept out (train.heldout_shard)."""
    if cfg.eval.heldout_shards:
        return cfg.eval.heldout_shards
    heldout = cfg.train.heldout(num_shards)
    if heldout >= 0:
        return str(heldout)
    raise DaramError("no held-out shard: pass --shards N, or set eval.heldout_shards or train.heldout_shard")


def run_heldout(cfg: Config) -> dict[str, dict[str, dict[str, Any]]]:
    """Perplexity, KL and top-1 agreement with the stored teacher, and ECE, per model and shard (heldout.json/.md)."""
    settings = cfg.eval
    names = model_names(settings)
    store = Store.open(cfg.store.path, options=cfg.store.options)
    shards = parse_shards(heldout_spec(cfg, store.manifest.num_shards), store.manifest.num_shards, "--shards")
    check_teacher_shards(store, store.teacher_manifest(), shards, "eval --heldout")
    # The stored ids are the store tokenizer's: a model with another vocabulary would be scored on the wrong tokens.
    for path in settings.models:
        check_store_tokenizer(load_tokenizer(path), f"model {path!r}", store)
    device = resolve_device(settings.device)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tqdm(total=len(names) * len(shards), desc="held-out", unit="shard", file=sys.stderr) as bar:
        for name, path in zip(names, settings.models):
            model = load_causal_lm(path, "float32", str(device))
            results[name] = {}
            for shard in shards:
                bar.set_postfix(model=name, shard=shard)
                results[name][str(shard)] = heldout_metrics(
                    model, store, shard, max_rows=settings.heldout_rows or None,
                    batch_size=settings.heldout_batch_size, device=device,
                )
                bar.update()
            del model
    (out / HELDOUT_JSON).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / HELDOUT_MD).write_text(heldout_markdown(results, store.url), encoding="utf-8")
    print(f"eval --heldout: {plural(len(names), 'model')} x {plural(len(shards), 'shard')}; wrote {out / HELDOUT_MD}, {HELDOUT_JSON}")
    return results


def heldout_markdown(results: dict[str, dict[str, dict[str, Any]]], store_url: str) -> str:
    lines = [
        "# daram eval --heldout",
        "",
        f"Store `{store_url}`. Perplexity and ECE (15 bins) of next-token prediction at T = 1; KL(teacher || model) "
        "at the store's temperature from the stored teacher distributions (top-k stores: k ids plus one tail "
        "bucket); top-1: how often the model's most probable id is the teacher's.",
        "",
        "| model | shard | perplexity | KL | top-1 agreement | ECE | tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, shards in results.items():
        for shard, m in shards.items():
            lines.append(
                f"| {name} | {shard} | {m['perplexity']:.2f} | {m['kl']:.4f} (T={m['temperature']:g}) "
                f"| {m['top1_agreement']:.4f} | {m['ece']:.4f} | {m['tokens']} |"
            )
    return "\n".join(lines) + "\n"
