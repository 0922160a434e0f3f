"""`aesam_hf.callbacks.TrainSubsetCallback`: a training subset scored at every evaluation, under any Trainer."""

import numpy as np
import pytest
import torch
from testing_utils import CPU_TEST_ARGS
from torch import nn
from transformers import Trainer, TrainingArguments

from aesam_hf import AESAMConfig, AESAMTrainer
from aesam_hf.callbacks import TrainSubsetCallback


class Points(torch.utils.data.Dataset):
    """2-D points labelled by the sign of their first coordinate; `flip` of the labels are the other class."""

    def __init__(self, length: int, flip: float = 0.0, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(length, 2, generator=gen)
        self.labels = (self.x[:, 0] > 0).long()
        self.labels[: round(flip * length)] = 1 - self.labels[: round(flip * length)]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.labels[i]}


class SignClassifier(nn.Module):
    """Logits (−x0, x0) plus a trainable 2x2 map that starts at zero: it predicts the true class before training."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x, labels=None):
        logits = torch.stack([-x[:, 0], x[:, 0]], dim=-1) + self.linear(x)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def accuracy(p) -> dict[str, float]:
    return {"accuracy": float((np.argmax(p.predictions, axis=-1) == p.label_ids).mean())}


# The shared CPU test arguments, evaluating every 2 steps.
ARGS = {**CPU_TEST_ARGS, "max_steps": 4, "eval_strategy": "steps", "eval_steps": 2}


def entries(trainer, key: str) -> list[dict]:
    return [e for e in trainer.state.log_history if key in e]


def test_any_trainer_logs_the_fit_of_a_training_subset_to_its_labels_at_every_evaluation(tmp_path):
    # lr 0: the model keeps predicting the true class, so its fit to the subset's labels is exactly the share of
    # labels that are right (here 1 - 0.25): a fit to the *given* labels, noisy ones included.
    args = TrainingArguments(output_dir=str(tmp_path), **{**ARGS, "learning_rate": 0.0})
    subset = Points(16, flip=0.25, seed=1)
    trainer = Trainer(
        model=SignClassifier(),
        args=args,
        train_dataset=Points(64),
        eval_dataset=Points(24, seed=2),
        compute_metrics=accuracy,
    )
    trainer.add_callback(TrainSubsetCallback(trainer, subset))
    trainer.train()
    logged = entries(trainer, "train_subset_accuracy")
    assert [e["step"] for e in logged] == [2, 4]  # once per evaluation, at its step
    assert [e["step"] for e in entries(trainer, "eval_accuracy")] == [2, 4]
    assert all(e["train_subset_accuracy"] == 0.75 and "train_subset_loss" in e for e in logged)
    # The final evaluation, at the step of the last one, reuses its scores and returns them with its own.
    metrics = trainer.evaluate()
    assert metrics["train_subset_accuracy"] == 0.75 and metrics["eval_accuracy"] == 1.0
    assert len(entries(trainer, "train_subset_accuracy")) == 2


def test_training_that_memorizes_shows_in_the_subset_fit(tmp_path):
    # Trained on the noisy points themselves, the fit to their labels climbs above the share that is right.
    noisy = Points(16, flip=0.25, seed=1)
    args = TrainingArguments(output_dir=str(tmp_path), **{**ARGS, "learning_rate": 0.5, "max_steps": 60})
    trainer = Trainer(model=SignClassifier(), args=args, train_dataset=noisy, eval_dataset=Points(24, seed=2))
    trainer.compute_metrics = accuracy
    trainer.add_callback(TrainSubsetCallback(trainer, noisy, metric_key_prefix="noisy_train"))
    trainer.train()
    fits = [e["noisy_train_accuracy"] for e in entries(trainer, "noisy_train_accuracy")]
    assert fits[0] <= 0.8 and fits[-1] > 0.8


def test_with_a_sam_policy_the_subset_evaluation_leaves_training_unchanged(tmp_path):
    """Scoring the subset between steps costs evaluations only: the same SAM run, with and without it."""

    def run(with_callback: bool) -> tuple[list, dict]:
        torch.manual_seed(0)
        args = AESAMConfig(output_dir=str(tmp_path), **{**ARGS, "learning_rate": 0.1, "optim": "aesam", "seed": 3})
        trainer = AESAMTrainer(
            model=SignClassifier(),
            args=args,
            train_dataset=Points(64, flip=0.25),
            eval_dataset=Points(24, seed=2),
            compute_metrics=accuracy,
        )
        if with_callback:
            trainer.add_callback(TrainSubsetCallback(trainer, Points(16, flip=0.25, seed=1)))
        trainer.train()
        return [p.detach().clone() for p in trainer.model.parameters()], entries(trainer, "sam/passes")[-1]

    (plain, plain_log), (watched, watched_log) = run(False), run(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched, strict=True))
    assert plain_log["sam/passes"] == watched_log["sam/passes"]


@pytest.mark.parametrize("prefix", ["", "eval"])
def test_a_prefix_that_would_clash_is_refused(tmp_path, prefix):
    args = TrainingArguments(output_dir=str(tmp_path), **{**ARGS, "eval_strategy": "no"})
    trainer = Trainer(model=SignClassifier(), args=args)
    with pytest.raises(ValueError, match="metric_key_prefix"):
        TrainSubsetCallback(trainer, Points(4), metric_key_prefix=prefix)
    with pytest.raises(ValueError, match="dataset"):
        TrainSubsetCallback(trainer, Points(0))
