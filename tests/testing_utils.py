"""Tiny models, data and a trainer factory for fast tests, all built locally (the Hub is unreachable in CI)."""

import importlib.util
import os

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification

from aesam_hf import AESAMConfig, AESAMTrainer


def require_module(name: str):
    """Skip a test when an optional module is not installed."""
    return pytest.mark.skipif(importlib.util.find_spec(name) is None, reason=f"needs `{name}`")


class RegressionDataset(torch.utils.data.Dataset):
    """y = a*x + b + noise, with `x` of `dim` features (transformers' RegressionDataset, widened)."""

    def __init__(self, length: int = 64, dim: int = 1, a: float = 2.0, b: float = 3.0, seed: int = 42):
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(length, dim, generator=gen)
        self.y = a * self.x.sum(-1) + b + 0.1 * torch.randn(length, generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_x": self.x[i], "labels": self.y[i]}


class RegressionModel(nn.Module):
    """Two parameters, `a` and `b`: y = a * x + b, MSE loss."""

    def __init__(self, a: float = 0.0, b: float = 0.0):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, input_x, labels=None):
        y = self.a * input_x.sum(-1) + self.b
        return {"loss": nn.functional.mse_loss(y, labels), "logits": y}


class MLPRegressionModel(nn.Module):
    """A small MLP with several parameter tensors, optionally with BatchNorm (for the frozen-statistics rule)."""

    def __init__(self, dim: int = 4, hidden: int = 8, batch_norm: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        # BatchNorm after the activation: right after a Linear it would zero that Linear's bias gradient.
        layers = [nn.Linear(dim, hidden), nn.Tanh()]
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers += [nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, input_x, labels=None):
        y = self.net(input_x).squeeze(-1)
        return {"loss": nn.functional.mse_loss(y, labels), "logits": y}


def tiny_bert_config(**kwargs) -> BertConfig:
    defaults = dict(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
    )
    return BertConfig(**{**defaults, **kwargs})


def tiny_bert(seed: int = 0, **kwargs) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(**kwargs))


def tiny_vit_config(**kwargs) -> ViTConfig:
    defaults = dict(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=3,
    )
    return ViTConfig(**{**defaults, **kwargs})


def tiny_vit(seed: int = 0, **kwargs) -> ViTForImageClassification:
    torch.manual_seed(seed)
    return ViTForImageClassification(tiny_vit_config(**kwargs))


class TokenDataset(torch.utils.data.Dataset):
    """Random token sequences with a learnable label (parity of the first token), for the tiny BERT."""

    def __init__(self, length: int = 32, seq_len: int = 8, vocab: int = 100, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, vocab, (length, seq_len), generator=gen)
        self.labels = self.ids[:, 0] % 2

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


# The TrainingArguments fields every CPU test shares: no reports, no progress bars, fixed seed, a short constant run.
# Stock `TrainingArguments` built from them is the baseline the equivalence tests compare AESAMTrainer with.
CPU_TEST_ARGS = dict(
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
    seed=42,
    learning_rate=0.05,
    per_device_train_batch_size=8,
    max_steps=6,
    logging_steps=1,
    save_strategy="no",
    lr_scheduler_type="constant",
    dataloader_num_workers=0,
)


def get_config(output_dir, **kwargs) -> AESAMConfig:
    """An AESAMConfig for CPU tests (`CPU_TEST_ARGS`); any field can be overridden."""
    return AESAMConfig(**{**CPU_TEST_ARGS, "output_dir": str(output_dir), **kwargs})


def get_trainer(output_dir, model=None, train_dataset=None, trainer_cls=AESAMTrainer, **kwargs) -> AESAMTrainer:
    """A trainer on the regression task (or on `model`/`train_dataset`), taking any AESAMConfig field as kwarg."""
    model = model if model is not None else MLPRegressionModel()
    train_dataset = train_dataset if train_dataset is not None else RegressionDataset(length=64, dim=4)
    return trainer_cls(model=model, args=get_config(output_dir, **kwargs), train_dataset=train_dataset)


def sam_logs(trainer) -> list[dict]:
    """The per-step log entries that carry SAM metrics (logging_steps=1)."""
    return [h for h in trainer.state.log_history if "sam/passes" in h and "train_runtime" not in h]


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
