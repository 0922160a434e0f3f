"""`aesam-run`: run a script or a module written for `transformers.Trainer`, unchanged, with the SAM policies of aesam_hf.

    aesam-run run_glue.py --model_name_or_path ... --optim aesam --sam_rho 0.1 ...
    aesam-run -m trl.scripts.sft --model_name_or_path ... --dataset_name ... --optim sam ...
    aesam-run -m trl.cli.main sft --model_name_or_path ... --optim sam ...      # `trl sft ...`
    python -m aesam_hf.run run_summarization.py ... --optim sam --predict_with_generate
    torchrun --nproc_per_node 2 -m aesam_hf.run run_glue.py ...
    accelerate launch --config_file configs/accelerate/multi_cpu.yaml -m aesam_hf.run run_glue.py ...

While the script runs, the classes it gets from transformers are aesam_hf's: `TrainingArguments` is `AESAMConfig`,
`Trainer` is `AESAMTrainer`, `Seq2SeqTrainingArguments` is `AESAMSeq2SeqConfig` and `Seq2SeqTrainer` is
`AESAMSeq2SeqTrainer`, in the `transformers` package and in the modules that define them. With trl installed, TRL's
`SFTConfig` / `SFTTrainer` and `DPOConfig` / `DPOTrainer` are the pairs of `aesam_hf.integrations.trl` (in `trl`,
`trl.trainer` and their modules), and TRL's CLI starts its training processes under the launcher. The script's own
`HfArgumentParser` then takes `--optim aesam` and every `sam_*` flag, and a stock optimizer name keeps its stock
meaning (plain ERM).

`aesam-run SCRIPT ARGS` runs the script as `python SCRIPT ARGS` would; `aesam-run -m MODULE ARGS` runs the module as
`python -m MODULE ARGS` would (`__main__`, `sys.argv[0]` its file, the working directory first on `sys.path`). The
exit status is the script's or the module's. The limits (what is and is not replaced) are in the README, "Stock
scripts: aesam-run".
"""

import argparse
import contextlib
import functools
import importlib
import importlib.util
import os
import runpy
import sys
from collections.abc import Callable, Iterator

from transformers.utils import logging

from .config import AESAMConfig
from .integrations.pairs import AESAMSeq2SeqConfig, AESAMSeq2SeqTrainer
from .policies import POLICIES
from .teardown import exit_gloo_process
from .trainer import AESAMTrainer


logger = logging.get_logger(__name__)

# A replaced name -> (the modules a script may import it from, what the script gets instead).
Replacements = dict[str, tuple[tuple[str, ...], object]]

TRANSFORMERS_REPLACEMENTS: Replacements = {
    "TrainingArguments": (("transformers", "transformers.training_args"), AESAMConfig),
    "Trainer": (("transformers", "transformers.trainer"), AESAMTrainer),
    "Seq2SeqTrainingArguments": (("transformers", "transformers.training_args_seq2seq"), AESAMSeq2SeqConfig),
    "Seq2SeqTrainer": (("transformers", "transformers.trainer_seq2seq"), AESAMSeq2SeqTrainer),
}


def _trl_replacements() -> Replacements:
    """TRL's SFT and DPO pairs -> `aesam_hf.integrations.trl`'s, and TRL's CLI launching under aesam-run.

    Empty without trl; built when a run starts, so that importing this module does not import trl.
    """
    if importlib.util.find_spec("trl") is None:
        return {}
    try:
        from .integrations import trl as aesam_trl
    except ImportError as error:  # trl older than the integration needs: its scripts keep the stock classes
        logger.warning(f"aesam-run leaves TRL's classes as they are: {error}")
        return {}
    from trl.cli import accelerate_launcher

    def owners(module: str) -> tuple[str, ...]:
        # `from trl import SFTConfig` (TRL's scripts), `from trl.trainer import ...`, and the defining module.
        return ("trl", "trl.trainer", f"trl.trainer.{module}")

    return {
        "SFTConfig": (owners("sft_config"), aesam_trl.AESAMSFTConfig),
        "SFTTrainer": (owners("sft_trainer"), aesam_trl.AESAMSFTTrainer),
        "DPOConfig": (owners("dpo_config"), aesam_trl.AESAMDPOConfig),
        "DPOTrainer": (owners("dpo_trainer"), aesam_trl.AESAMDPOTrainer),
        "launch_training_script": (
            ("trl.cli.accelerate_launcher",),
            _launched_under_aesam_run(accelerate_launcher.launch_training_script),
        ),
    }


def _launched_under_aesam_run(launch_training_script: Callable) -> Callable:
    """TRL's `launch_training_script` (`trl sft`, `trl dpo`, ...), each process it starts running under aesam-run.

    TRL's CLI parses the arguments in this process (with the replaced configs: a bad `--sam_*` value stops here), then
    has `accelerate launch` start `trl/scripts/<command>.py` in fresh interpreters, which this process's replacements do
    not reach. So each of them runs `python -m aesam_hf.run <command>.py ARGS` instead; accelerate's `--module` is
    made for that, and TRL takes the `launch_command_fn` it calls as an argument.
    """
    from accelerate.commands.launch import launch_command

    def launch_command_under_aesam_run(args: argparse.Namespace) -> None:
        args.training_script_args = [args.training_script, *args.training_script_args]
        # By name: under `python -m aesam_hf.run`, this module's `__name__` is `__main__`.
        args.training_script, args.module = "aesam_hf.run", True
        launch_command(args)

    return functools.partial(launch_training_script, launch_command_fn=launch_command_under_aesam_run)


def replacements() -> Replacements:
    """What `aesam_classes` replaces: the transformers names, and TRL's when trl (>= 1.16) is installed."""
    return {**TRANSFORMERS_REPLACEMENTS, **_trl_replacements()}


@contextlib.contextmanager
def aesam_classes() -> Iterator[None]:
    """Inside the block, `transformers.Trainer` (and every other name of `replacements()`) is aesam_hf's; restored after.

    Every owner module is imported before any name is replaced, so the subclasses that transformers and TRL define
    (`Seq2SeqTrainer`, TRL's `_BaseConfig` / `_BaseTrainer` and the KTO, GRPO, ... classes built on them) keep their
    stock bases; only what is imported inside the block sees the replacements.
    """
    table = replacements()
    logger.info(f"Replacing {', '.join(table)} with aesam_hf's.")
    owners = {name: [importlib.import_module(module) for module in modules] for name, (modules, _) in table.items()}
    saved = []
    try:
        for name, (_, replacement) in table.items():
            for owner in owners[name]:
                saved.append((owner, name, getattr(owner, name)))
                setattr(owner, name, replacement)
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


@contextlib.contextmanager
def _as_main(argv: list[str], path0: str) -> Iterator[None]:
    """`sys.argv` and `sys.path[0]` as python sets them for `__main__`; both restored after."""
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = argv
    sys.path.insert(0, path0)
    try:
        yield
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def _why_not_runnable(module: str) -> str | None:
    """Why `python -m module` would stop before running it (in python's words), or None when it would run."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as error:  # a missing parent package, or one that fails on import
        return f"{type(error).__name__}: {error}"
    if spec is None:
        return f"No module named {module!r}"
    if spec.submodule_search_locations is not None:  # `python -m package` runs `package.__main__`
        if _why_not_runnable(f"{module}.__main__") is not None:
            return f"{module!r} is a package and cannot be directly executed (it has no __main__ module)"
    return None


def _parser() -> argparse.ArgumentParser:
    policies = ", ".join(name.value for name in POLICIES)
    parser = argparse.ArgumentParser(
        prog="aesam-run",
        usage="%(prog)s [-h] (SCRIPT | -m MODULE) [ARGS ...]",
        description=(
            "Run a script or a module written for transformers.Trainer / TrainingArguments (or Seq2SeqTrainer / "
            "Seq2SeqTrainingArguments, or TRL's SFTTrainer / SFTConfig and DPOTrainer / DPOConfig) unchanged, with "
            f"aesam_hf's classes in their place: it then takes --optim aesam (the policies: {policies}) and every "
            "--sam_* / --aesam_* flag. A stock --optim name (adamw_torch, sgd, ...) still means plain training with "
            "that optimizer."
        ),
        epilog=(
            "TRL: aesam-run -m trl.cli.main sft ARGS (as `trl sft ARGS`) or aesam-run -m trl.scripts.sft ARGS. "
            "Several processes: torchrun --nproc_per_node N -m aesam_hf.run SCRIPT ..., or accelerate launch "
            "--config_file CONFIG -m aesam_hf.run SCRIPT ... . Limits: README, 'Stock scripts: aesam-run'."
        ),
    )
    parser.add_argument(
        "-m",
        dest="module",
        nargs=argparse.REMAINDER,
        help="MODULE [ARGS ...]: run the module as `python -m MODULE ARGS` would (e.g. trl.scripts.sft).",
    )
    parser.add_argument("script", nargs="?", help="The Python script to run, e.g. run_glue.py.")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="Its arguments, passed on unchanged.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `aesam-run` and `python -m aesam_hf.run`. The script's or module's `sys.exit` passes through."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0].startswith("-m") and argv[0] != "-m":  # `-mMODULE`, which python accepts too
        argv = ["-m", argv[0][2:], *argv[1:]]
    parser = _parser()
    args = parser.parse_args(argv)
    if args.module == []:
        parser.error("-m needs the name of a module to run, e.g. `aesam-run -m trl.scripts.sft ARGS`.")
    if args.module is None and args.script is None:
        parser.error("give a script (`aesam-run SCRIPT ARGS`) or a module (`aesam-run -m MODULE ARGS`).")
    if args.module is None and not os.path.isfile(args.script):
        parser.error(f"`script` ({args.script!r}) is not a file; give the path of a Python script.")
    with aesam_classes():
        if args.module is None:
            with _as_main([args.script, *args.script_args], os.path.dirname(os.path.abspath(args.script))):
                runpy.run_path(args.script, run_name="__main__")
            return 0
        module, module_args = args.module[0], args.module[1:]
        # sys.argv[0] is replaced by runpy with the module's file, as `python -m` does.
        with _as_main([module, *module_args], os.getcwd()):
            # Looked up here, as python looks it up: after the working directory goes first on sys.path, and with the
            # classes replaced (a parent package that subclasses Trainer on import builds on aesam_hf's).
            problem = _why_not_runnable(module)
            if problem is not None:
                parser.error(f"cannot run module {module!r}: {problem}.")
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


def cli() -> None:
    """The console script `aesam-run` and `python -m aesam_hf.run`: `main`, then a clean end of a gloo process.

    `main` returns to its caller (tests call it in-process); the command line ends the process, and in a gloo group it
    does so without interpreter finalization, where torch 2.13's gloo teardown can abort a rank (`aesam_hf.teardown`).
    """
    code = main()
    exit_gloo_process(code)
    sys.exit(code)


if __name__ == "__main__":
    cli()
