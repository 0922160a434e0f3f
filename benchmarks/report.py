"""Write `docs/benchmarks.md` and its figures from what `step_cost`, `memory`, `accuracy` and `looksam_alpha` wrote.

Only measured numbers go in: every table is built from the JSON files the benchmark modules wrote, with the command
that produced them, the machine and the versions. Sections whose JSON is missing are listed as not run.

    python -m benchmarks.report --results_dir outputs/bench --docs_dir docs
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from benchmarks.results import decision_trace, markdown_table, plot
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


def accuracy_figure(study: dict, path: Path) -> None:
    """Test accuracy against cost, one panel per (task, noise), one point per policy with error bars over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = study["settings"]
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 4.6), squeeze=False)
    for ax, setting in zip(axes[0], settings.values(), strict=True):
        for i, s in enumerate(setting["summary"]):
            (x, xerr), (y, yerr) = s["passes_per_step"], s["test_accuracy"]
            ax.errorbar(x, 100 * y, xerr=xerr, yerr=100 * yerr, fmt="o", ms=7, capsize=4, color=f"C{i}")
            # Above and below in turn, so that policies at the same cost (aesam, random) do not overprint.
            ax.annotate(
                s["policy"], (x, 100 * y), textcoords="offset points", xytext=(6, 4 if i % 2 else -12), fontsize=8
            )
        task = "ViT on Fashion-MNIST" if setting["task"] == "image" else "MiniLM-L6 on fortunes topics"
        ax.set_title(f"{task}, {round(100 * setting['noise'])}% label noise (rho {setting['rho']:g})", fontsize=10)
        ax.set_xlabel("forward/backward passes per step (AdamW = 1)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    seeds = len(study["arguments"]["seeds"])
    fig.suptitle(f"Test accuracy against cost: mean ± std over {seeds} seeds", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def decisions_figure(study: dict, path: Path) -> str | None:
    """The adaptive decisions of one AE-SAM run (the first setting's first seed), drawn as `compare` draws them."""
    name, setting = next(iter(study["settings"].items()))
    run_dir = Path(setting["trace_run"])
    if not (run_dir / "trainer_state.json").is_file():
        return None
    trace = decision_trace(run_dir)
    trace.update(policy="aesam", seed=study["arguments"]["seeds"][0])
    summary = setting["summary"]
    plot(summary, "test_accuracy", "adamw_torch", trace, f"{name}: one AE-SAM run", path)
    return name


def accuracy_section(study: dict, figures: Path) -> str:
    out = ["## Accuracy", ""]
    if "command" in study:  # older results files lack it
        out += [f"Command: `{study['command']}`. Machine and versions: {environment_lines(study['environment'])}.", ""]
    tuning = study.get("rho_tuning", {})
    for task, t in tuning.items():
        scores = ", ".join(f"{float(rho):g}: {100 * acc:.2f}%" for rho, acc in t["scores"].items())
        out.append(
            f"- `sam_rho` for `{task}`, tuned with `sam` on the validation split (clean, first seed): "
            f"{scores} -> **{float(t['chosen']):g}**, then fixed for every policy, seed and noise level."
        )
    out.append("")
    for name, setting in study["settings"].items():
        out += [f"### {name}", "", f"Flags: `{' '.join(setting['extra'])}`, `--sam_rho {setting['rho']:g}`.", ""]
        out.append(markdown_table(setting["summary"], "test_accuracy", "adamw_torch"))
        out.append("")
    accuracy_figure(study, figures / "accuracy_vs_cost.png")
    out += ["![accuracy against cost](figures/accuracy_vs_cost.png)", ""]
    traced = decisions_figure(study, figures / "aesam_decisions.png")
    if traced:
        out += [f"AE-SAM's decisions over one run ({traced}): `sam/grad_norm_sq` against its threshold.", ""]
        out += ["![AE-SAM decisions](figures/aesam_decisions.png)", ""]
    return "\n".join(out)


def looksam_section(payload: dict) -> str:
    seeds = ", ".join(map(str, payload["arguments"]["seeds"]))
    intro = (
        f"Command: `{payload['command']}`, `sam_rho {payload['sam_rho']:g}` (the study's), seeds {seeds}; validation "
        "accuracy, mean ± std. The ratios are taken at every SAM step of those runs: ‖g_v‖/‖g‖ is the orthogonal "
        "change SAM makes to the gradient, α the one a LookSAM reuse step adds (relative to ‖g‖)."
    )
    return "\n".join(["### LookSAM's reuse weight α (image task, clean)", "", intro, "", payload["table"], ""])


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
    looksam = load(results / "looksam_alpha" / "looksam_alpha.json")
    parts += [looksam_section(looksam) if looksam else "### LookSAM's reuse weight α\n\nNot run.\n"]
    out = docs / "benchmarks.md"
    out.write_text("\n".join(parts), encoding="utf-8")
    print(f"Written to {out}")
    return out


if __name__ == "__main__":
    main()
