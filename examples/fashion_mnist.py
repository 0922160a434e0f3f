"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017) as a `datasets.Dataset`, read from local IDX files.

The data come from Debian's `dataset-fashion-mnist` package, which installs the four gzipped IDX files of the
original release under `/usr/share/datasets/fashion-mnist/`. Reading them directly keeps the demo offline: nothing
is fetched from the Hugging Face Hub. The IDX parser below needs only `gzip` and `numpy`.
"""

import gzip
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image


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


def load_fashion_mnist(data_dir: str | Path = FASHION_MNIST_DIR) -> DatasetDict:
    """Fashion-MNIST as a `DatasetDict` with `train` (60,000 images) and `test` (10,000) splits.

    Columns as on the Hub's `zalando-datasets/fashion_mnist`: `image` (an `Image`, decoded to a 28x28 greyscale PIL
    image) and `label` (a `ClassLabel` with the 10 class names), so the example scripts treat both alike.
    """
    features = Features({"image": Image(), "label": ClassLabel(names=list(CLASS_NAMES))})
    splits = {}
    for split in _FILES:
        images, labels = _check_split(Path(data_dir), split)
        # Each image is stored as a binary PGM file: a 15-byte header and the raw pixels. Building it costs next to
        # nothing (PNG encoding all 70k would take seconds) and decodes fast; a nested-list Array2D column would be
        # slower to read than the training step of a small ViT.
        header = f"P5\n{images.shape[2]} {images.shape[1]}\n255\n".encode("ascii")
        encoded = [{"bytes": header + image.tobytes(), "path": None} for image in images]
        splits[split] = Dataset.from_dict({"image": encoded, "label": labels}, features=features)
    return DatasetDict(splits)
