"""The tables and figures of a comparison: mean ± std over seeds, score against cost.

Used by `compare` (the demo's table and figure) and by `report` (`docs/benchmarks.md`).
"""

import json
import math
import statistics
import textwrap
from pathlib import Path

from benchmarks.runner import code_fingerprint


# The columns of a run's row (runner.py) summarized over seeds besides the score.
SUMMARIZED = (
    "sam_fraction",
    "passes",
    "passes_per_step",
    "train_time",
    "eval_accuracy",
    "peak_eval_accuracy",
    "peak_clean_eval_accuracy",
    "test_last_accuracy",
    "selected_step",
    "train_noisy_accuracy",
)


def provenance(command: str, task: str | None = None) -> dict:
    """What measured a regime's entry: the command, and the fingerprint of the code that trained its runs."""
    return {"command": command, "code": code_fingerprint(task)}


def keep_earlier_regimes(path: Path, regimes: dict, order: list[str]) -> dict:
    """`regimes`, plus the regimes of an earlier results file at `path` that this invocation did not run.

    `python -m benchmarks.accuracy --regimes text-noisy` refreshes one regime without dropping the others from the
    file (and so from `docs/benchmarks.md`); each entry keeps the `measured_by` of the invocation that made it, which
    the report prints, flagging entries whose code has changed since. Ordered as `order`, then any others.
    """
    earlier = json.loads(path.read_text(encoding="utf-8")).get("regimes", {}) if path.is_file() else {}
    merged = {**{name: r for name, r in earlier.items() if name not in regimes}, **regimes}
    return {name: merged[name] for name in sorted(merged, key=lambda n: order.index(n) if n in order else len(order))}


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(rows: list[dict], policies: list[str], metric: str) -> list[dict]:
    """Per policy: mean and std over seeds of every column."""
    summary = []
    for policy in policies:
        runs = [r for r in rows if r["policy"] == policy]
        entry = {"policy": policy, "seeds": len(runs)}
        for key in (metric, *SUMMARIZED):
            entry[key] = _mean_std([r.get(key, float("nan")) for r in runs])
        summary.append(entry)
    return summary


def markdown_table(summary: list[dict], metric: str) -> str:
    """One row per policy: score (%), SAM fraction, passes (per step) and train time.

    No ratio of train times: the runs of a comparison share the cores (two side by side by default), so their times
    say how busy the machine was as much as what a policy costs; passes per step do not depend on it.
    """

    def fmt(pair, spec, scale=1.0):
        mean, std = pair
        if math.isnan(mean):
            return "–"
        return f"{format(mean * scale, spec)} ± {format(std * scale, spec)}" if std else format(mean * scale, spec)

    # Where the runs selected a checkpoint (`--load_best_model_at_end`) and scored their last step too
    # (`--test_last_model`), the score is the selected checkpoint's and the last step's sits beside it; where they
    # evaluated during training, the fit of the noisy training labels at the end (memorization).
    def shown(key: str) -> bool:
        return any(not math.isnan(s.get(key, (math.nan,))[0]) for s in summary)

    selection = metric == "test_accuracy" and shown("test_last_accuracy")
    during = [
        (key, title)
        for key, title in (
            ("test_last_accuracy", "last step: test_accuracy (%)"),
            ("selected_step", "selected step"),
            ("train_noisy_accuracy", "fit of training labels, last step (%)"),
        )
        if shown(key) and (selection or key == "train_noisy_accuracy")
    ]
    scale = {"selected_step": (".0f", 1.0)}
    head = f"selected checkpoint: {metric} (%)" if selection else f"{metric} (%)"
    lines = [
        f"| policy | {head} | "
        + "".join(f"{title} | " for _, title in during)
        + "SAM fraction | passes | passes / step | train time (s, cores shared) |",
        "|---|---:|" + "---:|" * len(during) + "---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['policy']} | {fmt(s[metric], '.2f', 100)} | "
            + "".join(f"{fmt(s[key], *scale.get(key, ('.2f', 100)))} | " for key, _ in during)
            + f"{fmt(s['sam_fraction'], '.2f')} | {fmt(s['passes'], '.0f')} | {fmt(s['passes_per_step'], '.2f')} | "
            f"{fmt(s['train_time'], '.1f')} |"
        )
    return "\n".join(lines)


def decision_trace(run_dir: Path) -> dict[str, list[float]]:
    """Per-step `sam/grad_norm_sq`, threshold and decision from a run's log history (logged every step)."""
    state = json.loads((run_dir / "trainer_state.json").read_text(encoding="utf-8"))
    trace = {"step": [], "grad_norm_sq": [], "threshold": [], "sam": []}
    for entry in state["log_history"]:
        if "sam/threshold" in entry and "sam/grad_norm_sq" in entry:
            trace["step"].append(entry["step"])
            trace["grad_norm_sq"].append(entry["sam/grad_norm_sq"])
            trace["threshold"].append(entry["sam/threshold"])
            trace["sam"].append(entry["sam/fraction"])
    return trace


def plot(summary: list[dict], metric: str, baseline: str | None, trace: dict | None, title: str, path: Path) -> None:
    """Accuracy against cost (left) and the adaptive policy's decisions over training (right)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here, or on a training node
    import matplotlib.pyplot as plt

    trace = trace if trace and trace["step"] else None  # an adaptive run that logged no decision: one panel
    fig, axes = plt.subplots(1, 2 if trace else 1, figsize=(13 if trace else 6.5, 4.8), squeeze=False)
    ax = axes[0, 0]
    for i, s in enumerate(summary):
        (x, xerr), (y, yerr) = s["passes_per_step"], s[metric]
        ax.errorbar(x, 100 * y, xerr=xerr, yerr=100 * yerr, fmt="o", ms=8, capsize=4, color=f"C{i}")
        # Alternate above and below the point: policies at the same cost (aesam and random) must not overprint.
        ax.annotate(s["policy"], (x, 100 * y), textcoords="offset points", xytext=(7, 5 if i % 2 else -13), fontsize=9)
    seeds = max(s["seeds"] for s in summary)
    ax.set_xlabel(f"cost: forward/backward passes per step ({baseline or 'ERM'} = 1)")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"Score against cost (mean ± std over {seeds} seed{'s' if seeds > 1 else ''})")
    ax.grid(alpha=0.3)

    if trace:
        ax = axes[0, 1]
        steps, x, thr = trace["step"], trace["grad_norm_sq"], trace["threshold"]
        # Late in training c_t < 0 can take the threshold to 0 or below (then every step is a SAM step); a log axis
        # cannot show that, so the threshold is drawn at the floor of the plot there and the legend says so.
        floor = 0.5 * min(v for v in x if v > 0)
        shown = [max(v, floor) for v in thr]
        clipped = any(v < floor for v in thr)
        ax.plot(steps, x, lw=0.6, color="C0", alpha=0.8, label=r"$\|g_t\|^2$ (squared stochastic gradient norm)")
        label = r"threshold $\mu_t + c_t\,\sigma_t$" + (" (at the floor when below it)" if clipped else "")
        ax.plot(steps, shown, lw=1.4, color="C3", label=label, zorder=4)
        sam_steps = [(s, v) for s, v, d in zip(steps, x, trace["sam"], strict=True) if d >= 0.5]
        if sam_steps:
            label = f"SAM step ({len(sam_steps)} of {len(steps)})"
            ax.scatter(*zip(*sam_steps, strict=True), s=4, color="C1", alpha=0.7, zorder=3, label=label)
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.9 * floor)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(r"$\|g_t\|^2$ (log scale)")
        ax.set_title(f"{trace['policy']} (seed {trace['seed']}): a SAM step when $\\|g_t\\|^2 \\geq$ threshold")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right", framealpha=0.9)
    fig.suptitle(textwrap.fill(title, width=150), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
