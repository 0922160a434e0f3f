"""Policies that decide, once per optimizer step, whether the step is a SAM step.

Implements the decision rules of `docs/algorithm.md` ("The policies"):
ERM, always-SAM (Foret et al., https://huggingface.co/papers/2010.01412), random SS-SAM/RST (Zhao et al. 2022),
periodic, LookSAM (Liu et al. 2022) and the adaptive AE-SAM / AE-LookSAM rule of Jiang et al., ICLR 2023
(https://huggingface.co/papers/2304.14647).

Every policy has the same three methods: `decide(t, x)`, `state_dict()` and `load_state_dict()`. Decisions must be
identical on every rank (`docs/algorithm.md`, "Rules every policy obeys"): the caller passes `x` computed from the all-reduced
gradient, and the random policy draws from its own generator seeded identically on every rank.

The registry is `POLICY_CLASSES` at the end: adding a policy is one class (its `name`, the settings it `uses`, and
`decide`) plus its entry there. The command line, the help texts, the launcher, the model card and the checkpoint's
settings all read the registry.

This module imports only `torch`, so hand-written training loops can use it without `transformers`.
"""

import difflib
import math
import warnings
from enum import Enum
from typing import Any, ClassVar

import torch

from . import state as saved
from .settings import DEFAULTS, SETTINGS, SAMSettings, check_total_steps


class SAMPolicy:
    """Base class. Subclasses set `name`, the settings their decisions read in `uses`, and `decide`.

    Every policy is built from one `SAMSettings` record (`settings`), which also carries the settings of the SAM step
    itself (`sam_rho`, ...) that the controller reads, plus the run's length and seed.
    """

    # The policy's name on the command line (`--optim aesam`).
    name: ClassVar[str]
    # The `SAMSettings` fields `decide` reads (the step's own settings are added by `used_settings`).
    uses: ClassVar[tuple[str, ...]] = ()
    # Those of `uses` that have no default for this policy: None is refused (by the config, before training).
    requires: ClassVar[tuple[str, ...]] = ()
    # True when the schedule needs the run's length T (`total_steps`).
    needs_total_steps: ClassVar[bool] = False
    # True when `decide` reads `x`: the caller must then bring `x` to the host (one sync per step).
    uses_grad_norm: ClassVar[bool] = False
    # True for the LookSAM-style policies: non-SAM steps reuse the cached SAM direction g_v.
    reuses_direction: ClassVar[bool] = False
    # False for the one-pass policies: lets callers skip caching inputs for a second pass that never comes.
    can_sam: ClassVar[bool] = True
    # True for Momentum-SAM: every step's single pass runs at weights moved along the optimizer's momentum.
    momentum: ClassVar[bool] = False

    def __init__(self, settings: SAMSettings | None = None, total_steps: int | None = None, seed: int = 0):
        self.settings = settings if settings is not None else SAMSettings()
        for name in self.requires:
            if getattr(self.settings, name) is None:
                raise ValueError(f"`{name}` (None) must be set for the {self.name!r} policy: {_REQUIRED_WHY[name]}")
        if self.needs_total_steps:
            check_total_steps(total_steps)
        self.total_steps = total_steps
        self.seed = seed

    @classmethod
    def used_settings(cls) -> tuple[str, ...]:
        """Every `SAMSettings` field a run of this policy reads: the SAM step's, then the decision's."""
        step = ("sam_rho", "sam_adaptive") if cls.can_sam else ("sam_rho",) if cls.momentum else ()
        reuse = ("looksam_alpha",) if cls.reuses_direction else ()
        return step + reuse + cls.uses

    def decide(self, t: int, x: float | None) -> bool:
        """Return True if optimizer step `t` (0-based) is a SAM step; `x` is ||g||² of that step."""
        raise NotImplementedError

    def stats(self) -> dict[str, float]:
        """Values of the last decision worth logging (empty for policies without statistics)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self.settings, k)!r}" for k in self.uses)
        return f"{type(self).__name__}({args})"


class ERMPolicy(SAMPolicy):
    """Never a SAM step: plain empirical risk minimization."""

    name = "erm"
    can_sam = False

    def decide(self, t: int, x: float | None) -> bool:
        return False


class SAMAlwaysPolicy(SAMPolicy):
    """Every step is a SAM step (Foret et al. 2021)."""

    name = "sam"

    def decide(self, t: int, x: float | None) -> bool:
        return True


class RandomPolicy(SAMPolicy):
    """SAM with probability `sam_probability`, one draw per step (SS-SAM / RST, Zhao et al. 2022).

    The generator is private and seeded with the run's seed, so every rank draws the same sequence and a resumed run
    continues it (its state is in `state_dict`).
    """

    name = "random"
    uses = ("sam_probability",)

    def __init__(self, settings: SAMSettings | None = None, total_steps: int | None = None, seed: int = 0):
        super().__init__(settings, total_steps, seed)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def decide(self, t: int, x: float | None) -> bool:
        return torch.rand((), generator=self.generator).item() < self.settings.sam_probability

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        here = self.generator.get_state()
        value = saved.field_of(state, "generator", "policy.")
        self.generator.set_state(saved.tensor(value, "policy.generator", here.shape, here.dtype))


class PeriodicPolicy(SAMPolicy):
    """SAM when `t % sam_interval == 0`, so the first step is a SAM step."""

    name = "periodic"
    uses = ("sam_interval",)

    def decide(self, t: int, x: float | None) -> bool:
        return t % self.settings.sam_interval == 0


class LookSAMPolicy(PeriodicPolicy):
    """LookSAM (Liu et al. 2022): periodic SAM steps; the others reuse the SAM direction g_v."""

    name = "looksam"
    reuses_direction = True


# ---- AE-SAM's schedule, and the budget (docs/algorithm.md, "The budget") ----


def normal_tail(c: float) -> float:
    """P(z >= c), z standard normal: the fraction of steps the threshold mu + c*sigma passes if x is normal."""
    return 0.5 * math.erfc(c / math.sqrt(2.0))


def threshold_schedule(t: int, total_steps: int, lambda1: float, lambda2: float) -> float:
    """c_t: lambda2 at the start of training, lambda1 at the end, linear in between."""
    frac = t / total_steps
    return frac * lambda1 + (1.0 - frac) * lambda2


# The shift is solved on the run's own steps up to this many; a longer run is sampled evenly (the mean over the run
# then differs from the exact one by less than 1 / _SHIFT_GRID).
_SHIFT_GRID = 4096


def budget_shift(lambda1: float, lambda2: float, budget: float, total_steps: int) -> float:
    """The shift s for which the normal model expects a `budget` fraction of SAM steps under c_t + s.

    The mean of P(z >= c_t + s) over the run's steps t = 0 .. T - 1 falls as s grows; bisection finds it. [choice] The
    mean is taken over the steps the policies decide at, not over the continuous schedule: c_t at t / T never reaches
    lambda1, and on a short run the continuous mean overstates the SAM steps (at T = 10 and a budget of 0.3,
    `scheduled` drew 0.271 on average).
    """
    stride = max(1, total_steps // _SHIFT_GRID)
    grid = [threshold_schedule(t, total_steps, lambda1, lambda2) for t in range(0, total_steps, stride)]
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if sum(normal_tail(c + mid) for c in grid) / len(grid) > budget:
            lo = mid  # too many SAM steps expected: a higher threshold
        else:
            hi = mid
    return 0.5 * (lo + hi)


class AdaptivePolicy(SAMPolicy):
    """AE-SAM (Jiang et al., ICLR 2023): SAM when ||g||² is large for its running distribution.

    ```
    mu  = delta * mu  + (1 - delta) * x                 # delta: aesam_delta
    var = delta * var + (1 - delta) * (x - mu)**2       # with the new mu (docs/algorithm.md)
    c_t = (t / T) * lambda1 + (1 - t / T) * lambda2     # aesam_lambda1, aesam_lambda2
    SAM iff x >= mu + c_t * sqrt(var)
    ```

    With a budget b (`aesam_budget`, the project's extension), the threshold becomes mu + (c_t + s + k * E_t) * sigma:
    s makes the normal model expect a fraction b of SAM steps, and E_t, the SAM steps taken so far minus those
    expected, corrects for the distance between x's real distribution and the normal one, so the run's fraction lands
    on b.
    """

    name = "aesam"
    uses = ("aesam_delta", "aesam_lambda1", "aesam_lambda2", "aesam_budget")
    needs_total_steps = True
    uses_grad_norm = True
    # [choice] start values as far as known the paper's: mu = 0, var = 1e-10, no bias correction.
    INITIAL_MU: ClassVar[float] = 0.0
    INITIAL_VAR: ClassVar[float] = 1e-10
    # [choice] k, in sigmas per excess SAM step. On synthetic normal, log-normal, decaying and heavy-tailed streams of
    # x the run's fraction stays within 0.03 of b from 60 steps on (k = 0.5 misses that at 60 steps, k = 0 by up to
    # 0.3), and the SAM steps it picks still have several times the x of those it skips (tests/test_policies.py).
    BUDGET_GAIN: ClassVar[float] = 1.0
    # The run length from which that promise is tested (from 30 on it held on log-normal streams; at 10 steps the
    # fraction was off by up to 0.2, at 20 by up to 0.1).
    MIN_BUDGET_STEPS: ClassVar[int] = 60

    def __init__(self, settings: SAMSettings | None = None, total_steps: int | None = None, seed: int = 0):
        super().__init__(settings, total_steps, seed)
        s = self.settings
        if s.aesam_lambda1 > s.aesam_lambda2:
            # Valid, but not the paper's schedule: c_t then rises, so SAM steps get rarer as training goes on.
            warnings.warn(
                f"`aesam_lambda1` ({s.aesam_lambda1}) > `aesam_lambda2` ({s.aesam_lambda2}): the threshold coefficient "
                "c_t rises from lambda2 to lambda1 over training, so SAM steps become rarer late in training, the "
                "opposite of AE-SAM's schedule.",
                UserWarning,
                stacklevel=3,
            )
        if s.aesam_budget is not None and total_steps < self.MIN_BUDGET_STEPS:
            warnings.warn(
                f"`aesam_budget` ({s.aesam_budget}) over a run of {total_steps} steps: the correction that lands the "
                f"run's fraction within 0.03 of the budget needs about {self.MIN_BUDGET_STEPS} steps, and a short run "
                "can end far from it (up to 0.2 at 10 steps).",
                UserWarning,
                stacklevel=3,
            )
        self.shift = _shift(s, total_steps)
        self.excess = 0.0  # budget: SAM steps taken minus those the normal model expected (checkpointed)
        self.mu = self.INITIAL_MU
        self.var = self.INITIAL_VAR
        self._last: dict[str, float] = {}

    def schedule(self, t: int) -> float:
        """c_t + s: the paper's schedule, shifted for the budget when there is one."""
        s = self.settings
        return threshold_schedule(t, self.total_steps, s.aesam_lambda1, s.aesam_lambda2) + self.shift

    def threshold_c(self, t: int) -> float:
        """c_t, shifted and corrected for the budget when there is one."""
        c = self.schedule(t)
        return c if self.settings.aesam_budget is None else c + self.BUDGET_GAIN * self.excess

    def decide(self, t: int, x: float | None) -> bool:
        if x is None:
            raise ValueError("AdaptivePolicy.decide needs `x` = ||g||² of the step; got None.")
        d = self.settings.aesam_delta
        # Python floats are float64: the statistics do not lose precision over long runs.
        self.mu = d * self.mu + (1.0 - d) * x
        self.var = d * self.var + (1.0 - d) * (x - self.mu) ** 2
        c = self.threshold_c(t)
        sigma = math.sqrt(self.var)
        threshold = self.mu + c * sigma
        is_sam = x >= threshold
        self._last = {"mu": self.mu, "sigma": sigma, "threshold_c": c, "threshold": threshold}
        if self.settings.aesam_budget is not None:
            self.excess += float(is_sam) - normal_tail(self.schedule(t))
            self._last["budget_excess"] = self.excess
        return is_sam

    def stats(self) -> dict[str, float]:
        return self._last

    def state_dict(self) -> dict[str, Any]:
        return {"mu": self.mu, "var": self.var, "excess": self.excess, "last": dict(self._last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Checked before anything is set: a NaN mu would make every threshold NaN and silently end SAM steps.
        mu = saved.finite(state, "mu", "policy.")
        var = saved.finite(state, "var", "policy.", minimum=0.0)
        excess = saved.finite(state, "excess", "policy.")
        last = saved.field_of(state, "last", "policy.")
        if not isinstance(last, dict):
            raise saved.StateError("policy.last", f"must be a dict, got {type(last).__name__}")
        last = {k: saved.finite(last, k, "policy.last.") for k in last}
        self.mu, self.var, self.excess, self._last = mu, var, excess, last


class AELookSAMPolicy(AdaptivePolicy):
    """AE-LookSAM: the adaptive rule; non-SAM steps reuse the SAM direction g_v as in LookSAM."""

    name = "aelooksam"
    reuses_direction = True


class ScheduledRandomPolicy(RandomPolicy):
    """SAM at random with AE-SAM's expected rate at each step: p_t = P(z >= c_t + s), z standard normal.

    The control that separates *when* from *which*: AE-SAM's threshold falls from lambda2 to lambda1, so its SAM steps
    pile up late in training; this policy takes as many, at the same times on average, but chosen without looking at
    x, so it needs no host sync to decide (a SAM step reads one value, the SAM gradient's finiteness check). With a
    budget, s is the same shift as AE-SAM's (`budget_shift`), and the run's fraction is the budget on average: the
    draws are independent, so on T steps it spreads by about sqrt(b (1 - b) / T).
    """

    name = "scheduled"
    uses = ("aesam_lambda1", "aesam_lambda2", "aesam_budget")
    needs_total_steps = True

    def __init__(self, settings: SAMSettings | None = None, total_steps: int | None = None, seed: int = 0):
        super().__init__(settings, total_steps, seed)
        self.shift = _shift(self.settings, total_steps)

    def rate(self, t: int) -> float:
        s = self.settings
        return normal_tail(threshold_schedule(t, self.total_steps, s.aesam_lambda1, s.aesam_lambda2) + self.shift)

    def decide(self, t: int, x: float | None) -> bool:
        return torch.rand((), generator=self.generator).item() < self.rate(t)


class LateSAMPolicy(SAMPolicy):
    """Plain steps, then SAM on every step of the last fraction b (`aesam_budget`) of the run.

    Zhou et al., ICLR 2025, "Sharpness-Aware Minimization Efficiently Selects Flatter Minima Late in Training"
    (https://huggingface.co/papers/2410.10373): switching to SAM for the last few epochs reaches nearly the minima of
    SAM run throughout (their Fig. 1: the last 12.5% of the epochs). The budget flag gives b, one name for one meaning:
    the fraction of SAM steps, here all at the end; a run costs 1 + b passes per step. [choice] The switch is counted
    in optimizer steps, not epochs (the Trainer's unit, and exact under `max_steps`): the last round(b * T) steps are
    SAM steps. The base optimizer's state (Adam's moments) carries over the switch.
    """

    name = "late"
    uses = ("aesam_budget",)
    requires = ("aesam_budget",)
    needs_total_steps = True

    def __init__(self, settings: SAMSettings | None = None, total_steps: int | None = None, seed: int = 0):
        super().__init__(settings, total_steps, seed)
        self.first_sam_step = total_steps - round(self.settings.aesam_budget * total_steps)
        if self.first_sam_step == total_steps:
            warnings.warn(
                f"`aesam_budget` ({self.settings.aesam_budget}) of a run of {total_steps} steps rounds to no SAM step "
                "at all: the run is plain training.",
                UserWarning,
                stacklevel=3,
            )

    def decide(self, t: int, x: float | None) -> bool:
        return t >= self.first_sam_step


class MomentumSAMPolicy(SAMPolicy):
    """Momentum-SAM (Becker, Altrock, Risse 2024, https://huggingface.co/papers/2401.12033): one pass per step.

    Every step's forward/backward pass runs at w - rho * m / ||m||, m the base optimizer's momentum (AdamW's first
    moment `exp_avg`, SGD's `momentum_buffer`): the direction the optimizer is about to step in stands in for SAM's
    ascent step, so no second pass is needed. The controller moves the weights before the step's first micro-batch
    and puts them back by copy after its last (`SAMController.momentum_perturb` / `momentum_restore`); the optimizer
    steps from w. `decide` takes no SAM step.
    """

    name = "msam"
    can_sam = False
    momentum = True

    def decide(self, t: int, x: float | None) -> bool:
        return False


# Why a required setting has no default, by setting.
_REQUIRED_WHY = {"aesam_budget": "the fraction of the run, in (0, 1), that takes SAM steps."}


def _shift(settings: SAMSettings, total_steps: int) -> float:
    if settings.aesam_budget is None:
        return 0.0
    return budget_shift(settings.aesam_lambda1, settings.aesam_lambda2, settings.aesam_budget, total_steps)


# The registry: every policy, in the order the help texts list them. A literal tuple, not a plugin system; the name
# enum, the lookup dict, the command line and the tests all derive from it.
POLICY_CLASSES: tuple[type[SAMPolicy], ...] = (
    ERMPolicy,
    SAMAlwaysPolicy,
    RandomPolicy,
    PeriodicPolicy,
    LookSAMPolicy,
    AdaptivePolicy,
    AELookSAMPolicy,
    ScheduledRandomPolicy,
    LateSAMPolicy,
    MomentumSAMPolicy,
)


class _PolicyName(str, Enum):
    @classmethod
    def _missing_(cls, value: object):
        names = [m.value for m in cls]
        close = difflib.get_close_matches(str(value), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{value!r} is not a SAM policy; choose one of {names}.{hint}")


# The policy names, spelled exactly as on the command line (`SAMPolicyName.AESAM == "aesam"`).
SAMPolicyName = _PolicyName("SAMPolicyName", [(cls.name.upper(), cls.name) for cls in POLICY_CLASSES])
POLICIES: dict[SAMPolicyName, type[SAMPolicy]] = {SAMPolicyName(cls.name): cls for cls in POLICY_CLASSES}


def make_policy(
    name: str,
    settings: SAMSettings | None = None,
    total_steps: int | None = None,
    seed: int = 0,
    **values: Any,
) -> SAMPolicy:
    """Build the policy `name` from a `SAMSettings` record, or from setting values given by name.

    `make_policy("aesam", total_steps=T, sam_rho=0.1, aesam_delta=0.8)` builds the record from the values (a name
    that is not a setting is an error, a setting this policy does not read a warning); the Trainer passes its config,
    which is a `SAMSettings`. `total_steps` (T) is required by the policies whose schedule needs it.
    """
    cls = POLICIES[SAMPolicyName(name)]
    if values:
        unknown = sorted(set(values) - set(SETTINGS))
        if unknown:
            close = {u: difflib.get_close_matches(u, SETTINGS, n=1) for u in unknown}
            hints = "; ".join(f"did you mean {c[0]!r} for {u!r}?" for u, c in close.items() if c)
            raise ValueError(
                f"{unknown} {'is not a setting' if len(unknown) == 1 else 'are not settings'} of the SAM policies; "
                f"the settings are {list(SETTINGS)}." + (f" ({hints})" if hints else "")
            )
        ignored = [k for k in values if k not in cls.used_settings() and values[k] != DEFAULTS[k]]
        if ignored:
            warnings.warn(f"{ignored} have no effect under the {cls.name!r} policy.", UserWarning, stacklevel=2)
        base = {n: getattr(settings, n) for n in SETTINGS} if settings is not None else {}
        settings = SAMSettings(**{**base, **values})
    return cls(settings, total_steps=total_steps, seed=seed)
