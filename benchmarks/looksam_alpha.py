"""LookSAM's reuse weight α in each regime: the size of SAM's own correction against the one a reuse step adds.

On a SAM step, SAM changes the gradient by g_s - g. LookSAM keeps g_v, the part of g_s orthogonal to g, and on the
non-SAM steps that follow adds α ||g|| / ||g_v|| · g_v: an orthogonal push of norm α ||g||, whatever the size of the
orthogonal change SAM itself made, ||g_v||. Where ||g_v|| / ||g|| is much smaller than α, a reuse step applies many
times more of SAM's correction than SAM does. The LookSAM paper uses α = 0.7; this project's default is 0.1.

A settled question (`docs/benchmarks_2026-11-30.md` records its answer); `make bench` no longer runs it. Per regime of
the accuracy study (`regimes.py`, learning rate, weight decay and `sam_rho` as tuned there), for `looksam` and
`aelooksam`:

1. At every SAM step: ||g_v|| / ||g||, ||g_s - g|| / ||g|| and cos(g_s, g). The library logs them
   (`sam/looksam_gv_over_g`, `sam/looksam_diff_over_g`, `sam/looksam_cos`, averaged over the SAM steps of a logging
   window); the runs log every step (`runner.py`), so each logged value is one SAM step's. They are read back from
   the run's log history (its trainer_state.json).
2. Validation accuracy against α (the choice of a default; the test split stays unseen): the regime config's
   selected checkpoint's accuracy on its validation labels (noisy in the noisy regimes). α = 0 is periodic SAM.

    python -m benchmarks.looksam_alpha --regimes image-noisy   # 2 policies x 2 values of α x 2 seeds
    python -m benchmarks.looksam_alpha --smoke          # every code path on a tiny setting
"""

import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from benchmarks.accuracy import RegimeRuns, Setting, StudyArguments, runs_wall_time
from benchmarks.io import command_line, write_results
from benchmarks.regimes import REGIMES
from benchmarks.results import keep_earlier_regimes, provenance
from benchmarks.runner import run_jobs
from benchmarks.workloads import environment


# What the library logs on the SAM steps of the LookSAM policies -> the name this study gives it.
RATIO_KEYS = {"sam/looksam_gv_over_g": "gv_over_g", "sam/looksam_diff_over_g": "diff_over_g", "sam/looksam_cos": "cos"}


POLICIES = ("looksam", "aelooksam")


@dataclass
class LookSAMAlphaArguments:
    alphas: list[float] = field(default_factory=lambda: [0.1, 0.7], metadata={"help": "Values of α."})
    seeds: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "Seeds of every α."})
    regimes: list[str] = field(
        default_factory=lambda: ["image-noisy"],
        metadata={"help": "Regimes of the accuracy study to measure α in.", "choices": list(REGIMES)},
    )
    sam_rho: float | None = field(
        default=None, metadata={"help": "rho of every run; default: the one accuracy.py chose for each regime."}
    )
    accuracy_json: str = field(
        default="outputs/bench/accuracy/accuracy.json", metadata={"help": "accuracy.py's results, for its rho."}
    )
    output_dir: str = field(default="outputs/bench/looksam_alpha", metadata={"help": "Runs and results go here."})
    workers: int = field(default=2, metadata={"help": "Runs side by side (each its own process)."})
    threads: int = field(default=1, metadata={"help": "torch threads per run (OMP_NUM_THREADS)."})
    smoke: bool = field(default=False, metadata={"help": "A tiny setting that exercises every path in seconds."})

    def __post_init__(self):
        if not self.alphas or min(self.alphas) < 0:
            raise ValueError(f"`alphas` ({self.alphas}) must be a non-empty list of values >= 0.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"`seeds` ({self.seeds}) must be a non-empty list of distinct seeds.")
        if not self.regimes or set(self.regimes) - set(REGIMES):
            raise ValueError(f"`regimes` ({self.regimes}) must be a non-empty list among {sorted(REGIMES)}.")


def sam_step_ratios(log_history: list[dict], where: str) -> list[dict[str, float]]:
    """The LookSAM ratios of every logged SAM step, from a run's log history (logged every step).

    Raises when the run took SAM steps but logged none of the ratios: the installed `aesam_hf` predates them.
    """
    # One entry per step (the final summary, with `train_runtime`, excluded); a SAM step's has `sam/fraction` 1.
    sam_steps = [h for h in log_history if h.get("sam/fraction", 0) > 0 and "train_runtime" not in h]
    ratios = [
        {name: float(h[key]) for key, name in RATIO_KEYS.items()}
        for h in sam_steps
        if all(h.get(key) is not None and not math.isnan(h[key]) for key in RATIO_KEYS)
    ]
    if sam_steps and not ratios:
        raise RuntimeError(
            f"{where} took SAM steps but its log history has none of {sorted(RATIO_KEYS)}: the installed aesam_hf "
            "does not log the LookSAM ratios; update it."
        )
    return ratios


def quartiles(values: list[float]) -> list[float]:
    if not values:  # no SAM step (a run shorter than the SAM interval)
        return [float("nan")] * 3
    return [float(q) for q in statistics.quantiles(values, n=4, method="inclusive")] if len(values) > 1 else values * 3


def tuned_setting(args: LookSAMAlphaArguments, regime: str) -> Setting:
    """The accuracy study's tuned learning rate, weight decay and SAM rho for `regime`; `--sam_rho` replaces the
    rho, and without a study the config's learning rate and weight decay are used."""
    study = Path(args.accuracy_json)
    regimes = json.loads(study.read_text(encoding="utf-8")).get("regimes", {}) if study.is_file() else {}
    if regime in regimes and "settings" in regimes[regime]:
        s = regimes[regime]["settings"]
        return Setting(s["learning_rate"], s["weight_decay"], s["sam_rho"] if args.sam_rho is None else args.sam_rho)
    if args.sam_rho is None:
        raise ValueError(
            f"`sam_rho` is not set and `accuracy_json` ({args.accuracy_json!r}) has no settings chosen for "
            f"{regime!r}: run `python -m benchmarks.accuracy` first, or pass --sam_rho."
        )
    config = json.loads(Path(REGIMES[regime].config_path).read_text(encoding="utf-8"))
    return Setting(config["learning_rate"], config.get("weight_decay", 0.0), args.sam_rho)


def measure(args: LookSAMAlphaArguments, regime: str) -> dict:
    """Validation accuracy and the SAM-step ratios of every (policy, α) in one regime."""
    setting = tuned_setting(args, regime)
    study = StudyArguments(output_dir=args.output_dir, seeds=args.seeds, threads=args.threads, smoke=args.smoke)
    runs = RegimeRuns(study, REGIMES[regime], metric="eval_accuracy")  # validation only: `--do_predict false`
    cells = [(policy, alpha) for policy in POLICIES for alpha in args.alphas]
    jobs = [
        runs.job(
            setting, policy, seed, f"{policy}-a{alpha:g}", ["--looksam_alpha", str(alpha), "--do_predict", "false"]
        )
        for policy, alpha in cells
        for seed in args.seeds
    ]
    made = run_jobs(jobs, args.workers)
    rows = iter(made)
    results = {}
    for policy, alpha in cells:
        label, accuracies, ratios = f"{policy}-a{alpha:g}", [], []
        for seed in args.seeds:
            accuracies.append(next(rows)["eval_accuracy"])
            runner = runs.runner(setting)
            ratios += sam_step_ratios(runner.log_history(label, seed), str(runner.run_dir(label, seed)))
        results[label] = r = {
            "policy": policy,
            "alpha": alpha,
            "eval_accuracy": accuracies,
            "mean": statistics.fmean(accuracies),
            "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "sam_steps": len(ratios),
            **{f"{name}_quartiles": quartiles([x[name] for x in ratios]) for name in RATIO_KEYS.values()},
        }
        median = r["gv_over_g_quartiles"][1]
        print(f"  {regime} {label}: validation {100 * r['mean']:.2f}%; median ||g_v||/||g|| {median:.3f}", flush=True)
    return {
        "sam_rho": setting.rho,
        "results": results,
        "table": table(results),
        "runs_wall_time_s": runs_wall_time(made),
    }


def table(results: dict) -> str:
    lines = [
        "| policy | α | validation accuracy (%) | ‖g_v‖/‖g‖ at SAM steps: median [IQR] | ‖g_s − g‖/‖g‖ | cos(g_s, g) | "
        "reuse push / SAM's (α ÷ median ‖g_v‖/‖g‖) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results.values():
        q, d, c = r["gv_over_g_quartiles"], r["diff_over_g_quartiles"], r["cos_quartiles"]
        push = f"{r['alpha'] / q[1]:.1f}x" if r["alpha"] > 0 and q[1] > 0 else "– (no reuse)"
        lines.append(
            f"| {r['policy']} | {r['alpha']:g} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} | "
            f"{q[1]:.3f} [{q[0]:.3f}, {q[2]:.3f}] | {d[1]:.3f} | {c[1]:.4f} | {push} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    (args,) = HfArgumentParser(LookSAMAlphaArguments).parse_args_into_dataclasses(args=argv)
    start = time.perf_counter()
    env = {**environment(), "threads_per_run": args.threads, "runs_side_by_side": args.workers}
    out, done, payload = Path(args.output_dir) / "looksam_alpha.json", {}, {}
    for regime in args.regimes:
        done[regime] = {
            **measure(args, regime),
            "measured_by": provenance(command_line("looksam_alpha", argv), REGIMES[regime].task),
        }
        print(done[regime]["table"], flush=True)
        regimes = keep_earlier_regimes(out, done, list(REGIMES))  # other regimes of the file stay
        # Like accuracy.py's: the wall time of the runs made by this invocation only (reused runs cost nothing).
        payload = write_results(out, "looksam_alpha", argv, args, env, start, regimes=regimes)
    return payload


if __name__ == "__main__":
    main()
