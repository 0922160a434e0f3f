"""Run one task with several SAM policies and seeds; write a results table and a figure.

Each run is the task's example script (`run_image_classification.py` or `run_glue.py`) in its own process, from the
same experiment config; only `--optim`, `--seed` and `--output_dir` change, so every policy sees the same model,
data and schedule. The table gives accuracy, SAM fraction, forward/backward passes and wall time, with ratios to
the AdamW (ERM) run of the same seed; the figure plots accuracy against cost and, for the adaptive policy, its
decisions over training (`sam/grad_norm_sq` against the threshold `mu + c_t * sigma`).

    python examples/compare.py                       # `make demo`: ViT on Fashion-MNIST, AdamW vs SAM vs AE-SAM
    python examples/compare.py --task glue --policies adamw_torch sam aesam aelooksam --seeds 1 2 3
    python examples/compare.py --policies adamw_torch aesam -- --label_noise 0.4 --max_steps 400
    python examples/compare.py --launcher "accelerate launch --config_file configs/accelerate/multi_cpu.yaml" \
        -- --use_cpu true

Flags after `--` go to every run of the example script, after the experiment config (so they override it).
"""

import csv
import hashlib
import importlib.metadata
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from aesam_hf import POLICIES, SAMPolicyName


EXAMPLES = Path(__file__).resolve().parent
REPO = EXAMPLES.parent
TASKS = {
    "image": (
        EXAMPLES / "run_image_classification.py",
        REPO / "configs/experiments/image_fashion_mnist_vit_aesam.json",
    ),
    "glue": (EXAMPLES / "run_glue.py", REPO / "configs/experiments/glue_fortunes_minilm_aesam.json"),
}
ADAPTIVE = {SAMPolicyName.AESAM.value, SAMPolicyName.AELOOKSAM.value}
# The code a run's numbers depend on besides its command and config: the library and the example scripts (not this
# runner, which only launches them), and the versions of the packages they train with.
RUN_CODE = ("aesam_hf/*.py", "examples/run_*.py", "examples/common.py", "examples/glue_metrics.py",
            "examples/fashion_mnist.py", "examples/make_fortunes_dataset.py")  # fmt: skip
RUN_PACKAGES = ("torch", "transformers", "accelerate", "datasets")


def code_fingerprint() -> dict[str, str]:
    """A hash of the code that trains and the package versions: a finished run is reused only if both are unchanged."""
    digest = hashlib.sha256()
    for path in sorted(p for pattern in RUN_CODE for p in REPO.glob(pattern)):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return {"code_sha256": digest.hexdigest(), **{name: importlib.metadata.version(name) for name in RUN_PACKAGES}}


@dataclass
class CompareArguments:
    task: str = field(default="image", metadata={"help": "Which example to run.", "choices": list(TASKS)})
    config: str | None = field(
        default=None, metadata={"help": "Experiment JSON for the example script; defaults to the task's AE-SAM one."}
    )
    policies: list[str] = field(
        default_factory=lambda: ["adamw_torch", "sam", "aesam"],
        metadata={"help": "`--optim` values to compare; a stock optimizer name (e.g. adamw_torch) is the baseline."},
    )
    seeds: list[int] = field(default_factory=lambda: [42], metadata={"help": "Seeds; each policy runs once per seed."})
    output_dir: str = field(
        default="outputs/compare",
        metadata={"help": "Runs go to <output_dir>/<policy>/seed<seed>; tables and figure here."},
    )
    metric: str = field(
        default="test_accuracy", metadata={"help": "The score to compare, a key of the runs' all_results.json."}
    )
    launcher: str | None = field(
        default=None,
        metadata={
            "help": "Command to launch each run with, e.g. `accelerate launch --config_file ...`; default python."
        },
    )
    rerun: bool = field(
        default=False, metadata={"help": "Run again even where a finished run (all_results.json) is already there."}
    )

    def __post_init__(self):
        if self.config is None:
            self.config = str(TASKS[self.task][1])
        if not Path(self.config).is_file():
            raise FileNotFoundError(f"`config` {self.config!r} not found.")
        if len(set(self.policies)) != len(self.policies) or not self.policies:
            raise ValueError(f"`policies` ({self.policies}) must be a non-empty list of distinct `optim` values.")
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ValueError(f"`seeds` ({self.seeds}) must be a non-empty list of distinct seeds.")

    @property
    def baseline(self) -> str | None:
        """The ERM run the ratios are taken against: `erm` or a stock optimizer name, the first one listed."""
        return next((p for p in self.policies if p not in POLICIES or p == SAMPolicyName.ERM.value), None)


def run_one(args: CompareArguments, policy: str, seed: int, extra: list[str]) -> dict:
    """Train and score one (policy, seed); returns its row.

    A run already in place is reused when it finished with the same command, experiment config and code (so an
    interrupted comparison resumes, and a changed library or example script reruns), unless `rerun`.
    """
    run_dir = Path(args.output_dir) / policy / f"seed{seed}"
    results_file = run_dir / "all_results.json"
    launcher = shlex.split(args.launcher) if args.launcher else [sys.executable]
    # Every step is logged: the decision figure needs each step's |g|^2 and threshold, and the same logging cost
    # falls on every policy. Checkpoints are off: they would time the disk, not the policy.
    cmd = [*launcher, str(TASKS[args.task][0]), args.config, *extra, "--optim", policy, "--seed", str(seed),
           "--output_dir", str(run_dir), "--logging_steps", "1", "--save_strategy", "no", "--disable_tqdm", "true"]  # fmt: skip
    # A run is reused only if it finished with the same command, the same experiment config and the same code.
    config = json.loads(Path(args.config).read_text(encoding="utf-8"))
    signature = {"cmd": cmd[len(launcher) :], "config": config, "code": code_fingerprint()}
    signature_file = run_dir / "compare_run.json"
    done = results_file.is_file() and signature_file.is_file()
    if args.rerun or not done or json.loads(signature_file.read_text(encoding="utf-8")) != signature:
        # A clean folder: the Trainer merges metrics into an existing all_results.json and resumes old checkpoints.
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        with open(run_dir / "log.txt", "w", encoding="utf-8") as log:
            log.write(shlex.join(cmd) + "\n")
            log.flush()
            proc = subprocess.run(
                cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
        if proc.returncode != 0:
            tail = (run_dir / "log.txt").read_text(encoding="utf-8", errors="replace")[-2000:]
            raise RuntimeError(f"{policy} (seed {seed}) failed with exit code {proc.returncode}; log:\n{tail}")
        signature_file.write_text(json.dumps(signature, indent=1), encoding="utf-8")
    results = json.loads(results_file.read_text(encoding="utf-8"))
    if args.metric not in results:
        raise ValueError(f"`metric` ({args.metric!r}) is not in {results_file}; it must be one of {sorted(results)}.")
    state = json.loads((run_dir / "trainer_state.json").read_text(encoding="utf-8"))
    steps = state["global_step"]
    return {
        "policy": policy,
        "seed": seed,
        args.metric: results[args.metric],
        "sam_fraction": results["sam/fraction_total"],
        "passes": results["sam/passes"],
        "steps": steps,
        "passes_per_step": results["sam/passes"] / steps,
        "train_time": results["train_runtime"],
    }


def add_time_ratios(rows: list[dict], baseline: str | None) -> None:
    """`time_ratio`: a run's wall time over the baseline's with the same seed (machine drift cancels within a seed)."""
    base = {r["seed"]: r["train_time"] for r in rows if r["policy"] == baseline}
    for r in rows:
        r["time_ratio"] = r["train_time"] / base[r["seed"]] if r["seed"] in base else float("nan")


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
        for key in (metric, "sam_fraction", "passes", "passes_per_step", "train_time", "time_ratio"):
            entry[key] = _mean_std([r[key] for r in runs])
        summary.append(entry)
    return summary


def markdown_table(summary: list[dict], metric: str, baseline: str | None) -> str:
    def fmt(pair, spec, scale=1.0):
        mean, std = pair
        if math.isnan(mean):
            return "–"
        return f"{format(mean * scale, spec)} ± {format(std * scale, spec)}" if std else format(mean * scale, spec)

    base = baseline or "ERM"
    lines = [
        f"| policy | {metric} (%) | SAM fraction | passes | passes / step | train time (s) | time / {base} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['policy']} | {fmt(s[metric], '.2f', 100)} | {fmt(s['sam_fraction'], '.2f')} | "
            f"{fmt(s['passes'], '.0f')} | {fmt(s['passes_per_step'], '.2f')} | {fmt(s['train_time'], '.1f')} | "
            f"{fmt(s['time_ratio'], '.2f')} |"
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
            ax.scatter(*zip(*sam_steps, strict=True), s=4, color="C1", alpha=0.7, zorder=3,
                       label=f"SAM step ({len(sam_steps)} of {len(steps)})")  # fmt: skip
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


def main(argv: list[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    (args,) = HfArgumentParser(CompareArguments).parse_args_into_dataclasses(args=own)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    setup = f"Task `{args.task}` from `{args.config}`" + (f" with `{shlex.join(extra)}`" if extra else "")
    print(f"{setup}; policies {', '.join(args.policies)}; seeds {', '.join(map(str, args.seeds))}.", flush=True)

    rows = []
    total = len(args.policies) * len(args.seeds)
    for seed in args.seeds:  # seed-major: a drift in machine speed hits every policy of a seed alike
        for policy in args.policies:
            print(f"[{len(rows) + 1}/{total}] {policy}, seed {seed} ...", end=" ", flush=True)
            start = time.perf_counter()
            row = run_one(args, policy, seed, extra)
            rows.append(row)
            print(f"{time.perf_counter() - start:.0f}s, {args.metric} {100 * row[args.metric]:.2f}%", flush=True)
    add_time_ratios(rows, args.baseline)
    summary = summarize(rows, args.policies, args.metric)
    table = markdown_table(summary, args.metric, args.baseline)

    with open(output_dir / "results.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (output_dir / "results.md").write_text(f"{setup}.\n\n{table}\n", encoding="utf-8")

    adaptive = next((p for p in args.policies if p in ADAPTIVE), None)
    trace = None
    if adaptive is not None:
        trace = decision_trace(output_dir / adaptive / f"seed{args.seeds[0]}")
        trace.update(policy=adaptive, seed=args.seeds[0])
    figure = output_dir / "compare.png"
    title = f"{args.task} task, {Path(args.config).name} with --optim varied" + (
        f", {shlex.join(extra)}" if extra else ""
    )
    plot(summary, args.metric, args.baseline, trace, title, figure)

    print()
    print(table)
    print(f"\nWritten: {output_dir / 'results.md'}, {output_dir / 'results.csv'}, {figure}")
    return rows


if __name__ == "__main__":
    main()
