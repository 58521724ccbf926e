"""``daram eval``'s report: the model table, the scores under both epoch rules, fine-tune seconds, zero/few-shot
scores beside cited published figures; as report.md, report.json and two pictures."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daram.pipeline.eval.downstream import Task
from daram.text import plural

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
SCORES_PNG = "report.png"
SECONDS_PNG = "seconds.png"

# Parameter counts the seed's tables give, by (n_embd, heads, layers, vocabulary): (the seed's count, ours for that
# shape with 1,024 positions as transformers counts it, why the two differ).
SEED_PARAMETER_COUNTS: dict[tuple[int, int, int, int], tuple[int, int, str]] = {
    (768, 12, 12, 51200): (
        125_164_800, 125_164_032,
        "+768 = one 768 -> 1 score layer without bias: the seed counted the body with a one-label "
        "GPT2ForSequenceClassification head; we count the LM, its head tied to the embeddings and counted once",
    ),
    (768, 8, 4, 51200): (
        67_656_960, 68_461_056,
        "not derivable from the stated shape: 1,047 rows of 768 fewer than a GPT-2 with 51,200 ids and 1,024 "
        "positions holds (a smaller position or id table in the seed's student, we presume); ours is what the saved "
        "model holds",
    ),
}

# Published figures placed beside ours, each with its source; never computed here.
CITED_FINETUNED = {
    "model": "skt/ko-gpt-trinity-1.2B-v0.5",
    "source": "the Trinity model card (huggingface.co/skt/ko-gpt-trinity-1.2B-v0.5), fine-tuned, metric as the card gives it",
    "scores": {"boolq": 0.7177, "copa": 0.6866, "wic": 0.7873},
}
CITED_SHOTS = {
    "model": "skt/ko-gpt-trinity-1.2B-v0.5",
    "source": "the polyglot-ko model cards (huggingface.co/EleutherAI/polyglot-ko-1.3b), lm-evaluation-harness kobest, "
              "macro-F1",
    "scores": {5: {"boolq": 0.3346, "copa": 0.6477, "wic": 0.328, "hellaswag": 0.4, "sentineg": 0.5186}},
}

# --- the model table ----------------------------------------------------------------------------


def model_facts(model, source: str) -> dict[str, Any]:
    """Size and shape of a loaded causal LM: parameters counted here (tied weights once), split into token
    embeddings, position embeddings and the rest; safetensors bytes on disk; width, heads, layers, vocabulary;
    the seed's count where the seed's tables give one for this shape, and the gap explained."""
    config = model.config
    parameters = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    tokens = model.get_input_embeddings().weight.numel()
    positions_module = getattr(model.base_model, "wpe", None)
    positions = positions_module.weight.numel() if positions_module is not None else 0
    shape = (config.hidden_size, config.num_attention_heads, config.num_hidden_layers, config.vocab_size)
    facts: dict[str, Any] = {
        "source": source,
        "parameters": parameters,
        "parameters_split": {"token_embeddings": tokens, "position_embeddings": positions,
                             "blocks_and_final_norm": parameters - tokens - positions},
        "safetensors_bytes": safetensors_bytes(source),
        "n_embd": shape[0], "heads": shape[1], "layers": shape[2], "vocab": shape[3],
    }
    if shape in SEED_PARAMETER_COUNTS:
        seed_count, reference_count, why = SEED_PARAMETER_COUNTS[shape]
        facts["seed_parameters"] = seed_count
        if seed_count != parameters:
            facts["seed_difference"] = {
                "ours_minus_seed": parameters - seed_count,
                "why": why if parameters == reference_count else
                f"this model also differs from the reference shape's {reference_count:,} (another position or id table)",
            }
    return facts


def safetensors_bytes(source: str) -> int | None:
    """Bytes of the ``*.safetensors`` files of a model directory (or of a hub id's cached snapshot); None when
    there are none on disk (a .bin checkpoint, or a hub model not in the cache)."""
    folder = Path(source)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(source, local_files_only=True))
        except Exception:  # not cached, not a hub id: nothing on disk to measure
            return None
    files = list(folder.glob("*.safetensors"))
    return sum(f.stat().st_size for f in files) if files else None


# --- summarising runs ---------------------------------------------------------------------------


def _pct(value: float, base: float | None) -> str:
    return "" if base is None or base == 0 else f" ({100 * value / base:.1f}%)"


def _reduction(value: float, base: float | None) -> str:
    if base is None or base == 0:
        return ""
    change = 100 * (1 - value / base)
    return f" ({change:.1f}% less)" if change >= 0 else f" ({-change:.1f}% more)"


def _shown(report: dict[str, Any], tasks: Sequence[Task], section: str) -> list[Task]:
    return [t for t in tasks if any(t.name in per_task for per_task in report[section].values())]


def _table(header: Sequence[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]


def report_markdown(report: dict[str, Any], tasks: Sequence[Task]) -> str:
    protocol = report["protocol"]
    departures = ", ".join(f"{k} = {v}" for k, v in protocol["departures"].items())
    lines = [
        "# daram eval",
        "",
        f"Protocol **{protocol['name']}**" + (f", changed here: {departures}" if departures else "")
        + f". Epochs {protocol['epochs']}, batch {protocol['batch_size']}, length {protocol['max_length']}, "
        f"fine-tuning seeds {', '.join(map(str, protocol['seeds']))}.",
        "",
        "Learning rates: " + "; ".join(_rates_by_source(protocol["learning_rates"])) + ".",
        "",
    ]
    lines += _models_section(report)
    if report["finetune"]:
        lines += _finetune_sections(report, tasks)
    if report["shots"]:
        lines += _shots_section(report, tasks)
    return "\n".join(lines) + "\n"


def _rates_by_source(rates: dict[str, dict[str, Any]]) -> list[str]:
    """"5e-06 for boolq (the seed (KoBEST paper))", tasks sharing a rate and its source grouped together."""
    groups: dict[tuple[float, str], list[str]] = {}
    for task, rate in rates.items():
        groups.setdefault((rate["rate"], rate["source"]), []).append(task)
    return [f"{rate:g} for {', '.join(tasks)} ({source})" for (rate, source), tasks in groups.items()]


def _models_section(report: dict[str, Any]) -> list[str]:
    lines = ["## Models", "", "Parameters counted by us (tied weights once); the seed's count beside it where the "
             "seed's tables give one for the shape.", ""]
    lines += _table(["model", "source", "parameters", "seed's count", "safetensors bytes", "n_embd", "heads", "layers",
                     "vocab"])
    notes = []
    for name, m in report["models"].items():
        seed = m.get("seed_parameters")
        seed_cell = "–" if seed is None else f"{seed:,}"
        if "seed_difference" in m:
            notes.append(f"- `{name}`: ours − seed's = {m['seed_difference']['ours_minus_seed']:+,}: "
                         f"{m['seed_difference']['why']}.")
            seed_cell += f" ({m['seed_difference']['ours_minus_seed']:+,})"
        size = "–" if m["safetensors_bytes"] is None else f"{m['safetensors_bytes']:,}"
        lines.append(f"| {name} | `{m['source']}` | {m['parameters']:,} | {seed_cell} | {size} | {m['n_embd']} "
                     f"| {m['heads']} | {m['layers']} | {m['vocab']:,} |")
    return lines + [""] + notes + ([""] if notes else [])


def _finetune_sections(report: dict[str, Any], tasks: Sequence[Task]) -> list[str]:
    finetune = report["finetune"]
    names = list(finetune)
    baseline = finetune[names[0]]
    shown = _shown(report, tasks, "finetune")
    runs = len(report["protocol"]["seeds"])
    lines = [
        "## Scores: test at the epoch chosen on dev (ours)",
        "",
        f"Macro-F1 for KoBEST, accuracy for NSMC: the test score of the epoch with the best dev score, mean ± std "
        f"over {plural(runs, 'fine-tuning seed')} (± is the spread between seeds), then the 95% bootstrap interval of "
        f"that mean over the test examples (the test set's own sampling error). In parentheses: % of `{names[0]}`.",
        "",
    ]
    lines += _score_table(finetune, shown, "dev_selected", with_interval=True)
    cited = CITED_FINETUNED
    cells = [f"{cited['scores'][t.name]:.4f}" if t.name in cited["scores"] else "–" for t in shown]
    lines.append(f"| {cited['model']} (cited) | " + " | ".join(cells) + " | – |")
    lines += ["", f"Cited: {cited['source']}; not measured here.", ""]

    lines += [
        "## Scores under the seed's rule: the best test epoch",
        "",
        "The seed's rule reports the best of the test scores taken after every epoch. It selects on the test set, "
        "so it flatters every model, the small ones most; shown for comparison with the seed's tables.",
        "",
    ]
    lines += _score_table(finetune, shown, "seed_rule", with_interval=False)

    lines += ["", "## Fine-tune seconds", "", f"Training steps of all epochs of one run (scoring excluded), mean "
              f"over the seeds. In parentheses: time saved against `{names[0]}`.", ""]
    lines += _table(["model", *(t.title for t in shown), "total"])
    base_total = sum(baseline[t.name]["seconds"][0] for t in shown) if all(t.name in baseline for t in shown) else None
    for name in names:
        cells = []
        for task in shown:
            entry, base = finetune[name].get(task.name), baseline.get(task.name)
            if entry is None:
                cells.append("–")
                continue
            mean = entry["seconds"][0]
            cells.append(f"{mean:.1f}" + ("" if name == names[0] or base is None else _reduction(mean, base["seconds"][0])))
        complete = all(t.name in finetune[name] for t in shown)
        total = sum(finetune[name][t.name]["seconds"][0] for t in shown) if complete else None
        total_cell = "–" if total is None else f"{total:.1f}" + ("" if name == names[0] else _reduction(total, base_total))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {total_cell} |")

    lines += ["", "## Every run", ""]
    lines += _table(["model", "task", "seed", "dev-chosen epoch", "dev", "test F1", "test acc", "best test epoch",
                     "test F1", "test acc", "seconds", "lr", "max length", "train / dev / test"])
    for name in names:
        for task in shown:
            summary = finetune[name].get(task.name)
            for run in summary["runs"] if summary else []:
                d, s, n = run["dev_selected"], run["seed_rule"], run["examples"]
                lines.append(
                    f"| {name} | {task.title} | {run['seed']} | {d['epoch']} | {d['dev']:.4f} | {d['f1']:.4f} "
                    f"| {d['accuracy']:.4f} | {s['epoch']} | {s['f1']:.4f} | {s['accuracy']:.4f} | {run['seconds']:.1f} "
                    f"| {run['learning_rate']:g} | {run['max_length']} | {n['train']} / {n['dev']} / {n['test']} |"
                )
    return lines + [""]


def _score_table(finetune: dict[str, Any], shown: Sequence[Task], rule: str, with_interval: bool) -> list[str]:
    names = list(finetune)
    baseline = finetune[names[0]]
    lines = _table(["model", *(t.title for t in shown), "mean"])
    for name in names:
        cells, means = [], []
        for task in shown:
            entry, base = finetune[name].get(task.name), baseline.get(task.name)
            if entry is None:
                cells.append("–")
                continue
            mean, std = entry[rule]["score"]
            means.append(mean)
            cell = f"{mean:.4f} ± {std:.4f}"
            if with_interval:
                low, high = entry[rule]["interval"]
                cell += f" [{low:.3f}, {high:.3f}]"
            cells.append(cell + ("" if name == names[0] or base is None else _pct(mean, base[rule]["score"][0])))
        complete = len(means) == len(shown)
        overall = sum(means) / len(means) if complete else None
        if name == names[0]:
            base_overall = overall
        mean_cell = "–" if overall is None else f"{overall:.4f}" + ("" if name == names[0] else _pct(overall, base_overall))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean_cell} |")
    return lines


def _shots_section(report: dict[str, Any], tasks: Sequence[Task]) -> list[str]:
    shots = report["shots"]
    shown = _shown(report, tasks, "shots")
    lines = [
        "## Zero- and few-shot (no fine-tuning)",
        "",
        "lm-evaluation-harness's `kobest_*` prompts and choices, scored by log-likelihood as its HFLM scores them; "
        "few-shot examples drawn from the train split with a fixed seed. Macro-F1 with its 95% bootstrap interval "
        "over the test examples, then accuracy. KoBEST only: the harness has no NSMC task.",
        "",
    ]
    lines += _table(["model", "shots", *(t.title for t in shown)])
    counts = sorted({int(k) for per_task in shots.values() for per_shots in per_task.values() for k in per_shots})
    for name, per_task in shots.items():
        for count in counts:
            cells = []
            for task in shown:
                entry = per_task.get(task.name, {}).get(str(count))
                if entry is None:
                    cells.append("–")
                    continue
                low, high = entry["f1_interval"]
                cells.append(f"{entry['f1']:.4f} [{low:.3f}, {high:.3f}], acc {entry['accuracy']:.4f}")
            lines.append(f"| {name} | {count} | " + " | ".join(cells) + " |")
    for count, scores in CITED_SHOTS["scores"].items():
        cells = [f"{scores[t.name]:.4f}" if t.name in scores else "–" for t in shown]
        lines.append(f"| {CITED_SHOTS['model']} (cited) | {count} | " + " | ".join(cells) + " |")
    return lines + ["", f"Cited: {CITED_SHOTS['source']}; not measured here.", ""]


# --- pictures -----------------------------------------------------------------------------------


def plot_scores(report: dict[str, Any], tasks: Sequence[Task], path: Path) -> None:
    """Grouped bars per task, one colour per model: the dev-selected fine-tuned score with its bootstrap interval
    and the seed's-rule score as a dot (left); zero/few-shot macro-F1 with intervals, one panel per shot count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if report["finetune"]:
        panels.append(("fine-tuned: test at the dev-chosen epoch\n(bars, 95% CI; dots: seed's best-test rule)", None))
    counts = sorted({int(k) for per_task in report["shots"].values() for per_shots in per_task.values() for k in per_shots})
    panels += [(f"{count}-shot, lm-eval-harness prompts (macro-F1, 95% CI)", count) for count in counts]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6, 4.8 * len(panels)), 4.2), squeeze=False)
    for ax, (title, count) in zip(axes[0], panels):
        section = "finetune" if count is None else "shots"
        shown = _shown(report, tasks, section)
        names = list(report[section])
        width = 0.8 / len(names)
        for m, name in enumerate(names):
            xs, heights, lows, highs, dots = [], [], [], [], []
            for i, task in enumerate(shown):
                entry = report[section][name].get(task.name)
                if count is not None:
                    entry = entry.get(str(count)) if entry else None
                if entry is None:
                    continue
                x = i + (m - (len(names) - 1) / 2) * width
                if count is None:
                    value, (low, high) = entry["dev_selected"]["score"][0], entry["dev_selected"]["interval"]
                    dots.append((x, entry["seed_rule"]["score"][0]))
                else:
                    value, (low, high) = entry["f1"], entry["f1_interval"]
                xs.append(x)
                heights.append(value)
                lows.append(max(0.0, value - low))
                highs.append(max(0.0, high - value))
            bars = ax.bar(xs, heights, width, yerr=[lows, highs], capsize=3, label=name)
            if dots:
                ax.plot([x for x, _ in dots], [y for _, y in dots], "o", color=bars.patches[0].get_facecolor(),
                        markeredgecolor="black", markersize=4)
        cited = CITED_FINETUNED["scores"] if count is None else CITED_SHOTS["scores"].get(count, {})
        marks = [(i, cited[t.name]) for i, t in enumerate(shown) if t.name in cited]
        if marks:
            ax.plot([i for i, _ in marks], [y for _, y in marks], "kx", markersize=8,
                    label=f"{CITED_SHOTS['model'].split('/')[-1]} (cited)")
        ax.set_xticks(range(len(shown)), [f"{t.title}\n({'F1' if t.metric == 'f1' or count is not None else 'acc'})"
                                          for t in shown])
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize="medium")
        ax.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_seconds(report: dict[str, Any], tasks: Sequence[Task], path: Path) -> None:
    """Grouped bars per task: fine-tune seconds of one run (mean over seeds, error bar = std), one colour per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = _shown(report, tasks, "finetune")
    names = list(report["finetune"])
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(shown) + 2), 4))
    for m, name in enumerate(names):
        entries = [(i, report["finetune"][name].get(t.name)) for i, t in enumerate(shown)]
        entries = [(i, e) for i, e in entries if e]
        ax.bar([i + (m - (len(names) - 1) / 2) * width for i, _ in entries], [e["seconds"][0] for _, e in entries],
               width, yerr=[e["seconds"][1] for _, e in entries], capsize=3, label=name)
    ax.set_xticks(range(len(shown)), [t.title for t in shown])
    ax.set_ylabel("seconds (training steps, all epochs)")
    ax.set_title("fine-tune seconds per run (mean ± std over seeds)", fontsize="medium")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict[str, Any], tasks: Sequence[Task], out: Path, plot: bool = True) -> list[Path]:
    """report.json and report.md, and with ``plot`` the pictures; returns the files written."""
    written = [out / REPORT_JSON, out / REPORT_MD]
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / REPORT_MD).write_text(report_markdown(report, tasks), encoding="utf-8")
    if plot:
        if report["finetune"] or report["shots"]:
            plot_scores(report, tasks, out / SCORES_PNG)
            written.append(out / SCORES_PNG)
        if report["finetune"]:
            plot_seconds(report, tasks, out / SECONDS_PNG)
            written.append(out / SECONDS_PNG)
    return written
