"""Train or fine-tune a ViT image classifier with AE-SAM, SAM or plain AdamW.

transformers' `examples/pytorch/image-classification/run_image_classification.py` with its flags, and with
`AESAMConfig` in place of `TrainingArguments` and `AESAMTrainer` in place of `Trainer`: that is the SAM change, and
`--optim` also takes the SAM policies. Besides it, this copy builds a small ViT for CPU training when no
`--model_name_or_path` is given, takes an experiment JSON followed by flags that override it, scores a `test` split
with `--do_predict`, can watch memorization on part of the training set (`--eval_train_samples`), and uses plain
torch transforms (no torchvision). It needs only installed packages and `aesam_hf`: copy it anywhere.

    # Offline: a 140k-parameter ViT on 2,000 Fashion-MNIST images, 40%% of their labels flipped (`make data`)
    python examples/run_image_classification.py configs/experiments/image_fashion_mnist_noisy.json
    # Online: fine-tune a pretrained ViT on CIFAR-10 from the Hub
    python examples/run_image_classification.py --dataset_name uoft-cs/cifar10 --image_column_name img \
        --model_name_or_path google/vit-base-patch16-224-in21k --do_train --do_eval --optim aesam \
        --output_dir outputs/cifar10-aesam

`--dataset_name` is a Hub dataset or a local dataset folder (e.g. `train/validation/test.parquet`, as
`python -m benchmarks.fashion_mnist` writes them); `--train_dir`/`--validation_dir` are image folders, one subfolder
per class. Without a validation split, `train_val_split` of the training data becomes one.
"""

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F
import transformers
from datasets import ClassLabel, Dataset, DatasetDict, load_dataset
from huggingface_hub import constants as hub_constants
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    EvalPrediction,
    HfArgumentParser,
    ViTConfig,
    ViTImageProcessor,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from aesam_hf import AESAMConfig, AESAMTrainer, exit_gloo_process
from aesam_hf.callbacks import EvalSetCallback, LastModelCallback, TrainSubsetCallback


logger = logging.getLogger(__name__)

# The from-scratch model: a ViT small enough to train on a CPU in minutes (about 140k parameters on 28x28 images).
SMALL_VIT = {
    "patch_size": 7,
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


@dataclass
class DataTrainingArguments:
    """Which images to train and evaluate on."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "A Hub dataset, e.g. `uoft-cs/cifar10`, or a local dataset folder."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The configuration of `dataset_name`."})
    train_dir: str | None = field(
        default=None, metadata={"help": "A folder of training images, one subfolder per class."}
    )
    validation_dir: str | None = field(default=None, metadata={"help": "A folder of validation images, likewise."})
    image_column_name: str = field(default="image", metadata={"help": "The column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "The column holding the class labels."})
    train_val_split: float = field(
        default=0.15, metadata={"help": "Share of the training split held out for validation when there is none."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep this many training examples, drawn at random from `seed`."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep this many validation examples, drawn at random from `seed`."}
    )
    max_predict_samples: int | None = field(
        default=None, metadata={"help": "Keep this many test examples, drawn at random from `seed`."}
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
            "help": "A column of the validation split with the true labels where `label_column_name` is noisy: every "
            "evaluation also scores them, logged as `eval_clean_accuracy` (checkpoints are still selected on the noisy "
            "labels, as a user's own held-out data would be)."
        },
    )
    test_last_model: bool = field(
        default=False,
        metadata={
            "help": "With `--do_predict`: also score the test split with the model of the last step, as "
            "`test_last_accuracy`, before `--load_best_model_at_end` replaces it with the selected checkpoint."
        },
    )
    random_flip: bool = field(default=True, metadata={"help": "Flip training images left-right at random."})

    def __post_init__(self):
        if (self.dataset_name is None) == (self.train_dir is None):
            raise ValueError(
                "Pass exactly one of `--dataset_name` (a Hub dataset or a local dataset folder) and `--train_dir` (an "
                f"image folder); got dataset_name={self.dataset_name!r}, train_dir={self.train_dir!r}."
            )
        if not 0.0 < self.train_val_split < 1.0:
            raise ValueError(f"`train_val_split` ({self.train_val_split}) must be in (0, 1).")
        for name in ("max_train_samples", "max_eval_samples", "max_predict_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` ({value}) must be None or >= 1: it is the number of examples kept.")
        if self.eval_train_samples < 0:
            raise ValueError(f"`eval_train_samples` ({self.eval_train_samples}) must be >= 0 (0: off).")


@dataclass
class ModelArguments:
    """A pretrained model to fine-tune, or a ViT to build from a config."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A pretrained model (Hub id or folder). Unset: a small ViT from scratch (`config_overrides`)."
        },
    )
    config_name: str | None = field(default=None, metadata={"help": "A config to use instead of the model's."})
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "For a model from scratch: `key=value` pairs over the small ViT's config, e.g. "
            "`hidden_size=128,num_hidden_layers=6`."
        },
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "An image processor to use instead of the model's."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloads from the Hub are cached."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model on the Hub."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models and datasets."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run modelling code from the Hub repo (only for repos you trust)."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Load the model even if the classifier head's size differs (new labels)."}
    )

    def __post_init__(self):
        if self.config_overrides is not None and self.model_name_or_path is not None:
            raise ValueError(
                f"`config_overrides` ({self.config_overrides!r}) is for a model built from scratch; it cannot be "
                f"combined with `model_name_or_path` ({self.model_name_or_path!r})."
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


def load_accuracy_metric(cache_dir: str | None = None) -> Callable[[np.ndarray, np.ndarray], dict[str, float]]:
    """`metric(predictions, references) -> {"accuracy": ...}`: `evaluate`'s when it loads, else computed here.

    `evaluate.load` fetches its metric scripts from the Hub. Offline (`HF_HUB_OFFLINE`, as `huggingface_hub` reads
    it) it is not tried at all; when it fails for another reason, the reason is logged once and the run goes on.
    """

    def local(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
        return {"accuracy": float((np.asarray(predictions) == np.asarray(references)).mean())}

    if hub_constants.HF_HUB_OFFLINE:
        logger.info("Offline (HF_HUB_OFFLINE): computing the accuracy locally.")
        return local
    try:
        import evaluate

        metric = evaluate.load("accuracy", cache_dir=cache_dir)
    except Exception as err:  # Hub unreachable, `evaluate` missing: either way the accuracy is computed here
        logger.warning(
            f"`evaluate` could not load the 'accuracy' metric ({type(err).__name__}: {str(err)[:200]}); computing "
            "it locally instead."
        )
        return local
    return lambda predictions, references: {
        k: float(v) for k, v in metric.compute(predictions=predictions, references=references).items()
    }


def true_labels(validation: Dataset, clean_column: str, label_column: str) -> Dataset:
    """The validation split with `clean_column`'s true labels as its labels, numbered as `label_column`'s classes.

    A column with empty values is refused: `load_dataset` gives every split the columns of any of them, so a folder
    whose training split alone holds true labels has the column in validation too, empty, and would score nothing.
    """
    if clean_column not in validation.column_names:
        raise ValueError(
            f"`clean_label_column_name` ({clean_column!r}) is not a column of the validation split (columns: "
            f"{validation.column_names})."
        )
    values = validation[clean_column]
    missing = sum(value is None for value in values)
    if missing:
        raise ValueError(
            f"`clean_label_column_name` ({clean_column!r}) has no value for {missing} of the {len(values)} validation "
            "examples: this validation split carries no true labels to score."
        )
    classes = validation.features[label_column]
    given = validation.features[clean_column]
    if isinstance(given, ClassLabel):
        if given.names != classes.names:
            raise ValueError(
                f"`clean_label_column_name` ({clean_column!r}) has the classes {given.names}, the labels "
                f"{classes.names}: they must be the same classes in the same order."
            )
        ids = list(values)
    else:  # plain ints or strings, numbered as the label column's own values were (`class_encode_column`)
        unknown = sorted({str(v) for v in values} - set(classes.names))
        if unknown:
            raise ValueError(
                f"`clean_label_column_name` ({clean_column!r}) holds values that are not classes of the labels: "
                f"{unknown[:5]} (classes: {classes.names[:10]})."
            )
        ids = [classes.str2int(str(v)) for v in values]
    clean = validation.remove_columns([label_column, clean_column]).add_column(label_column, ids)
    return clean.cast_column(label_column, classes)


def load_images(data_args: DataTrainingArguments, model_args: ModelArguments, seed: int) -> DatasetDict:
    """Train/validation (and test, when there is one) splits, with a validation split carved out if missing."""
    if data_args.dataset_name is not None:
        dataset = load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
    else:
        data_files = {"train": str(Path(data_args.train_dir) / "**")}
        if data_args.validation_dir is not None:
            data_files["validation"] = str(Path(data_args.validation_dir) / "**")
        dataset = load_dataset("imagefolder", data_files=data_files, cache_dir=model_args.cache_dir)
    for column in (data_args.image_column_name, data_args.label_column_name):
        if column not in dataset["train"].column_names:
            name = "image_column_name" if column == data_args.image_column_name else "label_column_name"
            raise ValueError(
                f"`{name}` ({column!r}) is not a column of the training data (columns: {dataset['train'].column_names})."
            )
    if not isinstance(dataset["train"].features[data_args.label_column_name], ClassLabel):
        # Plain int or string labels: number the classes (sorted), as a ClassLabel would, on every split alike.
        dataset = dataset.class_encode_column(data_args.label_column_name)
    if "validation" not in dataset:
        # Stratified, so a small validation split still has every class.
        split = dataset["train"].train_test_split(
            data_args.train_val_split, seed=seed, stratify_by_column=data_args.label_column_name
        )
        dataset["train"], dataset["validation"] = split["train"], split["test"]
    return dataset


def subsample(dataset, max_samples: int | None, seed: int):
    """A random subset of `max_samples` examples drawn from `seed` (as the transformers example does)."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(max_samples))


def to_uint8_array(image) -> np.ndarray:
    """A PIL image or an array as uint8 (H, W) or (H, W, C).

    Palette and CMYK images become RGB; float arrays in [0, 1] are scaled to [0, 255]. 16-bit and float PIL images
    have no fixed range, so they are refused rather than clipped.
    """
    if hasattr(image, "mode"):
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            raise ValueError(
                f"Images of PIL mode {image.mode!r} (16-bit or float) have no fixed range: convert them to 8-bit "
                "`L` or `RGB` first."
            )
        if image.mode not in ("L", "RGB", "RGBA"):
            image = image.convert("RGB")
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating) and array.size and 0.0 <= array.min() and array.max() <= 1.0:
        return np.round(array * 255.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer) and array.size and 0 <= array.min() and array.max() <= 255:
        return array.astype(np.uint8)
    raise ValueError(f"Image values of type {array.dtype} must be uint8, or floats in [0, 1].")


def to_bchw_float(arrays: np.ndarray) -> torch.Tensor:
    """uint8 images stacked as (B, H, W) or (B, H, W, C) -> float (B, C, H, W) in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(arrays)).float().div_(255.0)
    return x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)


def adapt_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, C, H, W) images to the model's channels: alpha dropped, grey repeated for colour, colour averaged for grey."""
    if x.shape[1] == 4:  # RGBA: the alpha channel carries no class information
        x = x[:, :3]
    if x.shape[1] != channels:
        x = x if x.shape[1] == 1 else x.mean(1, keepdim=True)
        x = x.expand(-1, channels, -1, -1)
    return x


def make_transform(
    image_column: str,
    label_column: str,
    size: tuple[int, int],
    mean: list[float],
    std: list[float],
    random_flip: bool,
):
    """The batch transform: images -> normalized `pixel_values` of the model's size and channels, labels -> `labels`.

    Images of one size (the usual case) go through as one tensor: a Python loop per image would cost more than the
    training step of a small model.
    """
    channels = len(mean)
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = adapt_channels(x, channels)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        if random_flip:
            flip = torch.rand(x.shape[0]) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return (x - mean_t) / std_t

    def transform(batch: dict) -> dict:
        arrays = [to_uint8_array(image) for image in batch[image_column]]
        if len({a.shape for a in arrays}) == 1:
            pixel_values = prepare(to_bchw_float(np.stack(arrays)))
        else:
            pixel_values = torch.cat([prepare(to_bchw_float(a[None])) for a in arrays])
        return {"pixel_values": pixel_values, "labels": batch[label_column]}

    return transform


def image_statistics(dataset, image_column: str, channels: int, max_images: int = 2000) -> tuple[list, list]:
    """Per-channel pixel mean and std of (up to `max_images` of) the training images.

    A model trained from scratch has no pretraining statistics to match, so its inputs are normalized with the data's
    own: roughly zero-mean, unit-variance, whatever the dataset.
    """
    images = dataset.select(range(min(max_images, len(dataset))))[image_column]
    # Through the same channel adaptation as the transform, so the statistics are those of what the model sees.
    pixels = torch.cat(
        [adapt_channels(to_bchw_float(to_uint8_array(image)[None]), channels)[0].flatten(1) for image in images], dim=1
    )
    mean, std = pixels.mean(1), pixels.std(1).clamp_min(1e-6)
    return [round(float(m), 4) for m in mean], [round(float(s), 4) for s in std]


def build_model_and_processor(model_args: ModelArguments, dataset: DatasetDict, label_column: str, image_column: str):
    """The model and its image processor: pretrained ones, or a small ViT sized for the data and its processor."""
    names = dataset["train"].features[label_column].names
    label2id = {name: i for i, name in enumerate(names)}
    id2label = dict(enumerate(names))
    hub_kwargs = {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.model_revision,
        "token": model_args.token,
        "trust_remote_code": model_args.trust_remote_code,
    }
    if model_args.model_name_or_path is not None:
        config = AutoConfig.from_pretrained(
            model_args.config_name or model_args.model_name_or_path,
            num_labels=len(names),
            label2id=label2id,
            id2label=id2label,
            finetuning_task="image-classification",
            **hub_kwargs,
        )
        model = AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            **hub_kwargs,
        )
        processor = AutoImageProcessor.from_pretrained(
            model_args.image_processor_name or model_args.model_name_or_path, **hub_kwargs
        )
        return model, processor

    _, channels, height, width = to_bchw_float(to_uint8_array(dataset["train"][0][image_column])[None]).shape
    channels = 3 if channels == 4 else channels
    if model_args.config_name is not None:
        config = AutoConfig.from_pretrained(
            model_args.config_name, num_labels=len(names), label2id=label2id, id2label=id2label, **hub_kwargs
        )
    else:
        config = ViTConfig(
            **SMALL_VIT,
            image_size=height,
            num_channels=channels,
            num_labels=len(names),
            label2id=label2id,
            id2label=id2label,
        )
    if model_args.config_overrides is not None:
        logger.info(f"Overriding config: {model_args.config_overrides}")
        config.update_from_string(model_args.config_overrides)
    if height != width or config.image_size != height:
        logger.info(f"Images of {height}x{width} are resized to the model's {config.image_size}x{config.image_size}.")
    mean, std = image_statistics(dataset["train"], image_column, config.num_channels)
    processor = ViTImageProcessor(
        size={"height": config.image_size, "width": config.image_size}, image_mean=mean, image_std=std
    )
    return AutoModelForImageClassification.from_config(config), processor


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
    if training_args.remove_unused_columns:
        # The transform reads the raw `image` column, which the Trainer would drop as unknown to the model.
        logger.info("Setting `remove_unused_columns=False`: the image transform needs the raw image column.")
        training_args.remove_unused_columns = False
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

    image_column, label_column = data_args.image_column_name, data_args.label_column_name
    dataset = load_images(data_args, model_args, training_args.seed)
    dataset["train"] = subsample(dataset["train"], data_args.max_train_samples, training_args.seed)
    dataset["validation"] = subsample(dataset["validation"], data_args.max_eval_samples, training_args.seed)
    if "test" in dataset:
        dataset["test"] = subsample(dataset["test"], data_args.max_predict_samples, training_args.seed)
    clean = None
    if data_args.clean_label_column_name is not None and training_args.do_eval:
        clean = true_labels(dataset["validation"], data_args.clean_label_column_name, label_column)
    model, processor = build_model_and_processor(model_args, dataset, label_column, image_column)
    size = processor.size
    size = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"], size["shortest_edge"])
    transform = {
        train: make_transform(
            image_column,
            label_column,
            size,
            list(getattr(processor, "image_mean", None) or [0.5] * model.config.num_channels),
            list(getattr(processor, "image_std", None) or [0.5] * model.config.num_channels),
            random_flip=train and data_args.random_flip,
        )
        for train in (True, False)
    }
    for split in dataset:
        dataset[split].set_transform(transform[split == "train"])
    if clean is not None:
        clean.set_transform(transform[False])
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        f"{type(model).__name__} with {n_params:,} parameters; splits: "
        + ", ".join(f"{split} {len(ds)}" for split, ds in dataset.items())
    )

    metric = load_accuracy_metric(model_args.cache_dir)

    def compute_metrics(p: EvalPrediction) -> dict[str, float]:
        return metric(np.argmax(p.predictions, axis=1), p.label_ids)

    trainer = AESAMTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"] if training_args.do_train else None,
        eval_dataset=dataset["validation"] if training_args.do_eval else None,
        compute_metrics=compute_metrics,
        processing_class=processor,
    )
    if data_args.eval_train_samples > 0:
        # Scored with its training labels and without augmentation: memorizing noisy labels shows there.
        subset = dataset["train"].select(range(min(data_args.eval_train_samples, len(dataset["train"]))))
        subset.set_transform(transform[False])
        trainer.add_callback(TrainSubsetCallback(trainer, subset))
    if clean is not None:
        trainer.add_callback(EvalSetCallback(trainer, clean, "eval_clean"))
    last_model = None
    if data_args.test_last_model and training_args.do_predict and training_args.do_train and "test" in dataset:
        last_model = LastModelCallback(trainer, dataset["test"])
        trainer.add_callback(last_model)

    all_metrics: dict[str, float] = {}
    if training_args.do_train:
        checkpoint = None
        if training_args.resume_from_checkpoint is not None:
            checkpoint = training_args.resume_from_checkpoint
        elif last_checkpoint is not None:
            checkpoint = last_checkpoint
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        metrics = {**train_result.metrics, "train_samples": len(dataset["train"])}
        trainer.save_model()  # also saves the image processor
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()  # trainer_state.json, with the log history (the `sam/*` metrics of every log)
        all_metrics.update(metrics)
    if training_args.do_eval:
        metrics = {**trainer.evaluate(eval_dataset=dataset["validation"]), "eval_samples": len(dataset["validation"])}
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        all_metrics.update(metrics)
    if training_args.do_predict:
        if "test" not in dataset:
            raise ValueError(
                f"`--do_predict` scores the `test` split, and the data have none (splits: {list(dataset)})."
            )
        metrics = trainer.predict(dataset["test"], metric_key_prefix="test").metrics
        metrics["test_samples"] = len(dataset["test"])
        if last_model is not None:
            metrics.update(last_model.metrics)
        trainer.log_metrics("test", metrics)
        trainer.save_metrics("test", metrics)
        all_metrics.update(metrics)

    card_kwargs = {"tasks": "image-classification", "tags": ["image-classification", "vision"]}
    if model_args.model_name_or_path is not None:
        card_kwargs["finetuned_from"] = model_args.model_name_or_path
    if data_args.dataset_name is not None:
        card_kwargs["dataset"] = data_args.dataset_name
    if training_args.push_to_hub:
        trainer.push_to_hub(**card_kwargs)
    else:
        trainer.create_model_card(**card_kwargs)
    return all_metrics


if __name__ == "__main__":
    main()
    # Under `accelerate launch`/`torchrun` on CPUs (gloo): end without interpreter finalization, where torch 2.13's gloo
    # teardown can abort a rank that finished (docs/reliability.md, "Clean exit"). Elsewhere it does nothing.
    exit_gloo_process()
