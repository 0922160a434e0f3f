"""Trainer callbacks that help judge a SAM run as a careful user would: memorization, true labels, the last model.

SAM (https://huggingface.co/papers/2010.01412) and AE-SAM (https://huggingface.co/papers/2304.14647) pay off where
plain training memorizes, above all with noisy labels. A careful user keeps the checkpoint their own (noisy)
validation data selects (`--load_best_model_at_end`), so a policy's value is judged twice: at that checkpoint and at
the last step. Three callbacks, for any `transformers.Trainer`:

- `TrainSubsetCallback`: the fit of a training subset *to its training labels* at every evaluation. With a fraction
  `p` of wrong labels, a model that learned only the true classes fits about `1 - p` of them; a fit above that is
  memorized noise.
- `EvalSetCallback`: any other dataset scored at every evaluation, e.g. the validation images with their true
  labels (`eval_clean_accuracy`) beside the noisy ones the checkpoint is selected on.
- `LastModelCallback`: a dataset (the test split) scored with the model of the last step, before the Trainer
  replaces it with the best checkpoint: the "final model" score beside the selected one.

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=validation, ...)
    trainer.add_callback(TrainSubsetCallback(trainer, train.select(range(1000))))
    trainer.train()  # each evaluation also logs `train_subset_loss`, `train_subset_accuracy`, ...

Each dataset is evaluated like any evaluation dataset (the Trainer's `compute_metrics`, collator and batch size),
so it must carry the labels it is to be scored on and no training-time augmentation.
"""

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging


logger = logging.get_logger(__name__)


def _check(dataset, metric_key_prefix: str) -> None:
    # `eval` would overwrite the validation metrics these are meant to sit next to.
    if not metric_key_prefix or metric_key_prefix == "eval":
        raise ValueError(
            f"`metric_key_prefix` ({metric_key_prefix!r}) must be a non-empty prefix other than 'eval': the "
            "dataset's metrics are logged next to the evaluation's."
        )
    if len(dataset) == 0:
        raise ValueError("`dataset` is empty: pass at least one example to score.")


class EvalSetCallback(TrainerCallback):
    """Evaluate `dataset` whenever `trainer` evaluates, under `metric_key_prefix`.

    Its metrics are logged (a log entry of their own, at the same step as the evaluation) and also added to the
    metrics that `trainer.evaluate()` returns, so `all_results.json` holds them too. The dataset is scored once per
    optimizer step during training: a second evaluation at the same step (an evaluation dict of several datasets)
    reuses the scores, since the weights have not changed. After training they may have (`load_best_model_at_end`
    loads another checkpoint), so an evaluation after `train()` scores the dataset again.

    Args:
        trainer (`transformers.Trainer`):
            The trainer whose evaluations this one follows; any subclass works.
        dataset (`torch.utils.data.Dataset`):
            The examples to score, with the labels they are to be scored on.
        metric_key_prefix (`str`):
            Prefix of the logged keys, e.g. `eval_clean` for `eval_clean_accuracy`. It must differ from `eval`.
    """

    def __init__(self, trainer: Trainer, dataset, metric_key_prefix: str):
        _check(dataset, metric_key_prefix)
        self.trainer, self.dataset, self.metric_key_prefix = trainer, dataset, metric_key_prefix
        self._scored_step: int | None = None
        self._metrics: dict[str, float] = {}
        self._evaluating = False

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics=None, **kwargs
    ):
        # The dataset's own `evaluate` raises this event again: that one is not followed.
        if self._evaluating:
            return
        if self._scored_step != state.global_step:
            self._evaluating = True
            try:
                self._metrics = self.trainer.evaluate(
                    eval_dataset=self.dataset, metric_key_prefix=self.metric_key_prefix
                )
            finally:
                self._evaluating = False
            self._scored_step = state.global_step
        if metrics is not None:
            metrics.update(self._metrics)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        # Raised after the best checkpoint was loaded: the step number stays, the weights may not.
        self._scored_step = None


class TrainSubsetCallback(EvalSetCallback):
    """`EvalSetCallback` for a subset of the training data with its training labels (noisy ones included).

    Logged as `train_subset_*` by default: `train_subset_accuracy` rising past the share of right labels is
    memorization.
    """

    def __init__(self, trainer: Trainer, dataset, metric_key_prefix: str = "train_subset"):
        super().__init__(trainer, dataset, metric_key_prefix)


class LastModelCallback(TrainerCallback):
    """Score `dataset` with the model of the last optimizer step, before `load_best_model_at_end` replaces it.

    With `--load_best_model_at_end`, the model that `trainer.predict` scores after training is the selected
    checkpoint; this callback keeps the other half of the comparison: the model training ended with. It evaluates
    once, at the step where `state.global_step` reaches `state.max_steps`, logs the metrics under `metric_key_prefix`
    and keeps them in `metrics` for the caller's results. A resumed run that has already passed that step scores
    nothing (`metrics` stays empty).

    Args:
        trainer (`transformers.Trainer`):
            The trainer to follow; any subclass works.
        dataset (`torch.utils.data.Dataset`):
            The examples to score (the test split), with their labels.
        metric_key_prefix (`str`, *optional*, defaults to `"test_last"`):
            Prefix of the keys, e.g. `test_last_accuracy`. It must differ from `eval`.
    """

    def __init__(self, trainer: Trainer, dataset, metric_key_prefix: str = "test_last"):
        _check(dataset, metric_key_prefix)
        self.trainer, self.dataset, self.metric_key_prefix = trainer, dataset, metric_key_prefix
        self.metrics: dict[str, float] = {}

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        # `on_step_end` of the last step runs before the training loop ends, hence before the best checkpoint is
        # loaded; `evaluate` (not `predict`) also logs the scores into the log history.
        if state.global_step == state.max_steps and not self.metrics:
            # `evaluate` ends with the `on_evaluate` event, which clears `control.should_evaluate`: the last step's
            # own evaluation (and its checkpoint, a candidate for selection) must still happen.
            flags = {name: getattr(control, name) for name in ("should_evaluate", "should_save", "should_log")}
            metrics = self.trainer.evaluate(eval_dataset=self.dataset, metric_key_prefix=self.metric_key_prefix)
            for name, value in flags.items():
                setattr(control, name, value)
            # Other callbacks following evaluations add their own keys to the returned dict: only this set's stay.
            self.metrics = {k: v for k, v in metrics.items() if k.startswith(f"{self.metric_key_prefix}_")}

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if not self.metrics:  # stopped before `max_steps` (early stopping), or resumed past it
            logger.warning(
                f"LastModelCallback scored nothing: training ended at step {state.global_step}, before or without "
                f"reaching max_steps ({state.max_steps}), so there is no `{self.metric_key_prefix}_*` score."
            )
