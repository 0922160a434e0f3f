"""The accuracy study: where SAM pays, and how much of it AE-SAM keeps at what cost.

Questions, per regime (`regimes.py`): does SAM beat AdamW; does AE-SAM keep SAM's accuracy at fewer passes; does
AE-SAM's choice of steps beat SAM steps drawn without looking at ‖g‖² at the same cost (`random` at AE-SAM's
fraction; `scheduled`, random with AE-SAM's expected rate over time; `periodic` at the nearest interval); and what
the budget knob buys (`--aesam_budget b` against `random` at probability b).

Procedure, per regime:
1. `sam_rho` is chosen with `sam` on the (clean) validation split, first seed, over `rho_grid`; when the best value
   is at an edge of the grid, the grid is extended past that edge (x2 or /2, up to twice), so that the choice is an
   interior optimum or the report says it is not. The validation curve is reported.
2. Every policy runs at that rho for every seed: AdamW, SAM, AE-SAM, the budgets, then the controls matched to
   AE-SAM's measured fraction f (mean over seeds).
3. Test accuracy per policy (mean ± std), and paired differences over seeds with 95% t intervals; a difference is
   claimed only when its interval excludes 0.

Runs go through `runner.py` (one process per run, the regime's experiment config, only `--optim`, `--seed` and the
policy's flags changing); finished runs are reused, so an interrupted study resumes. Two single-threaded runs share
the machine at a time by default (`--workers 2 --threads 1`): the wall times are comparable within this study only,
and cost is compared in forward/backward passes.

    python -m benchmarks.accuracy                      # the full study (`make bench`): ~2.1 hours on 2 cores
    python -m benchmarks.accuracy --regimes image-noisy --seeds 1 2 3
    python -m benchmarks.accuracy --smoke              # every code path on a tiny setting, a few minutes

Writes `<output_dir>/accuracy.json` (every run, the tuning, the summaries and the comparisons), which
`python -m benchmarks.report` turns into `docs/benchmarks.md` and its figures.
"""

import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from benchmarks.io import command_line, write_results
from benchmarks.regimes import REGIMES, Regime
from benchmarks.results import keep_earlier_regimes, markdown_table, provenance, summarize
from benchmarks.runner import Runner, run_jobs
from benchmarks.stats import paired_difference
from benchmarks.workloads import environment


BASELINE = "adamw_torch"
MAX_GRID_EXTENSIONS = 2


@dataclass
class StudyArguments:
    output_dir: str = field(default="outputs/bench/accuracy", metadata={"help": "Runs and accuracy.json go here."})
    regimes: list[str] = field(
        default_factory=lambda: list(REGIMES), metadata={"help": "Which regimes to run.", "choices": list(REGIMES)}
    )
    seeds: list[int] = field(
        default_factory=lambda: [1, 2, 3, 4, 5], metadata={"help": "Seeds of every policy (>= 2 for intervals)."}
    )
    rho_grid: list[float] = field(
        default_factory=lambda: [0.05, 0.1, 0.2, 0.4],
        metadata={"help": "Values of sam_rho tried on validation (extended past an edge that wins)."},
    )
    workers: int = field(default=2, metadata={"help": "Runs side by side (each its own process)."})
    threads: int = field(default=1, metadata={"help": "torch threads per run (OMP_NUM_THREADS), recorded per run."})
    smoke: bool = field(default=False, metadata={"help": "Tiny runs that exercise every path in a few minutes."})
    core_only: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Regimes run with AdamW, SAM and AE-SAM alone (no budgets, no matched controls): a partial study, "
            "said so in accuracy.json.",
            "choices": list(REGIMES),
        },
    )

    def __post_init__(self):
        if not self.regimes or set(self.regimes) - set(REGIMES):
            raise ValueError(f"`regimes` ({self.regimes}) must be a non-empty list among {sorted(REGIMES)}.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"`seeds` ({self.seeds}) must be a non-empty list of distinct seeds.")
        if not self.rho_grid or min(self.rho_grid) <= 0 or len(set(self.rho_grid)) != len(self.rho_grid):
            raise ValueError(f"`rho_grid` ({self.rho_grid}) must be a non-empty list of distinct values > 0.")
        if set(self.core_only) - set(self.regimes):
            raise ValueError(f"`core_only` ({self.core_only}) must name regimes among `regimes` ({self.regimes}).")
        for name in ("workers", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` ({getattr(self, name)}) must be >= 1.")


class RegimeRuns:
    """The runs of one regime: one `Runner` per rho, the regime's flags, the study's threads."""

    def __init__(self, args: StudyArguments, regime: Regime, metric: str = "test_accuracy"):
        # `metric`: what each run must have scored; `eval_accuracy` for runs that skip the test split.
        self.args, self.regime, self.metric = args, regime, metric
        self.extra = [*(regime.smoke if args.smoke else ()), "--report_to", "none"]
        self.root = Path(args.output_dir) / regime.name

    def runner(self, rho: float) -> Runner:
        return Runner(
            self.regime.task,
            str(self.root / f"rho{rho:g}"),
            self.regime.config_path,
            metric=self.metric,
            threads=self.args.threads,
        )

    def job(self, rho: float, policy: str, seed: int, flags: list[str] = (), label: str | None = None) -> tuple:
        data = self.regime.data_flags(seed)  # built here, before the runs start side by side
        return self.runner(rho), (policy, seed, [*data, *self.extra, "--sam_rho", str(rho), *flags], label)


def runs_wall_time(rows: list[dict]) -> float:
    """The summed process wall time of `rows`' runs, made now or reused (NaN where a run did not record it)."""
    return math.fsum(r["wall_time"] for r in rows)


def tune_rho(args: StudyArguments, runs: RegimeRuns) -> dict:
    """`sam` on validation over the grid, first seed; the grid grows past an edge that wins."""
    grid, scores, extensions, wall = sorted(args.rho_grid), {}, 0, 0.0
    while True:
        todo = [rho for rho in grid if rho not in scores]
        rows = run_jobs([runs.job(rho, "sam", args.seeds[0]) for rho in todo], args.workers)
        wall += runs_wall_time(rows)
        for rho, row in zip(todo, rows, strict=True):
            scores[rho] = row["eval_accuracy"]  # the validation split only; the test score is not read here
            print(f"  rho {rho:g}: validation {100 * scores[rho]:.2f}%", flush=True)
        best = max(sorted(scores), key=scores.get)  # ties: the smallest rho, the least perturbation
        if extensions == MAX_GRID_EXTENSIONS or min(grid) < best < max(grid):
            break
        grid.append(best * 2 if best == max(grid) else best / 2)
        grid.sort()
        extensions += 1
    return {
        "scores": {f"{rho:g}": scores[rho] for rho in sorted(scores)},
        "chosen": best,
        "interior": min(scores) < best < max(scores),
        "extensions": extensions,
        "runs_wall_time_s": wall,
    }


def matched_controls(f: float) -> list[tuple[str, list[str], str]]:
    """The SAM-step controls at AE-SAM's fraction f: (policy, flags, label).

    f is rounded to 2 decimals: the controls' runs (and their reuse) do not change when a seed added to the study
    moves AE-SAM's mean fraction by less than that.
    """
    interval = max(1, round(1 / f)) if f > 0 else 10**9
    return [
        ("random", ["--sam_probability", f"{f:.2f}"], "random-matched"),
        ("scheduled", ["--aesam_budget", f"{min(max(f, 0.01), 0.99):.2f}"], "scheduled-matched"),
        ("periodic", ["--sam_interval", str(interval)], "periodic-matched"),
    ]


def comparisons(rows: list[dict], regime: Regime) -> list[dict]:
    """The paired differences that answer the study's questions, on test accuracy."""
    scores: dict[str, dict[int, float]] = {}
    for r in rows:
        scores.setdefault(r["policy"], {})[r["seed"]] = r["test_accuracy"]
    pairs = [("sam", BASELINE), ("aesam", BASELINE), ("aesam", "sam")]
    pairs += [("aesam", control) for control in ("random-matched", "scheduled-matched", "periodic-matched")]
    # *When* against *how many*: SAM steps drawn on AE-SAM's time profile against uniform ones, and against SAM.
    pairs += [("scheduled-matched", "random-matched"), ("sam", "scheduled-matched")]
    pairs += [(f"aesam-b{b:g}", f"random-p{b:g}") for b in regime.budgets]  # those that ran
    return [paired_difference(scores[a], scores[b], (a, b)).as_dict() for a, b in pairs if a in scores and b in scores]


def run_regime(args: StudyArguments, regime: Regime) -> dict:
    runs = RegimeRuns(args, regime)
    print(f"== {regime.name} ({regime.kind}): {regime.description}", flush=True)
    tuning = tune_rho(args, runs)
    rho = tuning["chosen"]
    where = "inside" if tuning["interior"] else "AT THE EDGE of"
    print(f"  -> rho {rho:g}, {where} the grid", flush=True)

    jobs = [runs.job(rho, p, s) for s in args.seeds for p in (BASELINE, "sam", "aesam")]
    full = regime.full and regime.name not in args.core_only
    if full:
        for b in regime.budgets[:1] if args.smoke else regime.budgets:  # the smoke run: one budget
            jobs += [runs.job(rho, "aesam", s, ["--aesam_budget", str(b)], f"aesam-b{b:g}") for s in args.seeds]
            jobs += [runs.job(rho, "random", s, ["--sam_probability", str(b)], f"random-p{b:g}") for s in args.seeds]
    rows = run_jobs(jobs, args.workers)
    f = statistics.fmean(r["sam_fraction"] for r in rows if r["policy"] == "aesam")
    controls = matched_controls(f) if full else []
    rows += run_jobs(
        [runs.job(rho, p, s, flags, label) for p, flags, label in controls for s in args.seeds], args.workers
    )

    labels = list(dict.fromkeys(r["policy"] for r in rows))
    summary = summarize(rows, labels, "test_accuracy")
    print(markdown_table(summary, "test_accuracy"), flush=True)
    return {
        "regime": {**asdict(regime), "full": full},  # False for a regime run `core_only`
        "rho_tuning": tuning,
        "rho": rho,
        "aesam_fraction": f,
        "controls": {label: flags for _, flags, label in controls},
        "runs": rows,
        "summary": summary,
        "comparisons": comparisons(rows, regime),
        "trace_run": str(runs.runner(rho).run_dir("aesam", args.seeds[0])),
        # What the regime costs from scratch, whichever invocation made its runs: the report divides it by the runs
        # side by side.
        "runs_wall_time_s": tuning["runs_wall_time_s"] + runs_wall_time(rows),
    }


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    (args,) = HfArgumentParser(StudyArguments).parse_args_into_dataclasses(args=argv)
    start = time.perf_counter()
    env = {**environment(), "threads_per_run": args.threads, "runs_side_by_side": args.workers}
    out, done, study = Path(args.output_dir) / "accuracy.json", {}, {}
    for name in args.regimes:
        done[name] = {**run_regime(args, REGIMES[name]), "measured_by": provenance(command_line("accuracy", argv))}
        # Written after every regime, so a long study can be reported on before it ends; regimes of an earlier
        # file that this invocation does not run stay in it. Its wall time counts only the runs made by this
        # invocation (reused runs cost nothing); each run's own time is in its row.
        regimes = keep_earlier_regimes(out, done, list(REGIMES))
        study = write_results(out, "accuracy", argv, args, env, start, regimes=regimes)
    return study


if __name__ == "__main__":
    main()
