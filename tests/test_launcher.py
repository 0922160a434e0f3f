"""`aesam-run` / `python -m aesam_hf.run`: stock Trainer scripts (tests/scripts/) and modules (`-m`, TRL's CLI) run
unchanged with the SAM policies.

The scripts are shaped like transformers' examples and import nothing from aesam_hf. What the launcher changed is read
back from what the scripts save: `trainer_state.json` (the `sam/*` logs), `training_args.bin` (the config class and
its fields) and the weights. TRL's `sft` and `dpo` scripts run on a tiny Llama and JSON lines saved here (no Hub).
"""

import configparser
import importlib
import json
import os
import pathlib
import runpy
import subprocess
import sys

import pytest
import torch
import transformers
from distributed.launching import MULTI_CPU_CONFIG, Job, accelerate_cmd
from safetensors.torch import load_file
from testing_utils import require_module

from aesam_hf import AESAMConfig, run
from aesam_hf.integrations import AESAMSeq2SeqConfig
from aesam_hf.policies import POLICIES


ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = pathlib.Path(__file__).resolve().parent / "scripts"
TRAINER_SCRIPT = SCRIPTS / "run_stock_trainer.py"
SEQ2SEQ_SCRIPT = SCRIPTS / "run_stock_seq2seq.py"
QUIET = "--report_to none --disable_tqdm true --use_cpu true --seed 7 --per_device_train_batch_size 8".split()
needs_trl = require_module("trl")


def python(*args: str, cwd: pathlib.Path = ROOT, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """`python ARGS` with this checkout's aesam_hf first on the path, wherever it runs (`cwd`)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, **env}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


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
    assert type(args) is AESAMConfig and args.sam_policy == "aesam"
    assert len(steps) == 3 and all("sam/fraction" in h and "sam/threshold" in h for h in steps)
    assert "sam/passes" in json.loads((tmp_path / "train_results.json").read_text())


@pytest.mark.parametrize("optim", ["sam", "periodic"])
def test_every_policy_and_sam_flag_reaches_the_trainer(tmp_path, optim):
    out = tmp_path / optim
    run.main([str(TRAINER_SCRIPT), *flags(out, "--optim", optim, "--sam_rho", "0.1", "--sam_interval", "2")])
    steps, args = saved(out)
    assert (args.sam_policy, args.sam_rho, args.sam_interval) == (optim, 0.1, 2)
    expected = [1.0, 1.0, 1.0] if optim == "sam" else [1.0, 0.0, 1.0]
    assert [h["sam/fraction"] for h in steps] == expected


def test_a_stock_optimizer_name_trains_exactly_as_the_unmodified_script(tmp_path):
    run.main([str(TRAINER_SCRIPT), *flags(tmp_path / "launched", "--optim", "adamw_torch")])
    with run._as_main([str(TRAINER_SCRIPT), *flags(tmp_path / "stock", "--optim", "adamw_torch")], str(SCRIPTS)):
        runpy.run_path(str(TRAINER_SCRIPT), run_name="__main__")
    steps, args = saved(tmp_path / "launched")
    # A stock name is the stock Trainer: the config class is ours, but nothing of ours runs or logs.
    assert type(args) is AESAMConfig and args.sam_policy is None
    assert len(steps) == 0 or not any(k.startswith("sam/") for h in steps for k in h)
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
    owners = [(module, name) for name, (modules, _) in run.replacements().items() for module in modules]
    originals = {(module, name): getattr(importlib.import_module(module), name) for module, name in owners}
    with pytest.raises(ValueError):  # the config refuses a bad flag: the classes come back all the same
        run.main([str(TRAINER_SCRIPT), "--output_dir", str(tmp_path), "--optim", "no_such_policy"])
    for (module, name), original in originals.items():
        assert getattr(importlib.import_module(module), name) is original, f"{module}.{name}"
    assert transformers.Seq2SeqTrainer.__mro__[1] is transformers.Trainer  # transformers' own subclass kept its base


def test_launcher_help_lists_m_and_every_policy():
    job = python("-m", "aesam_hf.run", "--help", timeout=120)
    assert job.returncode == 0 and "usage: aesam-run [-h] (SCRIPT | -m MODULE) [ARGS ...]" in job.stdout
    assert "--optim aesam" in job.stdout and "\n  -m " in job.stdout
    missing = [name.value for name in POLICIES if name.value not in job.stdout]
    assert not missing, job.stdout


def test_a_missing_script(capsys):
    with pytest.raises(SystemExit) as exited:
        run.main(["no_such_script.py"])
    assert exited.value.code == 2
    assert "`script` ('no_such_script.py') is not a file" in capsys.readouterr().err


# ---- -m MODULE: as `python -m MODULE` ----


def test_m_runs_a_module_as_python_m_does(tmp_path):
    """Same argv, same sys.path[0], same exit status as `python -m`; only `transformers.Trainer` differs."""
    stock = python("-m", "print_main", "3", "--flag", "x", cwd=SCRIPTS)
    launched = python("-m", "aesam_hf.run", "-m", "print_main", "3", "--flag", "x", cwd=SCRIPTS)
    assert (stock.returncode, launched.returncode) == (3, 3), launched.stderr[-3000:]
    seen_stock, seen_launched = json.loads(stock.stdout), json.loads(launched.stdout.splitlines()[-1])
    assert seen_stock["argv"] == [str(SCRIPTS / "print_main.py"), "3", "--flag", "x"]
    assert seen_launched["argv"] == seen_stock["argv"] and seen_launched["path0"] == seen_stock["path0"]
    assert seen_stock["trainer"] == "transformers.trainer.Trainer"
    assert seen_launched["trainer"] == "aesam_hf.trainer.AESAMTrainer"


def test_m_trains_a_stock_script_run_as_a_module(tmp_path, monkeypatch):
    monkeypatch.chdir(SCRIPTS)  # as `python -m`, the working directory is where the module is found
    run.main(["-mrun_stock_trainer", *flags(tmp_path, "--optim", "sam")])  # `-mMODULE` as python takes it
    steps, args = saved(tmp_path)
    assert type(args) is AESAMConfig and [h["sam/passes"] for h in steps] == [2.0, 4.0, 6.0]


def test_m_with_a_missing_module_exits_non_zero_and_says_why():
    job = python("-m", "aesam_hf.run", "-m", "no_such_module_here", "--flag", timeout=120)
    assert job.returncode == 2
    assert "aesam-run: error: cannot run module 'no_such_module_here': No module named 'no_such_module_here'" in (
        job.stderr
    ), job.stderr[-2000:]


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["-m", "no_such_package.sub"],
            "cannot run module 'no_such_package.sub': ModuleNotFoundError: No module named",
        ),
        (["-m", "aesam_hf.integrations"], "'aesam_hf.integrations' is a package and cannot be directly executed"),
        (["-m"], "-m needs the name of a module to run"),
        ([], "give a script (`aesam-run SCRIPT ARGS`) or a module (`aesam-run -m MODULE ARGS`)"),
    ],
)
def test_m_errors_name_the_module_and_the_reason(capsys, argv, message):
    with pytest.raises(SystemExit) as exited:
        run.main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


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
    # No --max_steps: 64 examples, 8 per rank and step, one epoch = 4 steps on 2 ranks (8 on one). `--use_cpu`: the
    # yaml's `use_cpu` does not reach the workers.
    script_flags = ["--output_dir", str(tmp_path), "--do_train", "--optim", "sam", "--num_train_epochs", "1"]
    script_flags += ["--use_cpu", "true"]
    script_flags += ["--report_to", "none", "--disable_tqdm", "true", "--per_device_train_batch_size", "8"]
    script_flags += ["--ddp_timeout", "60"]
    cmd = accelerate_cmd("aesam_hf.run", [str(TRAINER_SCRIPT), *script_flags], config_file=MULTI_CPU_CONFIG)
    cmd.insert(cmd.index("aesam_hf.run"), "-m")
    job = Job(cmd).wait(timeout=240)
    assert job.returncode == 0, job.output[-3000:]
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert state["log_history"][-1]["sam/passes"] == 8.0


# ---- TRL: its classes replaced, its CLI launching under aesam-run ----


@pytest.fixture(scope="module")
def tiny_trl_files(tmp_path_factory) -> dict[str, pathlib.Path]:
    """A tiny Llama with its tokenizer, saved like a Hub checkpoint, and SFT / DPO data as JSON lines (no Hub)."""
    from test_trl import sentences, tiny_llama, tiny_tokenizer

    root = tmp_path_factory.mktemp("tiny-trl")
    tiny_llama().save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    rows = {
        "sft": [{"text": s} for s in sentences(32, seed=0)],
        "dpo": [
            {"prompt": p, "chosen": c, "rejected": r}
            for p, c, r in zip(sentences(16, 1), sentences(16, 2), sentences(16, 3), strict=True)
        ],
    }
    for name, records in rows.items():
        (root / name).mkdir()  # `load_dataset(DIR)` names the split after the file: `train`
        (root / name / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"model": root / "model", "sft": root / "sft", "dpo": root / "dpo"}


def trl_flags(files: dict, command: str, out: pathlib.Path, optim: str) -> list[str]:
    return [
        *["--model_name_or_path", str(files["model"]), "--dataset_name", str(files[command])],
        *["--optim", optim, "--max_steps", "2", "--output_dir", str(out), "--report_to", "none", "--use_cpu", "true"],
        *["--logging_steps", "1", "--per_device_train_batch_size", "4", "--disable_tqdm", "true", "--seed", "7"],
    ]


def assert_sam_ran(out: pathlib.Path, passes: list[float]) -> None:
    """The run's checkpoint logs SAM passes and holds the SAM controller's state."""
    checkpoint = out / "checkpoint-2"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    steps = [h for h in state["log_history"] if "loss" in h]
    assert [h["sam/passes"] for h in steps] == passes and all(h["sam/fraction_total"] == 1.0 for h in steps)
    assert (checkpoint / "sam_state.pt").is_file()


@needs_trl
def test_trl_names_are_the_integration_pairs_while_a_run_lasts():
    import trl
    import trl.trainer.sft_config

    from aesam_hf.integrations import trl as integration

    stock = trl.SFTConfig
    with run.aesam_classes():
        assert trl.SFTConfig is trl.trainer.SFTConfig is trl.trainer.sft_config.SFTConfig is integration.AESAMSFTConfig
        assert trl.SFTTrainer is integration.AESAMSFTTrainer and trl.DPOTrainer is integration.AESAMDPOTrainer
        assert trl.DPOConfig is integration.AESAMDPOConfig
        # TRL's other trainers build on its own base classes, imported before the replacement: they stay stock.
        assert not issubclass(trl.KTOConfig, AESAMConfig)
    assert trl.SFTConfig is stock and integration.AESAMSFTConfig.__mro__.count(stock) == 1


@needs_trl
@pytest.mark.parametrize("command", ["sft", "dpo"])
def test_m_trl_script_trains_with_sam(tiny_trl_files, tmp_path, command):
    """`aesam-run -m trl.scripts.sft ...`: TRL's own script, in this process, with the integration's pair."""
    from aesam_hf.integrations import trl as integration

    run.main(["-m", f"trl.scripts.{command}", *trl_flags(tiny_trl_files, command, tmp_path, "sam")])
    assert_sam_ran(tmp_path, [2.0, 4.0])
    args = torch.load(tmp_path / "training_args.bin", weights_only=False)
    assert type(args) is getattr(integration, f"AESAM{command.upper()}Config") and args.sam_policy == "sam"


@needs_trl
def test_trl_cli_sft_trains_with_sam(tiny_trl_files, tmp_path):
    """`aesam-run -m trl.cli.main sft ...` is `trl sft ...`: TRL's CLI starts `trl/scripts/sft.py` with `accelerate
    launch`, in a fresh interpreter that runs it under aesam-run."""
    flags = trl_flags(tiny_trl_files, "sft", tmp_path / "out", "sam")
    job = python("-m", "aesam_hf.run", "-m", "trl.cli.main", "sft", *flags, timeout=400, HF_HOME=str(tmp_path / "hf"))
    assert job.returncode == 0, job.stderr[-3000:]
    assert_sam_ran(tmp_path / "out", [2.0, 4.0])


@needs_trl
def test_trl_cli_stops_on_a_bad_sam_flag_before_launching(tiny_trl_files, tmp_path):
    """TRL's CLI parses the arguments in the launcher's process, with the replaced config: the check runs there."""
    flags = [*trl_flags(tiny_trl_files, "sft", tmp_path / "out", "sam"), "--sam_rho", "-1"]
    with pytest.raises(ValueError, match="sam_rho"):
        run.main(["-m", "trl.cli.main", "sft", *flags])
    assert not (tmp_path / "out").exists()
