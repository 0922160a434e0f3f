"""The accuracy study: does SAM beat a tuned, early-stopped AdamW, and which policy is the cheapest that keeps SAM's
accuracy.

Every run is judged as a careful user would judge it: it saves a checkpoint at every evaluation and ends with the one
its own validation curve selects (`--load_best_model_at_end`, the same cadence for every policy), scored on the test
split (`test_accuracy`); the model of its last step is scored too (`test_last_accuracy`). In the noisy regimes the
validation labels carry the training labels' noise, so selection uses only what a user would have; each evaluation
also scores the true validation labels (`peak_clean_eval_accuracy`: an optimistic bound, never the headline).

Procedure, per regime (`regimes.py`), all choices on validation (the selected checkpoint's accuracy on the
selection set), first seed:
1. AdamW (the `erm` policy: AdamW through aesam_hf's loop, evaluations out of the training random stream) over
   learning rate × weight decay; a learning rate at an edge of the grid extends it (x2 or /2, up to twice), so the
   choice is an interior optimum or the report says it is not. The weight decay grid (two values) is not extended;
   the report says which one won.
2. SAM's rho at that learning rate and weight decay, likewise; Momentum-SAM's (`msam`) rho on its own grid, likewise.
   Searches that do not wait on each other (one per weight decay; SAM's and Momentum-SAM's) share their batches of
   runs, so that no core idles while one search waits on its last run.
3. Every policy for every seed at those settings: AdamW, SAM, AE-SAM, Momentum-SAM (and, with `--paper_late`, late
   SAM on its paper's last 12.5% of the steps), then `late` and `scheduled` at AE-SAM's measured SAM fraction f (mean
   over seeds): the same number of SAM steps, placed at the end of training (`late-matched`) or at random on AE-SAM's time profile
   (`scheduled-matched`), without looking at ‖g‖².
4. Per policy: selected-checkpoint and last-step test accuracy (mean ± std), forward/backward passes per step; paired
   differences over seeds with 95% t intervals, a difference claimed only when its interval excludes 0; the
   cheapest policy whose selected-checkpoint accuracy is not below SAM's.

Runs go through `runner.py` (one process per run, the regime's experiment config, only the tuned flags, `--optim`
and `--seed` changing); finished runs are reused, so an interrupted study resumes. Two single-threaded runs share the
machine at a time by default (`--workers 2 --threads 1`): cost is compared in forward/backward passes.

    python -m benchmarks.accuracy                      # the study (`make bench`)
    python -m benchmarks.accuracy --regimes image-noisy --seeds 1 2 3
    python -m benchmarks.accuracy --smoke              # every code path on a tiny setting, a few minutes

Writes `<output_dir>/accuracy.json` (every run, the tuning, the summaries, the comparisons and the decision), which
`python -m benchmarks.report` turns into `docs/benchmarks.md`, its figures and the README's results.
"""

import json
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


BASELINE = "adamw"  # the label of AdamW's runs (policy `erm`)
MAX_GRID_EXTENSIONS = 2
# The selected checkpoint's test accuracy (the headline), and the last step's.
SELECTED, LAST = "test_accuracy", "test_last_accuracy"
# Late SAM's fraction of SAM steps from its paper (the last 12.5% of the epochs; Zhou et al., ICLR 2025).
LATE_BUDGET = 0.125
# The policies every seed runs: (label, policy, flags).
SEED_POLICIES = (
    ("adamw", "erm", ()),
    ("sam", "sam", ()),
    ("aesam", "aesam", ()),
    ("msam", "msam", ()),
)
# Late SAM at its paper's fraction, on request (`--paper_late`): at 12.5% it landed within 0.25 points of AdamW at the
# selected checkpoint in every regime (docs/benchmarks_2026-12-07.md); `late-matched` is the `late` point `make bench`
# keeps, at AE-SAM's cost.
PAPER_LATE = ("late", "late", ("--aesam_budget", f"{LATE_BUDGET:g}"))
# At AE-SAM's SAM fraction: its SAM steps placed without ‖g‖².
MATCHED = (("late-matched", "late"), ("scheduled-matched", "scheduled"))


@dataclass
class StudyArguments:
    output_dir: str = field(default="outputs/bench/accuracy", metadata={"help": "Runs and accuracy.json go here."})
    regimes: list[str] = field(
        default_factory=lambda: [name for name, r in REGIMES.items() if r.default],
        metadata={"help": "Which regimes to run (default: those `make bench` runs).", "choices": list(REGIMES)},
    )
    seeds: list[int] = field(
        default_factory=lambda: [1, 2, 3, 4, 5], metadata={"help": "Seeds of every policy (>= 2 for intervals)."}
    )
    workers: int = field(default=2, metadata={"help": "Runs side by side (each its own process)."})
    threads: int = field(default=1, metadata={"help": "torch threads per run (OMP_NUM_THREADS), recorded per run."})
    smoke: bool = field(
        default=False, metadata={"help": "Tiny runs and two-point grids that exercise every path in a few minutes."}
    )
    paper_late: bool = field(
        default=False,
        metadata={
            "help": f"Also run late SAM on its paper's last {100 * LATE_BUDGET:g}%% of the steps for every seed (settled "
            "and recorded; `make bench` keeps `late` at AE-SAM's fraction only)."
        },
    )

    @property
    def seed_policies(self) -> tuple:
        return (*SEED_POLICIES, PAPER_LATE) if self.paper_late else SEED_POLICIES

    def __post_init__(self):
        if not self.regimes or set(self.regimes) - set(REGIMES):
            raise ValueError(f"`regimes` ({self.regimes}) must be a non-empty list among {sorted(REGIMES)}.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"`seeds` ({self.seeds}) must be a non-empty list of distinct seeds.")
        for name in ("workers", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` ({getattr(self, name)}) must be >= 1.")


@dataclass(frozen=True)
class Setting:
    """What a run's tuned flags are: AdamW's learning rate and weight decay, and the rho of the policy's family."""

    learning_rate: float
    weight_decay: float
    rho: float | None = None

    def flags(self) -> list[str]:
        flags = ["--learning_rate", f"{self.learning_rate:g}", "--weight_decay", f"{self.weight_decay:g}"]
        return flags + (["--sam_rho", f"{self.rho:g}"] if self.rho is not None else [])

    @property
    def folder(self) -> str:
        return f"lr{self.learning_rate:g}-wd{self.weight_decay:g}" + (
            f"-rho{self.rho:g}" if self.rho is not None else ""
        )


class RegimeRuns:
    """The runs of one regime: where each (setting, policy, seed) goes and the flags every run shares."""

    def __init__(self, args: StudyArguments, regime: Regime, metric: str = SELECTED):
        # `metric`: what each run must have scored; `eval_accuracy` for runs that skip the test split.
        self.args, self.regime, self.metric = args, regime, metric
        self.extra = [*(regime.smoke if args.smoke else ()), "--report_to", "none"]
        self.root = Path(args.output_dir) / regime.name

    def runner(self, setting: Setting) -> Runner:
        return Runner(
            self.regime.task,
            str(self.root / setting.folder),
            self.regime.config_path,
            metric=self.metric,
            threads=self.args.threads,
        )

    def job(self, setting: Setting, policy: str, seed: int, label: str, flags: list[str] = ()) -> tuple:
        data = self.regime.data_flags(seed)  # built here, before the runs start side by side
        return self.runner(setting), (policy, seed, [*data, *self.extra, *setting.flags(), *flags], label)


def runs_wall_time(rows: list[dict]) -> float:
    """The summed process wall time of `rows`' runs, made now or reused (NaN where a run did not record it)."""
    return math.fsum(r["wall_time"] for r in rows)


def grid_search(grid: list[float], score) -> dict:
    """The best value of `grid` by `score(values) -> [scores]`, the grid grown past an edge that wins.

    Ties go to the smaller value (the least perturbation, the smaller step).
    """
    return grid_searches({None: grid}, lambda todo: score([value for _, value in todo]))[None]


def grid_searches(grids: dict, score) -> dict:
    """Independent grid searches run together: `score([(key, value), ...]) -> [scores]` gets every search's untried
    values at once, so the runs side by side stay busy (two searches of three values are three pairs, not two
    pairs and two runs alone). Each search is `grid_search`'s: grown past an edge that wins, up to
    `MAX_GRID_EXTENSIONS` times; its result does not depend on the others'.
    """
    grids = {key: sorted(grid) for key, grid in grids.items()}
    scores = {key: {} for key in grids}
    extensions = dict.fromkeys(grids, 0)
    best, active = {}, list(grids)
    while active:
        todo = [(key, v) for key in active for v in grids[key] if v not in scores[key]]
        for (key, v), value in zip(todo, score(todo), strict=True):
            scores[key][v] = value
        for key in list(active):
            grid = grids[key]
            best[key] = max(sorted(scores[key]), key=scores[key].get)
            if extensions[key] == MAX_GRID_EXTENSIONS or min(grid) < best[key] < max(grid) or len(grid) < 3:
                active.remove(key)
                continue
            grid.append(best[key] * 2 if best[key] == max(grid) else best[key] / 2)
            grid.sort()
            extensions[key] += 1
    return {
        key: {
            "scores": {f"{v:g}": scores[key][v] for v in sorted(scores[key])},
            "chosen": best[key],
            "interior": min(scores[key]) < best[key] < max(scores[key]),
            "extensions": extensions[key],
        }
        for key in grids
    }


def tune(args: StudyArguments, runs: RegimeRuns) -> dict:
    """AdamW's learning rate × weight decay, then SAM's and Momentum-SAM's rho, on the first seed's validation."""
    regime, seed, wall, made = runs.regime, args.seeds[0], [0.0], []
    small = args.smoke  # two-point grids: the paths, not the optimum

    def scores(items: list[tuple[str, Setting]]) -> list[float]:
        """The selected checkpoint's accuracy on the selection set (noisy where training is) of each (policy,
        setting), in order; test is not read."""
        rows = run_jobs([runs.job(setting, policy, seed, policy) for policy, setting in items], args.workers)
        wall[0] += runs_wall_time(rows)
        made.extend(row["run_dir"] for row in rows)
        for (policy, setting), row in zip(items, rows, strict=True):
            print(f"  {policy} {setting.folder}: selected validation {100 * row['eval_accuracy']:.2f}%", flush=True)
        return [row["eval_accuracy"] for row in rows]

    lr_grid = list(regime.lr_grid[1:3] if small else regime.lr_grid)
    wd_grid = list(regime.wd_grid[:1] if small else regime.wd_grid)
    # Every weight decay's learning-rate search at once, then SAM's and Momentum-SAM's rho searches at once.
    by_wd = grid_searches(
        {wd: lr_grid for wd in wd_grid}, lambda todo: scores([("erm", Setting(lr, wd)) for wd, lr in todo])
    )
    wd = max(wd_grid, key=lambda w: (by_wd[w]["scores"][f"{by_wd[w]['chosen']:g}"], -w))
    lr = by_wd[wd]["chosen"]
    adamw = {
        "scores": {f"lr{k}-wd{w:g}": v for w, t in by_wd.items() for k, v in t["scores"].items()},
        "chosen": {"learning_rate": lr, "weight_decay": wd},
        "interior": by_wd[wd]["interior"],  # the learning rate's; the weight decay grid is not extended
        "weight_decay_grid": wd_grid,
        "extensions": by_wd[wd]["extensions"],
    }
    print(f"  -> AdamW lr {lr:g}, weight decay {wd:g}", flush=True)
    rho_grids = {"sam": regime.rho_grid, "msam": regime.msam_rho_grid}  # SAM's slower runs first
    tuned = {"adamw": adamw}
    tuned.update(
        grid_searches(
            {policy: list(grid[1:3] if small else grid) for policy, grid in rho_grids.items()},
            lambda todo: scores([(policy, Setting(lr, wd, rho)) for policy, rho in todo]),
        )
    )
    for policy in rho_grids:
        print(f"  -> {policy} rho {tuned[policy]['chosen']:g}", flush=True)
    tuned["runs"] = sum(len(t["scores"]) for t in tuned.values())
    tuned["runs_wall_time_s"] = wall[0]
    tuned["run_dirs"] = made  # the seed phase reuses some: their time is counted once
    return tuned


def comparisons(rows: list[dict], metric: str) -> list[dict]:
    """The paired differences on `metric` that answer the study's questions."""
    scores: dict[str, dict[int, float]] = {}
    for r in rows:
        scores.setdefault(r["policy"], {})[r["seed"]] = r[metric]
    others = [p for p in scores if p not in (BASELINE, "sam")]
    pairs = [("sam", BASELINE), *((p, "sam") for p in others), *((p, BASELINE) for p in others)]
    pairs += [("aesam", label) for label, _ in MATCHED]  # does AE-SAM's choice of steps add anything
    return [
        {**paired_difference(scores[a], scores[b], (a, b)).as_dict(), "metric": metric}
        for a, b in pairs
        if a in scores and b in scores
    ]


# At equal cost (passes per step rounded to 2 decimals), the simpler policy wins: no SAM step, then SAM steps at fixed
# places, then AE-SAM's adaptive ones, then SAM.
SIMPLER_FIRST = ("adamw", "msam", "late", "late-matched", "scheduled-matched", "aesam", "sam")


def cheapest_not_below_sam(summary: list[dict], compared: list[dict]) -> dict:
    """The policy with the fewest passes per step whose selected-checkpoint accuracy is not below SAM's.

    "Not below" is the paired 95% interval of (policy − SAM) reaching 0 or above over at least 2 seeds: SAM is not shown
    better. That is not a proof of equivalence (the interval's lower end says how much could be lost; the report
    prints it), and with fewer than 2 seeds nothing is decided.
    """
    # Each policy's comparison with SAM as policy − SAM, whichever way round it was made (AdamW's is `sam − adamw`).
    found = {c["a"]: c for c in compared if c["b"] == "sam"}
    for c in compared:
        if c["a"] == "sam":
            found[c["b"]] = {
                **c,
                "a": c["b"],
                "b": "sam",
                "mean": -c["mean"],
                "low": -c["high"],
                "high": -c["low"],
            }
    if not found or min(c["n"] for c in found.values()) < 2:
        return {"policy": None, "passes_per_step": math.nan, "against_sam": None, "why": "fewer than 2 seeds"}
    # A policy never compared with SAM is not a candidate: "not below" is a measured statement.
    candidates = [
        s
        for s in summary
        if s["policy"] == "sam" or (s["policy"] in found and found[s["policy"]]["verdict"] != "sam better")
    ]
    order = [*SIMPLER_FIRST, *(s["policy"] for s in summary)]
    best = min(candidates, key=lambda s: (round(s["passes_per_step"][0], 2), order.index(s["policy"])))
    return {
        "policy": best["policy"],
        "passes_per_step": best["passes_per_step"][0],
        "against_sam": found.get(best["policy"]),
    }


def run_flags(label: str, settings: dict, budget: float) -> str:
    """The flags that run a study policy as a user would (the study's labels are not all `--optim` values)."""
    rho = f"--sam_rho {settings['sam_rho']:g}"
    return {
        "adamw": "--optim adamw_torch --load_best_model_at_end",
        "sam": f"--optim sam {rho}",
        "aesam": f"--optim aesam {rho}",
        "msam": f"--optim msam --sam_rho {settings['msam_rho']:g}",
        "late": f"--optim late --aesam_budget {LATE_BUDGET:g} {rho}",
        "late-matched": f"--optim late --aesam_budget {budget:g} {rho}",
        "scheduled-matched": f"--optim scheduled --aesam_budget {budget:g} {rho}",
    }.get(label, f"--optim {label}")


def check_selection(regime: Regime) -> None:
    """The study judges every run at its selected checkpoint and its last step: its config must ask for both."""
    config = json.loads(Path(regime.config_path).read_text(encoding="utf-8"))
    missing = [key for key in ("load_best_model_at_end", "test_last_model", "do_predict") if not config.get(key)]
    if missing or config.get("eval_strategy") != "steps":
        raise ValueError(
            f"{regime.config_path} must evaluate by steps and set {', '.join(missing) or 'eval_strategy'}: the study "
            "reads each run at the checkpoint its validation selects and at its last step."
        )


def run_regime(args: StudyArguments, regime: Regime) -> dict:
    check_selection(regime)
    runs = RegimeRuns(args, regime)
    print(f"== {regime.name} ({regime.kind}): {regime.description}", flush=True)
    tuning = tune(args, runs)
    lr, wd = tuning["adamw"]["chosen"]["learning_rate"], tuning["adamw"]["chosen"]["weight_decay"]
    rho = {"sam": tuning["sam"]["chosen"], "msam": tuning["msam"]["chosen"]}
    # The SAM family (AE-SAM, late, scheduled) shares SAM's rho; AdamW takes none.
    setting = {
        "erm": Setting(lr, wd),
        "msam": Setting(lr, wd, rho["msam"]),
        **{p: Setting(lr, wd, rho["sam"]) for p in ("sam", "aesam", "late", "scheduled")},
    }
    # AdamW's folder is `erm` (the policy; its tuning runs are reused), its label in the tables `adamw`.
    folder = {label: "erm" if p == "erm" else label for label, p, _ in args.seed_policies}
    jobs = [
        runs.job(setting[p], p, s, folder[label], list(flags))
        for s in args.seeds
        for label, p, flags in args.seed_policies
    ]
    # The slowest runs first (SAM's two passes, then AE-SAM's and late SAM's), so that the last pair ends together.
    jobs.sort(key=lambda job: {"sam": 0, "aesam": 1, "late": 1}.get(job[1][0], 2))
    rows = run_jobs(jobs, args.workers)
    for row in rows:
        row["policy"] = BASELINE if row["policy"] == "erm" else row["policy"]
    f = statistics.fmean(r["sam_fraction"] for r in rows if r["policy"] == "aesam")
    budget = f"{min(max(f, 0.01), 0.99):.2f}"  # rounded: adding a seed moves f without rerunning the controls
    matched = run_jobs(
        [runs.job(setting[p], p, s, label, ["--aesam_budget", budget]) for label, p in MATCHED for s in args.seeds],
        args.workers,
    )
    rows += matched
    labels = list(dict.fromkeys(r["policy"] for r in rows))
    summary = summarize(rows, labels, SELECTED)
    compared = {metric: comparisons(rows, metric) for metric in (SELECTED, LAST)}
    # The tuning seed's AdamW, SAM and Momentum-SAM runs won their grids on its validation data; the other policies'
    # runs did not: the comparisons without that seed show what the choice on it may have added.
    untuned = [r for r in rows if r["seed"] != args.seeds[0]]
    if len({r["seed"] for r in untuned}) >= 2:
        compared[f"{SELECTED}_without_tuning_seed"] = comparisons(untuned, SELECTED)
    print(markdown_table(summary, SELECTED), flush=True)
    settings = {"learning_rate": lr, "weight_decay": wd, "sam_rho": rho["sam"], "msam_rho": rho["msam"]}
    decision = cheapest_not_below_sam(summary, compared[SELECTED])
    if decision["policy"] is not None:
        decision["flags"] = run_flags(decision["policy"], settings, float(budget))
    tuned_runs = set(tuning["run_dirs"])  # the seed phase reuses these: their time is in the tuning's already
    return {
        "regime": asdict(regime),
        "tuning": tuning,
        "settings": settings,
        "aesam_fraction": f,
        "matched_budget": float(budget),
        "runs": rows,
        "summary": summary,
        "comparisons": compared,
        "decision": decision,
        "trace_run": str(runs.runner(setting["aesam"]).run_dir("aesam", args.seeds[0])),
        # What the regime costs from scratch, whichever invocation made its runs: the report divides it by the runs
        # side by side.
        "runs_wall_time_s": tuning["runs_wall_time_s"]
        + runs_wall_time([r for r in rows if r["run_dir"] not in tuned_runs]),
    }


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    (args,) = HfArgumentParser(StudyArguments).parse_args_into_dataclasses(args=argv)
    start = time.perf_counter()
    env = {**environment(), "threads_per_run": args.threads, "runs_side_by_side": args.workers}
    out, done, study = Path(args.output_dir) / "accuracy.json", {}, {}
    for name in args.regimes:
        regime = REGIMES[name]
        done[name] = {
            **run_regime(args, regime),
            "measured_by": provenance(command_line("accuracy", argv), regime.task),
        }
        # Written after every regime, so a long study can be reported on before it ends; regimes of an earlier
        # file that this invocation does not run stay in it. Its wall time counts only the runs made by this
        # invocation (reused runs cost nothing); each run's own time is in its row.
        regimes = keep_earlier_regimes(out, done, list(REGIMES))
        # Entries of an earlier study design (read at the last step, no tuned AdamW) are not this study's: dropped.
        for old in [name for name, r in regimes.items() if "decision" not in r]:
            print(f"{out}: dropping {old!r}, measured by an earlier design of the study", flush=True)
            del regimes[old]
        study = write_results(out, "accuracy", argv, args, env, start, regimes=regimes)
    return study


if __name__ == "__main__":
    main()
