"""Run one task with several SAM policies and seeds; write a results table and a figure (`make demo`).

Each run is the task's example script (`examples/run_image_classification.py` or `examples/run_glue.py`) in its own
process, from the same experiment config; only `--optim`, `--seed` and `--output_dir` change (`runner.py`). The table
gives the score, SAM fraction, forward/backward passes and wall time, with ratios to the AdamW (ERM) run of the same
seed; the figure plots the score against cost and, for the adaptive policy, its decisions over training
(`sam/grad_norm_sq` against the threshold `mu + c_t * sigma`).

    python -m benchmarks.compare                      # `make demo`: ViT on Fashion-MNIST, AdamW vs SAM vs AE-SAM
    python -m benchmarks.compare --task glue --policies adamw_torch sam aesam aelooksam --seeds 1 2 3
    python -m benchmarks.compare --policies adamw_torch aesam -- --label_noise 0.4 --max_steps 400
    python -m benchmarks.compare --launcher "accelerate launch --config_file configs/accelerate/multi_cpu.yaml"

Flags after `--` go to every run of the example script, after the experiment config (so they override it). Run it
from the repository root: the experiment configs name their data relative to it.
"""

import csv
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from aesam_hf import POLICIES, SAMPolicyName
from benchmarks.results import add_time_ratios, decision_trace, markdown_table, plot, summarize
from benchmarks.runner import TASKS, Runner


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

    def __post_init__(self):
        if len(set(self.policies)) != len(self.policies) or not self.policies:
            raise ValueError(f"`policies` ({self.policies}) must be a non-empty list of distinct `optim` values.")
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ValueError(f"`seeds` ({self.seeds}) must be a non-empty list of distinct seeds.")
        self.runner = Runner(self.task, self.output_dir, self.config, self.metric, self.launcher, self.rerun)
        self.config = self.runner.config

    @property
    def baseline(self) -> str | None:
        """The ERM run the ratios are taken against: `erm` or a stock optimizer name, the first one listed."""
        return next((p for p in self.policies if p not in POLICIES or p == SAMPolicyName.ERM.value), None)


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
            row = args.runner.run(policy, seed, extra)
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
        trace = decision_trace(args.runner.run_dir(adaptive, args.seeds[0]))
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
