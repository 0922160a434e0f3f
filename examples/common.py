"""What the example scripts share: one experiment JSON plus flag overrides, logging set-up, checkpoint detection.

transformers' examples take either flags or a single `.json` file. Ours also take a JSON file *followed by* flags, so
that an experiment config can be reused with one thing changed:

    python examples/run_glue.py configs/experiments/glue_fortunes_minilm_aesam.json --seed 43 --optim sam
"""

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import transformers
from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint


logger = logging.getLogger(__name__)


def json_to_flags(config: dict[str, Any]) -> list[str]:
    """The command-line flags that say what `config` says, in the spelling `HfArgumentParser` reads back.

    Lists become several values after one flag (`nargs="+"`), booleans `true`/`false`, dicts a JSON string (the
    Trainer's `*_kwargs` fields take one), and `null` is left out so the field keeps its default.
    """
    flags = []
    for key, value in config.items():
        if value is None:
            continue
        if isinstance(value, bool):
            flags += [f"--{key}", str(value).lower()]
        elif isinstance(value, list):
            flags += [f"--{key}", *(str(v) for v in value)]
        elif isinstance(value, dict):
            flags += [f"--{key}", json.dumps(value)]
        else:
            flags += [f"--{key}", str(value)]
    return flags


def parse_example_args(parser: HfArgumentParser, argv: list[str] | None = None) -> tuple:
    """Parse `[config.json] [--flag value ...]` into the parser's dataclasses; later flags override the file.

    Unknown keys, in the file or on the command line, are an error naming them, as with a plain
    `HfArgumentParser`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith(".json"):
        path = Path(argv[0])
        if not path.is_file():
            raise FileNotFoundError(f"experiment config {str(path)!r} not found (first argument, a .json file).")
        config = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError(f"experiment config {str(path)!r} must hold one JSON object of argument names to values.")
        argv = json_to_flags(config) + argv[1:]
    return parser.parse_args_into_dataclasses(args=argv)


def setup_logging(training_args: TrainingArguments) -> None:
    """The transformers examples' logging: INFO on the main process, warnings only on the others."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        # The main process logs at INFO (unless `--log_level` says otherwise), like the transformers examples.
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    logging.getLogger("__main__").setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.warning(
        f"Process rank: {training_args.process_index} of {training_args.world_size}, device: {training_args.device}, "
        f"n_gpu: {training_args.n_gpu}, distributed training: {training_args.parallel_mode.value == 'distributed'}, "
        f"mixed precision: {'bf16' if training_args.bf16 else 'fp16' if training_args.fp16 else 'no'}"
    )


def detect_last_checkpoint(training_args: TrainingArguments) -> str | None:
    """The last `checkpoint-*` in `output_dir` when training would start there again: the run resumes from it.

    As in the transformers examples; an explicit `--resume_from_checkpoint` wins.
    """
    if not (training_args.do_train and os.path.isdir(training_args.output_dir)):
        return None
    last_checkpoint = get_last_checkpoint(training_args.output_dir)
    if last_checkpoint is not None and training_args.resume_from_checkpoint is None:
        logger.info(
            f"Checkpoint detected, resuming training at {last_checkpoint}. To start from scratch instead, pass "
            "another `--output_dir` or remove this one."
        )
    return last_checkpoint


def resume_checkpoint(training_args: TrainingArguments, last_checkpoint: str | None) -> str | bool | None:
    """What to pass to `trainer.train(resume_from_checkpoint=...)`."""
    return (
        training_args.resume_from_checkpoint if training_args.resume_from_checkpoint is not None else last_checkpoint
    )


def check_max_samples(name: str, value: int | None) -> None:
    """`max_*_samples` must be a positive count when set."""
    if value is not None and value < 1:
        raise ValueError(f"`{name}` ({value}) must be None or >= 1: it is the number of examples kept.")


def check_label_noise(fraction: float) -> None:
    """`label_noise` is the fraction of training labels flipped: at 1 no label would be right."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"`label_noise` ({fraction}) must be in [0, 1): it is the fraction of noisy labels.")


def symmetric_label_noise(labels: np.ndarray, num_classes: int, fraction: float, seed: int) -> np.ndarray:
    """`labels` with `fraction` of them (rounded) replaced by a uniformly random *other* class.

    Symmetric label noise: noisy labels are where SAM-style methods earn their cost, so the examples can add them.
    Exactly `round(fraction * n)` labels change, so the noise level is what was asked, not a draw around it.
    """
    check_label_noise(fraction)
    if num_classes < 2 and fraction > 0:
        raise ValueError(f"`label_noise` ({fraction}) needs at least 2 classes, got {num_classes}.")
    labels = np.array(labels, dtype=np.int64, copy=True)
    rng = np.random.default_rng(seed)
    noisy = rng.choice(labels.size, size=int(round(fraction * labels.size)), replace=False)
    # An offset in 1..K-1 always lands on a different class, each with probability 1 / (K - 1).
    offsets = rng.integers(1, num_classes, size=noisy.size)
    labels[noisy] = (labels[noisy] + offsets) % num_classes
    return labels
