"""Build the image regimes' data: seeded Fashion-MNIST subsets, with noisy training labels, as parquet datasets.

The accuracy study trains on small subsets of Fashion-MNIST (Debian's `dataset-fashion-mnist` IDX files), some with
a fraction of the training labels flipped. This module draws them and writes each as a dataset folder that the image
example reads with its ordinary `--dataset_name` flag (a local folder of `train/validation/test.parquet`):

    python -m benchmarks.fashion_mnist --output_dir data/fashion-mnist-noisy --label_noise 0.4 \
        --train_samples 2000 --validation_samples 2000 --seeds 42
    python examples/run_image_classification.py --dataset_name data/fashion-mnist-noisy/seed42 ...

One folder per seed, `<output_dir>/seed<seed>`: the study's seeds change the subset and the flipped labels as well as
the initial weights. The draw is the one the image example made before it read these files (a stratified 15%
validation split of the 60,000 training images, then `shuffle(seed).select(...)` of each split, then the noise on
the training subset only), so every seed's examples and flipped labels are those of the earlier results. With
`--validation_label_noise`, the validation labels are flipped too (independently of the training ones): the held-out
data a user selects checkpoints on is as noisy as their training data. Test labels stay true; the noisy splits keep
the true ones as `clean_label`, and every split keeps the `index` of each image in its IDX file.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value, disable_progress_bars
from transformers import HfArgumentParser

from benchmarks.data import (
    FASHION_MNIST_DIR,
    VALIDATION_NOISE_STREAM,
    check_label_noise,
    fashion_mnist_arrays,
    symmetric_label_noise,
)
from benchmarks.io import write_json


CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SPLITS = ("train", "validation", "test")
# What a folder was built from; a folder whose spec differs is rebuilt by `prepare`.
SPEC_FILE = "spec.json"


@dataclass
class FashionMNISTArguments:
    output_dir: str = field(
        default="data/fashion-mnist-noisy", metadata={"help": "Each seed's dataset goes to <output_dir>/seed<seed>."}
    )
    seeds: list[int] = field(
        default_factory=lambda: [42], metadata={"help": "Seeds of the subsets and the noise, one folder each."}
    )
    train_samples: int | None = field(
        default=None, metadata={"help": "Training images kept (of the 51,000 left after validation); all if unset."}
    )
    validation_samples: int | None = field(
        default=None, metadata={"help": "Validation images kept (of the 9,000 held out); all if unset."}
    )
    test_samples: int | None = field(default=None, metadata={"help": "Test images kept (of 10,000); all if unset."})
    label_noise: float = field(
        default=0.0,
        metadata={"help": "Fraction in [0, 1) of training labels replaced with another class (symmetric noise)."},
    )
    validation_label_noise: float = field(
        default=0.0,
        metadata={
            "help": "Fraction in [0, 1) of validation labels replaced with another class (the selection set's noise)."
        },
    )
    validation_fraction: float = field(
        default=0.15, metadata={"help": "Share of the training images held out (stratified) as validation."}
    )
    fashion_mnist_dir: str = field(
        default=str(FASHION_MNIST_DIR), metadata={"help": "The folder of Fashion-MNIST's four IDX files."}
    )

    def __post_init__(self):
        check_label_noise(self.label_noise)
        check_label_noise(self.validation_label_noise, "validation_label_noise")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"`seeds` ({self.seeds}) must be a non-empty list of distinct seeds.")
        counts = {n: getattr(self, n) for n in ("train_samples", "validation_samples", "test_samples")}
        too_few = [n for n, value in counts.items() if value is not None and value < 1]
        if too_few:
            raise ValueError(f"`{too_few[0]}` ({counts[too_few[0]]}) must be None or >= 1: the number of images kept.")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"`validation_fraction` ({self.validation_fraction}) must be in (0, 1).")

    def spec(self) -> dict:
        """What shapes one seed's folder (not where it goes, nor which other seeds are built)."""
        spec = {k: v for k, v in asdict(self).items() if k not in ("output_dir", "seeds")}
        if not self.validation_label_noise:  # folders built before the option existed stay valid
            del spec["validation_label_noise"]
        return spec


def load_splits(data_dir: str | Path = FASHION_MNIST_DIR) -> DatasetDict:
    """Fashion-MNIST's `train` and `test` splits with the columns of the Hub's copy: `image`, `label` (a ClassLabel).

    Each image is a binary PGM file (a 15-byte header and the raw pixels): lossless, free to build, fast to decode.
    """
    features = Features({"image": Image(), "label": ClassLabel(names=list(CLASSES)), "index": Value("int64")})
    splits = {}
    for split in ("train", "test"):
        images, labels = fashion_mnist_arrays(split, data_dir)
        encoded = [{"bytes": b"P5\n28 28\n255\n" + image.tobytes(), "path": None} for image in images]
        columns = {"image": encoded, "label": labels, "index": np.arange(len(labels))}
        splits[split] = Dataset.from_dict(columns, features=features)
    return DatasetDict(splits)


def _subsample(dataset: Dataset, n: int | None, seed: int) -> Dataset:
    # `shuffle(seed).select(range(n))`, as transformers' image example draws `max_train_samples`.
    return dataset if n is None or n >= len(dataset) else dataset.shuffle(seed=seed).select(range(n))


def build(args: FashionMNISTArguments, seed: int, source: DatasetDict | None = None) -> DatasetDict:
    """One seed's train/validation/test subsets; `source` is `load_splits()`'s result (read once for many seeds)."""
    source = load_splits(args.fashion_mnist_dir) if source is None else source
    held_out = source["train"].train_test_split(args.validation_fraction, seed=seed, stratify_by_column="label")
    dataset = DatasetDict(
        train=_subsample(held_out["train"], args.train_samples, seed),
        validation=_subsample(held_out["test"], args.validation_samples, seed),
        test=_subsample(source["test"], args.test_samples, seed),
    )
    dataset["train"] = _with_noise(dataset["train"], args.label_noise, seed)
    if args.validation_label_noise:
        # Its own stream: the validation flips do not repeat the training ones' pattern.
        dataset["validation"] = _with_noise(
            dataset["validation"], args.validation_label_noise, seed + VALIDATION_NOISE_STREAM
        )
    return dataset


def _with_noise(split: Dataset, fraction: float, seed: int) -> Dataset:
    """`split` with `fraction` of its labels flipped and the true ones kept as `clean_label` (the last column)."""
    noisy = symmetric_label_noise(split["label"], len(CLASSES), fraction, seed)
    features = split.features.copy()
    features["clean_label"] = features["label"]
    split = split.rename_column("label", "clean_label").add_column("label", noisy.tolist())
    return split.select_columns(["image", "label", "index", "clean_label"]).cast(features)


def write(dataset: DatasetDict, folder: str | Path, spec: dict) -> Path:
    """`<folder>/<split>.parquet` for each split (the file names `load_dataset(folder)` maps to splits)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, ds in dataset.items():
        ds.to_parquet(str(folder / f"{split}.parquet"))
    write_json(folder / SPEC_FILE, spec)
    return folder


def seed_dir(output_dir: str | Path, seed: int) -> Path:
    return Path(output_dir) / f"seed{seed}"


def is_built(folder: Path, spec: dict) -> bool:
    spec_file = folder / SPEC_FILE
    return all((folder / f"{s}.parquet").is_file() for s in SPLITS) and (
        spec_file.is_file() and json.loads(spec_file.read_text(encoding="utf-8")) == spec
    )


def prepare(args: FashionMNISTArguments) -> dict[int, Path]:
    """Each seed's folder, built where it is missing or was built from another spec; returns them by seed."""
    folders, source = {}, None
    for seed in args.seeds:
        folders[seed] = folder = seed_dir(args.output_dir, seed)
        if not is_built(folder, args.spec()):
            source = load_splits(args.fashion_mnist_dir) if source is None else source
            dataset = build(args, seed, source)
            write(dataset, folder, args.spec())
            counts = ", ".join(f"{split} {len(ds)}" for split, ds in dataset.items())
            print(f"{folder}: {counts} images", flush=True)
    return folders


def main(argv: list[str] | None = None) -> dict[int, Path]:
    (args,) = HfArgumentParser(FashionMNISTArguments).parse_args_into_dataclasses(args=argv)
    disable_progress_bars()  # a line per image split would drown the summary
    return prepare(args)


if __name__ == "__main__":
    main()
