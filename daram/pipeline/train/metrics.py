"""What a run reports: ``metrics.jsonl`` (one JSON record per logged step or held-out evaluation), the
loss curve, and the one-line summary."""

from __future__ import annotations

import json
from pathlib import Path

from daram.text import plural

METRICS = "metrics.jsonl"
CURVE = "loss_curve.png"


def objective_formula(alpha_kd: float, alpha_ce: float, temperature: float) -> str:
    """What the logged ``loss`` is, in words a reader can check against ``kd`` and ``ce``: a CE-only run's loss
    is ``alpha_ce x CE`` (0.5 x CE by default), not the CE itself."""
    ce = "CE" if alpha_ce == 1 else f"{alpha_ce:g} x CE"
    if alpha_kd == 0:
        return ce
    kd = f"{alpha_kd * temperature**2:g} x KL"  # alpha_kd * T^2 * KL: T^2 keeps the gradient scale of T = 1
    return f"{kd} + {ce}" if alpha_ce else kd


class MetricsLog:
    """``metrics.jsonl`` in ``out``; only the main rank writes."""

    def __init__(self, out: Path, main: bool = True) -> None:
        self.path, self.main = Path(out) / METRICS, main

    def write(self, record: dict) -> None:
        if self.main:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def trim(self, step: int) -> None:
        """On resume, drop the records after the checkpoint's step: the resumed run writes them again."""
        if not self.main or not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def read_metrics(out: Path) -> list[dict]:
    path = Path(out) / METRICS
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def plot_curves(out: Path) -> Path:
    """``loss_curve.png`` from ``metrics.jsonl``: the objective and CE on the left, KL on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(out)
    train = [r for r in records if r.get("split") != "heldout"]
    heldout = [r for r in records if r.get("split") == "heldout"]
    steps = [r["step"] for r in train]
    objective = next((r["objective"] for r in reversed(train) if r.get("objective")), None)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(steps, [r["loss"] for r in train], label=f"loss = {objective}" if objective else "loss")
    left.plot(steps, [r["ce"] for r in train], label="CE (train)", alpha=0.8)
    if heldout:
        left.plot([r["step"] for r in heldout], [r["ce"] for r in heldout], "s-", label="CE (held-out)")
    left.set_title("training objective and next-token CE")
    kd = [(r["step"], r["kd"]) for r in train if r["kd"] is not None]
    if kd:
        right.plot(*zip(*kd), label="KL (train)", alpha=0.8)
    if heldout:
        right.plot([r["step"] for r in heldout], [r["kl"] for r in heldout], "o-", label="KL (held-out)")
    right.set_title(f"KL(teacher || student) at T = {heldout[-1]['temperature']:g}" if heldout else "KL(teacher || student)")
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.set_ylabel("nats per token")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    path = Path(out) / CURVE
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_line(summary: dict, kind: str) -> str:
    last = summary["last"] or {}
    steps = summary["steps"]
    parts = [
        f"student-train ({kind}): {plural(steps, 'step')}, {summary['tokens']:,} tokens; this run "
        f"{summary['tokens_this_run']:,} in {summary['seconds']:.0f} s "
        f"({summary['tokens_this_run'] / max(summary['seconds'], 1e-9):,.0f} tokens/s)",
    ]
    if last:
        kd = f", KL {last['kd']:.4f}" if last.get("kd") is not None else ""
        formula = f" (= {last['objective']})" if last.get("objective") else ""
        parts.append(f"loss {last['loss']:.4f}{formula}{kd}, CE {last['ce']:.4f}")
    if summary["heldout"]:
        h = summary["heldout"]
        parts.append(f"held-out KL {h['kl']:.4f}, CE {h['ce']:.4f}, top-1 {h['top1_agreement']:.1%}")
    parts.append(f"model in {summary['out']}")
    return "; ".join(parts)
