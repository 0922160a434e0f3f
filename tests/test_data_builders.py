"""The benchmarks' data: the fortunes topic CSVs (`make data`), symmetric label noise, Fashion-MNIST as arrays."""

import gzip

import numpy as np
import pytest
from example_utils import load_example, require_fashion_mnist

from benchmarks import data, fortunes, workloads


@pytest.fixture(params=["benchmarks", "example"])
def label_noise(request):
    """The benchmarks' copy and the image example's: both flip labels the same way."""
    if request.param == "example":
        return load_example("run_image_classification").symmetric_label_noise
    return data.symmetric_label_noise


def test_symmetric_label_noise_flips_exactly_that_fraction_to_other_classes(label_noise):
    labels = np.repeat(np.arange(10), 50)
    noisy = label_noise(labels, 10, 0.4, seed=3)
    assert (noisy != labels).sum() == 200
    assert np.array_equal(noisy, label_noise(labels, 10, 0.4, seed=3))  # seeded
    assert len(np.unique(noisy[noisy != labels])) == 10  # flips reach every class
    with pytest.raises(ValueError, match="label_noise"):
        label_noise(labels, 10, 1.0, seed=0)


def test_both_copies_of_label_noise_agree():
    labels = np.arange(40) % 4
    example = load_example("run_image_classification").symmetric_label_noise
    assert np.array_equal(data.symmetric_label_noise(labels, 4, 0.25, seed=1), example(labels, 4, 0.25, seed=1))


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


def test_fortune_files_parse_overstrike(tmp_path):
    (tmp_path / "topic").write_text("Plain one.\n%\n____\b\b\b\byell and B\bBold\n  twice\n%\n")
    assert fortunes.read_fortunes(tmp_path / "topic") == ["Plain one.", "yell and Bold twice"]
    with pytest.raises(FileNotFoundError, match="fortunes"):
        fortunes.read_fortunes(tmp_path / "missing")


@require_fashion_mnist
def test_fashion_mnist_arrays_are_the_examples_images():
    images, labels = data.fashion_mnist_arrays("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8 and labels[0] == 9  # a boot
    example = load_example("run_image_classification").load_fashion_mnist()["test"]
    assert np.array_equal(np.asarray(example[0]["image"]), images[0])


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
