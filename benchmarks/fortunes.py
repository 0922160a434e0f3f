"""Build a topic-classification task in GLUE's single-sentence CSV format from Debian's `fortunes` quotations.

The `fortunes` package files ~16k real quotations by topic, one file per topic, entries separated by lines holding a
single `%`. A handful of topics makes an offline stand-in for a GLUE single-sentence task (like SST-2, but with one
class per topic): `run_glue.py` reads the CSVs with `--train_file/--validation_file/--test_file`.

    python -m benchmarks.fortunes --output_dir data/fortunes          # what `make data` runs
    python -m benchmarks.fortunes --output_dir data/fortunes-noisy --label_noise 0.2

Writes `train.csv`, `validation.csv` and `test.csv` with columns `sentence,label,clean_label` (topic names: the label
trained or selected on, and the true one), and `spec.json`, the arguments they were built from.
Splits are stratified by topic and drawn from `seed`; `label_noise` flips training labels, `validation_label_noise`
validation labels (the held-out data a user selects checkpoints on is as noisy as their training data); test labels
stay true.
"""

import csv
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from transformers import HfArgumentParser

from benchmarks.data import VALIDATION_NOISE_STREAM, check_label_noise, symmetric_label_noise
from benchmarks.io import write_json


FORTUNES_DIR = Path("/usr/share/games/fortunes")
DEFAULT_TOPICS = ["computers", "politics", "science", "songs-poems"]
SPLITS = ("train", "validation", "test")
_INSTALL_HINT = "install Debian's `fortunes` package (`apt-get install fortunes`) or pass another `--fortunes_dir`"


@dataclass
class FortunesArguments:
    output_dir: str = field(default="data/fortunes", metadata={"help": "Where train/validation/test.csv go."})
    fortunes_dir: str = field(default=str(FORTUNES_DIR), metadata={"help": "Folder of fortune files, one per topic."})
    topics: list[str] = field(
        default_factory=lambda: list(DEFAULT_TOPICS),
        metadata={"help": "Topic files to use; each becomes one class."},
    )
    validation_fraction: float = field(default=0.1, metadata={"help": "Share of each topic in validation.csv."})
    test_fraction: float = field(default=0.2, metadata={"help": "Share of each topic in test.csv."})
    max_chars: int = field(
        default=400,
        metadata={"help": "Drop quotations longer than this (long poems and lists); they would be truncated anyway."},
    )
    label_noise: float = field(
        default=0.0,
        metadata={"help": "Fraction in [0, 1) of training labels replaced with another topic (symmetric noise)."},
    )
    validation_label_noise: float = field(
        default=0.0,
        metadata={
            "help": "Fraction in [0, 1) of validation labels replaced with another topic (the selection set's)."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seeds the splits and the label noise."})

    def __post_init__(self):
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"`{name}` ({value}) must be in (0, 1).")
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"`validation_fraction` + `test_fraction` ({self.validation_fraction} + {self.test_fraction}) must "
                "be < 1, to leave examples for training."
            )
        check_label_noise(self.label_noise)
        check_label_noise(self.validation_label_noise, "validation_label_noise")
        if len(set(self.topics)) < 2 or len(set(self.topics)) != len(self.topics):
            raise ValueError(f"`topics` ({self.topics}) must name at least 2 topics, each once: one class each.")
        if self.max_chars < 1:
            raise ValueError(f"`max_chars` ({self.max_chars}) must be >= 1.")


def read_fortunes(path: str | Path) -> list[str]:
    """The quotations of one fortune file, each on one line: overstrike (bold) removed, whitespace collapsed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fortune file {str(path)!r} not found: {_INSTALL_HINT}.")
    text = path.read_text(encoding="utf-8", errors="replace")
    # Old terminals printed bold or underline as "char, backspace, char": keep the last character. Runs of
    # backspaces ("___\b\b\byes") take one pass each; any other control character goes too.
    while "\x08" in text:
        text, n = re.subn(r"[^\x08\n]\x08", "", text)
        if n == 0:
            text = text.replace("\x08", "")
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", " ", text)
    entries = re.split(r"^%\s*$", text, flags=re.M)
    return [" ".join(entry.split()) for entry in entries if entry.strip()]


def build_splits(args: FortunesArguments) -> dict[str, list[tuple[str, str, str]]]:
    """(sentence, label, true topic) for each split; quotations filed under several topics are dropped (ambiguous)."""
    by_topic = {topic: read_fortunes(Path(args.fortunes_dir) / topic) for topic in args.topics}
    seen: dict[str, set[str]] = {}
    for topic, quotes in by_topic.items():
        for quote in quotes:
            seen.setdefault(quote, set()).add(topic)
    rng = np.random.default_rng(args.seed)
    splits: dict[str, list[tuple[str, str]]] = {split: [] for split in SPLITS}
    for topic, quotes in by_topic.items():
        # dict.fromkeys: a quotation repeated within one file is one example, in a stable order.
        kept = [q for q in dict.fromkeys(quotes) if len(seen[q]) == 1 and len(q) <= args.max_chars]
        order = rng.permutation(len(kept))
        n_val = round(args.validation_fraction * len(kept))
        n_test = round(args.test_fraction * len(kept))
        parts = {"validation": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
        for split, idx in parts.items():
            splits[split] += [(kept[i], topic) for i in idx]
    for split in SPLITS:
        splits[split] = [splits[split][i] for i in rng.permutation(len(splits[split]))]
    # Each row gets its label (noisy where asked) and keeps the true one last. The validation noise has its own
    # stream: its flips do not repeat the training ones' pattern.
    noise = {
        "train": (args.label_noise, args.seed),
        "validation": (args.validation_label_noise, args.seed + VALIDATION_NOISE_STREAM),
    }
    for split in SPLITS:
        fraction, seed = noise.get(split, (0.0, args.seed))
        sentences, topics = zip(*splits[split], strict=True)
        ids = [args.topics.index(t) for t in topics]
        if fraction > 0:
            ids = symmetric_label_noise(ids, len(args.topics), fraction, seed)
        splits[split] = [(q, args.topics[i], t) for q, i, t in zip(sentences, ids, topics, strict=True)]
    return splits


def write_splits(splits: dict[str, list[tuple[str, str, str]]], output_dir: str | Path) -> dict[str, Path]:
    """One `<split>.csv` per split, with a `sentence,label,clean_label` header as `run_glue.py` reads it."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in splits.items():
        paths[split] = output_dir / f"{split}.csv"
        with paths[split].open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sentence", "label", "clean_label"])
            writer.writerows(rows)
    return paths


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """Build the CSVs and say how many quotations of each topic went where."""
    (args,) = HfArgumentParser(FortunesArguments).parse_args_into_dataclasses(args=argv)
    splits = build_splits(args)
    paths = write_splits(splits, args.output_dir)
    # What the files were built from (`benchmarks.compare` reads the label noise of the data it runs on).
    write_json(Path(args.output_dir) / "spec.json", {k: v for k, v in asdict(args).items() if k != "output_dir"})
    for split, rows in splits.items():
        counts = {t: sum(label == t for _, label, _ in rows) for t in args.topics}
        print(f"{paths[split]}: {len(rows)} quotations, {counts}")
    return paths


if __name__ == "__main__":
    main()
