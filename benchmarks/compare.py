"""Run one task with several SAM policies and seeds; write a results table and a figure (`make demo`).

Each run is the task's example script (`examples/run_image_classification.py` or `examples/run_glue.py`) in its own
process, from the same experiment config; only `--optim`, `--seed` and `--output_dir` change (`runner.py`). The table
gives the score, SAM fraction, forward/backward passes and train time (no time ratios: the runs share the cores, so
cost is compared in passes); the figure plots the score against cost and, for the adaptive policy, its decisions over training
(`sam/grad_norm_sq` against the threshold `mu + c_t * sigma`).

    python -m benchmarks.compare                      # `make demo`: ViT on Fashion-MNIST, AdamW vs SAM vs AE-SAM
    python -m benchmarks.compare --task glue --policies adamw_torch sam aesam aelooksam --seeds 1 2 3
    python -m benchmarks.compare --policies adamw_torch aesam -- --max_steps 400
    python -m benchmarks.compare --launcher "accelerate launch --config_file configs/accelerate/multi_cpu.yaml"

Flags after `--` go to every run of the example script, after the experiment config (so they override it). Run it
from the repository root: the experiment configs name their data relative to it.
"""

import csv
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from aesam_hf import POLICIES, SAMPolicyName
from benchmarks.results import decision_trace, markdown_table, plot, summarize
from benchmarks.runner import TASKS, Runner, read_json, run_jobs


ADAPTIVE = {SAMPolicyName.AESAM.value, SAMPolicyName.AELOOKSAM.value}


@dataclass
class CompareArguments:
    task: str = field(default="image", metadata={"help": "Which example to run.", "choices": list(TASKS)})
    config: str | None = field(
        default=None, metadata={"help": "Experiment JSON for the example script; defaults to the task's."}
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
    workers: int = field(default=2, metadata={"help": "Runs side by side, each its own process."})
    threads: int = field(default=1, metadata={"help": "torch threads per run (OMP_NUM_THREADS)."})

    def __post_init__(self):
        if len(set(self.policies)) != len(self.policies) or not self.policies:
            raise ValueError(f"`policies` ({self.policies}) must be a non-empty list of distinct `optim` values.")
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ValueError(f"`seeds` ({self.seeds}) must be a non-empty list of distinct seeds.")
        for name in ("workers", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` ({getattr(self, name)}) must be >= 1.")
        self.runner = Runner(
            self.task, self.output_dir, self.config, self.metric, self.launcher, self.rerun, threads=self.threads
        )
        self.config = self.runner.config

    @property
    def baseline(self) -> str | None:
        """The ERM run the ratios are taken against: `erm` or a stock optimizer name, the first one listed."""
        return next((p for p in self.policies if p not in POLICIES or p == SAMPolicyName.ERM.value), None)


# How far above 1 - noise the fit of the noisy training labels must be to call it memorization: 5 points, about three
# binomial standard deviations of a fit measured on 1,000 examples (the demo's `--eval_train_samples`).
MEMORIZATION_MARGIN = 0.05


def label_noise(config: dict) -> float:
    """The fraction of flipped training labels in the data a config names, as their builder recorded it (the
    `spec.json` that `benchmarks.fashion_mnist` and `benchmarks.fortunes` write next to the files); 0 if unrecorded."""
    folder = config.get("dataset_name") or (str(Path(config["train_file"]).parent) if config.get("train_file") else "")
    spec = Path(folder) / "spec.json" if folder else None
    return json.loads(spec.read_text(encoding="utf-8")).get("label_noise", 0.0) if spec and spec.is_file() else 0.0


def memorization(fit: float, noise: float) -> str:
    """What the fit of the noisy training labels says, from the numbers: a model that learned only the true classes
    fits at most the right labels, 1 - noise of them; a fit above that by more than `MEMORIZATION_MARGIN` can only
    come from wrong labels learned by heart."""
    if fit > 1 - noise + MEMORIZATION_MARGIN:
        return "It memorized noise."
    if fit <= 1 - noise:
        return "It had not memorized noise."
    return "Within the margin of that: no clear memorization."


def read_out(summary: list[dict], metric: str, baseline: str | None, noise: float, n_seeds: int) -> str | None:
    """A paragraph that reads the table: what the baseline did, what SAM and the adaptive policy changed, at what cost.

    With best-checkpoint selection (`--load_best_model_at_end`, as the demo's config does), each policy is read at
    the checkpoint its own validation data selected *and* at its last step: a user who keeps the best checkpoint gets
    the first. Every number in it comes from `summary`; nothing is claimed that the runs did not measure.
    """
    by = {s["policy"]: s for s in summary}
    if baseline not in by or "sam" not in by:
        return None

    def score(policy: str, key: str = metric) -> float:
        return 100 * by[policy].get(key, (math.nan,))[0]

    # The last step's score is read apart only where the runs selected a checkpoint and scored their last model.
    selection = metric == "test_accuracy" and all(not math.isnan(score(p, "test_last_accuracy")) for p in by)
    selection = selection and any(score(p, "test_last_accuracy") != score(p) for p in by)

    def result(policy: str) -> str:
        if not selection:
            return f"ended at {score(policy):.1f}%"
        step = by[policy]["selected_step"][0]
        where = f"step {step:.0f}" if n_seeds == 1 else f"mean selected step {step:.0f}"
        return (
            f"scored {score(policy):.1f}% at the checkpoint its validation selected ({where}) and "
            f"{score(policy, 'test_last_accuracy'):.1f}% at its last step"
        )

    parts = []
    fit = 100 * by[baseline]["train_noisy_accuracy"][0]
    if noise and not math.isnan(fit):
        parts.append(
            f"{baseline} {result(baseline)} on the test set; by the end it fit {fit:.0f}% of its training labels, "
            f"{100 * noise:.0f}% of which are wrong: a model that learned only the true classes would fit at most "
            f"{100 * (1 - noise):.0f}%. " + memorization(fit / 100, noise)
        )
    else:
        parts.append(f"{baseline} {result(baseline)} on the test set.")
    gain = score("sam") - score(baseline)
    parts.append(
        f"SAM {result('sam')} ({gain:+.1f} points{' at the selected checkpoints' if selection else ''}) for "
        f"{by['sam']['passes_per_step'][0]:.2f} forward/backward passes per step."
    )
    adaptive = next((p for p in ADAPTIVE if p in by), None)
    if adaptive:
        a = by[adaptive]
        extra_cost = a["passes_per_step"][0] - 1
        kept = (score(adaptive) - score(baseline)) / gain if gain > 0 else float("nan")
        kept_text = f", {100 * kept:.0f}% of SAM's gain" if gain > 0 else ""
        parts.append(
            f"{adaptive} {result(adaptive)} ({score(adaptive) - score(baseline):+.1f} points{kept_text}) for "
            f"{a['passes_per_step'][0]:.2f} passes per step ({100 * extra_cost:.0f}% of SAM's extra cost)."
        )
    seeds = "one seed, so no interval" if n_seeds == 1 else f"mean over {n_seeds} seeds, no interval"
    parts.append(
        f"({seeds}, and the baseline's learning rate is not tuned: `make bench` runs 5 seeds against a tuned AdamW "
        "and reports paired 95% intervals at the selected checkpoint and the last step, in docs/benchmarks.md.)"
    )
    return "Reading: " + " ".join(parts)


def main(argv: list[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    (args,) = HfArgumentParser(CompareArguments).parse_args_into_dataclasses(args=own)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    setup = f"Task `{args.task}` from `{args.config}`" + (f" with `{shlex.join(extra)}`" if extra else "")
    print(f"{setup}; policies {', '.join(args.policies)}; seeds {', '.join(map(str, args.seeds))}.", flush=True)

    # Seed-major: a drift in machine speed hits every policy of a seed alike.
    jobs = [(args.runner, (policy, seed, extra)) for seed in args.seeds for policy in args.policies]
    print(f"{len(jobs)} runs, {args.workers} at a time, {args.threads} torch thread(s) each ...", flush=True)
    start = time.perf_counter()
    rows = run_jobs(jobs, args.workers)
    for row in rows:
        print(f"  {row['policy']}, seed {row['seed']}: {args.metric} {100 * row[args.metric]:.2f}%", flush=True)
    print(f"Done in {time.perf_counter() - start:.0f}s.", flush=True)
    summary = summarize(rows, args.policies, args.metric)
    table = markdown_table(summary, args.metric)

    with open(output_dir / "results.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (output_dir / "results.md").write_text(f"{setup}.\n\n{table}\n", encoding="utf-8")

    adaptive = next((p for p in args.policies if p in ADAPTIVE), None)
    trace = None
    if adaptive is not None:
        trace = decision_trace(args.runner.run_dir(adaptive, args.seeds[0]))
        trace.update(policy=adaptive, seed=args.seeds[0])
    figure = output_dir / "compare.png"
    title = f"{args.task} task, {Path(args.config).name} with --optim varied" + (
        f", {shlex.join(extra)}" if extra else ""
    )
    plot(summary, args.metric, args.baseline, trace, title, figure)

    print()
    print(table)
    noise = label_noise(read_json(Path(args.config)))
    reading = read_out(summary, args.metric, args.baseline, noise, len(args.seeds))
    if reading:
        print("\n" + reading)
        (output_dir / "results.md").write_text(f"{setup}.\n\n{table}\n\n{reading}\n", encoding="utf-8")
    print(f"\nWritten: {output_dir / 'results.md'}, {output_dir / 'results.csv'}, {figure}")
    return rows


if __name__ == "__main__":
    main()
