"""The comparison runner (`python -m benchmarks.compare`, the `make demo` job) and its cache of finished runs."""

import json
import math
import pathlib
import re
import subprocess
import sys

import pytest
from example_utils import QUIET, ROOT, require_fashion_mnist

from benchmarks import runner
from benchmarks.results import decision_trace


@require_fashion_mnist
@pytest.mark.slow
def test_compare_writes_table_and_figure(tmp_path):
    own = ["--policies", "adamw_torch", "aesam", "--seeds", "1", "2", "--output_dir", str(tmp_path)]
    samples = ["--max_train_samples", "128", "--max_eval_samples", "32", "--max_predict_samples", "64"]
    # The config evaluates during training and keeps the checkpoint its validation selects (saves at each evaluation).
    during = ["--eval_steps", "3", "--save_steps", "3", "--eval_train_samples", "32"]
    example = ["--max_steps", "6", *samples, *during, "--per_device_train_batch_size", "16", *QUIET]
    cmd = [sys.executable, "-m", "benchmarks.compare", *own, "--", *example]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| (adamw_torch|aesam) \|.*$", out.stdout, flags=re.M)}
    assert set(rows) == {"adamw_torch", "aesam"}
    assert "| 0.00 | 6 | 1.00 |" in rows["adamw_torch"]  # no SAM step, one pass per step
    head = "| selected checkpoint: test_accuracy (%) | last step: test_accuracy (%) | selected step | fit of training"
    assert head in out.stdout
    runs = (tmp_path / "results.csv").read_text().splitlines()
    assert len(runs) == 1 + 4 and runs[0].startswith("policy,optim,seed,run_dir,test_accuracy,eval_accuracy")
    assert not list(tmp_path.glob("*/seed*/checkpoint-*"))  # the selection's checkpoints do not outlive the run
    results_md = (tmp_path / "results.md").read_text()
    assert results_md.count("| aesam |") == 1
    # No `sam` run, so no paragraph: it reads SAM's gain against the baseline.
    assert "Reading:" not in results_md and "2 at a time, 1 torch thread(s) each" in out.stdout

    from PIL import Image

    with Image.open(tmp_path / "compare.png") as figure:
        assert figure.size[0] > 1000 and figure.size[1] > 400  # two panels, legible at 120 dpi
    trace = decision_trace(tmp_path / "aesam" / "seed1")
    assert len(trace["step"]) == 6  # every step's |g|^2 and threshold were logged
    # The trace is the rule itself: SAM exactly when |g|^2 >= threshold.
    assert [x >= c for x, c in zip(trace["grad_norm_sq"], trace["threshold"])] == [d == 1.0 for d in trace["sam"]]


def test_compare_reuses_a_finished_run_only_if_command_config_and_code_are_unchanged(tmp_path, monkeypatch):
    """An interrupted comparison resumes, but never from a run made with other flags, config or code."""
    launches = []

    def fake_run(cmd, **kwargs):  # stands in for the example script: writes what a finished run leaves
        run_dir = pathlib.Path(cmd[cmd.index("--output_dir") + 1])
        launches.append(cmd)
        results = {"test_accuracy": 0.5, "sam/fraction_total": 0.0, "sam/passes": 4.0, "train_runtime": 1.0}
        (run_dir / "all_results.json").write_text(json.dumps(results))
        (run_dir / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(runner.subprocess, "run", fake_run)
    image = runner.Runner("image", str(tmp_path))
    row = image.run("adamw_torch", 1, ["--max_steps", "4"])
    assert row["passes_per_step"] == 1.0 and len(launches) == 1
    # The example script is launched with the task's one experiment config and the policy as a flag.
    assert launches[0][1:3] == [str(runner.TASKS["image"][0]), str(runner.TASKS["image"][1])]
    assert launches[0][launches[0].index("--optim") + 1] == "adamw_torch"
    assert row["wall_time"] > 0  # what the run cost is recorded next to it...
    (tmp_path / "adamw_torch" / "seed1" / runner.WALL_TIME_FILE).write_text(json.dumps({"wall_time_s": 7.0}))
    reused = image.run("adamw_torch", 1, ["--max_steps", "4"])
    assert len(launches) == 1  # same command, config and code: reused
    assert reused["wall_time"] == 7.0  # ...and a reused run reports what it cost when it was made
    image.run("adamw_torch", 1, ["--max_steps", "5"])
    assert len(launches) == 2  # other flags: run again
    fingerprint = runner.code_fingerprint()
    assert set(fingerprint) == {"code_sha256", *runner.RUN_PACKAGES}
    monkeypatch.setattr(runner, "code_fingerprint", lambda task=None: {**fingerprint, "code_sha256": "changed"})
    image.run("adamw_torch", 1, ["--max_steps", "5"])
    assert len(launches) == 3  # the library or an example script changed: run again


def test_a_run_that_logs_nothing_of_aesam_hf_counts_one_pass_per_step_and_no_sam_step(tmp_path, monkeypatch):
    """A stock optimizer name (`--optim adamw_torch`) behaves like the stock Trainer and logs no `sam/*` key."""

    def fake_run(cmd, **kwargs):
        run_dir = pathlib.Path(cmd[cmd.index("--output_dir") + 1])
        (run_dir / "all_results.json").write_text(json.dumps({"test_accuracy": 0.5, "train_runtime": 1.0}))
        (run_dir / "trainer_state.json").write_text(json.dumps({"global_step": 8, "log_history": []}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(runner.subprocess, "run", fake_run)
    row = runner.Runner("image", str(tmp_path)).run("adamw_torch", 1, [])
    assert (row["passes"], row["passes_per_step"], row["sam_fraction"]) == (8, 1.0, 0.0)
    # Nothing selected, no last-step score: both are missing, not copied from the final score.
    assert math.isnan(row["selected_step"]) and math.isnan(row["test_last_accuracy"])


def test_the_fit_of_the_training_labels_is_the_last_step_s_not_the_selected_checkpoint_s(tmp_path, monkeypatch):
    """After `load_best_model_at_end`, the evaluation after training scores the training subset again, with the
    selected checkpoint, at the same step number: the row keeps the one made during training."""
    history = [
        {"step": 4, "train_subset_accuracy": 0.6},
        {"step": 8, "train_subset_accuracy": 0.9},  # the last step, during training
        {"step": 8, "train_subset_accuracy": 0.6},  # the selected (step 4) model, after training
    ]

    def fake_run(cmd, **kwargs):
        run_dir = pathlib.Path(cmd[cmd.index("--output_dir") + 1])
        results = {"test_accuracy": 0.5, "test_last_accuracy": 0.4, "train_runtime": 1.0}
        (run_dir / "all_results.json").write_text(json.dumps(results))
        state = {"global_step": 8, "best_global_step": 4, "log_history": history}
        (run_dir / "trainer_state.json").write_text(json.dumps(state))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(runner.subprocess, "run", fake_run)
    row = runner.Runner("image", str(tmp_path)).run("sam", 1, [])
    assert (row["train_noisy_accuracy"], row["selected_step"], row["test_last_accuracy"]) == (0.9, 4, 0.4)


def test_code_fingerprint_covers_the_library_and_each_tasks_script_and_data_builder():
    def covered(task):
        return {p.relative_to(ROOT).as_posix() for p in runner.fingerprinted_files(task)}

    library = {"aesam_hf/trainer.py", "aesam_hf/callbacks.py", "benchmarks/data.py"}
    image = {"examples/run_image_classification.py", "benchmarks/fashion_mnist.py"}
    text = {"examples/run_glue.py", "benchmarks/fortunes.py"}
    assert library | image <= covered("image") and not text & covered("image")
    assert library | text <= covered("glue") and not image & covered("glue")
    assert library | image | text <= covered(None)
    assert not any(path.startswith("benchmarks/runner") for path in covered(None))  # the launcher is not what trains
    # A change to the text task's code leaves the image runs' fingerprint as it was.
    assert runner.code_fingerprint("image") != runner.code_fingerprint("glue") != runner.code_fingerprint()


def test_runner_arguments_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="task"):
        runner.Runner("audio", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="config"):
        runner.Runner("image", str(tmp_path), config=str(tmp_path / "missing.json"))


def test_compare_help():
    cmd = [sys.executable, "-m", "benchmarks.compare", "--help"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--policies" in out.stdout
