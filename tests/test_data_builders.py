"""The benchmarks' data: the fortunes topic CSVs and the Fashion-MNIST subsets (`make data`), symmetric label noise,
Fashion-MNIST's IDX files as arrays."""

import gzip
import json
from dataclasses import asdict

import numpy as np
import pytest
from example_utils import load_example, require_fashion_mnist

from benchmarks import data, fashion_mnist, fortunes, workloads


def test_symmetric_label_noise_flips_exactly_that_fraction_to_other_classes():
    label_noise = data.symmetric_label_noise
    labels = np.repeat(np.arange(10), 50)
    noisy = label_noise(labels, 10, 0.4, seed=3)
    assert (noisy != labels).sum() == 200
    assert np.array_equal(noisy, label_noise(labels, 10, 0.4, seed=3))  # seeded
    assert len(np.unique(noisy[noisy != labels])) == 10  # flips reach every class
    with pytest.raises(ValueError, match="label_noise"):
        label_noise(labels, 10, 1.0, seed=0)


def test_fortunes_dataset_is_clean_split_and_stratified(fortunes_csv):
    import pandas as pd

    splits = {name: pd.read_csv(path) for name, path in fortunes_csv.items()}
    sentences = [set(df["sentence"]) for df in splits.values()]
    assert not (sentences[0] & sentences[1] or sentences[0] & sentences[2] or sentences[1] & sentences[2])
    for df in splits.values():
        assert set(df["label"]) == set(fortunes.DEFAULT_TOPICS)
        assert not df["sentence"].str.contains(r"[\x00-\x1f]").any()  # overstrike and control characters gone
    total = sum(len(df) for df in splits.values())
    assert len(splits["test"]) == pytest.approx(0.2 * total, rel=0.05)


def test_fortunes_label_noise_touches_the_training_split_only(fortunes_csv, tmp_path):
    import pandas as pd

    noisy = fortunes.main(["--output_dir", str(tmp_path), "--label_noise", "0.2"])
    clean_train, noisy_train = pd.read_csv(fortunes_csv["train"]), pd.read_csv(noisy["train"])
    assert (clean_train["sentence"] == noisy_train["sentence"]).all()
    assert (clean_train["label"] != noisy_train["label"]).sum() == round(0.2 * len(clean_train))
    for split in ("validation", "test"):
        assert noisy[split].read_text() == fortunes_csv[split].read_text()


def test_fortunes_validation_label_noise_has_its_own_stream_and_keeps_the_true_topics(fortunes_csv, tmp_path):
    import pandas as pd

    flags = ["--output_dir", str(tmp_path), "--label_noise", "0.2", "--validation_label_noise", "0.3"]
    noisy = {split: pd.read_csv(path) for split, path in fortunes.main(flags).items()}
    clean = {split: pd.read_csv(path) for split, path in fortunes_csv.items()}
    for split, df in noisy.items():
        assert list(df.columns) == ["sentence", "label", "clean_label"], split
        # The same quotations in the same order; the true topic is kept whatever the label says.
        assert df["sentence"].tolist() == clean[split]["sentence"].tolist(), split
        assert df["clean_label"].tolist() == clean[split]["label"].tolist(), split
        assert (clean[split]["label"] == clean[split]["clean_label"]).all(), split  # no noise asked: all true
    topics = fortunes.DEFAULT_TOPICS
    assert (noisy["test"]["label"] == noisy["test"]["clean_label"]).all()
    # The training flips are those the earlier code drew: the noise on the topic ids, from the seed itself.
    train = noisy["train"]
    ids = [topics.index(t) for t in train["clean_label"]]
    assert train["label"].tolist() == [topics[i] for i in data.symmetric_label_noise(ids, len(topics), 0.2, 42)]
    # Exactly 30% of the validation labels flipped, on a stream of their own (not the flips the seed draws).
    validation = noisy["validation"]
    assert (validation["label"] != validation["clean_label"]).sum() == round(0.3 * len(validation))
    ids = [topics.index(t) for t in validation["clean_label"]]
    same_stream = [topics[i] for i in data.symmetric_label_noise(ids, len(topics), 0.3, 42)]
    assert validation["label"].tolist() != same_stream
    with pytest.raises(ValueError, match="validation_label_noise"):
        fortunes.FortunesArguments(validation_label_noise=1.0)


def test_fortune_files_parse_overstrike(tmp_path):
    (tmp_path / "topic").write_text("Plain one.\n%\n____\b\b\b\byell and B\bBold\n  twice\n%\n")
    assert fortunes.read_fortunes(tmp_path / "topic") == ["Plain one.", "yell and Bold twice"]
    with pytest.raises(FileNotFoundError, match="fortunes"):
        fortunes.read_fortunes(tmp_path / "missing")


@require_fashion_mnist
def test_fashion_mnist_arrays():
    images, labels = data.fashion_mnist_arrays("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8 and labels[0] == 9  # a boot


@pytest.fixture(scope="module")
def noisy_subset(tmp_path_factory):
    """The image-noisy regime's seed 42 (the demo's), built as `make data` builds it."""
    out = tmp_path_factory.mktemp("fashion-mnist-noisy")
    flags = ["--output_dir", out, "--seeds", "42", "--label_noise", "0.4"]
    folders = fashion_mnist.main([*map(str, flags), "--train_samples", "2000", "--validation_samples", "2000"])
    return folders[42]


@require_fashion_mnist
def test_fashion_mnist_subsets_are_the_draw_of_the_earlier_results(noisy_subset):
    """The examples and flipped labels the image example drew before the data moved to files (checked image by image
    against that code when it moved; pinned here by their indices in the IDX files and their labels)."""
    from datasets import load_dataset

    dataset = load_dataset(str(noisy_subset))  # as the image example reads it: `--dataset_name <folder>`
    assert {split: len(ds) for split, ds in dataset.items()} == {"train": 2000, "validation": 2000, "test": 10000}
    train, validation = dataset["train"], dataset["validation"]
    assert train["index"][:6] == [50585, 7520, 53068, 7353, 57487, 50743]
    assert validation["index"][:6] == [47537, 12487, 41538, 22406, 10503, 21932]
    assert dataset["test"]["index"][:3] == [0, 1, 2]  # the whole test set, in order
    # 40% of the training labels flipped, each to another class; validation and test keep the true ones.
    assert sum(a != b for a, b in zip(train["label"], train["clean_label"], strict=True)) == 800
    assert [(train["label"][i], train["clean_label"][i]) for i in (8, 9, 10)] == [(0, 7), (3, 6), (4, 0)]
    images, labels = data.fashion_mnist_arrays("train")
    assert validation["label"][:6] == labels[validation["index"][:6]].tolist()
    assert np.array_equal(np.asarray(train[0]["image"]), images[50585])
    assert train.features["label"].names == list(fashion_mnist.CLASSES)


@require_fashion_mnist
def test_fashion_mnist_folders_are_built_once_per_spec(noisy_subset, capsys):
    flags = ["--output_dir", str(noisy_subset.parent), "--seeds", "42", "--label_noise", "0.4"]
    fashion_mnist.main([*flags, "--train_samples", "2000", "--validation_samples", "2000"])
    assert capsys.readouterr().out == ""  # already there with the same spec: not rebuilt
    with pytest.raises(ValueError, match="label_noise"):
        fashion_mnist.FashionMNISTArguments(label_noise=1.0)
    with pytest.raises(ValueError, match="train_samples"):
        fashion_mnist.FashionMNISTArguments(train_samples=0)


@pytest.fixture(scope="module")
def noisy_validation(tmp_path_factory):
    """Seed 42 with 40% noisy training and 30% noisy validation labels, small."""
    out = tmp_path_factory.mktemp("fashion-mnist-noisy-validation")
    flags = ["--output_dir", out, "--seeds", "42", "--label_noise", "0.4", "--validation_label_noise", "0.3"]
    sizes = ["--train_samples", "200", "--validation_samples", "100", "--test_samples", "50"]
    return fashion_mnist.main([*map(str, flags), *sizes])[42]


@require_fashion_mnist
def test_fashion_mnist_validation_label_noise_flips_validation_labels_only(noisy_validation):
    import pyarrow.parquet as pq
    from datasets import load_dataset

    dataset = load_dataset(str(noisy_validation))
    train, validation, test = dataset["train"], dataset["validation"], dataset["test"]
    # The same draw of images as without validation noise (the first of those `noisy_subset` pins).
    assert train["index"][:6] == [50585, 7520, 53068, 7353, 57487, 50743]
    assert validation["index"][:6] == [47537, 12487, 41538, 22406, 10503, 21932]
    _, labels = data.fashion_mnist_arrays("train")
    _, test_labels = data.fashion_mnist_arrays("test")
    # Validation: exactly 30 of 100 labels flipped, the true ones kept as `clean_label`, a ClassLabel like `label`.
    assert validation.column_names == ["image", "label", "index", "clean_label"]
    assert validation["clean_label"] == labels[validation["index"]].tolist()
    assert sum(a != b for a, b in zip(validation["label"], validation["clean_label"], strict=True)) == 30
    assert validation.features["clean_label"] == validation.features["label"] == train.features["label"]
    # Drawn apart from the training flips: not what the training stream (the seed itself) would flip.
    assert validation["label"] != data.symmetric_label_noise(validation["clean_label"], 10, 0.3, 42).tolist()
    # Training: flipped as without validation noise; test: untouched.
    assert train["clean_label"] == labels[train["index"]].tolist()
    assert train["label"] == data.symmetric_label_noise(train["clean_label"], 10, 0.4, 42).tolist()
    assert test["label"] == test_labels[test["index"]].tolist()
    # (`load_dataset` gives every split the columns of the first, so the test split's file is read for its own.)
    assert pq.read_schema(noisy_validation / "test.parquet").names == ["image", "label", "index"]
    assert json.loads((noisy_validation / "spec.json").read_text())["validation_label_noise"] == 0.3


@require_fashion_mnist
def test_fashion_mnist_spec_without_validation_noise_is_the_earlier_one(noisy_subset):
    """Folders built before `validation_label_noise` existed stay valid: the spec omits it at 0."""
    args = fashion_mnist.FashionMNISTArguments(label_noise=0.4, train_samples=2000, validation_samples=2000)
    earlier = {k: v for k, v in asdict(args).items() if k not in ("output_dir", "seeds", "validation_label_noise")}
    assert args.spec() == earlier
    assert json.loads((noisy_subset / "spec.json").read_text()) == earlier
    assert fashion_mnist.is_built(noisy_subset, args.spec())
    noisy = fashion_mnist.FashionMNISTArguments(label_noise=0.4, validation_label_noise=0.2)
    assert noisy.spec() == {
        **fashion_mnist.FashionMNISTArguments(label_noise=0.4).spec(),
        "validation_label_noise": 0.2,
    }
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="validation_label_noise"):
            fashion_mnist.FashionMNISTArguments(validation_label_noise=bad)


def test_idx_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        data.fashion_mnist_arrays("train", data_dir=tmp_path)
    bad = tmp_path / "bad-idx1-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x09\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="bad-idx1-ubyte.gz"):
        data.load_idx(bad)
    short = tmp_path / "short-idx1-ubyte"
    short.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05" + b"\x01" * 4)  # 5 labels declared, 4 there
    with pytest.raises(ValueError, match="short-idx1-ubyte"):
        data.load_idx(short)


def test_benchmark_vit_is_the_examples_vit():
    """The cost benchmarks time the model the image example trains from scratch."""
    assert workloads.SMALL_VIT == load_example("run_image_classification").SMALL_VIT
