"""`SAMSettings`: every setting of the SAM policies and of the SAM step, with its default, help and rule, written once.

The names are the command-line flags (`--sam_rho`), and they stay the same all the way down: `AESAMConfig` inherits
these fields, `make_policy` and the policies read them from the record, the controller reads the step's settings from
the policy's record, and a checkpoint saves them under the same names. Which policy reads which setting is declared by
each policy class (`aesam_hf.policies`, `uses`). The meaning of each value is in `docs/algorithm.md`.

No `transformers` import: hand-written loops build a `SAMSettings` too (`make_policy("aesam", sam_rho=0.1, ...)`).
"""

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


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
    "sam_rho": _check_rho,
    "sam_adaptive": _check_bool,
    "looksam_alpha": _check_alpha,
    "sam_interval": _check_interval,
    "sam_probability": _check_probability,
    "aesam_delta": _check_delta,
    "aesam_lambda1": _check_finite,
    "aesam_lambda2": _check_finite,
    "aesam_budget": _check_budget,
}


def check(name: str, value: Any) -> None:
    """Raise a `ValueError` naming the setting `name` if `value` breaks its rule."""
    _RULES[name](value, name)


@dataclass
class SAMSettings:
    r"""
    The settings of the SAM policies and of the SAM step. Every field is checked when the record is built. Which
    policy reads which setting is declared by the policy classes (`uses`), and listed by `--optim`'s help.

    Parameters:
        sam_rho (`float`, *optional*, defaults to `0.05`):
            Radius of the SAM neighbourhood, a finite number >= 0.
        sam_adaptive (`bool`, *optional*, defaults to `False`):
            Use ASAM's scale-invariant perturbation `rho * w² g / ||w g||`.
        looksam_alpha (`float`, *optional*, defaults to `0.1`):
            Weight >= 0 of the reused SAM direction on non-SAM steps (the LookSAM policies). The LookSAM paper used
            `0.7`, which collapsed LookSAM on our image task (`docs/algorithm.md`, "The LookSAM gradient").
        sam_interval (`int`, *optional*, defaults to `5`):
            `k`: a SAM step when `step % k == 0`.
        sam_probability (`float`, *optional*, defaults to `0.5`):
            `p`: the probability of a SAM step, drawn from a generator seeded with the run's seed.
        aesam_delta (`float`, *optional*, defaults to `0.9`):
            EMA rate, in (0, 1), of the running mean and variance of ||g||².
        aesam_lambda1 (`float`, *optional*, defaults to `-1.0`):
            Threshold coefficient c_t at the end of training.
        aesam_lambda2 (`float`, *optional*, defaults to `1.0`):
            Threshold coefficient c_t at the start of training.
        aesam_budget (`float` or `None`, *optional*, defaults to `None`):
            The fraction of SAM steps you can afford over the run, in (0, 1):
            the adaptive policies still choose *which* steps by ||g||², with a threshold corrected so that the run's
            fraction lands on it. `None`: the paper's schedule alone decides.
    """

    sam_rho: float = field(default=0.05, metadata={"help": "Radius rho >= 0 (finite) of the SAM neighbourhood."})
    sam_adaptive: bool = field(
        default=False, metadata={"help": "Use ASAM's scale-invariant perturbation rho * w^2 g / ||w g||."}
    )
    # [choice] The LookSAM paper's 0.7 collapsed LookSAM on the project's image task (validation 62% against 83.5% at
    # 0.1) and on the regression test task; 0.1 did not. `--looksam_alpha 0.7` gives the paper's value.
    looksam_alpha: float = field(
        default=0.1, metadata={"help": "Weight >= 0 of the reused SAM direction on non-SAM steps."}
    )
    sam_interval: int = field(default=5, metadata={"help": "k: a SAM step when step %% k == 0."})
    sam_probability: float = field(default=0.5, metadata={"help": "p: the probability of a SAM step at each step."})
    aesam_delta: float = field(
        default=0.9, metadata={"help": "EMA rate, in (0, 1), of the running mean and variance of ||g||^2."}
    )
    aesam_lambda1: float = field(default=-1.0, metadata={"help": "Threshold coefficient c_t at the end of training."})
    aesam_lambda2: float = field(default=1.0, metadata={"help": "Threshold coefficient c_t at the start of training."})
    # Off: the paper's schedule alone sets the fraction of SAM steps.
    aesam_budget: float | None = field(
        default=None,
        metadata={
            "help": "Target fraction of SAM steps over the run, in (0, 1); the threshold is corrected so that the "
            "run's fraction lands on it. Default: off, the paper's schedule decides."
        },
    )

    def __post_init__(self):
        for name in SETTINGS:
            check(name, getattr(self, name))
        # Cooperative: `AESAMConfig` puts this class before `TrainingArguments`, whose `__post_init__` runs next.
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()

    def non_default(self) -> dict[str, Any]:
        """The settings that differ from their defaults, by name."""
        return {n: getattr(self, n) for n in SETTINGS if getattr(self, n) != DEFAULTS[n]}


# The setting names, in declaration order, and their defaults.
SETTINGS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SAMSettings))
DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(SAMSettings)}


def check_total_steps(value: int | None, name: str = "total_steps") -> None:
    # The adaptive threshold c_t interpolates over t / T; without T it is undefined. Not a config field: the
    # Trainer derives T (`max_steps`) when training starts.
    if value is None or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"`{name}` ({value!r}) must be a positive integer: the adaptive policies need the total number of "
            "optimizer steps T for their schedule c_t. Set `max_steps`, or use a dataset with a length."
        )
