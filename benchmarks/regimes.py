"""The regimes of the accuracy study: where plain training memorizes noisy labels, and where it fits clean data.

SAM's gains in the literature appear where plain training memorizes (small training sets trained for many epochs,
above all with noisy labels) and, for ViTs trained from scratch without strong augmentation, on clean data too (Chen,
Hsieh, Gong, ICLR 2022). Each regime is one experiment config (`configs/experiments/`), run by its example script
through `runner.py`; every run evaluates every 100 steps, saves a checkpoint there and ends with the one its
validation accuracy selects (`--load_best_model_at_end`):

- `image-noisy`: a small ViT from scratch on 2,000 Fashion-MNIST images with 40% of the training *and validation*
  labels flipped at random (the selection set is as noisy as a user's own held-out data), 1,200 steps (77 epochs).
  Each evaluation also scores the true validation labels (`--clean_label_column_name`: an optimistic bound) and
  1,000 training images against their noisy labels (memorization).
- `image-clean`: the same ViT from scratch on 2,000 clean images, without augmentation, 1,200 steps: it fits its
  training set (the clean regime the ViT literature names).
- `text-noisy`: the first two layers of the pretrained MiniLM-L6 fine-tuned on fortunes topics (6 topics, 40% of the
  training and validation labels flipped, 2,226 clean test quotations), its token embeddings frozen, 800 steps of 16.

The underfitting regime of the earlier study (10,000 clean images, 10 epochs: SAM did not help a model that had not fit
its training data) is settled and recorded in `docs/benchmarks_2026-11-30.md` with the commit that measured it.

The image regimes' data are drawn per seed (`benchmarks/fashion_mnist.py`, one dataset folder per seed, built on first
use); each run reads its seed's folder (`--dataset_name`). The text regime's CSVs do not depend on the seed.
"""

from dataclasses import dataclass, field

from benchmarks.fashion_mnist import FashionMNISTArguments, prepare
from benchmarks.runner import REPO


EXPERIMENTS = REPO / "configs" / "experiments"


@dataclass(frozen=True)
class Regime:
    name: str
    task: str  # a `runner.TASKS` key: which example script runs it
    config: str  # its experiment JSON
    kind: str  # "overfitting" (noisy labels memorized) or "clean"
    label_noise: float  # fraction of training (and validation) labels flipped
    description: str
    smoke: tuple[str, ...]  # flags that shrink it to seconds, for the test suite
    # The grids tuned on validation: AdamW's learning rate x weight decay, SAM's rho, Momentum-SAM's rho (each grown
    # past an edge that wins). AdamW gets at least as many runs as SAM's rho.
    lr_grid: tuple[float, ...]
    wd_grid: tuple[float, ...]
    rho_grid: tuple[float, ...]
    msam_rho_grid: tuple[float, ...]
    validation_examples: int  # the size of the selection set: what one validation score can resolve
    default: bool = True  # run by `make bench`; the others stay as recorded sections, rerun on request
    # The image regimes' per-seed Fashion-MNIST subsets (`benchmarks.fashion_mnist` flags, less `--seeds`).
    image_data: dict = field(default_factory=dict)

    @property
    def config_path(self) -> str:
        return str(EXPERIMENTS / self.config)

    def data_flags(self, seed: int) -> list[str]:
        """The flags that point a run of `seed` at its own data, built here if missing; none for seed-free data."""
        if not self.image_data:
            return []
        folder = prepare(FashionMNISTArguments(**self.image_data, seeds=[seed]))[seed]
        return ["--dataset_name", str(folder.relative_to(REPO) if folder.is_relative_to(REPO) else folder)]


_IMAGE_SMOKE = (
    "--max_steps 8 --max_train_samples 96 --max_eval_samples 32 --max_predict_samples 64 "
    "--per_device_train_batch_size 16 --eval_steps 4 --save_steps 4 --eval_train_samples 32"
).split()
_TEXT_SMOKE = (
    "--max_steps 4 --max_train_samples 48 --max_eval_samples 16 --max_predict_samples 16 "
    "--per_device_train_batch_size 8 --max_seq_length 24 --eval_steps 2 --save_steps 2 --eval_train_samples 16"
).split()

# The subsets the image configs were run on before the data moved to files (`max_train_samples`, `max_eval_samples`,
# `label_noise`): the same examples and flipped labels for each seed. `make data` builds seed 42's (the configs').
NOISY_FASHION_MNIST = {
    "output_dir": str(REPO / "data" / "fashion-mnist-noisy"),
    "train_samples": 2000,
    "validation_samples": 2000,
    "label_noise": 0.4,
    "validation_label_noise": 0.4,  # the selection set is as noisy as the training set
}
CLEAN_FASHION_MNIST = {
    "output_dir": str(REPO / "data" / "fashion-mnist-2k"),
    "train_samples": 2000,
    "validation_samples": 2000,
}
# AdamW's grid has 6 points (3 learning rates x 2 weight decays) against SAM's and Momentum-SAM's 4 rho values. The
# rho grids are centred where the first, wider search of 2026-12-07 (docs/benchmarks_2026-12-07.md, seed 1's noisy
# validation) found each optimum, so that a rerun rarely grows them: Momentum-SAM's reference value for AdamW on ViTs,
# rho = 3, collapsed training in every regime, and its optimum lay at 0.075-0.15; SAM's at 0.05-0.1. The text
# regime's learning rates likewise (its first grid, 1e-4 to 4e-4, grew to 5e-5 and chose 1e-4). The growth rule stays:
# a winner at an edge still extends its grid.
_IMAGE_GRIDS = {
    "lr_grid": (1e-3, 2e-3, 4e-3),
    "wd_grid": (0.0, 0.1),
    "rho_grid": (0.025, 0.05, 0.1, 0.2),
    "msam_rho_grid": (0.0375, 0.075, 0.15, 0.3),
}
_TEXT_GRIDS = {
    "lr_grid": (5e-5, 1e-4, 2e-4),
    "wd_grid": (0.0, 0.1),
    "rho_grid": (0.025, 0.05, 0.1, 0.2),
    "msam_rho_grid": (0.05, 0.1, 0.3, 1.0),
}

REGIMES = {
    r.name: r
    for r in (
        Regime(
            "image-noisy",
            "image",
            "image_fashion_mnist_noisy.json",
            "overfitting",
            0.4,
            "ViT from scratch, 2,000 Fashion-MNIST images, 40% symmetric label noise in training and validation, "
            "1,200 steps of 128 (77 epochs)",
            smoke=tuple(_IMAGE_SMOKE),
            image_data=NOISY_FASHION_MNIST,
            validation_examples=2000,
            **_IMAGE_GRIDS,
        ),
        Regime(
            "image-clean",
            "image",
            "image_fashion_mnist_clean.json",
            "clean",
            0.0,
            "ViT from scratch without augmentation, 2,000 clean Fashion-MNIST images, 1,200 steps of 128 (77 epochs, "
            "to convergence)",
            smoke=tuple(_IMAGE_SMOKE),
            image_data=CLEAN_FASHION_MNIST,
            validation_examples=2000,
            **_IMAGE_GRIDS,
        ),
        Regime(
            "text-noisy",
            "glue",
            "glue_fortunes_noisy_minilm.json",
            "overfitting",
            0.4,
            "MiniLM-L6's first 2 pretrained layers (token embeddings frozen), fortunes (6 topics), 40% symmetric label "
            "noise, 800 steps of 16 (12.8 epochs)",
            smoke=tuple(_TEXT_SMOKE),
            validation_examples=600,
            **_TEXT_GRIDS,
        ),
    )
}
