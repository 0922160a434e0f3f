"""What a SAM step, the ERM policy, gradient accumulation and a whole AE-SAM run cost, as ratios to ERM in one run.

Questions, per workload (`workloads.py`: the small ViT on Fashion-MNIST, MiniLM-L6 on fortunes):

1. SAM step / ERM step. The floor is 2.0 if a step were only its forward/backward pass; a real step also loads data
   and runs AdamW, once per step either way, so the ratio sits below 2. It is also given against the ideal, ERM step
   + one more forward/backward pass (`sam / (erm + pass)`, 1.0 = no overhead beyond the extra pass). Target <= 2.02.
2. The `erm` policy through `AESAMTrainer` / the stock `Trainer` with the same optimizer: the policy's own overhead.
   Target <= 1.01.
3. A whole `aesam` run / an ERM run, against 1 + f (f = the run's measured SAM fraction). Target <= 1.02 (1 + f).
4. Gradient accumulation: SAM with 4 micro-batches per step against 1, at the same effective batch (and ERM's, for
   the part that is gradient accumulation's own cost).

The `vit4` workload (a 4-layer ViT with 4x4 patches, batch 64, the default `max_grad_norm` of 1.0, 24-step runs) asks
question 2 alone, against a noise floor: the stock `Trainer` with `adamw_torch` timed twice per round, so that the
`erm` / stock ratio can be read against what stock / stock gives on the same machine.

Every variant is a fresh `trainer.train()` from the same weights on the same batches, after one untimed warm-up run.
Variants are interleaved: each round runs all of them once, in a rotated order, so that drift in machine speed hits
them alike. A step's time is its median over all rounds (warm-up steps dropped); the spread is the range of the
per-round ratios.

    python -m benchmarks.step_cost                      # all workloads, ~13 minutes on 2 cores
    python -m benchmarks.step_cost --workloads vit --rounds 3
    python -m benchmarks.step_cost --workloads vit4     # the `erm` overhead and its noise floor, ~1 minute
"""

import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import HfArgumentParser

from benchmarks.io import write_results
from benchmarks.workloads import WORKLOADS, environment, make_trainer, make_workload, median, synchronize


# (steps per run, warm-up steps dropped, rounds, steps of a whole run) per workload: a MiniLM step takes ~20x a ViT's.
# `vit4` makes no whole runs.
BUDGET = {"vit": (40, 5, 5, 300), "minilm": (14, 3, 3, 40), "vit4": (24, 4, 7, 0)}
SMOKE_BUDGET = (6, 2, 2, 6)
STEP_VARIANTS = {
    # name: (optim, stock Trainer, gradient accumulation)
    "stock": ("adamw_torch", True, 1),
    "erm": ("erm", False, 1),
    "sam": ("sam", False, 1),
    "erm_ga4": ("erm", False, 4),
    "sam_ga4": ("sam", False, 4),
}
# `vit4`: the `erm` policy against the stock Trainer, and the stock Trainer against itself (the noise floor).
OVERHEAD_VARIANTS = {
    "stock": ("adamw_torch", True, 1),
    "erm": ("erm", False, 1),
    "stock_again": ("adamw_torch", True, 1),
}
OVERHEAD_ONLY = {"vit4"}
ERM_OVERHEAD_TARGET = 1.01


@dataclass
class StepCostArguments:
    workloads: list[str] = field(
        default_factory=lambda: list(WORKLOADS), metadata={"help": f"Which of {', '.join(WORKLOADS)} to measure."}
    )
    rounds: int | None = field(default=None, metadata={"help": "Rounds of interleaved runs (default per workload)."})
    output: str = field(default="outputs/bench/step_cost.json", metadata={"help": "Where the results JSON goes."})
    smoke: bool = field(default=False, metadata={"help": "Tiny models and runs: every code path in seconds."})

    def __post_init__(self):
        unknown = set(self.workloads) - set(BUDGET)
        if unknown or not self.workloads:
            raise ValueError(f"`workloads` ({self.workloads}) must be a non-empty list among {sorted(BUDGET)}.")
        if self.rounds is not None and self.rounds < 1:
            raise ValueError(f"`rounds` ({self.rounds}) must be >= 1.")


def pass_time(workload, repeats: int) -> float:
    """Median time of one forward/backward pass over a batch, alone: the cost a SAM step adds, ideally."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where the Trainer trains
    model = workload.make_model().to(device).train()
    batch = torch.utils.data.default_collate([workload.dataset[i] for i in range(workload.batch_size)])
    batch = {k: v.to(device) for k, v in batch.items()}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(**batch).loss.backward()
        synchronize()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return median(times[2:])


def ratio_stats(per_round: dict[str, list[float]], num: str, den: str) -> dict[str, float]:
    """The ratio of two variants' step times within each round: median and range over rounds."""
    ratios = [a / b for a, b in zip(per_round[num], per_round[den], strict=True)]
    return {"median": float(np.median(ratios)), "min": min(ratios), "max": max(ratios)}


def run_variant(workload, variant: tuple, steps: int, output_dir: str) -> tuple[list[float], dict, object]:
    """One fresh training run of a variant: its step times, what it did, and its trainer."""
    optim, stock, ga = variant
    trainer, timer = make_trainer(workload, optim, steps, output_dir, stock=stock, ga=ga)
    trainer.train()
    controller = getattr(trainer, "_sam_controller", None)
    ran = {
        "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
        "steps": trainer.state.global_step,
        "sam_steps": controller.sam_steps if controller is not None else 0,
        "aesam_trainer": controller is not None,
    }
    return timer.times, ran, trainer


def measure(name: str, args: StepCostArguments) -> dict:
    steps, warmup, rounds, run_steps = SMOKE_BUDGET if args.smoke else BUDGET[name]
    overhead_only = name in OVERHEAD_ONLY
    run_steps = 0 if overhead_only else run_steps
    rounds = args.rounds or rounds
    variants = OVERHEAD_VARIANTS if overhead_only else STEP_VARIANTS
    workload = make_workload(name, max(steps, run_steps), smoke=args.smoke)
    print(f"== {name}: {workload.description}; {rounds} rounds of {steps}-step runs", flush=True)
    times = {v: [] for v in variants}
    per_round = {v: [] for v in variants}
    whole = {"erm": [], "aesam": []}
    fractions = []
    ran = {}  # what each variant really did, from its trainer: pinned by the smoke test
    with tempfile.TemporaryDirectory() as tmp:
        # One untimed run first: the process's first training run pays one-off costs (kernel and allocator warm-up)
        # that would land on whichever variant happens to run first.
        run_variant(workload, next(iter(variants.values())), steps, tmp)
        for r in range(rounds):
            order = list(variants)[r % len(variants) :] + list(variants)[: r % len(variants)]
            for variant in order:
                step_times, ran[variant], _ = run_variant(workload, variants[variant], steps, tmp)
                times[variant] += step_times[warmup:]
                per_round[variant].append(median(step_times[warmup:]))
            # Question 3: whole runs, every step counted (a run's cost is all of it).
            for variant in (("erm", "aesam") if r % 2 == 0 else ("aesam", "erm")) if run_steps else ():
                step_times, _, trainer = run_variant(workload, (variant, False, 1), run_steps, tmp)
                whole[variant].append(sum(step_times))
                if variant == "aesam":
                    fractions.append(trainer._sam_controller.sam_fraction)
            done = ", ".join(f"{v} {1e3 * per_round[v][-1]:.1f} ms" for v in order)
            print(f"  round {r + 1}/{rounds}: {done}", flush=True)
    result = {
        "workload": workload.description,
        "param_bytes": workload.param_bytes(),
        "rounds": rounds,
        "steps_per_run": steps,
        "warmup_dropped": warmup,
        "step_ms": {v: 1e3 * median(t) for v, t in times.items()},
        "per_round_ms": {v: [1e3 * t for t in ts] for v, ts in per_round.items()},
        "erm_over_stock": ratio_stats(per_round, "erm", "stock"),
        "variants_ran": ran,
    }
    if overhead_only:
        result["stock_over_stock"] = ratio_stats(per_round, "stock_again", "stock")
        return result
    step = {v: median(t) for v, t in times.items()}
    one_pass = pass_time(workload, repeats=max(8, steps))
    f = float(np.mean(fractions))
    run_ratios = [a / e for a, e in zip(whole["aesam"], whole["erm"], strict=True)]
    return {
        **result,
        "run_steps": run_steps,
        "pass_ms": 1e3 * one_pass,
        "sam_over_erm": ratio_stats(per_round, "sam", "erm"),
        "sam_over_erm_plus_pass": step["sam"] / (step["erm"] + one_pass),
        "sam_ga4_over_sam": ratio_stats(per_round, "sam_ga4", "sam"),
        "erm_ga4_over_erm": ratio_stats(per_round, "erm_ga4", "erm"),
        "aesam_run_over_erm_run": {
            "median": float(np.median(run_ratios)),
            "min": min(run_ratios),
            "max": max(run_ratios),
        },
        "aesam_sam_fraction": f,
        "aesam_run_target": 1.02 * (1 + f),
    }


def table(results: dict[str, dict]) -> str:
    """One row per question and workload: measured, target, met.

    "yes" when every round met the target; "median only" when the median did but the range over rounds crosses it
    (the difference is within the machine's noise); "no" when the median missed it.
    """

    def spread(r):
        return f"{r['median']:.3f} ({r['min']:.3f}–{r['max']:.3f})"

    lines = ["| workload | question | measured (range over rounds) | target | met |", "|---|---|---:|---:|:---:|"]
    for name, r in results.items():
        erm = ("`erm` policy step / stock Trainer step", spread(r["erm_over_stock"]), r["erm_over_stock"])
        if "stock_over_stock" in r:  # an overhead-only workload
            floor = ("stock Trainer step / stock Trainer step (noise floor)", spread(r["stock_over_stock"]), None)
            rows = [(*erm, ERM_OVERHEAD_TARGET), (*floor, None)]
        else:
            f = r["aesam_sam_fraction"]
            rows = [
                ("SAM step / ERM step", spread(r["sam_over_erm"]), r["sam_over_erm"], 2.02),
                ("SAM step / (ERM step + 1 forward/backward)", f"{r['sam_over_erm_plus_pass']:.3f}", None, None),
                (*erm, ERM_OVERHEAD_TARGET),
                (
                    f"`aesam` run / ERM run (f = {f:.2f})",
                    spread(r["aesam_run_over_erm_run"]),
                    r["aesam_run_over_erm_run"],
                    r["aesam_run_target"],
                ),
                ("SAM step, GA 4 / GA 1 (same effective batch)", spread(r["sam_ga4_over_sam"]), None, None),
                ("ERM step, GA 4 / GA 1 (for reference)", spread(r["erm_ga4_over_erm"]), None, None),
            ]
        for question, measured, stats, target in rows:
            if target is None:
                met = "–"
            else:
                met = "yes" if stats["max"] <= target else ("median only" if stats["median"] <= target else "**no**")
            lines.append(
                f"| {name} | {question} | {measured} | {'–' if target is None else f'{target:.3f}'} | {met} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    (args,) = HfArgumentParser(StepCostArguments).parse_args_into_dataclasses(args=argv)
    start = time.perf_counter()
    results = {name: measure(name, args) for name in args.workloads}
    for name, r in results.items():
        ms = ", ".join(f"{v} {t:.1f}" for v, t in r["step_ms"].items())
        one_pass = f", one forward/backward {r['pass_ms']:.1f}" if "pass_ms" in r else ""
        print(f"{name}: step medians (ms) {ms}{one_pass}")
    print(table(results))
    payload = write_results(args.output, "step_cost", argv, args, environment(), start, results=results)
    print(f"Written to {args.output}")
    return payload


if __name__ == "__main__":
    main()
