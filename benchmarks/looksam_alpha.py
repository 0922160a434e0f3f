"""LookSAM's reuse weight α on the image task: the size of SAM's own correction against the one a reuse step adds.

On a SAM step, SAM changes the gradient by g_s - g. LookSAM keeps g_v, the part of g_s orthogonal to g, and on the
non-SAM steps that follow adds α ||g|| / ||g_v|| · g_v (spec; α = 0.7 by default): an orthogonal push of norm α ||g||,
whatever the size of the orthogonal change SAM itself made, ||g_v||. Where ||g_v|| / ||g|| is much smaller than α, a
reuse step applies many times more of SAM's correction than SAM does.

Two questions, on the accuracy study's clean image setting (`accuracy.py`: same config, `sam_rho` as tuned there):

1. At every SAM step of `looksam` runs: ||g_v|| / ||g||, ||g_s - g|| / ||g|| and cos(g_s, g). The library logs them
   (`sam/looksam_gv_over_g`, `sam/looksam_diff_over_g`, `sam/looksam_cos`, averaged over the SAM steps of a logging
   window); the runs log every step (`runner.py`), and the LookSAM interval is 5, so each logged value is one SAM
   step's. They are read back from the run's log history (its trainer_state.json).
2. Validation accuracy of `looksam` against α. α = 0 is periodic SAM (every k-th step SAM, the others plain ERM).

    python -m benchmarks.looksam_alpha                  # 4 values of α x 2 seeds, ~10 minutes on 2 cores
    python -m benchmarks.looksam_alpha --smoke          # every code path on a tiny setting

Validation, not test, accuracy: this chooses α, so the test split stays unseen.
"""

import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from benchmarks.accuracy import QUIET, SMOKE_EXTRA
from benchmarks.runner import Runner
from benchmarks.workloads import environment


# What the library logs on the SAM steps of the LookSAM policies -> the name this study gives it.
RATIO_KEYS = {"sam/looksam_gv_over_g": "gv_over_g", "sam/looksam_diff_over_g": "diff_over_g", "sam/looksam_cos": "cos"}


@dataclass
class LookSAMAlphaArguments:
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.3, 0.7], metadata={"help": "Values of α."})
    seeds: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "Seeds of every α."})
    sam_rho: float | None = field(
        default=None, metadata={"help": "rho of every run; default: the one accuracy.py tuned for the image task."}
    )
    accuracy_json: str = field(
        default="outputs/bench/accuracy/accuracy.json", metadata={"help": "accuracy.py's results, for its rho."}
    )
    output_dir: str = field(default="outputs/bench/looksam_alpha", metadata={"help": "Runs and results go here."})
    smoke: bool = field(default=False, metadata={"help": "A tiny setting that exercises every path in seconds."})

    def __post_init__(self):
        if not self.alphas or min(self.alphas) < 0:
            raise ValueError(f"`alphas` ({self.alphas}) must be a non-empty list of values >= 0.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"`seeds` ({self.seeds}) must be a non-empty list of distinct seeds.")


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


def tuned_rho(args: LookSAMAlphaArguments) -> float:
    """`sam_rho`, or else the rho the accuracy study chose for the image task."""
    if args.sam_rho is not None:
        return args.sam_rho
    study = Path(args.accuracy_json)
    tuned = json.loads(study.read_text(encoding="utf-8")).get("rho_tuning", {}) if study.is_file() else {}
    if "image" not in tuned:
        raise ValueError(
            f"`sam_rho` is not set and `accuracy_json` ({args.accuracy_json!r}) has no rho tuned for the image task: "
            "run `python -m benchmarks.accuracy` first, or pass --sam_rho."
        )
    return float(tuned["image"]["chosen"])


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    (args,) = HfArgumentParser(LookSAMAlphaArguments).parse_args_into_dataclasses(args=argv)
    rho = tuned_rho(args)
    extra = (SMOKE_EXTRA["image"] if args.smoke else []) + QUIET + ["--sam_rho", str(rho), "--do_predict", "false"]
    results = {}
    for alpha in args.alphas:
        runner = Runner("image", str(Path(args.output_dir) / f"alpha{alpha:g}"), metric="eval_accuracy")
        rows, ratios = [], []
        for seed in args.seeds:
            rows.append(runner.run("looksam", seed, extra + ["--looksam_alpha", str(alpha)]))
            ratios += sam_step_ratios(runner.log_history("looksam", seed), str(runner.run_dir("looksam", seed)))
        accuracies = [r["eval_accuracy"] for r in rows]
        results[f"{alpha:g}"] = r = {
            "eval_accuracy": accuracies,
            "mean": statistics.fmean(accuracies),
            "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "sam_steps": len(ratios),
            **{f"{name}_quartiles": quartiles([x[name] for x in ratios]) for name in RATIO_KEYS.values()},
        }
        seeds = ", ".join(f"{100 * a:.2f}" for a in accuracies)
        median = r["gv_over_g_quartiles"][1]
        print(
            f"  alpha {alpha:g}: validation {100 * r['mean']:.2f}% (seeds {seeds}); median ||g_v||/||g|| {median:.3f}"
        )
    lines = [
        "| α | validation accuracy (%) | ‖g_v‖/‖g‖ at SAM steps: median [IQR] | ‖g_s − g‖/‖g‖ | cos(g_s, g) | "
        "reuse push / SAM's (α ÷ median ‖g_v‖/‖g‖) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for alpha, r in results.items():
        q, d, c = r["gv_over_g_quartiles"], r["diff_over_g_quartiles"], r["cos_quartiles"]
        push = f"{float(alpha) / q[1]:.1f}x" if float(alpha) > 0 else "– (no reuse)"
        lines.append(
            f"| {alpha} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} | {q[1]:.3f} [{q[0]:.3f}, {q[2]:.3f}] "
            f"| {d[1]:.3f} | {c[1]:.4f} | {push} |"
        )
    table = "\n".join(lines)
    print(table)
    payload = {
        "command": "python -m benchmarks.looksam_alpha " + " ".join(argv),
        "arguments": asdict(args),
        "environment": environment(),
        "sam_rho": rho,
        "results": results,
        "table": table,
    }
    out = Path(args.output_dir) / "looksam_alpha.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return payload


if __name__ == "__main__":
    main()
