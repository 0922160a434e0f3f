"""Runs of the example scripts, one process per (task, policy, seed), reused while nothing that shapes them changed.

Every run is the task's example script from the same experiment config; only `--optim`, `--seed` and `--output_dir`
change (and every step is logged), so every policy sees the same model, data and schedule. A finished run is reused
when its command, its experiment config, the code that trains (library, example scripts, data builders) and the
package versions are unchanged: an interrupted study resumes, and a changed library reruns.
"""

import hashlib
import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchmarks.io import write_json


REPO = Path(__file__).resolve().parent.parent
TASKS = {
    "image": (
        REPO / "examples" / "run_image_classification.py",
        REPO / "configs" / "experiments" / "image_fashion_mnist_noisy.json",
    ),
    "glue": (
        REPO / "examples" / "run_glue.py",
        REPO / "configs" / "experiments" / "glue_fortunes_noisy_minilm.json",
    ),
}
# The code a run's numbers depend on besides its command and config (not the runner, which only launches it): the
# library, the shared data helpers, and the task's own example script and data builder (a change to another task's
# leaves its runs valid).
RUN_CODE = ("aesam_hf/*.py", "benchmarks/data.py")
TASK_CODE = {
    "image": ("examples/run_image_classification.py", "benchmarks/fashion_mnist.py"),
    "glue": ("examples/run_glue.py", "benchmarks/fortunes.py"),
}
RUN_PACKAGES = ("torch", "transformers", "accelerate", "datasets")
SIGNATURE_FILE = "compare_run.json"
WALL_TIME_FILE = "wall_time.json"


def fingerprinted_files(task: str | None = None) -> list[Path]:
    """The files a run of `task` depends on (every task's without one), sorted."""
    patterns = [*RUN_CODE, *(p for t in ([task] if task is not None else TASK_CODE) for p in TASK_CODE[t])]
    return sorted({p for pattern in patterns for p in REPO.glob(pattern)})


def code_fingerprint(task: str | None = None) -> dict[str, str]:
    """A hash of the code that trains and the package versions: a finished run is reused only if both are unchanged.

    With `task`, the hash covers that task's example script and data builder; without, every task's (a study's
    provenance).
    """
    digest = hashlib.sha256()
    for path in fingerprinted_files(task):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return {"code_sha256": digest.hexdigest(), **{name: importlib.metadata.version(name) for name in RUN_PACKAGES}}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass
class Runner:
    """Where one task's runs go and how they are launched; `run` trains and scores one (policy, seed)."""

    task: str
    output_dir: str
    config: str | None = None  # the experiment JSON; default: the task's
    metric: str = "test_accuracy"  # the score, a key of the run's all_results.json
    launcher: str | None = None  # e.g. "accelerate launch --config_file ..."; default: this Python
    rerun: bool = False  # run again even where a finished run is in place
    threads: int | None = None  # torch's intra-op threads per run (OMP_NUM_THREADS); default: torch's choice

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"`task` ({self.task!r}) must be one of {sorted(TASKS)}.")
        self.config = str(TASKS[self.task][1]) if self.config is None else self.config
        if not Path(self.config).is_file():
            raise FileNotFoundError(f"`config` {self.config!r} not found.")

    def run_dir(self, policy: str, seed: int) -> Path:
        """`<output_dir>/<policy>/seed<seed>`; `policy` may be a label such as `random-p0.43` (see `run`)."""
        return Path(self.output_dir) / policy / f"seed{seed}"

    def arguments(self, policy: str, seed: int, extra: list[str], label: str | None = None) -> list[str]:
        """The example script and its arguments for one run (what the launcher is given)."""
        # Every step is logged: the decision figure and the LookSAM study read each step's values, and the same
        # logging cost falls on every policy. Checkpoints are the config's: the study's configs save one at every
        # evaluation and load the best at the end (`--load_best_model_at_end`), as a careful user would.
        run_dir = self.run_dir(label or policy, seed)
        run = ["--optim", policy, "--seed", str(seed), "--output_dir", str(run_dir)]
        logging = ["--logging_steps", "1", "--disable_tqdm", "true"]
        return [str(TASKS[self.task][0]), self.config, *extra, *run, *logging]

    def run(self, policy: str, seed: int, extra: list[str], label: str | None = None) -> dict:
        """Train and score one (policy, seed), or reuse the finished run; returns its row.

        `label` names the run (its folder and the row's `policy`) where one policy runs in several variants, e.g.
        `random-p0.43`; `optim` is `policy` all the same.
        """
        run_dir = self.run_dir(label or policy, seed)
        arguments = self.arguments(policy, seed, extra, label)
        cmd = [*(shlex.split(self.launcher) if self.launcher else [sys.executable]), *arguments]
        # The launcher is left out: the same run under another launcher is the same run. The thread count is in:
        # it changes the order of floating-point reductions, so the low bits of the result.
        signature = {
            "cmd": arguments,
            "config": read_json(Path(self.config)),
            "code": code_fingerprint(self.task),
            "threads": self.threads,
        }
        results_file, signature_file = run_dir / "all_results.json", run_dir / SIGNATURE_FILE
        done = results_file.is_file() and signature_file.is_file()
        if self.rerun or not done or read_json(signature_file) != signature:
            # A clean folder: the Trainer merges metrics into an existing all_results.json and resumes old checkpoints.
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            with open(run_dir / "log.txt", "w", encoding="utf-8") as log:
                log.write(shlex.join(cmd) + "\n")
                log.flush()
                env = {**os.environ, "PYTHONUNBUFFERED": "1"}
                if self.threads is not None:
                    env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
                start = time.perf_counter()
                proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                wall = time.perf_counter() - start
            if proc.returncode != 0:
                tail = (run_dir / "log.txt").read_text(encoding="utf-8", errors="replace")[-2000:]
                raise RuntimeError(f"{policy} (seed {seed}) failed with exit code {proc.returncode}; log:\n{tail}")
            # The checkpoints served best-model selection; the selected model is the run's own output. Kept, they
            # would fill the disk over a study.
            for checkpoint in run_dir.glob("checkpoint-*"):
                shutil.rmtree(checkpoint)
            write_json(signature_file, signature)
            # Kept apart from the signature (which must compare equal): what the run cost, start-up and scoring in.
            write_json(run_dir / WALL_TIME_FILE, {"wall_time_s": wall})
        results = read_json(results_file)
        if self.metric not in results:
            raise ValueError(
                f"`metric` ({self.metric!r}) is not in {results_file}; it must be one of {sorted(results)}."
            )
        wall_file = run_dir / WALL_TIME_FILE  # absent for runs made before it was recorded
        wall = read_json(wall_file)["wall_time_s"] if wall_file.is_file() else float("nan")
        state = read_json(run_dir / "trainer_state.json")
        steps = state["global_step"]
        # Validation accuracy at the evaluations during training (when there were any). With noisy validation labels
        # (the selection set), the true labels' accuracy is `eval_clean_accuracy`: its peak is what selection on
        # clean labels could have kept, an optimistic bound.
        history = state.get("log_history", [])
        during = [e["eval_accuracy"] for e in history if "eval_accuracy" in e]
        clean = [e["eval_clean_accuracy"] for e in history if "eval_clean_accuracy" in e]
        # The fit of a training subset to its (noisy) labels at the last evaluation during training
        # (`--eval_train_samples`): memorization. An evaluation after training (of the selected checkpoint) logs
        # the same step again; the first entry of a step is the one made during training.
        fits: dict[int, float] = {}
        for e in history:
            if "train_subset_accuracy" in e:
                fits.setdefault(e["step"], e["train_subset_accuracy"])
        train_fit = [fits[step] for step in sorted(fits)]
        # A stock optimizer name (`--optim adamw_torch`) logs nothing of aesam_hf's: one forward/backward pass per
        # step, no SAM step.
        passes = results.get("sam/passes", steps)
        return {
            "policy": label or policy,
            "optim": policy,
            "seed": seed,
            "run_dir": str(run_dir),
            self.metric: results[self.metric],
            "eval_accuracy": results.get("eval_accuracy", float("nan")),
            "peak_eval_accuracy": max(during, default=float("nan")),
            "peak_clean_eval_accuracy": max(clean, default=float("nan")),
            # With `--load_best_model_at_end`, `test_accuracy` scores the selected checkpoint and
            # `test_last_accuracy` (`--test_last_model`) the model of the last step; without, the first is the last.
            # Either is NaN where it was not measured (no selection, or no last-step score).
            "test_last_accuracy": results.get("test_last_accuracy", float("nan")),
            "selected_step": state.get("best_global_step") or float("nan"),
            "train_noisy_accuracy": train_fit[-1] if train_fit else float("nan"),
            "sam_fraction": results.get("sam/fraction_total", 0.0),
            "passes": passes,
            "steps": steps,
            "passes_per_step": passes / steps,
            "train_time": results["train_runtime"],
            "wall_time": wall,  # the whole process: a study's cost from scratch is the sum over its runs / workers
            "threads": self.threads,
        }

    def log_history(self, policy: str, seed: int) -> list[dict]:
        """The Trainer's log history of a finished run (from its trainer_state.json): one entry per logged step."""
        return read_json(self.run_dir(policy, seed) / "trainer_state.json")["log_history"]


def run_jobs(jobs: list[tuple["Runner", tuple]], workers: int = 1) -> list[dict]:
    """`runner.run(*args)` for every `(runner, args)`, `workers` at a time (each its own process), rows in order.

    On a small machine, two single-threaded runs side by side train faster than one run on two threads (small models
    scale poorly across threads). The wall times of runs that shared the machine compare only with each other, so
    the studies compare cost in forward/backward passes, which do not depend on it.
    """
    if workers <= 1:
        return [runner.run(*args) for runner, args in jobs]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # the threads only wait on the processes
        return list(pool.map(lambda job: job[0].run(*job[1]), jobs))
