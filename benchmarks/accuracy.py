"""The accuracy study: AE-SAM against AdamW, SAM and the cheap SAM baselines, on data no one here wrote.

Question (the paper's central claim, https://huggingface.co/papers/2304.14647): does AE-SAM reach SAM's accuracy at
about half of SAM's extra cost, and beat plain AdamW? Two tasks, each clean and with symmetric label noise:

- Fashion-MNIST, a small ViT from scratch (`run_image_classification.py`): `adamw_torch`, `sam`, `aesam`,
  `aelooksam`, `looksam`, and `random` with its probability set to AE-SAM's measured SAM fraction (same cost, random
  steps instead of chosen ones); clean and 40% noise.
- The fortunes topic task, pretrained MiniLM-L6 (`run_glue.py`): `adamw_torch`, `sam`, `aesam`; clean and 20% noise.

`sam_rho` is tuned once per task, with `sam` on the *validation* split of the clean data and the first seed, then fixed
for every policy, seed and noise level; test accuracy is reported. Every run goes through `runner.py` (one process
per run, same experiment config, only `--optim`, `--seed` and the flags below changing), and finished runs are
reused, so an interrupted study picks up where it stopped.

    python -m benchmarks.accuracy                      # the full study (`make bench`), about 1.5 hours on 2 cores
    python -m benchmarks.accuracy --smoke              # every code path on a tiny setting, a minute or two

Writes `<output_dir>/accuracy.json` (every run and the summary), which `python -m benchmarks.report` turns into
`docs/benchmarks.md` and its figures.
"""

import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from benchmarks.results import add_time_ratios, markdown_table, summarize
from benchmarks.runner import REPO, TASKS, Runner
from benchmarks.workloads import environment


@dataclass
class Setting:
    """One (task, noise) cell of the study."""

    task: str  # "image" or "glue", as in runner.TASKS
    noise: float
    policies: list[str]
    extra: list[str]  # flags for every run of this setting (data size, steps, noisy data)

    @property
    def name(self) -> str:
        return f"{self.task}-noise{round(100 * self.noise)}"


@dataclass
class StudyArguments:
    output_dir: str = field(default="outputs/bench/accuracy", metadata={"help": "Runs and accuracy.json go here."})
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3], metadata={"help": "Seeds of every (policy, setting)."})
    rho_grid: list[float] = field(
        default_factory=lambda: [0.02, 0.05, 0.1, 0.2], metadata={"help": "Values of sam_rho tried on validation."}
    )
    tasks: list[str] = field(default_factory=lambda: ["image", "glue"], metadata={"help": "Which tasks to run."})
    smoke: bool = field(default=False, metadata={"help": "A tiny setting that exercises every path in minutes."})

    def __post_init__(self):
        if not self.tasks or set(self.tasks) - set(TASKS):
            raise ValueError(f"`tasks` ({self.tasks}) must be a non-empty list among {sorted(TASKS)}.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"`seeds` ({self.seeds}) must be a non-empty list of distinct seeds.")
        if not self.rho_grid or min(self.rho_grid) <= 0:
            raise ValueError(f"`rho_grid` ({self.rho_grid}) must be a non-empty list of values > 0.")


IMAGE_POLICIES = ["adamw_torch", "sam", "aesam", "aelooksam", "looksam", "random"]
GLUE_POLICIES = ["adamw_torch", "sam", "aesam"]
# Per-task data and budget, sized so the whole study fits in under 2 hours on 2 CPU cores. The image runs use the
# experiment config as it is (10k training images, 800 steps of 128); the text runs take 2 epochs of 32 quotations.
IMAGE_EXTRA: list[str] = []
GLUE_EXTRA = ["--num_train_epochs", "2", "--max_seq_length", "48", "--eval_strategy", "no"]
SMOKE_EXTRA = {
    "image": "--max_steps 6 --max_train_samples 128 --max_eval_samples 32 --max_predict_samples 64 "
    "--per_device_train_batch_size 16".split(),
    "glue": "--max_steps 3 --max_train_samples 48 --max_eval_samples 16 --max_predict_samples 16 "
    "--per_device_train_batch_size 8 --max_seq_length 32 --eval_strategy no".split(),
}
QUIET = ["--report_to", "none", "--dataloader_pin_memory", "false"]


def noisy_fortunes(output_dir: Path, noise: float) -> list[str]:
    """Flags pointing run_glue at a fortunes training CSV with `noise` of its labels flipped (built once)."""
    data_dir = output_dir / "data" / f"fortunes-noise{round(100 * noise)}"
    if not (data_dir / "train.csv").is_file():
        cmd = [sys.executable, "-m", "benchmarks.fortunes", "--output_dir", str(data_dir.resolve())]
        subprocess.run([*cmd, "--label_noise", str(noise)], check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    return ["--train_file", str(data_dir / "train.csv")]


def settings(args: StudyArguments, output_dir: Path) -> list[Setting]:
    """The study's cells, each task's clean one first (it tunes rho for the task)."""
    out = []
    # The smoke run keeps, per task, only the noisy setting, with the baseline, the adaptive policy and `random`
    # (which depends on it): every code path in a few runs.
    smoke_policies = {"image": ["adamw_torch", "aesam", "random"], "glue": ["adamw_torch", "aesam"]}
    for task in args.tasks:
        base = SMOKE_EXTRA[task] if args.smoke else (IMAGE_EXTRA if task == "image" else GLUE_EXTRA)
        noises = (0.0, 0.4) if task == "image" else (0.0, 0.2)
        noises = noises[1:] if args.smoke else noises
        for noise in noises:
            if task == "image":
                extra = base + (["--label_noise", str(noise)] if noise else [])
            else:
                extra = base + (noisy_fortunes(output_dir, noise) if noise else [])
            policies = IMAGE_POLICIES if task == "image" else GLUE_POLICIES
            out.append(Setting(task, noise, smoke_policies[task] if args.smoke else policies, extra + QUIET))
    return out


def tune_rho(args: StudyArguments, output_dir: Path, setting: Setting) -> tuple[float, dict[float, float]]:
    """The rho with the best validation accuracy for `sam` on the clean setting, first seed."""
    scores = {}
    for rho in args.rho_grid:
        runner = Runner(setting.task, str(output_dir / "tune" / setting.task / f"rho{rho:g}"), metric="eval_accuracy")
        extra = setting.extra + ["--sam_rho", str(rho), "--do_predict", "false"]
        scores[rho] = runner.run("sam", args.seeds[0], extra)["eval_accuracy"]
        print(f"  tune {setting.task}: rho {rho:g} -> validation accuracy {100 * scores[rho]:.2f}%", flush=True)
    return max(scores, key=scores.get), scores


def run_setting(args: StudyArguments, output_dir: Path, setting: Setting, rho: float) -> list[dict]:
    """Every policy and seed of one setting; `random` runs last, at AE-SAM's mean SAM fraction."""
    runner = Runner(setting.task, str(output_dir / setting.name), metric="test_accuracy")
    rows = []
    extra = setting.extra + ["--sam_rho", str(rho)]
    for policy in [p for p in setting.policies if p != "random"]:
        for seed in args.seeds:
            rows.append(r := runner.run(policy, seed, extra))
            print(
                f"  {setting.name} {policy} seed {seed}: test {100 * r['test_accuracy']:.2f}%, "
                f"SAM fraction {r['sam_fraction']:.2f}, {r['train_time']:.0f}s",
                flush=True,
            )
    if "random" in setting.policies:
        p = statistics.fmean(r["sam_fraction"] for r in rows if r["policy"] == "aesam")
        for seed in args.seeds:
            rows.append(runner.run("random", seed, extra + ["--sam_probability", f"{p:.4f}"]))
            print(f"  {setting.name} random(p={p:.2f}) seed {seed}: test {100 * rows[-1]['test_accuracy']:.2f}%")
    add_time_ratios(rows, "adamw_torch")
    return rows


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    (args,) = HfArgumentParser(StudyArguments).parse_args_into_dataclasses(args=argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    study = {
        "command": "python -m benchmarks.accuracy " + " ".join(argv),
        "arguments": asdict(args),
        "environment": environment(),
        "settings": {},
    }
    rhos = {}
    for setting in settings(args, output_dir):
        print(f"== {setting.name}: {', '.join(setting.policies)}; seeds {args.seeds}", flush=True)
        if setting.task not in rhos:  # the first (clean) setting of each task tunes rho for all of its settings
            rhos[setting.task], scores = tune_rho(args, output_dir, setting)
            study.setdefault("rho_tuning", {})[setting.task] = {"scores": scores, "chosen": rhos[setting.task]}
        rows = run_setting(args, output_dir, setting, rhos[setting.task])
        summary = summarize(rows, setting.policies, "test_accuracy")
        study["settings"][setting.name] = {
            "task": setting.task,
            "noise": setting.noise,
            "rho": rhos[setting.task],
            "extra": setting.extra,
            "runs": rows,
            "summary": summary,
            "trace_run": str(output_dir / setting.name / "aesam" / f"seed{args.seeds[0]}"),
        }
        print(markdown_table(summary, "test_accuracy", "adamw_torch"), flush=True)
        # Written after every setting, so a long study can be reported on before it ends. Its wall time counts only
        # the runs made by this invocation (reused runs cost nothing); each run's own time is in its row.
        study["wall_time_s"] = time.perf_counter() - start
        (output_dir / "accuracy.json").write_text(json.dumps(study, indent=1), encoding="utf-8")
    return study


if __name__ == "__main__":
    main()
