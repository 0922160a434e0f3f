"""`aesam-run`: run a script written for `transformers.Trainer`, unchanged, with the SAM policies of aesam_hf.

    aesam-run run_glue.py --model_name_or_path ... --optim aesam --sam_rho 0.1 ...
    python -m aesam_hf.run run_summarization.py ... --optim sam --predict_with_generate
    torchrun --nproc_per_node 2 -m aesam_hf.run run_glue.py ...
    accelerate launch --config_file configs/accelerate/multi_cpu.yaml -m aesam_hf.run run_glue.py ...

While the script runs, the classes it gets from transformers are aesam_hf's: `TrainingArguments` is `AESAMConfig`,
`Trainer` is `AESAMTrainer`, `Seq2SeqTrainingArguments` is `AESAMSeq2SeqConfig` and `Seq2SeqTrainer` is
`AESAMSeq2SeqTrainer`, in the `transformers` package and in the modules that define them. The script's own
`HfArgumentParser` then takes `--optim aesam` and every `sam_*` flag, and a stock optimizer name keeps its stock
meaning (plain ERM). The script runs as `__main__`, as `python script.py` would run it. The limits (what is and is
not replaced) are in the README, "Stock scripts: aesam-run".
"""

import argparse
import contextlib
import importlib
import os
import runpy
import sys
from collections.abc import Iterator

import transformers
from transformers.utils import logging

from .config import AESAMConfig
from .integrations.pairs import AESAMSeq2SeqConfig, AESAMSeq2SeqTrainer
from .teardown import exit_gloo_process
from .trainer import AESAMTrainer


logger = logging.get_logger(__name__)

# The name a script imports -> (the transformers module that defines it, what the script gets instead).
REPLACEMENTS: dict[str, tuple[str, type]] = {
    "TrainingArguments": ("transformers.training_args", AESAMConfig),
    "Trainer": ("transformers.trainer", AESAMTrainer),
    "Seq2SeqTrainingArguments": ("transformers.training_args_seq2seq", AESAMSeq2SeqConfig),
    "Seq2SeqTrainer": ("transformers.trainer_seq2seq", AESAMSeq2SeqTrainer),
}


@contextlib.contextmanager
def aesam_classes() -> Iterator[None]:
    """Inside the block, `transformers.Trainer` (and the three others) are the aesam_hf classes; restored after.

    The defining modules are imported first, so transformers' own subclasses (`Seq2SeqTrainer`) keep their stock
    bases; only what is imported inside the block sees the replacements.
    """
    saved = []
    for name, (module_name, replacement) in REPLACEMENTS.items():
        module = importlib.import_module(module_name)
        for owner in (transformers, module):
            saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


@contextlib.contextmanager
def _as_main(script: str, args: list[str]) -> Iterator[None]:
    """`sys.argv` and `sys.path` as `python script args...` sets them (the script's folder first); restored after."""
    argv, path = sys.argv[:], sys.path[:]
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        yield
    finally:
        sys.argv, sys.path[:] = argv, path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="aesam-run",
        description=(
            "Run a script written for transformers.Trainer / TrainingArguments (or Seq2SeqTrainer / "
            "Seq2SeqTrainingArguments) unchanged, with AESAMTrainer / AESAMConfig in their place: the script then "
            "takes --optim aesam (sam, random, periodic, looksam, aelooksam, erm) and every --sam_* / --aesam_* flag. "
            "A stock --optim name (adamw_torch, sgd, ...) still means plain training with that optimizer."
        ),
        epilog=(
            "Several processes: torchrun --nproc_per_node N -m aesam_hf.run SCRIPT ..., or accelerate launch "
            "--config_file CONFIG -m aesam_hf.run SCRIPT ... . Limits: README, 'Stock scripts: aesam-run'."
        ),
    )
    parser.add_argument("script", help="The Python script to run, e.g. run_glue.py.")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="Its arguments, passed on unchanged.")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.script):
        parser.error(f"`script` ({args.script!r}) is not a file; give the path of a Python script.")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of `aesam-run` and `python -m aesam_hf.run`. The script's own `sys.exit` passes through."""
    args = parse_args(argv)
    logger.info(f"Running {args.script} with {', '.join(REPLACEMENTS)} replaced by the aesam_hf classes.")
    with aesam_classes(), _as_main(args.script, args.script_args):
        runpy.run_path(args.script, run_name="__main__")
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
