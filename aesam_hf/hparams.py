"""The hyper-parameters of the SAM policies and of the SAM step: each default and each rule, written once.

The policies (`aesam_hf.policies`), the controller (`aesam_hf.controller`) and the config (`aesam_hf.config`) all
read their defaults from `DEFAULTS` and validate with `check`, so a rule cannot drift between the command line and a
hand-written loop. The meaning of each value is in `docs/algorithm.md`.

No `transformers` import: hand-written loops use this module through the policies and the controller.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SAMDefaults:
    """The default of every hyper-parameter, by the name the policies and the controller take."""

    rho: float = 0.05
    adaptive: bool = False
    # [choice] The LookSAM paper's 0.7 collapsed LookSAM on the project's image task (validation 62% against 83.5% at
    # 0.1) and on the regression test task; 0.1 did not. `--looksam_alpha 0.7` gives the paper's value.
    looksam_alpha: float = 0.1
    interval: int = 5
    probability: float = 0.5
    delta: float = 0.9
    lambda1: float = -1.0
    lambda2: float = 1.0
    budget: float | None = None  # off: the paper's schedule alone sets the fraction of SAM steps


DEFAULTS = SAMDefaults()


# ---- one function per rule; `name` is the argument as the caller spelled it (`sam_rho` on the command line) ----


def _check_number(value: Any, name: str) -> None:
    # From Python (not the command line, where HfArgumentParser converts) a value can arrive as a string: compared
    # with a number it would raise a TypeError that names no argument.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{name}` ({value!r}) must be a number, not a {type(value).__name__}.")


def _check_rho(value: float, name: str) -> None:
    _check_number(value, name)
    # rho = 0 is allowed (the second pass recomputes g at w); a negative radius is a descent step, not SAM, and an
    # infinite one moves the weights to inf.
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(
            f"`{name}` ({value!r}) must be a finite number >= 0: it is the radius of the SAM neighbourhood."
        )


def _check_alpha(value: float, name: str) -> None:
    _check_number(value, name)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"`{name}` ({value!r}) must be a finite number >= 0: it weighs the reused LookSAM direction.")


def _check_interval(value: int, name: str) -> None:
    # `t % k` needs k >= 1; k = 1 makes every step a SAM step (that is `sam`, but not an error).
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` ({value!r}) must be an integer >= 1: a SAM step is taken every `{name}` steps.")


def _check_probability(value: float, name: str) -> None:
    _check_number(value, name)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` ({value!r}) must be in [0, 1]: it is the probability of a SAM step.")


def _check_delta(value: float, name: str) -> None:
    _check_number(value, name)
    # delta = 0 would forget all history and delta = 1 would never move from the start values.
    if not 0.0 < value < 1.0:
        raise ValueError(f"`{name}` ({value!r}) must be in (0, 1): it is the EMA rate of the mean and variance.")


def _check_finite(value: float, name: str) -> None:
    _check_number(value, name)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` ({value!r}) must be a finite number.")


def _check_budget(value: float | None, name: str) -> None:
    # 0 and 1 are `erm` and `sam`; the threshold that gives them is infinite.
    if value is None:
        return
    _check_number(value, name)
    if not 0.0 < value < 1.0:
        raise ValueError(f"`{name}` ({value!r}) must be None (off) or in (0, 1): the target fraction of SAM steps.")


def _check_bool(value: bool, name: str) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` ({value!r}) must be True or False.")


_RULES: dict[str, Callable[[Any, str], None]] = {
    "rho": _check_rho,
    "adaptive": _check_bool,
    "looksam_alpha": _check_alpha,
    "interval": _check_interval,
    "probability": _check_probability,
    "delta": _check_delta,
    "lambda1": _check_finite,
    "lambda2": _check_finite,
    "budget": _check_budget,
}


def check(hparam: str, value: Any, name: str | None = None) -> None:
    """Raise a `ValueError` naming `name` (default: `hparam`) if `value` breaks the rule of `hparam`."""
    _RULES[hparam](value, name or hparam)


def check_total_steps(value: int | None, name: str = "total_steps") -> None:
    # The adaptive threshold c_t interpolates over t / T; without T it is undefined. Not a config field: the
    # Trainer derives T (`max_steps`) when training starts.
    if value is None or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"`{name}` ({value!r}) must be a positive integer: the adaptive policies need the total number of "
            "optimizer steps T for their schedule c_t. Set `max_steps`, or use a dataset with a length."
        )
