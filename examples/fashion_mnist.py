"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017) as a `datasets.Dataset`, read from local IDX files.

The data come from Debian's `dataset-fashion-mnist` package, which installs the four gzipped IDX files of the
original release under `/usr/share/datasets/fashion-mnist/`. Reading them directly keeps the demo offline: nothing
is fetched from the Hugging Face Hub. The IDX parser below needs only `gzip` and `numpy`.
"""

import gzip
from pathlib import Path

import numpy as np
from datasets import Array3D, ClassLabel, Dataset, Features


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Per-pixel statistics of the training images scaled to [0, 1]: inputs end up roughly zero-mean, unit-variance.
PIXEL_MEAN = 0.2860
PIXEL_STD = 0.3530

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Third byte of the IDX magic number -> element type; the values are big-endian on disk.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_INSTALL_HINT = "install Debian's `dataset-fashion-mnist` package (`apt-get install dataset-fashion-mnist`)"


def _malformed(path: Path, why: str) -> ValueError:
    return ValueError(f"IDX file {str(path)!r} is malformed: {why}. Re-{_INSTALL_HINT}, or pass another `data_dir`.")


def load_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzipped if its name ends in `.gz`) into an array of its declared type and shape.

    Raises `FileNotFoundError` for a missing file and `ValueError` for a malformed one, both naming the file, so a
    broken install is told apart from a bug in the caller.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {str(path)!r} not found: {_INSTALL_HINT}, or pass another `data_dir`.")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError; a truncated stream raises EOFError
        raise _malformed(path, f"cannot be read ({err})") from err

    # Magic number: two zero bytes, the element type, the number of dimensions.
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        types = ", ".join(f"0x{t:02x}" for t in _IDX_DTYPES)
        raise _malformed(path, f"bad magic number 0x{raw[:4].hex()} (expected 0x0000, then a type byte in {types})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _malformed(path, f"truncated header ({len(raw)} bytes for {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise _malformed(path, f"{len(raw)} bytes, expected {expected} for shape {shape} of {dtype}")
    # Native byte order for torch, which does not take big-endian arrays.
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _check_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one split's images and labels and check that they fit together and are Fashion-MNIST's."""
    image_file, label_file = (data_dir / name for name in _FILES[split])
    images, labels = load_idx(image_file), load_idx(label_file)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise _malformed(
            image_file, f"{images.dtype} images of shape {images.shape}, expected uint8 of shape (N, 28, 28)"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise _malformed(label_file, f"labels of shape {labels.shape}, expected ({images.shape[0]},), one per image")
    if labels.size and int(labels.max()) >= len(CLASS_NAMES):
        raise _malformed(label_file, f"label {int(labels.max())}, expected 0..{len(CLASS_NAMES) - 1}")
    return images, labels.astype(np.int64)


def _stratified_subset(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `size` examples, drawn at random but taking the classes in turn, so the class mix stays balanced.

    A plain random subset of a few hundred examples can miss a class by a noticeable margin, which muddies a
    comparison between runs; here each class gets `size // 10` examples, or one more.
    """
    order = rng.permutation(labels.size)
    shuffled = labels[order]
    # Rank of each example within its class in the shuffled order; sorting by it deals the classes out in turn.
    rank = np.empty(labels.size, dtype=np.int64)
    for c in np.unique(shuffled):
        members = np.flatnonzero(shuffled == c)
        rank[members] = np.arange(members.size)
    # Ties in rank are broken by the class order of this seed's draw, not always class 0 first.
    class_order = np.argsort(rng.permutation(len(CLASS_NAMES)))
    picked = order[np.lexsort((class_order[shuffled], rank))[:size]]
    return np.sort(picked)


def _add_symmetric_noise(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Replace `fraction` of the labels with a uniformly random *other* class (symmetric label noise).

    Noisy labels are the setting where SAM's flatter minima pay off most, so the demo can switch them on.
    """
    labels = labels.copy()
    n_noisy = int(round(fraction * labels.size))
    noisy = rng.choice(labels.size, size=n_noisy, replace=False)
    # An offset in 1..K-1 always lands on a different class, each with probability 1 / (K - 1).
    offsets = rng.integers(1, len(CLASS_NAMES), size=n_noisy)
    labels[noisy] = (labels[noisy] + offsets) % len(CLASS_NAMES)
    return labels


def load_fashion_mnist(
    data_dir: str | Path = FASHION_MNIST_DIR,
    split: str = "train",
    max_samples: int | None = None,
    seed: int = 0,
    label_noise: float = 0.0,
) -> Dataset:
    """Fashion-MNIST `split` as a `datasets.Dataset` in torch format, ready for `transformers.Trainer`.

    Columns: `pixel_values` (float32 tensors of shape (1, 28, 28), normalized with the dataset mean and std) and
    `labels` (a `ClassLabel` with the 10 class names, so ints in 0..9).

    Args:
        data_dir: Folder holding the four gzipped IDX files of the original release.
        split: `"train"` (60,000 images) or `"test"` (10,000 images).
        max_samples: Keep only this many examples, a class-balanced random subset drawn from `seed`; `None` keeps
            the whole split.
        seed: Seeds the subset and the label noise, so the same arguments always give the same dataset.
        label_noise: Fraction in [0, 1] of the labels replaced with a uniformly random different class.
    """
    if split not in _FILES:
        raise ValueError(f"`split` ({split!r}) must be one of {list(_FILES)}.")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"`label_noise` ({label_noise!r}) must be in [0, 1]: it is the fraction of noisy labels.")
    images, labels = _check_split(Path(data_dir), split)
    if max_samples is not None and not (
        isinstance(max_samples, (int, np.integer))
        and not isinstance(max_samples, bool)
        and 1 <= max_samples <= labels.size
    ):
        raise ValueError(
            f"`max_samples` ({max_samples!r}) must be None or an int in [1, {labels.size}], the size of the "
            f"{split!r} split."
        )

    # Separate streams: changing `label_noise` does not change which examples are picked.
    subset_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    if max_samples is not None and max_samples < labels.size:
        keep = _stratified_subset(labels, max_samples, subset_rng)
        images, labels = images[keep], labels[keep]
    if label_noise > 0.0:
        labels = _add_symmetric_noise(labels, label_noise, noise_rng)

    pixels = (images.astype(np.float32) / 255.0 - PIXEL_MEAN) / PIXEL_STD
    features = Features(
        {
            "pixel_values": Array3D(shape=(1, 28, 28), dtype="float32"),
            "labels": ClassLabel(names=list(CLASS_NAMES)),
        }
    )
    dataset = Dataset.from_dict({"pixel_values": pixels[:, None], "labels": labels}, features=features)
    return dataset.with_format("torch")
