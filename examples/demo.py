"""The `make demo` job: a small ViT trained from scratch on Fashion-MNIST with ERM, SAM and AE-SAM, side by side.

Each policy trains the same model from the same initial weights on the same data in the same order; only `optim`
changes. The table shows what AE-SAM (Jiang et al., ICLR 2023, https://huggingface.co/papers/2304.14647) is about:
SAM pays two forward/backward passes every step, AE-SAM only on the steps where the gradient norm says the region is
sharp, so it costs a fraction of SAM's extra compute.

Runs offline on a CPU in a few minutes; the data are the IDX files of Debian's `dataset-fashion-mnist` package.

    python examples/demo.py                                                       # the full demo, 2-4 minutes
    python examples/demo.py --max_steps 4 --train_samples 64 --eval_samples 64    # a smoke test, seconds
    python examples/demo.py --policies erm,aesam,aelooksam --label_noise 0.2
"""

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from datasets import Dataset
from fashion_mnist import CLASS_NAMES, FASHION_MNIST_DIR, load_fashion_mnist
from transformers import (
    EvalPrediction,
    HfArgumentParser,
    PrinterCallback,
    ViTConfig,
    ViTForImageClassification,
    set_seed,
)

from aesam_hf import AESAMConfig, AESAMTrainer


@dataclass
class DemoArguments:
    """What the demo compares and on how much data; the training recipe itself is fixed in `make_config`."""

    policies: str = field(
        default="erm,sam,aesam",
        metadata={"help": "Comma-separated SAM policies (`optim` values of AESAMConfig) to train one after another."},
    )
    max_steps: int = field(default=800, metadata={"help": "Optimizer steps per policy."})
    train_samples: int = field(
        default=10000, metadata={"help": "Class-balanced training subset (at most 60000), drawn from `seed`."}
    )
    eval_samples: int = field(
        default=10000, metadata={"help": "Class-balanced test subset (at most 10000) the accuracy is measured on."}
    )
    batch_size: int = field(default=128, metadata={"help": "Training batch size."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak AdamW learning rate (cosine schedule)."})
    sam_rho: float = field(default=0.05, metadata={"help": "Radius of the SAM neighbourhood."})
    label_noise: float = field(
        default=0.0, metadata={"help": "Fraction in [0, 1] of training labels replaced with another class."}
    )
    seed: int = field(default=42, metadata={"help": "Seeds the data subsets, the label noise, the weights and order."})
    output_dir: str = field(default="outputs/demo", metadata={"help": "Where results.md (and per-policy runs) go."})
    data_dir: str = field(
        default=str(FASHION_MNIST_DIR), metadata={"help": "Folder holding the four gzipped Fashion-MNIST IDX files."}
    )

    def __post_init__(self):
        self.policy_list = [p.strip() for p in self.policies.split(",") if p.strip()]
        if not self.policy_list or len(set(self.policy_list)) != len(self.policy_list):
            raise ValueError(f"`policies` ({self.policies!r}) must be a comma-separated list of distinct policies.")
        for name, upper in (
            ("max_steps", None),
            ("batch_size", None),
            ("train_samples", 60000),
            ("eval_samples", 10000),
        ):
            value = getattr(self, name)
            if value < 1 or (upper is not None and value > upper):
                allowed = ">= 1" if upper is None else f"in [1, {upper}], the size of the split"
                raise ValueError(f"`{name}` ({value!r}) must be {allowed}.")


def make_model(seed: int) -> ViTForImageClassification:
    """A ~140k-parameter ViT for 28x28 grey images: 16 patches of 7x7, 4 layers of width 64.

    Seeded here, so every policy starts from the same weights.
    """
    set_seed(seed)
    config = ViTConfig(
        image_size=28,
        patch_size=7,
        num_channels=1,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=len(CLASS_NAMES),
        id2label=dict(enumerate(CLASS_NAMES)),
        label2id={name: i for i, name in enumerate(CLASS_NAMES)},
    )
    return ViTForImageClassification(config)


def make_config(demo: DemoArguments, policy: str) -> AESAMConfig:
    """The training arguments of one run: identical for every policy but `optim`."""
    return AESAMConfig(
        output_dir=str(Path(demo.output_dir) / policy),
        optim=policy,
        sam_rho=demo.sam_rho,
        max_steps=demo.max_steps,
        per_device_train_batch_size=demo.batch_size,
        per_device_eval_batch_size=512,
        learning_rate=demo.learning_rate,
        weight_decay=0.05,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        # The sam/* metrics ride on the Trainer's logs; the PrinterCallback that would print them is removed.
        logging_steps=max(1, demo.max_steps // 10),
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=demo.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """Top-1 accuracy, with numpy: `evaluate.load("accuracy")` needs the Hub."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def cpu_threads() -> int:
    """The cores this process may run on; past ~8, a model this small only pays for thread synchronisation."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(available, 8))


def run_policy(demo: DemoArguments, args: AESAMConfig, train: Dataset, test: Dataset) -> dict[str, float]:
    """Train one policy from scratch, evaluate it, and return its row of the results table."""
    trainer = AESAMTrainer(
        model=make_model(demo.seed), args=args, train_dataset=train, eval_dataset=test, compute_metrics=compute_metrics
    )
    trainer.remove_callback(PrinterCallback)  # with disable_tqdm it would print every log dict
    start = time.perf_counter()
    trainer.train()
    train_time = time.perf_counter() - start
    metrics = trainer.evaluate()
    # The final train log carries the totals; the controller holds the same numbers.
    sam_log = next((e for e in reversed(trainer.state.log_history) if "sam/passes" in e), None)
    controller = trainer._sam_controller
    sam_fraction = sam_log["sam/fraction_total"] if sam_log else controller.sam_fraction
    passes = sam_log["sam/passes"] if sam_log else float(controller.passes)
    return {
        "accuracy": metrics["eval_accuracy"],
        "sam_fraction": sam_fraction,
        "passes": passes,
        # ERM takes one pass per step, so passes per step is the cost relative to ERM.
        "passes_per_step": passes / max(1, trainer.state.global_step),
        "train_time": train_time,
    }


def results_table(results: dict[str, dict[str, float]]) -> str:
    """The comparison as a Markdown table; the time ratio needs an `erm` run, the pass ratio does not."""
    erm_time = results["erm"]["train_time"] if "erm" in results else None
    lines = [
        "| policy | test accuracy | SAM fraction | passes | passes / ERM | train time (s) | time / ERM |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for policy, r in results.items():
        time_ratio = f"{r['train_time'] / erm_time:.2f}" if erm_time else "–"
        lines.append(
            f"| {policy} | {100 * r['accuracy']:.1f}% | {r['sam_fraction']:.2f} | {r['passes']:.0f} | "
            f"{r['passes_per_step']:.2f} | {r['train_time']:.1f} | {time_ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    (demo,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses()
    transformers.logging.set_verbosity_warning()
    torch.set_num_threads(cpu_threads())
    # Built up front, so a misspelt policy fails before minutes of training, not after.
    configs = {policy: make_config(demo, policy) for policy in demo.policy_list}

    train = load_fashion_mnist(
        demo.data_dir, "train", max_samples=demo.train_samples, seed=demo.seed, label_noise=demo.label_noise
    )
    test = load_fashion_mnist(demo.data_dir, "test", max_samples=demo.eval_samples, seed=demo.seed)
    n_params = sum(p.numel() for p in make_model(demo.seed).parameters())
    setup = (
        f"Fashion-MNIST: {len(train)} training images (label noise {demo.label_noise:g}), {len(test)} test images. "
        f"ViT from scratch, {n_params / 1e3:.0f}k parameters. {demo.max_steps} steps of batch {demo.batch_size}, "
        f"AdamW lr {demo.learning_rate:g}, rho {demo.sam_rho:g}, seed {demo.seed}, {torch.get_num_threads()} CPU "
        "threads."
    )
    print(setup, flush=True)

    results = {}
    for i, (policy, args) in enumerate(configs.items(), 1):
        print(f"[{i}/{len(configs)}] {policy}: training ...", end=" ", flush=True)
        results[policy] = run_policy(demo, args, train, test)
        r = results[policy]
        print(f"{r['train_time']:.1f}s, test accuracy {100 * r['accuracy']:.1f}%", flush=True)

    table = results_table(results)
    print()
    print(table)
    output_dir = Path(demo.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.md").write_text(f"{setup}\n\n{table}\n", encoding="utf-8")
    print(f"\nWritten to {output_dir / 'results.md'}")


if __name__ == "__main__":
    main()
