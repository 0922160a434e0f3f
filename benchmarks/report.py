"""Write `docs/benchmarks.md`, its figures and `docs/results_table.md` (the README's headline table) from what
`step_cost`, `memory`, `accuracy` and `looksam_alpha` wrote.

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
from benchmarks.results import decision_trace, markdown_table
from benchmarks.runner import code_fingerprint
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


# How each kind of run is drawn in the cost figure: the budget sweeps as lines, the matched controls as markers.
STYLE = {
    "adamw_torch": ("AdamW", "s", "C0"),
    "sam": ("SAM", "D", "C3"),
    "aesam": ("AE-SAM", "o", "C2"),
    "random-matched": ("random @ AE-SAM's f", "v", "C7"),
    "scheduled-matched": ("scheduled @ f", "^", "C5"),
    "periodic-matched": ("periodic @ 1/f", "<", "C8"),
}


def _mean(entry: dict, key: str) -> float:
    return entry[key][0]


def accuracy_figure(study: dict, path: Path) -> None:
    """Test accuracy against forward/backward passes per step, one panel per regime (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = study["regimes"]
    fig, axes = plt.subplots(1, len(regimes), figsize=(5.6 * len(regimes), 4.8), squeeze=False)
    for ax, (name, r) in zip(axes[0], regimes.items(), strict=True):
        by = {s["policy"]: s for s in r["summary"]}
        for family, color, label in (("aesam-b", "C2", "AE-SAM, budget b"), ("random-p", "C7", "random, p = b")):
            points = sorted(
                (_mean(s, "passes_per_step"), 100 * _mean(s, "test_accuracy"))
                for p, s in by.items()
                if p.startswith(family)
            )
            if points:
                ax.plot(*zip(*points, strict=True), "-", marker=".", color=color, alpha=0.7, label=label)
        for policy, (label, marker, color) in STYLE.items():
            if policy in by:
                s = by[policy]
                (x, xerr), (y, yerr) = s["passes_per_step"], s["test_accuracy"]
                ax.errorbar(
                    x, 100 * y, xerr=xerr, yerr=100 * yerr, fmt=marker, ms=8, capsize=3, color=color, label=label
                )
        ax.set_title(f"{name} ({r['regime']['kind']}), rho {r['rho']:g}", fontsize=10)
        ax.set_xlabel("forward/backward passes per step (AdamW = 1)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    seeds = len(study["arguments"]["seeds"])
    fig.suptitle(f"Test accuracy against cost: mean ± std over {seeds} seeds", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rho_figure(study: dict, path: Path) -> None:
    """Validation accuracy of `sam` against rho, per regime, the chosen value marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullLocator

    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    for i, (name, r) in enumerate(study["regimes"].items()):
        scores = {float(k): 100 * v for k, v in r["rho_tuning"]["scores"].items()}
        ax.plot(list(scores), list(scores.values()), "o-", color=f"C{i}", label=name)
        chosen = r["rho_tuning"]["chosen"]
        ax.plot([chosen], [scores[chosen]], "*", ms=15, color=f"C{i}")
    ax.set_xscale("log")
    # One labelled tick per rho tried, written plainly (0.05, not 5x10^-2), and no minor-tick labels between them:
    # matplotlib's log-axis labels overprint at this width.
    tried = sorted({float(k) for r in study["regimes"].values() for k in r["rho_tuning"]["scores"]})
    ax.xaxis.set_major_locator(FixedLocator(tried))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.tick_params(axis="x", labelrotation=45 if len(tried) > 6 else 0, labelsize=8)
    ax.set_xlabel("sam_rho (log scale)")
    ax.set_ylabel("validation accuracy of `sam` (%), first seed")
    ax.set_title("rho chosen on validation (star)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves(run_dir: Path) -> dict[str, list[float]]:
    """The evaluations during training of one run: step, validation accuracy, accuracy on noisy training labels."""
    state = json.loads((run_dir / "trainer_state.json").read_text(encoding="utf-8"))
    out = {"step": [], "train": [], "validation_step": [], "validation": []}
    for e in state["log_history"]:
        if "train_subset_accuracy" in e:  # `--eval_train_samples` (aesam_hf.callbacks.TrainSubsetCallback)
            out["step"].append(e["step"])
            out["train"].append(e["train_subset_accuracy"])
        # The final evaluation after training repeats the last one's step: it is left out.
        elif "eval_accuracy" in e and e["step"] not in out["validation_step"]:
            out["validation_step"].append(e["step"])
            out["validation"].append(e["eval_accuracy"])
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
    root = aesam_dir.parent.parent
    # The curves of the evaluations during training, where the regime had any: without them (image-underfit) the
    # figure is the decisions alone, not a panel left empty.
    runs = {}
    for policy, (label, _, color) in STYLE.items():
        run_dir = root / policy / f"seed{seed}"
        if policy in ("adamw_torch", "sam", "aesam") and (run_dir / "trainer_state.json").is_file():
            c = curves(run_dir)
            if c["step"] or c["validation"]:
                runs[policy] = (label, color, c)
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
                    label=f"{label}: clean validation",
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
    current = code_fingerprint()
    changed = [key for key, value in m["code"].items() if current.get(key) != value]
    if not changed:
        return f"Measured by `{m['command']}` on the current code."
    what = ", ".join("the training code" if key == "code_sha256" else key for key in changed)
    return f"Measured by `{m['command']}` **on earlier code** ({what} changed since): `make bench` reruns it."


def comparisons_table(comparisons: list[dict]) -> str:
    lines = [
        "| comparison (test accuracy) | seeds | mean difference (points) | 95% interval | verdict |",
        "|---|---:|---:|---:|---|",
    ]
    for c in comparisons:
        interval = f"[{100 * c['low']:+.2f}, {100 * c['high']:+.2f}]" if c["n"] > 1 else "–"
        lines.append(f"| {c['a']} − {c['b']} | {c['n']} | {100 * c['mean']:+.2f} | {interval} | {c['verdict']} |")
    return "\n".join(lines)


def budget_lines(regime: dict) -> list[str]:
    """How close the realized SAM fraction came to each `--aesam_budget`."""
    out = []
    for s in regime["summary"]:
        if s["policy"].startswith("aesam-b"):
            target = float(s["policy"][len("aesam-b") :])
            fractions = [r["sam_fraction"] for r in regime["runs"] if r["policy"] == s["policy"]]
            worst = max(abs(f - target) for f in fractions)
            out.append(
                f"- `--aesam_budget {target:g}`: realized fraction {min(fractions):.3f}–{max(fractions):.3f} over "
                f"{len(fractions)} runs (largest miss {worst:.3f}; the promise is ±0.03)."
            )
    return out


def accuracy_section(study: dict, figures: Path) -> str:
    env = study["environment"]
    out = [
        "## Accuracy",
        "",
        f"Last command: `{study['command']}` (each regime says which invocation measured it). Machine and versions: "
        f"{environment_lines(env)}.",
        "",
        "Each run is one process of the regime's example script and experiment config, with only the policy's flags "
        "changing. Scores are test accuracy on clean labels, mean ± std over seeds; comparisons are paired by seed "
        "(same data, noise, order and initial weights), with Student's t 95% intervals, and a difference is claimed "
        "only when its interval excludes 0. Passes are forward/backward passes; train times come from runs that "
        f"shared the machine ({env.get('runs_side_by_side', 1)} at a time, {env.get('threads_per_run', '?')} torch "
        "thread(s) each) and compare only within this section.",
        "",
    ]
    rho_figure(study, figures / "rho_tuning.png")
    for name, r in study["regimes"].items():
        regime, tuning = r["regime"], r["rho_tuning"]
        scores = ", ".join(f"{k}: {100 * v:.2f}%" for k, v in tuning["scores"].items())
        where = "inside the grid" if tuning["interior"] else "**at the grid's edge** after the allowed extensions"
        out += [
            f"### {name} ({regime['kind']})",
            "",
            f"{regime['description']}. Config `configs/experiments/{regime['config']}`. {measured_by(r)}",
            "",
            f"- `sam_rho` on validation (`sam`, seed {study['arguments']['seeds'][0]}): {scores} -> "
            f"**{tuning['chosen']:g}**, {where}.",
        ]
        if not regime["full"] and regime["budgets"]:
            out.append(
                "- **Partial:** run `--core_only` (AdamW, SAM, AE-SAM); its budgets and matched controls were not run."
            )
        if r["controls"]:
            flags = "; ".join(f"{label} `{' '.join(f)}`" for label, f in r["controls"].items())
            out.append(f"- AE-SAM's mean SAM fraction f = {r['aesam_fraction']:.3f}; matched controls: {flags}.")
        out += budget_lines(r)
        out += ["", markdown_table(r["summary"], "test_accuracy"), ""]
        if r["comparisons"]:
            out += [comparisons_table(r["comparisons"]), ""]
        figure = f"aesam_decisions_{name}.png"
        if decisions_figure(name, r, study["arguments"]["seeds"][0], figures / figure):
            out += [f"![AE-SAM decisions and what the runs fit, {name}](figures/{figure})", ""]
    accuracy_figure(study, figures / "accuracy_vs_cost.png")
    out += ["### Accuracy against cost", "", "![accuracy against cost](figures/accuracy_vs_cost.png)", ""]
    out += ["### rho on validation", "", "![rho tuning](figures/rho_tuning.png)", ""]
    return "\n".join(out)


# The headline table: the policies a newcomer chooses between, and the differences that say whether it matters.
HEADLINE = (("adamw_torch", "AdamW"), ("sam", "SAM"), ("aesam", "AE-SAM"))
HEADLINE_DIFFERENCES = (("sam", "adamw_torch"), ("aesam", "adamw_torch"), ("aesam", "sam"))


def results_table(study: dict, source: str) -> str:
    """The headline results, one row per regime: test accuracy (mean ± std over seeds) and passes per step of AdamW,
    SAM and AE-SAM, and their paired differences with 95% intervals. Generated (the README includes it), from the
    same accuracy.json as `docs/benchmarks.md`, so the two cannot disagree."""
    label = dict(HEADLINE)
    lines = [
        f"<!-- Generated by `python -m benchmarks.report` from {source}; do not edit by hand (`make bench`). -->",
        "",
        "| regime | "
        + " | ".join(f"{name} test acc. (%) [passes/step]" for _, name in HEADLINE)
        + " | "
        + " | ".join(f"{label[a]} − {label[b]} (points, 95% CI)" for a, b in HEADLINE_DIFFERENCES)
        + " |",
        "|---|" + "---:|" * (len(HEADLINE) + len(HEADLINE_DIFFERENCES)),
    ]
    for name, r in study["regimes"].items():
        by = {s["policy"]: s for s in r["summary"]}
        cells = []
        for policy, _ in HEADLINE:
            if policy in by:
                (mean, std), passes = by[policy]["test_accuracy"], by[policy]["passes_per_step"][0]
                cells.append(f"{100 * mean:.2f} ± {100 * std:.2f} [{passes:.2f}]")
            else:
                cells.append("–")
        found = {(c["a"], c["b"]): c for c in r["comparisons"]}
        for pair in HEADLINE_DIFFERENCES:
            c = found.get(pair)
            if c is None:
                cells.append("–")
            elif c["n"] < 2:
                cells.append(f"{100 * c['mean']:+.2f} (1 seed)")
            else:
                bold = "**" if c["verdict"] != "no difference" else ""
                cells.append(f"{bold}{100 * c['mean']:+.2f}{bold} [{100 * c['low']:+.2f}, {100 * c['high']:+.2f}]")
        lines.append(f"| {name} ({r['regime']['kind']}) | " + " | ".join(cells) + " |")
    seeds = len(study["arguments"]["seeds"])
    lines += [
        "",
        f"Mean over {seeds} seeds; a difference is in bold where its paired 95% interval excludes 0. Details, controls "
        "and the machine: [docs/benchmarks.md](benchmarks.md).",
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


def looksam_section(payload: dict) -> str:
    seeds = ", ".join(map(str, payload["arguments"]["seeds"]))
    out = [
        "### LookSAM's reuse weight α",
        "",
        f"Command: `{payload['command']}`; seeds {seeds}; validation accuracy (this chooses a default), mean ± std. "
        "The ratios are taken at every SAM step of those runs: ‖g_v‖/‖g‖ is the orthogonal change SAM makes to the "
        "gradient, α the one a LookSAM reuse step adds (relative to ‖g‖).",
        "",
    ]
    for name, r in payload["regimes"].items():
        out += [f"{name}, `sam_rho {r['sam_rho']:g}` (the accuracy study's). {measured_by(r)}", "", r["table"], ""]
    return "\n".join(out)


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
    ("looksam_alpha", "looksam_alpha/looksam_alpha.json"),
)


def from_scratch_s(data: dict) -> float:
    """What a stage costs from scratch: its own wall time; for a study of runs, its regimes' run times summed and
    divided by the runs side by side, whichever invocation made them (NaN where a run did not record its time).

    Two runs side by side rarely end together, so the division is an estimate; it is close where one invocation made
    every run (compare the invocation's own time on the same row).
    """
    if "regimes" not in data:
        return data["wall_time_s"]
    side = data.get("environment", {}).get("runs_side_by_side", 1)
    return math.fsum(r.get("runs_wall_time_s", math.nan) for r in data["regimes"].values()) / side


def wall_time_section(results: Path) -> str:
    """Each stage's wall time as its JSON recorded it, its cost from scratch, and their sums: what `make bench` costs.

    The accuracy and LookSAM stages' own wall time counts only the runs their last invocation made (a reused run
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
        (docs / "results_table.md").write_text(table, encoding="utf-8")
        readme = docs.parent / "README.md"
        if readme.is_file():
            write_readme_results(readme, table)
    looksam = load(results / "looksam_alpha" / "looksam_alpha.json")
    parts += [looksam_section(looksam) if looksam else "### LookSAM's reuse weight α\n\nNot run.\n"]
    parts += [wall_time_section(results)]
    gpu = load(GPU_CHECK)
    parts += [gpu_section(gpu) if gpu else "## GPU check\n\nNo GPU was available to run `make gpu-check`.\n"]
    out = docs / "benchmarks.md"
    out.write_text("\n".join(parts), encoding="utf-8")
    print(f"Written to {out}")
    return out


if __name__ == "__main__":
    main()
