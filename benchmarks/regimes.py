"""The regimes of the accuracy study: where plain training overfits noisy labels, and where it underfits.

SAM's gains in the literature appear where plain training memorizes: small training sets trained for many epochs,
above all with noisy labels. Each regime is one experiment config (`configs/experiments/`), run by its example
script through `runner.py`:

- `image-noisy`: a small ViT from scratch on 2,000 Fashion-MNIST images with 40% of the labels flipped at random,
  1,200 steps (77 epochs). AdamW's clean validation accuracy peaks and then falls while its accuracy on the noisy
  training labels climbs past 60% (it memorizes wrong labels).
- `text-noisy`: the first two layers of the pretrained MiniLM-L6 fine-tuned on fortunes topics (6 topics, 40% of the
  training labels flipped, 2,226 clean test quotations), its token embeddings frozen, 800 steps at lr 2e-4 (12.8 epochs
  of the 1,000 training quotations used). AdamW's validation accuracy peaks near step 400-600 and falls while its fit
  of the noisy training labels climbs to 86-93% (seeds 1, 3, 4). The 600 steps at lr 3e-4 of the previous study were
  at the edge of stable training (some seeds of several policies stalled, AdamW's fit ranged from 50% to 92%); at
  2e-4 the seeds that stalled there train. Freezing the embeddings (75% of the parameters) makes an AdamW step 2.4x
  cheaper on CPU (262 -> 111 ms on one thread), which the whole study needs to fit `make bench`'s budget.
- `image-underfit`: the former demo: the same ViT on 10,000 clean images for 800 steps, where it has not yet fit
  the training set. Every perturbation costs accuracy there; it is kept as the regime where SAM does not help.

The evaluations during training also score 1,000 (300 for text) training examples against their noisy labels
(`--eval_train_samples`, `aesam_hf.callbacks.TrainSubsetCallback`): `train_subset_accuracy` rising past 1 − noise is
memorization.

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
    kind: str  # "overfitting" or "underfitting"
    label_noise: float  # fraction of training labels flipped (in the config, or in the data it names)
    description: str
    full: bool  # run every control and budget (else only AdamW, SAM and AE-SAM)
    budgets: tuple[float, ...]  # AE-SAM's `--aesam_budget` values, each against `random` at that probability
    smoke: tuple[str, ...]  # flags that shrink it to seconds, for the test suite
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
    "--per_device_train_batch_size 16 --eval_steps 4 --eval_train_samples 32"
).split()
_TEXT_SMOKE = (
    "--max_steps 4 --max_train_samples 48 --max_eval_samples 16 --max_predict_samples 16 "
    "--per_device_train_batch_size 8 --max_seq_length 24 --eval_steps 2 --eval_train_samples 16"
).split()

# The subsets the image configs were run on before the data moved to files (`max_train_samples`, `max_eval_samples`,
# `label_noise`): the same examples and flipped labels for each seed. `make data` builds seed 42's (the configs').
NOISY_FASHION_MNIST = {
    "output_dir": str(REPO / "data" / "fashion-mnist-noisy"),
    "train_samples": 2000,
    "validation_samples": 2000,
    "label_noise": 0.4,
}
FASHION_MNIST_10K = {
    "output_dir": str(REPO / "data" / "fashion-mnist-10k"),
    "train_samples": 10000,
    "validation_samples": 2000,
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
            "ViT from scratch, 2,000 Fashion-MNIST images, 40% symmetric label noise, 1,200 steps of 128 (77 epochs)",
            full=True,
            budgets=(0.2, 0.35, 0.5),
            smoke=tuple(_IMAGE_SMOKE),
            image_data=NOISY_FASHION_MNIST,
        ),
        Regime(
            "text-noisy",
            "glue",
            "glue_fortunes_noisy_minilm.json",
            "overfitting",
            0.4,
            "MiniLM-L6's first 2 pretrained layers (token embeddings frozen), fortunes (6 topics), 40% symmetric label noise, "
            "800 steps of 16 at lr 2e-4 (12.8 epochs)",
            full=True,
            budgets=(0.35,),
            smoke=tuple(_TEXT_SMOKE),
        ),
        Regime(
            "image-underfit",
            "image",
            "image_fashion_mnist_vit.json",
            "underfitting",
            0.0,
            "ViT from scratch, 10,000 clean Fashion-MNIST images, 800 steps of 128 (10 epochs): not yet fit",
            full=False,
            budgets=(),
            smoke=tuple(_IMAGE_SMOKE),
            image_data=FASHION_MNIST_10K,
        ),
    )
}
