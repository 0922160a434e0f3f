"""`aesam-run` / `python -m aesam_hf.run`: stock Trainer scripts (tests/scripts/) run unchanged with the SAM policies.

The scripts are shaped like transformers' examples and import nothing from aesam_hf. What the launcher changed is read
back from what the scripts save: `trainer_state.json` (the `sam/*` logs), `training_args.bin` (the config class and
its fields) and the weights.
"""

import configparser
import json
import pathlib
import runpy
import subprocess
import sys

import pytest
import torch
import transformers
from distributed.launching import MULTI_CPU_CONFIG, Job, accelerate_cmd
from safetensors.torch import load_file

from aesam_hf import AESAMConfig, run
from aesam_hf.integrations import AESAMSeq2SeqConfig


ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = pathlib.Path(__file__).parent / "scripts"
TRAINER_SCRIPT = SCRIPTS / "run_stock_trainer.py"
SEQ2SEQ_SCRIPT = SCRIPTS / "run_stock_seq2seq.py"
QUIET = "--report_to none --disable_tqdm true --use_cpu true --seed 7 --per_device_train_batch_size 8".split()


def flags(out: pathlib.Path, *extra: str) -> list[str]:
    return ["--output_dir", str(out), "--do_train", "--max_steps", "3", "--logging_steps", "1", *QUIET, *extra]


def saved(out: pathlib.Path) -> tuple[list[dict], object]:
    """The per-step log entries and the training arguments the script saved."""
    state = json.loads((out / "trainer_state.json").read_text())
    steps = [h for h in state["log_history"] if "loss" in h]
    return steps, torch.load(out / "training_args.bin", weights_only=False)


def test_an_unmodified_script_rejects_optim_aesam(tmp_path):
    """Why the launcher exists: the stock parser knows only the stock optimizers."""
    cmd = [sys.executable, str(TRAINER_SCRIPT), *flags(tmp_path, "--optim", "aesam")]
    job = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert job.returncode != 0
    assert "argument --optim: invalid choice: 'aesam'" in job.stderr, job.stderr[-2000:]


def test_python_m_aesam_hf_run_trains_a_stock_script_with_aesam(tmp_path):
    cmd = [sys.executable, "-m", "aesam_hf.run", str(TRAINER_SCRIPT), *flags(tmp_path, "--optim", "aesam")]
    job = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert job.returncode == 0, job.stderr[-3000:]
    steps, args = saved(tmp_path)
    assert type(args) is AESAMConfig and args.optim == "aesam"
    assert len(steps) == 3 and all("sam/fraction" in h and "sam/threshold" in h for h in steps)
    assert "sam/passes" in json.loads((tmp_path / "train_results.json").read_text())


@pytest.mark.parametrize("optim", ["sam", "periodic"])
def test_every_policy_and_sam_flag_reaches_the_trainer(tmp_path, optim):
    out = tmp_path / optim
    run.main([str(TRAINER_SCRIPT), *flags(out, "--optim", optim, "--sam_rho", "0.1", "--sam_interval", "2")])
    steps, args = saved(out)
    assert (args.optim, args.sam_rho, args.sam_interval) == (optim, 0.1, 2)
    expected = [1.0, 1.0, 1.0] if optim == "sam" else [1.0, 0.0, 1.0]
    assert [h["sam/fraction"] for h in steps] == expected


def test_a_stock_optimizer_name_trains_exactly_as_the_unmodified_script(tmp_path):
    run.main([str(TRAINER_SCRIPT), *flags(tmp_path / "launched", "--optim", "adamw_torch")])
    with run._as_main(str(TRAINER_SCRIPT), flags(tmp_path / "stock", "--optim", "adamw_torch")):
        runpy.run_path(str(TRAINER_SCRIPT), run_name="__main__")
    steps, args = saved(tmp_path / "launched")
    assert type(args) is AESAMConfig and [h["sam/fraction"] for h in steps] == [0.0, 0.0, 0.0]
    _, stock_args = saved(tmp_path / "stock")
    assert type(stock_args) is transformers.TrainingArguments
    ours, stock = (
        load_file(tmp_path / "launched" / "model.safetensors"),
        load_file(tmp_path / "stock" / "model.safetensors"),
    )
    assert ours.keys() == stock.keys()
    for name, tensor in stock.items():
        assert torch.equal(ours[name], tensor), name


def test_a_seq2seq_script_trains_with_sam_and_evaluates_with_generate(tmp_path):
    extra = ["--optim", "sam", "--do_eval", "--predict_with_generate", "--generation_max_length", "8"]
    run.main([str(SEQ2SEQ_SCRIPT), *flags(tmp_path, *extra)])
    steps, args = saved(tmp_path)
    assert type(args) is AESAMSeq2SeqConfig and args.predict_with_generate and args.generation_max_length == 8
    assert [h["sam/passes"] for h in steps] == [2.0, 4.0, 6.0]
    assert "eval_exact_match" in json.loads((tmp_path / "eval_results.json").read_text())


def test_a_script_that_subclasses_trainer_gets_the_sam_step(tmp_path):
    script = tmp_path / "run_subclass.py"
    script.write_text(
        (TRAINER_SCRIPT.read_text())
        .replace("trainer = Trainer(", "trainer = MyTrainer(")
        .replace("def main():", "class MyTrainer(Trainer):\n    pass\n\n\ndef main():")
    )
    run.main([str(script), *flags(tmp_path / "out", "--optim", "sam")])
    steps, _ = saved(tmp_path / "out")
    assert [h["sam/passes"] for h in steps] == [2.0, 4.0, 6.0]


def test_the_classes_are_restored_after_the_script(tmp_path):
    originals = {name: getattr(transformers, name) for name in run.REPLACEMENTS}
    with pytest.raises(SystemExit):  # the script's parser exits on a bad flag: the classes come back all the same
        run.main([str(TRAINER_SCRIPT), "--output_dir", str(tmp_path), "--optim", "no_such_policy"])
    for name, (module_name, _) in run.REPLACEMENTS.items():
        assert getattr(transformers, name) is originals[name]
        assert getattr(sys.modules[module_name], name) is originals[name]
    assert transformers.Seq2SeqTrainer.__mro__[1] is transformers.Trainer  # transformers' own subclass kept its base


def test_launcher_help_and_a_missing_script(capsys):
    cmd = [sys.executable, "-m", "aesam_hf.run", "--help"]
    job = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert job.returncode == 0 and "usage: aesam-run" in job.stdout and "--optim aesam" in job.stdout
    with pytest.raises(SystemExit):
        run.main(["no_such_script.py"])
    assert "`script` ('no_such_script.py') is not a file" in capsys.readouterr().err


def test_aesam_run_is_a_console_script(tmp_path):
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert "aesam-run = aesam_hf.run:cli" in setup["options.entry_points"]["console_scripts"]
    executable = pathlib.Path(sys.executable).parent / "aesam-run"
    if not executable.is_file():
        pytest.skip("aesam-run is not installed in this environment (reinstall the package to create it)")
    job = subprocess.run(
        [str(executable), str(TRAINER_SCRIPT), *flags(tmp_path, "--optim", "sam")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    assert [h["sam/passes"] for h in saved(tmp_path)[0]] == [2.0, 4.0, 6.0]


@pytest.mark.distributed
def test_accelerate_launch_runs_the_launcher_on_two_cpu_processes(tmp_path):
    # No --use_cpu and no --max_steps: 64 examples, 8 per rank and step, one epoch = 4 steps on 2 ranks (8 on one).
    script_flags = ["--output_dir", str(tmp_path), "--do_train", "--optim", "sam", "--num_train_epochs", "1"]
    script_flags += ["--report_to", "none", "--disable_tqdm", "true", "--per_device_train_batch_size", "8"]
    script_flags += ["--ddp_timeout", "60"]
    cmd = accelerate_cmd("aesam_hf.run", [str(TRAINER_SCRIPT), *script_flags], config_file=MULTI_CPU_CONFIG)
    cmd.insert(cmd.index("aesam_hf.run"), "-m")
    job = Job(cmd).wait(timeout=240)
    assert job.returncode == 0, job.output[-3000:]
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert state["log_history"][-1]["sam/passes"] == 8.0
