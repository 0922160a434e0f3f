"""Reading a saved SAM state field by field: every value a decision reads is checked before it is used.

A state file can be truncated, edited, written by another model or hold a NaN from a faulty run. Loaded unchecked, a
NaN `mu` silently disables SAM for the rest of the run and a `g_v` of the wrong shape crashes several steps later with
a bare size mismatch. So the controller and the policies read their state through these functions, which raise a
`StateError` naming the field (`policy.mu`, `g_v[3]`) and the rule; `aesam_hf.checkpoint` adds the file's path.

No `transformers` import: hand-written loops load states through the controller too.
"""

import math
from typing import Any

import torch
from torch import Tensor


class StateError(ValueError):
    """A saved SAM state that cannot be used: `field` names the entry, the message says what is wrong with it."""

    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(f"`{field}` {problem}")


def field_of(state: Any, key: str, prefix: str = "") -> Any:
    """`state[key]`, or a `StateError` if `state` is not a dict or has no such key."""
    name = f"{prefix}{key}"
    if not isinstance(state, dict):
        raise StateError(prefix.rstrip(".") or "state", f"must be a dict, got {type(state).__name__}")
    if key not in state:
        raise StateError(name, "is missing")
    return state[key]


def count(state: Any, key: str, prefix: str = "") -> int:
    """A counter: an integer >= 0."""
    value = field_of(state, key, prefix)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StateError(f"{prefix}{key}", f"({value!r}) must be an integer >= 0")
    return value


def finite(state: Any, key: str, prefix: str = "", minimum: float | None = None) -> float:
    """A statistic: a finite number (>= `minimum` when given), returned as a Python float."""
    value = field_of(state, key, prefix)
    if isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StateError(f"{prefix}{key}", f"({value!r}) must be a number, not a {type(value).__name__}")
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        rule = "a finite number" if minimum is None else f"a finite number >= {minimum}"
        raise StateError(f"{prefix}{key}", f"({value!r}) must be {rule}")
    return float(value)


def tensor(value: Any, name: str, shape: torch.Size | tuple[int, ...], dtype: torch.dtype | None = None) -> Tensor:
    """A saved tensor of the given shape (and dtype); floating-point ones must be finite."""
    if not isinstance(value, Tensor):
        raise StateError(name, f"must be a tensor, got {type(value).__name__}")
    if tuple(value.shape) != tuple(shape):
        raise StateError(name, f"has shape {tuple(value.shape)}, this run needs {tuple(shape)}")
    if dtype is not None and value.dtype != dtype:
        raise StateError(name, f"has dtype {value.dtype}, this run needs {dtype}")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise StateError(name, "holds inf/NaN values")
    return value
