"""GLUE's metrics, through `evaluate` when it can load them and with scikit-learn/scipy when it cannot.

`evaluate.load("glue", task)` fetches a metric script from the Hugging Face Hub, so offline it fails. The fallback
computes the same numbers the same way the `glue` metric script does (accuracy, F1 of the positive class, Matthews
correlation, Pearson and Spearman correlations), so a run reports identical metrics online and offline.
"""

import logging
import os
from collections.abc import Callable

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef


logger = logging.getLogger(__name__)

# The metrics of each GLUE task, as the `glue` metric of `evaluate` reports them.
GLUE_TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "mnli": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "qnli": ("accuracy",),
    "qqp": ("accuracy", "f1"),
    "rte": ("accuracy",),
    "sst2": ("accuracy",),
    "stsb": ("pearson", "spearmanr"),
    "wnli": ("accuracy",),
}

# Set either to 1 and the metrics are computed locally without trying the Hub.
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE")

MetricFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]


def _metric_names(task_name: str | None, is_regression: bool) -> tuple[str, ...]:
    if task_name is None:
        # A local CSV/JSON task: what run_glue reports for it (`mse` for regression, `accuracy` otherwise).
        return ("mse",) if is_regression else ("accuracy",)
    if task_name not in GLUE_TASK_METRICS:
        raise ValueError(f"`task_name` ({task_name!r}) must be one of {sorted(GLUE_TASK_METRICS)}.")
    return GLUE_TASK_METRICS[task_name]


def compute_glue_metrics(
    task_name: str | None, predictions: np.ndarray, references: np.ndarray, is_regression: bool = False
) -> dict[str, float]:
    """The task's metrics from scikit-learn/scipy, defined as in the `glue` metric script of `evaluate`."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    results = {}
    for name in _metric_names(task_name, is_regression):
        if name == "accuracy":
            results[name] = float((predictions == references).mean())
        elif name == "f1":
            results[name] = float(f1_score(y_true=references, y_pred=predictions))
        elif name == "matthews_correlation":
            results[name] = float(matthews_corrcoef(references, predictions))
        elif name == "pearson":
            results[name] = float(pearsonr(predictions, references)[0])
        elif name == "spearmanr":
            results[name] = float(spearmanr(predictions, references)[0])
        elif name == "mse":
            results[name] = float(((predictions - references) ** 2).mean())
    return results


def load_glue_metric(task_name: str | None, is_regression: bool = False, cache_dir: str | None = None) -> MetricFn:
    """A `metric(predictions, references) -> dict` for the task: `evaluate`'s when it loads, else the fallback.

    Never raises for lack of the Hub: the reason `evaluate` could not load is logged once, then the same metrics are
    computed locally. With `HF_HUB_OFFLINE=1` (or `HF_EVALUATE_OFFLINE=1`) `evaluate` is not tried at all.
    """
    names = _metric_names(task_name, is_regression)  # validates task_name before anything is fetched
    path, config = ("glue", task_name) if task_name is not None else ("mse" if is_regression else "accuracy", None)

    def fallback(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
        return compute_glue_metrics(task_name, predictions, references, is_regression)

    if any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in _OFFLINE_VARIABLES):
        # Declared offline: importing `evaluate` alone takes seconds, and it would only fail to fetch the script.
        logger.info(
            f"Offline ({' or '.join(_OFFLINE_VARIABLES)}): computing {', '.join(names)} with scikit-learn/scipy."
        )
        return fallback
    try:
        import evaluate

        metric = evaluate.load(path, config, cache_dir=cache_dir)
    except Exception as err:  # offline, Hub down, evaluate not installed: all mean "compute it here"
        logger.warning(
            f"`evaluate` could not load the {path!r} metric ({type(err).__name__}: {str(err)[:200]}); computing "
            f"{', '.join(names)} with scikit-learn/scipy instead."
        )
        return fallback

    def compute(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
        return {k: float(v) for k, v in metric.compute(predictions=predictions, references=references).items()}

    return compute
