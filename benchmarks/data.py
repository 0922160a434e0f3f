"""The data the benchmarks build on: symmetric label noise and Fashion-MNIST's IDX files as arrays.

The example scripts carry their own copies of these (a user copies one file and has all it needs); the benchmarks
keep theirs here, so that a cost workload reads the same images as the image example without importing it.
"""

import gzip
from pathlib import Path

import numpy as np


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_INSTALL_HINT = "install Debian's `dataset-fashion-mnist` package (`apt-get install dataset-fashion-mnist`)"


# Added to a builder's seed for the validation labels' noise, so that its flips are drawn apart from the training
# labels' (`benchmarks.fashion_mnist`, `benchmarks.fortunes`).
VALIDATION_NOISE_STREAM = 10_007


def check_label_noise(fraction: float, name: str = "label_noise") -> None:
    """`fraction` of labels flipped (the argument `name`): at 1 no label would be right."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"`{name}` ({fraction}) must be in [0, 1): it is the fraction of noisy labels.")


def symmetric_label_noise(labels, num_classes: int, fraction: float, seed: int) -> np.ndarray:
    """`labels` with `fraction` of them (rounded) replaced by a uniformly random *other* class.

    Exactly `round(fraction * n)` labels change, so the noise level is the one asked for, not a draw around it.
    """
    check_label_noise(fraction)
    if num_classes < 2 and fraction > 0:
        raise ValueError(f"`label_noise` ({fraction}) needs at least 2 classes, got {num_classes}.")
    labels = np.array(labels, dtype=np.int64, copy=True)
    rng = np.random.default_rng(seed)
    noisy = rng.choice(labels.size, size=int(round(fraction * labels.size)), replace=False)
    # An offset in 1..K-1 always lands on another class, each with probability 1 / (K - 1).
    labels[noisy] = (labels[noisy] + rng.integers(1, num_classes, size=noisy.size)) % num_classes
    return labels


def load_idx(path: str | Path) -> np.ndarray:
    """One IDX file of unsigned bytes (as Fashion-MNIST's four are), gzipped if its name ends in `.gz`.

    `FileNotFoundError` for a missing file and `ValueError` for a malformed one, both naming the file: a broken
    install is told apart from a bug in the caller.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {str(path)!r} not found: {_INSTALL_HINT}.")
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # a bad gzip stream is an OSError, a truncated one an EOFError
        raise ValueError(f"IDX file {str(path)!r} cannot be read ({err}): re-{_INSTALL_HINT}.") from err
    # Magic number: two zero bytes, 0x08 (unsigned byte), the number of dimensions; then their sizes (big-endian).
    if len(raw) < 4 or raw[:3] != b"\0\0\x08":
        raise ValueError(
            f"IDX file {str(path)!r} has the magic number 0x{raw[:4].hex()}, not 0x000008.. (unsigned bytes): "
            f"re-{_INSTALL_HINT}."
        )
    header = 4 + 4 * raw[3]
    shape = (
        tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=raw[3], offset=4)) if len(raw) >= header else ()
    )
    if len(raw) < header or len(raw) != header + int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"IDX file {str(path)!r} holds {len(raw)} bytes, too few or too many for shape {shape}.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def fashion_mnist_arrays(
    split: str = "train", data_dir: str | Path = FASHION_MNIST_DIR
) -> tuple[np.ndarray, np.ndarray]:
    """One split of Fashion-MNIST: uint8 images of shape (N, 28, 28) and int64 labels in 0..9."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"`split` ({split!r}) must be one of {sorted(FASHION_MNIST_FILES)}.")
    image_file, label_file = (Path(data_dir) / name for name in FASHION_MNIST_FILES[split])
    images, labels = load_idx(image_file), load_idx(label_file)
    if images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise ValueError(
            f"{str(image_file)!r} and {str(label_file)!r} hold images of shape {images.shape} and labels of shape "
            f"{labels.shape}: expected (N, 28, 28) and (N,)."
        )
    return images, labels.astype(np.int64)
