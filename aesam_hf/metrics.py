"""The `sam/*` metrics of the Trainer's logs, and keeping the second pass out of the metrics a trainer records.

`summarize_steps` turns the controller's per-step records into the logged means and counts (`docs/algorithm.md`,
"Rules every policy obeys", lists them); `unrecorded` restores what `compute_loss` recorded during the second pass of a
SAM step, so a subclass's metrics (TRL's `num_tokens`, `entropy`, `rewards/*`) are those of the first pass, as under
ERM.
"""

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

from .controller import StepRecord


def _snapshot(value: Any) -> Any:
    """A copy of a metrics container deep enough to restore it: nested dicts down to their lists."""
    if isinstance(value, dict):
        return {key: _snapshot(item) for key, item in value.items()}
    return list(value) if isinstance(value, list) else value


def _restore(target: dict, saved: dict) -> None:
    """Put `saved` back into `target` in place, so that a `defaultdict` stays one and outside references hold."""
    for key in [k for k in target if k not in saved]:
        del target[key]
    for key, item in saved.items():
        if isinstance(item, dict) and isinstance(target.get(key), dict):
            _restore(target[key], item)
        else:
            target[key] = _snapshot(item)


def _counters(obj: Any) -> dict[str, int | float]:
    """The numeric attributes of an object (the trainer's token totals, the state's `num_input_tokens_seen`)."""
    return {k: v for k, v in vars(obj).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@contextlib.contextmanager
def unrecorded(trainer: Any) -> Iterator[None]:
    """Drop what the second pass of a SAM step records, so that every metric is the first pass's, as under ERM.

    `compute_loss` runs again at w + e; TRL's trainers (and subclasses that follow their convention) record into
    `self._metrics[mode][key]` lists and numeric counters on the trainer (`_total_train_tokens`), and the stock
    Trainer counts into `trainer.state` (`num_input_tokens_seen`, `total_flos`). All of them are restored here.
    """
    metrics = getattr(trainer, "_metrics", None)
    saved_metrics = _snapshot(metrics) if isinstance(metrics, dict) else None
    saved_counters = _counters(trainer)
    saved_state = _counters(trainer.state)
    try:
        yield
    finally:
        if saved_metrics is not None:
            _restore(metrics, saved_metrics)
        for name, value in saved_counters.items():
            setattr(trainer, name, value)
        for name, value in saved_state.items():
            setattr(trainer.state, name, value)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summarize_steps(records: list[StepRecord]) -> dict[str, float]:
    """The `sam/*` metrics of a logging window: means over its steps, and counts of the steps that went wrong.

    Device values are read here, in one transfer per window rather than one sync per step.
    """
    logs: dict[str, float] = {}
    decided = [r for r in records if not (r.overflow or r.partial)]
    if decided:
        logs["sam/fraction"] = _mean([float(r.sam) for r in decided])
    measured = [r.grad_norm_sq for r in decided if r.grad_norm_sq is not None]
    if measured:
        xs = torch.stack(measured).tolist()
        finite = [x for x in xs if math.isfinite(x)]
        if finite:
            logs["sam/grad_norm_sq"] = _mean(finite)
        if len(finite) < len(xs):
            # No loss scaler skipped these steps (that would be an overflow step): the optimizer took them.
            logs["sam/nonfinite_steps"] = float(len(xs) - len(finite))
    for key in dict.fromkeys(k for r in decided for k in r.policy_stats):
        logs[f"sam/{key}"] = _mean([r.policy_stats[key] for r in decided if key in r.policy_stats])
    geometry = [r.looksam.ratios() for r in decided if r.looksam is not None]
    for key in geometry[0] if geometry else ():
        logs[f"sam/looksam_{key}"] = _mean(torch.stack([g[key] for g in geometry]).tolist())
    overflow = sum(r.overflow for r in records)
    if overflow:
        logs["sam/overflow_steps"] = float(overflow)
    partial = sum(r.partial for r in records)
    if partial:
        logs["sam/partial_steps"] = float(partial)
    return logs
