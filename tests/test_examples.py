"""The examples run end to end on a tiny slice of the real data, and the data loader checks its input."""

import gzip
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest


EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

from fashion_mnist import FASHION_MNIST_DIR, load_fashion_mnist, load_idx  # noqa: E402


require_fashion_mnist = pytest.mark.skipif(
    not (pathlib.Path(FASHION_MNIST_DIR) / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist (`make data`)",
)


@require_fashion_mnist
def test_label_noise_flips_exactly_that_fraction_to_other_classes():
    clean = load_fashion_mnist(split="test", max_samples=500, seed=3)
    noisy = load_fashion_mnist(split="test", max_samples=500, seed=3, label_noise=0.4)
    a, b = np.asarray(clean["labels"]), np.asarray(noisy["labels"])
    assert (a != b).sum() == 200
    assert np.array_equal(np.asarray(clean["pixel_values"]), np.asarray(noisy["pixel_values"]))
    assert np.bincount(a, minlength=10).tolist() == [50] * 10  # class-balanced subset
    assert clean[0]["pixel_values"].shape == (1, 28, 28)


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(data_dir=str(tmp_path), split="test")
    bad = tmp_path / "bad-idx1-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x09\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="bad-idx1-ubyte.gz"):
        load_idx(bad)
    with pytest.raises(ValueError, match="label_noise"):
        load_fashion_mnist(data_dir=str(tmp_path), split="test", label_noise=1.5)


@require_fashion_mnist
def test_demo_runs_on_a_tiny_slice(tmp_path):
    cmd = [sys.executable, str(EXAMPLES / "demo.py"), "--max_steps", "4", "--train_samples", "64",
           "--eval_samples", "64", "--output_dir", str(tmp_path)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| (erm|sam|aesam) \|.*$", out.stdout, flags=re.M)}
    assert set(rows) == {"erm", "sam", "aesam"}
    assert "| 0.00 | 4 | 1.00 |" in rows["erm"] and "| 1.00 | 8 | 2.00 |" in rows["sam"]
    assert "| aesam |" in (tmp_path / "results.md").read_text()


def test_demo_help():
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "--policies" in out.stdout
