"""Write `docs/benchmarks.md`, its figures and the README's results block (also kept as `results_table.md` next to the
JSON) from what `step_cost`, `memory` and `accuracy` wrote.

Only measured numbers go in: every table is built from the JSON files the benchmark modules wrote, with the command
that produced them, the machine and the versions. Sections whose JSON is missing are listed as not run.

    python -m benchmarks.report --results_dir outputs/bench --docs_dir docs
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from benchmarks.gpu_check import table as gpu_table
from benchmarks.results import decision_trace
from benchmarks.runner import REPO, code_fingerprint
from benchmarks.step_cost import table as step_cost_table


@dataclass
class ReportArguments:
    results_dir: str = field(default="outputs/bench", metadata={"help": "Where the benchmark JSON files are."})
    docs_dir: str = field(default="docs", metadata={"help": "benchmarks.md goes here, figures in figures/."})


def load(path: Path) -> dict | None:
    """A benchmark's JSON, or None when it was not run."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def environment_lines(env: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in env.items())


# How each policy of the study is named and drawn: (label, marker, color).
STYLE = {
    "adamw": ("AdamW (tuned)", "s", "C0"),
    "sam": ("SAM", "D", "C3"),
    "aesam": ("AE-SAM", "o", "C2"),
    "msam": ("Momentum-SAM", "P", "C4"),
    "late": ("late SAM (last 12.5%)", ">", "C1"),
    "late-matched": ("late SAM @ AE-SAM's f", "^", "C5"),
    "scheduled-matched": ("scheduled @ AE-SAM's f", "v", "C7"),
}
SELECTED, LAST = "test_accuracy", "test_last_accuracy"


def _name(policy: str) -> str:
    return STYLE.get(policy, (policy,))[0]


def accuracy_figure(name: str, r: dict, seeds: int, path: Path) -> None:
    """One regime: test accuracy of the selected checkpoint (filled) and of the last step (hollow) against passes per
    step, mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    for s in r["summary"]:
        label, marker, color = STYLE.get(s["policy"], (s["policy"], "o", "k"))
        (x, xerr), (y, yerr), (last, _) = s["passes_per_step"], s[SELECTED], s[LAST]
        ax.errorbar(x, 100 * y, xerr=xerr, yerr=100 * yerr, fmt=marker, ms=8, capsize=3, color=color, label=label)
        ax.plot([x], [100 * last], marker=marker, ms=8, mfc="none", color=color, alpha=0.7)
        ax.plot([x, x], [100 * last, 100 * y], ":", color=color, lw=0.8)
    ax.set_xlabel("forward/backward passes per step (AdamW = 1)")
    ax.set_ylabel("clean test accuracy (%)")
    ax.set_title(
        f"{name}: selected checkpoint (filled, ± std) and last step (hollow), {seeds} seeds", fontsize=10, wrap=True
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves(run_dir: Path) -> dict[str, list[float]]:
    """The evaluations during training of one run: step, the fit of its noisy training labels, the validation accuracy
    (on the true labels where the selection set is noisy)."""
    state = json.loads((run_dir / "trainer_state.json").read_text(encoding="utf-8"))
    out = {"step": [], "train": [], "validation_step": [], "validation": []}
    key = "eval_clean_accuracy" if any("eval_clean_accuracy" in e for e in state["log_history"]) else "eval_accuracy"
    for e in state["log_history"]:
        # The evaluation after training repeats a step already scored (with the selected checkpoint): left out.
        if "train_subset_accuracy" in e and e["step"] not in out["step"]:  # `--eval_train_samples`
            out["step"].append(e["step"])
            out["train"].append(e["train_subset_accuracy"])
        elif key in e and e["step"] not in out["validation_step"]:
            out["validation_step"].append(e["step"])
            out["validation"].append(e[key])
    return out


def decisions_figure(name: str, result: dict, seed: int, path: Path) -> bool:
    """When AE-SAM takes SAM steps (‖g‖² against mu + c_t sigma) above what the runs fit: noisy train, clean val."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # `result`: one regime's entry of accuracy.json (its runs, and the regime's definition under "regime").
    aesam_dir = Path(result["trace_run"])
    if not (aesam_dir / "trainer_state.json").is_file():
        return False
    trace = decision_trace(aesam_dir)
    # The curves of the evaluations during training, where the regime had any: without them the figure is the
    # decisions alone, not a panel left empty.
    dirs = {r["policy"]: Path(r["run_dir"]) for r in result["runs"] if r["seed"] == seed and "run_dir" in r}
    runs = {}
    for policy in ("adamw", "sam", "aesam"):
        if policy in dirs and (dirs[policy] / "trainer_state.json").is_file():
            c = curves(dirs[policy])
            if c["step"] or c["validation"]:
                runs[policy] = (STYLE[policy][0], STYLE[policy][2], c)
    if runs:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7.5), sharex=True, height_ratios=[1.1, 1])
    else:
        fig, top = plt.subplots(figsize=(10, 4.2))
    steps, x, thr = trace["step"], trace["grad_norm_sq"], trace["threshold"]
    floor = 0.5 * min(v for v in x if v > 0)
    top.plot(steps, x, lw=0.5, color="C0", alpha=0.8, label=r"$\|g_t\|^2$")
    top.plot(steps, [max(v, floor) for v in thr], lw=1.4, color="C3", label=r"threshold $\mu_t + c_t\sigma_t$")
    sam = [(s, v) for s, v, d in zip(steps, x, trace["sam"], strict=True) if d >= 0.5]
    if sam:
        top.scatter(*zip(*sam, strict=True), s=5, color="C1", zorder=3, label=f"SAM step ({len(sam)} of {len(steps)})")
    top.set_yscale("log")
    top.set_ylabel(r"$\|g_t\|^2$ (log)")
    top.set_title(f"{name}, AE-SAM seed {seed}: a SAM step when $\\|g_t\\|^2 \\geq$ threshold", fontsize=10)
    top.legend(fontsize=8, loc="upper left")
    top.grid(alpha=0.3)
    if not runs:
        top.set_xlabel("optimizer step (no evaluation during training in this regime)")
    else:
        for label, color, c in runs.values():
            if c["step"]:
                bottom.plot(
                    c["step"], [100 * v for v in c["train"]], "-", color=color, label=f"{label}: noisy train labels"
                )
            if c["validation"]:
                bottom.plot(
                    c["validation_step"],
                    [100 * v for v in c["validation"]],
                    "--",
                    color=color,
                    label=f"{label}: validation (true labels)",
                )
        noise = 100 * result["regime"]["label_noise"]
        if noise:
            label = f"{100 - noise:.0f}%: fit of a model that learned only the true classes"
            bottom.axhline(100 - noise, color="k", lw=0.8, ls=":", label=label)
        bottom.set_xlabel("optimizer step")
        bottom.set_ylabel("accuracy (%)")
        bottom.legend(fontsize=7, ncol=2, loc="lower right")
        bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def measured_by(entry: dict) -> str:
    """Which invocation measured a regime's entry, and whether the code that trains has changed since."""
    m = entry.get("measured_by")
    if m is None:
        return "Measured by an earlier invocation that did not record its command and code."
    current = code_fingerprint(entry["regime"]["task"])
    changed = [key for key, value in m["code"].items() if current.get(key) != value]
    if not changed:
        return f"Measured by `{m['command']}` on the current code."
    what = ", ".join("the training code" if key == "code_sha256" else key for key in changed)
    return f"Measured by `{m['command']}` **on earlier code** ({what} changed since): `make bench` reruns it."


def _interval(c: dict | None) -> str:
    """A paired difference in points: mean [95% interval], bold where the interval excludes 0."""
    if c is None:
        return "–"
    if c["n"] < 2 or math.isnan(c["low"]):
        return f"{100 * c['mean']:+.2f} ({c['n']} seed)"
    bold = "**" if c["verdict"] != "no difference" else ""
    return f"{bold}{100 * c['mean']:+.2f}{bold} [{100 * c['low']:+.2f}, {100 * c['high']:+.2f}]"


def comparisons_table(comparisons: dict[str, list[dict]]) -> str:
    """Each paired difference at the selected checkpoint and at the last step, side by side, and at the selected
    checkpoint without the tuning seed (whose AdamW, SAM and Momentum-SAM runs won their grids on its validation)."""
    last = {(c["a"], c["b"]): c for c in comparisons[LAST]}
    untuned = {(c["a"], c["b"]): c for c in comparisons.get(f"{SELECTED}_without_tuning_seed", [])}
    lines = [
        "| comparison | seeds | selected checkpoint: difference (points) [95% CI] | verdict | last step: difference "
        "[95% CI] | verdict | selected, without the tuning seed |",
        "|---|---:|---:|---|---:|---|---:|",
    ]
    for c in comparisons[SELECTED]:
        end = last.get((c["a"], c["b"]))
        lines.append(
            f"| {c['a']} − {c['b']} | {c['n']} | {_interval(c)} | {c['verdict']} | {_interval(end)} | "
            f"{end['verdict'] if end else '–'} | {_interval(untuned.get((c['a'], c['b'])))} |"
        )
    return "\n".join(lines)


def policy_table(summary: list[dict], noisy: bool) -> str:
    """Per policy: the selected checkpoint's and the last step's test accuracy, where selection stopped, the clean
    bound (noisy regimes), the fit of the noisy training labels, and the cost."""

    def fmt(pair, spec=".2f", scale=100.0):
        mean, std = pair
        if math.isnan(mean):
            return "–"
        return f"{format(mean * scale, spec)} ± {format(std * scale, spec)}" if std else format(mean * scale, spec)

    columns = [
        ("selected checkpoint: test (%)", SELECTED, ".2f", 100.0),
        ("last step: test (%)", LAST, ".2f", 100.0),
        ("selected step", "selected_step", ".0f", 1.0),
        *([("peak validation, true labels (%): optimistic bound", "peak_clean_eval_accuracy", ".2f", 100.0)] * noisy),
        ("fit of training labels, last step (%)", "train_noisy_accuracy", ".2f", 100.0),
        ("SAM fraction", "sam_fraction", ".2f", 1.0),
        ("passes / step", "passes_per_step", ".2f", 1.0),
    ]
    lines = ["| policy | " + " | ".join(c[0] for c in columns) + " |", "|---|" + "---:|" * len(columns)]
    for s in summary:
        cells = [fmt(s.get(key, (math.nan, math.nan)), spec, scale) for _, key, spec, scale in columns]
        lines.append(f"| {_name(s['policy'])} (`{s['policy']}`) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tuning_lines(r: dict, seed: int) -> list[str]:
    """What each grid scored on validation (the selected checkpoint's accuracy on the selection set), what won, and
    what one such score can resolve."""
    tuning, out = r["tuning"], []
    noisy = "noisy " if r["regime"]["label_noise"] else ""
    for key, what in (
        ("adamw", "AdamW learning rate × weight decay"),
        ("sam", "SAM's rho"),
        ("msam", "Momentum-SAM's rho"),
    ):
        t = tuning[key]
        scores = ", ".join(f"{k}: {100 * v:.2f}%" for k, v in t["scores"].items())
        chosen = t["chosen"]
        if isinstance(chosen, dict):
            grid = ", ".join(f"{w:g}" for w in t.get("weight_decay_grid", []))
            chosen = f"lr {chosen['learning_rate']:g}, weight decay {chosen['weight_decay']:g}"
            where = "the learning rate " + ("inside its grid" if t["interior"] else "**at its grid's edge**")
            where += f"; the weight decay one of ({grid}), a grid not extended"
        else:
            chosen = f"{chosen:g}"
            where = "inside the grid" if t["interior"] else "**at the grid's edge** after the allowed extensions"
        out.append(
            f"- {what} ({len(t['scores'])} runs, {noisy}validation, seed {seed}): {scores} -> **{chosen}**, {where}."
        )
    n = r["regime"].get("validation_examples")
    if n:
        best = max(v for t in (tuning["adamw"], tuning["sam"], tuning["msam"]) for v in t["scores"].values())
        se = 100 * math.sqrt(best * (1 - best) / n)
        out.append(
            f"- One validation score on {n:,} examples has a binomial standard error of about {se:.1f} points: grid "
            "points closer than that are not told apart, and the choices are a user's, not the best possible."
        )
    return out


def decision_line(r: dict) -> str:
    d = r["decision"]
    policy = d["policy"]
    if policy is None:
        return f"- Cheapest policy whose selected-checkpoint accuracy is not below SAM's: undetermined ({d['why']})."
    if policy == "sam":
        answer = "**SAM** itself: every cheaper policy is below it"
    else:
        name = "AdamW with best-checkpoint selection" if policy == "adamw" else _name(policy)
        answer = f"**{name}** (`{d['flags']}`, {d['passes_per_step']:.2f} passes per step)"
        answer += f"; it minus SAM: {_interval(d['against_sam'])} points, SAM not shown better"
    return f"- Cheapest policy whose selected-checkpoint accuracy is not below SAM's: {answer}."


def accuracy_section(study: dict, figures: Path) -> str:
    env = study["environment"]
    seed = study["arguments"]["seeds"][0]
    seeds = len(study["arguments"]["seeds"])
    out = [
        "## Accuracy",
        "",
        f"Last command: `{study['command']}` (each regime says which invocation measured it). Machine and versions: "
        f"{environment_lines(env)}.",
        "",
        "Each run is one process of the regime's example script and experiment config, with only the tuned flags, the "
        "policy and the seed changing. Every run saves a checkpoint at each evaluation (every 100 steps) and ends with "
        "the one its own validation accuracy selects (`--load_best_model_at_end`); where training labels are noisy, "
        "so are the validation labels it selects on. Scores are accuracy on the clean test split, of that selected "
        "checkpoint and of the last step, mean ± std over seeds; comparisons are paired by seed (same data, noise, "
        "order and initial weights), with Student's t 95% intervals, and a difference is claimed only when its interval "
        "excludes 0 (no correction for the number of comparisons; an interval containing 0 resolves no difference, "
        "which is not a proof of equivalence). Passes are forward/backward passes per optimizer step.",
        "",
    ]
    for name, r in study["regimes"].items():
        regime, settings = r["regime"], r["settings"]
        out += [
            f"### {name} ({regime['kind']})",
            "",
            f"{regime['description']}. Config `configs/experiments/{regime['config']}`. {measured_by(r)}",
            "",
            *tuning_lines(r, seed),
            f"- Every policy at lr {settings['learning_rate']:g}, weight decay {settings['weight_decay']:g}; the SAM "
            f"family (SAM, AE-SAM, late, scheduled) at rho {settings['sam_rho']:g}, Momentum-SAM at rho "
            f"{settings['msam_rho']:g}. AE-SAM's mean SAM fraction f = {r['aesam_fraction']:.3f}; the matched "
            f"controls run `--aesam_budget {r['matched_budget']:g}`.",
            decision_line(r),
            "",
            policy_table(r["summary"], bool(regime["label_noise"])),
            "",
            comparisons_table(r["comparisons"]),
            "",
        ]
        figure = f"accuracy_vs_cost_{name}.png"
        accuracy_figure(name, r, seeds, figures / figure)
        out += [f"![accuracy against cost, {name}](figures/{figure})", ""]
        figure = f"aesam_decisions_{name}.png"
        if decisions_figure(name, r, seed, figures / figure):
            out += [f"![AE-SAM decisions and what the runs fit, {name}](figures/{figure})", ""]
    return "\n".join(out)


def results_table(study: dict, source: str) -> str:
    """The README's results: "Which policy should I use?" per regime, then the selected-checkpoint accuracies.

    Generated from the same accuracy.json as `docs/benchmarks.md`, so the two cannot disagree.
    """
    lines = [
        f"<!-- Generated by `python -m benchmarks.report` from {source}; do not edit by hand (`make bench`). -->",
        "",
        "**Which policy should I use?** Every run judged at the checkpoint its own validation data selects "
        "(`--load_best_model_at_end`), against AdamW with its learning rate and weight decay tuned the same way.",
        "",
        "| regime | SAM − tuned AdamW (points, 95% CI) | cheapest policy not below SAM | AE-SAM − SAM | AE-SAM − late "
        "SAM at its cost | AE-SAM − scheduled at its cost |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for name, r in study["regimes"].items():
        found = {(c["a"], c["b"]): c for c in r["comparisons"][SELECTED]}
        d = r["decision"]
        if d["policy"] is None:
            choice = f"undetermined ({d['why']})"
        elif d["policy"] == "sam":
            choice = "SAM (`--optim sam`): every cheaper policy is below it"
        else:
            title = "AdamW with best-checkpoint selection" if d["policy"] == "adamw" else _name(d["policy"])
            choice = f"{title} (`{d['flags']}`, {d['passes_per_step']:.2f} passes/step; − SAM: {_interval(d['against_sam'])})"
        cells = [
            _interval(found.get(("sam", "adamw"))),
            choice,
            _interval(found.get(("aesam", "sam"))),
            _interval(found.get(("aesam", "late-matched"))),
            _interval(found.get(("aesam", "scheduled-matched"))),
        ]
        lines.append(f"| {name} ({r['regime']['kind']}) | " + " | ".join(cells) + " |")
    policies = [p for p in STYLE if any(p in {s["policy"] for s in r["summary"]} for r in study["regimes"].values())]
    lines += [
        "",
        "| regime | " + " | ".join(f"{_name(p)} [passes/step]" for p in policies) + " |",
        "|---|" + "---:|" * len(policies),
    ]
    for name, r in study["regimes"].items():
        by = {s["policy"]: s for s in r["summary"]}
        cells = [
            f"{100 * by[p][SELECTED][0]:.2f} ± {100 * by[p][SELECTED][1]:.2f} [{by[p]['passes_per_step'][0]:.2f}]"
            if p in by
            else "–"
            for p in policies
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    seeds = len(study["arguments"]["seeds"])
    lines += [
        "",
        f"Clean test accuracy (%) of the selected checkpoint, mean ± std over {seeds} seeds. Differences in points "
        "with paired 95% intervals, in bold where the interval excludes 0; otherwise no difference was resolved, "
        "which is not a proof of equivalence (the interval shows how large a difference could be). No correction for "
        "the number of comparisons. The last step's accuracy, the tuning, the figures and the machine: "
        "[docs/benchmarks.md](docs/benchmarks.md).",
    ]
    return "\n".join(lines) + "\n"


README_RESULTS = ("<!-- results:start -->", "<!-- results:end -->")


def write_readme_results(readme: Path, table: str) -> None:
    """Put the headline table between the README's result markers: the README's numbers come from the JSON too."""
    text = readme.read_text(encoding="utf-8")
    start, end = README_RESULTS
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} ... {end} block for the results table.")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{table.rstrip()}\n{end}{tail}", encoding="utf-8")


def memory_section(memory: dict) -> str:
    r = memory["results"]
    measure = next(iter(r.values()))["measure"] if r else "–"
    intro = (
        f"Command: `{memory['command']}`. Measure: {measure}, median of {memory['arguments']['repeats']} runs per "
        "variant, each in a fresh process. Target: SAM − ERM <= 1.1 x parameter bytes + the cached batch inputs."
    )
    return "\n".join(["## Memory", "", intro, "", memory["table"], ""])


def cost_section(cost: dict) -> str:
    rows = []
    for name, r in cost["results"].items():
        ms = ", ".join(f"{v} {t:.1f}" for v, t in r["step_ms"].items())
        runs = f"{r['rounds']} interleaved rounds of {r['steps_per_run']}-step runs ({r['warmup_dropped']} warm-up"
        if "run_steps" in r:
            rows.append(
                f"- {name}: {r['workload']}; {runs} steps dropped), whole runs of {r['run_steps']} steps. Median step "
                f"(ms): {ms}; one forward/backward alone {r['pass_ms']:.1f} ms."
            )
        else:  # the `erm` overhead alone, with the stock Trainer timed twice for the noise floor
            rows.append(f"- {name}: {r['workload']}; {runs} steps dropped). Median step (ms): {ms}.")
    table = step_cost_table(cost["results"])
    return "\n".join(["## Step cost", "", f"Command: `{cost['command']}`.", "", *rows, "", table, ""])


# `make gpu-check` runs only where a GPU is lent, not in `make bench`: its JSON is kept in the repository, as measured.
GPU_CHECK = Path(__file__).with_name("measured") / "gpu_check.json"


def gpu_section(gpu: dict) -> str:
    """The GPU check's table, with the per-round ranges of its ratios: how much of a ratio is the machine's noise."""
    env = gpu["environment"]
    head = (
        f"Measured on {gpu.get('date', 'an earlier date')} on one {env.get('gpu', 'GPU')} lent for this check "
        f"(`{gpu['command']}`, {gpu['wall_time_s']:.0f} s; {environment_lines(env)}), not by `make bench`: the JSON "
        f"is kept as measured in `benchmarks/measured/`. GPU tests: {gpu['tests']['summary'] if gpu['tests'] else 'not run'}."
    )
    ranges = []
    for precision, r in gpu["results"].items():
        parts = [
            f"{label} {r[key]['median']:.2f} ({r[key]['min']:.2f}–{r[key]['max']:.2f})"
            for label, key in (
                ("SAM/ERM", "sam_over_erm"),
                ("AE-SAM/ERM", "aesam_over_erm"),
                ("erm/stock", "erm_over_stock"),
            )
        ]
        ranges.append(
            f"- {precision}, {r['model']}, batch {r['batch']}: median ratio within a round (range over "
            f"{len(r['per_round_ms']['erm'])} rounds): " + ", ".join(parts) + "."
        )
    table = gpu_table(gpu["results"])
    return "\n".join(["## GPU check", "", head, "", *ranges, "", table, ""])


# The stages of `make bench`, in its order: (name, the JSON it writes under the results folder).
STAGES = (
    ("step_cost", "step_cost.json"),
    ("memory", "memory.json"),
    ("accuracy", "accuracy/accuracy.json"),
)
# Earlier studies whose questions are settled: kept as written, with what measured them, and linked from the page.
RECORDED = (
    (
        "benchmarks_2026-11-30.md",
        "budget sweeps, matched random/periodic controls, the underfitting regime, "
        "LookSAM's reuse weight α; every policy read at its last step against an untuned AdamW",
    ),
    (
        "benchmarks_2026-12-07.md",
        "the first selected-checkpoint study: late SAM on its paper's last 12.5% of the steps in every regime (within "
        "0.25 points of AdamW at the selected checkpoint), wider rho grids (Momentum-SAM's reference rho = 3 collapsed "
        "training)",
    ),
)


def in_make_bench(regime: dict) -> bool:
    """Whether `make bench` runs this regime (`Regime.default`); the others are measured on request."""
    return regime.get("regime", {}).get("default", True)


def from_scratch_s(data: dict, on_request: bool = False) -> float:
    """What a stage costs from scratch: its own wall time; for a study of runs, its regimes' run times summed and
    divided by the runs side by side, whichever invocation made them (NaN where a run did not record its time).
    Only the regimes `make bench` runs, or with `on_request` only the others: the budget is `make bench`'s.

    Two runs side by side rarely end together, so the division is an estimate; it is close where one invocation made
    every run (compare the invocation's own time on the same row).
    """
    if "regimes" not in data:
        return 0.0 if on_request else data["wall_time_s"]
    side = data.get("environment", {}).get("runs_side_by_side", 1)
    regimes = [r for r in data["regimes"].values() if in_make_bench(r) != on_request]
    return math.fsum(r.get("runs_wall_time_s", math.nan) for r in regimes) / side


def wall_time_section(results: Path) -> str:
    """Each stage's wall time as its JSON recorded it, its cost from scratch, and their sums: what `make bench` costs.

    The accuracy stage's own wall time counts only the runs its last invocation made (a reused run
    costs nothing); their cost from scratch counts every run, from the time each run recorded when it was made.
    """
    rows, total, scratch = [], 0.0, 0.0
    for name, file in STAGES:
        data = load(results / file)
        if data is None or "wall_time_s" not in data:
            rows.append(f"| {name} | – | – | not run (or written before wall times were recorded) |")
            continue
        cost = from_scratch_s(data)
        total, scratch = total + data["wall_time_s"], scratch + cost
        # Regimes kept from an earlier invocation (`keep_earlier_regimes`) cost that invocation's time, not this one's.
        earlier = [
            regime
            for regime, r in data.get("regimes", {}).items()
            if r.get("measured_by", {}).get("command") != data["command"]
        ]
        note = (
            f"; not counted in its own time: {', '.join(earlier)} (measured by an earlier invocation)"
            if earlier
            else ""
        )
        rows.append(f"| {name} | {data['wall_time_s'] / 60:.1f} | {cost / 60:.1f} | `{data['command']}`{note} |")
    lines = [
        "## Wall time of `make bench`",
        "",
        "| stage | minutes, last invocation | minutes from scratch | command |",
        "|---|---:|---:|---|",
        *rows,
        "",
        f"Sum of the last invocations: {total / 60:.1f} minutes (each counts only the runs it made; a reused run costs "
        "nothing, a stage not run counts nothing). "
        f"From scratch: **{scratch / 60:.1f} minutes** (budget: 180 on 2 cores): step cost and memory as measured, "
        "the studies as the sum of their runs' recorded wall times divided by the runs side by side.",
        "",
    ]
    study = load(results / "accuracy" / "accuracy.json") or {}
    for name, regime in study.get("regimes", {}).items():
        if not in_make_bench(regime):
            cost = from_scratch_s({**study, "regimes": {name: regime}}, on_request=True)
            command = regime.get("measured_by", {}).get("command", "its command was not recorded")
            lines += [
                f"Measured on request, not by `make bench`: {name}, {cost / 60:.1f} minutes from scratch (`{command}`).",
                "",
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    (args,) = HfArgumentParser(ReportArguments).parse_args_into_dataclasses(args=argv)
    results, docs = Path(args.results_dir), Path(args.docs_dir)
    figures = docs / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    cost, memory = load(results / "step_cost.json"), load(results / "memory.json")
    study = load(results / "accuracy" / "accuracy.json")
    env = next((x["environment"] for x in (cost, memory) if x), None)
    intro = (
        "Measured by `make bench` (`benchmarks/`); this page is generated by `python -m benchmarks.report` from the "
        "JSON the benchmark modules wrote. Ratios are against ERM (AdamW) measured in the same run."
    )
    parts = ["# Benchmarks", "", intro, ""]
    if env:
        parts += [f"Machine and versions (cost and memory): {environment_lines(env)}.", ""]
    findings = Path(__file__).with_name("findings.md")
    if findings.is_file():
        # The reading of the numbers is written by hand, after looking at them; it is kept next to the modules.
        parts += [findings.read_text(encoding="utf-8")]
    parts += [cost_section(cost) if cost else "## Step cost\n\nNot run.\n"]
    parts += [memory_section(memory) if memory else "## Memory\n\nNot run.\n"]
    parts += [accuracy_section(study, figures) if study else "## Accuracy\n\nNot run.\n"]
    if study:
        table = results_table(study, f"`{results / 'accuracy' / 'accuracy.json'}`")
        (results / "results_table.md").write_text(table, encoding="utf-8")
        readme = docs.parent / "README.md"
        if readme.is_file():
            write_readme_results(readme, table)
    # The recorded pages are part of the repository's docs (the page links them from there).
    recorded = [f"- [{file}]({file}): {what}." for file, what in RECORDED if (REPO / "docs" / file).is_file()]
    if recorded:
        parts += ["## Recorded studies", "", "Settled questions, kept as measured (not rerun by `make bench`):", ""]
        parts += [*recorded, ""]
    parts += [wall_time_section(results)]
    gpu = load(GPU_CHECK)
    parts += [gpu_section(gpu) if gpu else "## GPU check\n\nNo GPU was available to run `make gpu-check`.\n"]
    out = docs / "benchmarks.md"
    out.write_text("\n".join(parts), encoding="utf-8")
    print(f"Written to {out}")
    return out


if __name__ == "__main__":
    main()
