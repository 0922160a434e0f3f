"""`aesam_hf.callbacks`: a training subset or any other dataset scored at every evaluation, and a dataset scored with
the model of the last step before `load_best_model_at_end` replaces it, under any Trainer."""

import numpy as np
import pytest
import torch
from testing_utils import CPU_TEST_ARGS
from torch import nn
from transformers import Trainer, TrainingArguments

from aesam_hf import AESAMConfig, AESAMTrainer
from aesam_hf.callbacks import EvalSetCallback, LastModelCallback, TrainSubsetCallback


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
    # An evaluation after training scores the subset again (the weights may then be the best checkpoint's, at the
    # same step number) and returns its scores with its own; a second one at the same step reuses them.
    metrics = trainer.evaluate()
    assert metrics["train_subset_accuracy"] == 0.75 and metrics["eval_accuracy"] == 1.0
    assert [e["step"] for e in entries(trainer, "train_subset_accuracy")] == [2, 4, 4]
    assert trainer.evaluate()["train_subset_accuracy"] == 0.75
    assert len(entries(trainer, "train_subset_accuracy")) == 3


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


def test_an_eval_set_is_scored_with_its_own_labels_at_every_evaluation(tmp_path):
    # lr 0: the model keeps predicting the true class. Validated on points whose first 6 of 24 labels are flipped
    # (0.75), and on the same points with their true labels (1.0): the selection set's noise and the true score.
    args = TrainingArguments(output_dir=str(tmp_path), **{**ARGS, "learning_rate": 0.0})
    noisy, clean = Points(24, flip=0.25, seed=2), Points(24, seed=2)
    assert torch.equal(noisy.x, clean.x)
    trainer = Trainer(
        model=SignClassifier(), args=args, train_dataset=Points(64), eval_dataset=noisy, compute_metrics=accuracy
    )
    trainer.add_callback(EvalSetCallback(trainer, clean, "eval_clean"))
    trainer.train()
    assert [e["step"] for e in entries(trainer, "eval_clean_accuracy")] == [2, 4]
    assert all(e["eval_clean_accuracy"] == 1.0 for e in entries(trainer, "eval_clean_accuracy"))
    assert [e["eval_accuracy"] for e in entries(trainer, "eval_accuracy")] == [0.75, 0.75]
    metrics = trainer.evaluate()
    assert metrics["eval_clean_accuracy"] == 1.0 and metrics["eval_accuracy"] == 0.75


@pytest.mark.parametrize("callback", [EvalSetCallback, LastModelCallback])
@pytest.mark.parametrize("prefix", ["", "eval"])
def test_eval_set_and_last_model_refuse_a_clashing_prefix_or_no_data(tmp_path, callback, prefix):
    args = TrainingArguments(output_dir=str(tmp_path), **{**ARGS, "eval_strategy": "no"})
    trainer = Trainer(model=SignClassifier(), args=args)
    with pytest.raises(ValueError, match="metric_key_prefix"):
        callback(trainer, Points(4), metric_key_prefix=prefix)
    with pytest.raises(ValueError, match="dataset"):
        callback(trainer, Points(0), metric_key_prefix="other")


# ---- LastModelCallback: the model training ended with, beside the selected checkpoint ----

# Trained on points whose labels are all inverted, the model (which starts right) unlearns the sign little by little:
# at lr 0.3 its accuracy on true labels falls between the evaluations at steps 2 and 4, and on inverted labels rises.
TRUE_LABELS, INVERTED_LABELS = Points(24, seed=2), Points(24, flip=1.0, seed=2)
TEST = Points(40, seed=3)
SELECTION = {
    **ARGS,
    "learning_rate": 0.3,
    "save_strategy": "steps",
    "save_steps": 2,
    "metric_for_best_model": "accuracy",
}
TRAINERS = {"stock": (Trainer, TrainingArguments, {}), "sam": (AESAMTrainer, AESAMConfig, {"optim": "sam"})}


def selection_run(output_dir, kind: str, eval_dataset, load_best: bool, *callbacks) -> Trainer:
    """4 steps on the inverted points, evaluated and saved every 2; each of `callbacks` is built as `cb(trainer)`."""
    trainer_cls, args_cls, extra = TRAINERS[kind]
    args = args_cls(output_dir=str(output_dir), **SELECTION, **extra, load_best_model_at_end=load_best)
    trainer = trainer_cls(
        model=SignClassifier(),
        args=args,
        train_dataset=Points(64, flip=1.0),
        eval_dataset=eval_dataset,
        compute_metrics=accuracy,
    )
    for build in callbacks:
        trainer.add_callback(build(trainer))
    trainer.train()
    return trainer


def last_model(trainer) -> LastModelCallback:
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, LastModelCallback))


@pytest.mark.parametrize("kind", list(TRAINERS))
def test_last_model_is_scored_before_the_best_checkpoint_replaces_it(tmp_path, kind):
    trainer = selection_run(tmp_path / "best", kind, TRUE_LABELS, True, lambda t: LastModelCallback(t, TEST))
    # The same run without best-model loading ends with the last model: the one the callback is to score.
    reference = selection_run(tmp_path / "last", kind, TRUE_LABELS, False)
    assert trainer.state.best_global_step == 2  # accuracy on the true labels fell after step 2
    metrics = last_model(trainer).metrics
    expected = reference.evaluate(TEST, metric_key_prefix="test_last")
    assert metrics["test_last_accuracy"] == expected["test_last_accuracy"]
    assert metrics["test_last_loss"] == expected["test_last_loss"]
    # After training, the Trainer holds the selected (step 2) model, which scores the test points otherwise.
    assert trainer.evaluate(TEST)["eval_accuracy"] != metrics["test_last_accuracy"]
    # Scored once, at the last step; that step's own logging, evaluation and checkpoint all still happened, on the
    # weights the reference run had there.
    assert [e["step"] for e in entries(trainer, "test_last_accuracy")] == [4]
    assert [e["step"] for e in entries(trainer, "loss")] == [1, 2, 3, 4]
    evals, reference_evals = entries(trainer, "eval_accuracy")[:2], entries(reference, "eval_accuracy")
    assert [e["step"] for e in evals] == [2, 4]
    assert [e["eval_loss"] for e in evals] == [e["eval_loss"] for e in reference_evals]
    assert (tmp_path / "best" / "checkpoint-4").is_dir()


@pytest.mark.parametrize("kind", list(TRAINERS))
def test_last_model_scoring_keeps_the_last_step_a_candidate_for_selection(tmp_path, kind):
    # Selected on the inverted labels, whose accuracy rises: the last checkpoint is the best, if it is evaluated.
    trainer = selection_run(tmp_path, kind, INVERTED_LABELS, True, lambda t: LastModelCallback(t, TEST))
    (last_eval,) = [e for e in entries(trainer, "eval_accuracy") if e["step"] == 4]
    assert trainer.state.best_global_step == 4 and trainer.state.best_metric == last_eval["eval_accuracy"]
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-4")
    # The selected model is the last one here: the two scores agree.
    assert last_model(trainer).metrics["test_last_accuracy"] == trainer.evaluate(TEST)["eval_accuracy"]


def test_last_model_metrics_hold_only_its_own_keys(tmp_path):
    # Its inner `evaluate` raises `on_evaluate` too: the TrainSubsetCallback adds its keys to that evaluation's dict.
    subset = Points(16, flip=0.25, seed=1)
    callbacks = (lambda t: TrainSubsetCallback(t, subset), lambda t: LastModelCallback(t, TEST))
    trainer = selection_run(tmp_path, "stock", TRUE_LABELS, True, *callbacks)
    stats = ("loss", "accuracy", "runtime", "samples_per_second", "steps_per_second")
    assert set(last_model(trainer).metrics) == {f"test_last_{k}" for k in stats}
    # The subset is still scored once per evaluation step.
    assert [e["step"] for e in entries(trainer, "train_subset_accuracy")] == [2, 4]


@pytest.mark.parametrize("kind", list(TRAINERS))
def test_an_eval_set_is_scored_again_after_the_best_checkpoint_is_loaded(tmp_path, kind):
    # The same points under two prefixes: after training, the Trainer holds the step-2 model, and an evaluation of it
    # must score both alike (the set's scores of the step-4 model are not reused at the same step number).
    trainer = selection_run(tmp_path, kind, TRUE_LABELS, True, lambda t: EvalSetCallback(t, TRUE_LABELS, "eval_clean"))
    assert trainer.state.best_global_step == 2
    final = trainer.evaluate()
    assert final["eval_clean_accuracy"] == final["eval_accuracy"] == trainer.state.best_metric
    assert final["eval_clean_loss"] == final["eval_loss"]


def test_last_model_says_when_a_run_ended_before_its_last_step(tmp_path, caplog):
    from transformers import EarlyStoppingCallback

    args = TrainingArguments(output_dir=str(tmp_path), **{**SELECTION, "max_steps": 12}, load_best_model_at_end=True)
    trainer = Trainer(
        model=SignClassifier(),
        args=args,
        train_dataset=Points(64, flip=1.0),
        eval_dataset=TRUE_LABELS,
        compute_metrics=accuracy,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=1)],
    )
    callback = LastModelCallback(trainer, TEST)
    trainer.add_callback(callback)
    with caplog.at_level("WARNING"):
        trainer.train()
    assert trainer.state.global_step < 12 and callback.metrics == {}
    assert "LastModelCallback scored nothing" in caplog.text and "max_steps (12)" in caplog.text
