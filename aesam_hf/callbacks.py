"""Trainer callbacks that help judge a SAM run: how much of its training data a model has memorized.

SAM (https://huggingface.co/papers/2010.01412) and AE-SAM (https://huggingface.co/papers/2304.14647) pay off where
plain training memorizes, above all with noisy labels. Validation accuracy shows the cost of memorizing only once it
has happened; the fit of a training subset *to its training labels* shows it happening: with a fraction `p` of wrong
labels, a model that learned only the true classes fits about `1 - p` of them, and a fit above that is memorized
noise. `TrainSubsetCallback` scores such a subset at every evaluation of any `transformers.Trainer`:

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=validation, ...)
    trainer.add_callback(TrainSubsetCallback(trainer, train.select(range(1000))))
    trainer.train()  # each evaluation also logs `train_subset_loss`, `train_subset_accuracy`, ...

The subset is evaluated like any evaluation dataset (the Trainer's `compute_metrics`, collator and batch size), so it
must carry the training labels and no training-time augmentation.
"""

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class TrainSubsetCallback(TrainerCallback):
    """Evaluate `dataset` (a subset of the training data, with its training labels) whenever `trainer` evaluates.

    Its metrics are logged under `metric_key_prefix` (a log entry of their own, at the same step as the evaluation)
    and also added to the metrics that `trainer.evaluate()` returns, so `all_results.json` holds them too. The subset
    is scored once per optimizer step: a second evaluation at the same step (an evaluation dict of several datasets,
    or the final `evaluate()` after training) reuses the scores, since the weights have not changed.

    Args:
        trainer (`transformers.Trainer`):
            The trainer whose evaluations this one follows; any subclass works.
        dataset (`torch.utils.data.Dataset`):
            The examples to score, with the labels the model is trained on (noisy ones included).
        metric_key_prefix (`str`, *optional*, defaults to `"train_subset"`):
            Prefix of the logged keys, e.g. `train_subset_accuracy`. It must differ from the evaluation's own prefix.
    """

    def __init__(self, trainer: Trainer, dataset, metric_key_prefix: str = "train_subset"):
        # `eval` would overwrite the validation metrics it is meant to sit next to.
        if not metric_key_prefix or metric_key_prefix == "eval":
            raise ValueError(
                f"`metric_key_prefix` ({metric_key_prefix!r}) must be a non-empty prefix other than 'eval': the "
                "subset's metrics are logged next to the evaluation's."
            )
        if len(dataset) == 0:
            raise ValueError("`dataset` is empty: pass at least one training example to score.")
        self.trainer, self.dataset, self.metric_key_prefix = trainer, dataset, metric_key_prefix
        self._scored_step: int | None = None
        self._metrics: dict[str, float] = {}
        self._evaluating = False

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics=None, **kwargs
    ):
        # The subset's own `evaluate` raises this event again: that one is not followed.
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
