"""`AESAMConfig`: `transformers.TrainingArguments` extended with the SAM policies of aesam_hf.

`--optim` is decoded once, in `__post_init__` (`decode_optim`): a policy name (`aesam`) becomes the real field
`sam_policy`, and `optim` then holds the stock optimizer that takes the steps, so stock code reads stock values. The
policies and their settings are described in `docs/algorithm.md`; AE-SAM is Jiang et al., ICLR 2023,
https://huggingface.co/papers/2304.14647. How `--optim` reaches the training step: `docs/architecture.md`.
"""

import difflib
import warnings
from dataclasses import dataclass, field
from enum import Enum

from transformers import TrainingArguments
from transformers.training_args import OptimizerNames

from .backends import launcher_needs_cpu, refuse_sharded_backend, requested_sharding
from .policies import POLICIES, POLICY_CLASSES, SAMPolicyName
from .settings import SETTINGS, SAMSettings


POLICY_NAMES: tuple[str, ...] = tuple(p.value for p in SAMPolicyName)
_BASE_DEFAULT = OptimizerNames.ADAMW_TORCH.value
STOCK_OPTIMIZERS: tuple[str, ...] = tuple(o.value for o in OptimizerNames)
# Names a user might write in `optim_args` for a SAM setting -> the flag that sets it. `alpha` is left out: AdEMAMix
# takes an `alpha` of its own through `optim_args`.
_OPTIM_ARGS_ALIASES = {
    **{name: name for name in SETTINGS},
    **{name.split("_", 1)[1]: name for name in SETTINGS if name != "looksam_alpha"},  # rho, delta, budget, ...
}


def _plain(name: str | Enum | None) -> str | None:
    """`OptimizerNames.SGD` or `SAMPolicyName.SAM` -> its string: names are compared as plain strings."""
    return name.value if isinstance(name, Enum) else name


def _unknown_name(name: str, value: str) -> ValueError:
    close = difflib.get_close_matches(value, POLICY_NAMES + STOCK_OPTIMIZERS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(
        f"`{name}` ({value!r}) is neither a SAM policy, one of {list(POLICY_NAMES)}, nor a stock optimizer name "
        f"(transformers' `OptimizerNames`, e.g. 'adamw_torch', 'sgd', meaning plain training).{hint}"
    )


def _incompatible_base_optimizer(name: str) -> str | None:
    """Why a stock optimizer cannot carry SAM steps, or None if it can."""
    if name in (OptimizerNames.LOMO.value, OptimizerNames.ADALOMO.value):
        return "LOMO fuses the update into the backward pass, so the SAM pass at w + e would already move the weights"
    if "layerwise" in name:
        return (
            "layer-wise optimizers step inside backward hooks, so the SAM pass at w + e would already move the weights"
        )
    return None


def decode_optim(
    optim: str | Enum, base_optim: str | Enum, policy: str | Enum | None = None
) -> tuple[SAMPolicyName | None, str]:
    """What the optimizer fields mean: (the SAM policy or None, the stock optimizer that takes every step).

    The one place that knows it. A policy name in `optim` (`aesam`) runs that policy on top of `base_optim`. A stock
    name in `optim` (`adamw_torch`) is the optimizer that takes the steps: with `policy` unset it means exactly the
    stock Trainer (None: nothing of aesam_hf runs), with `policy` set that policy runs on it, which is how a decoded
    config reads back (`to_dict`, JSON, `HfArgumentParser`).
    """
    optim, base_optim, policy = _plain(optim), _plain(base_optim), _plain(policy)
    for name, value in (("optim", optim), ("sam_base_optim", base_optim), ("sam_policy", policy)):
        if value is not None and not isinstance(value, str) or (value is None and name != "sam_policy"):
            raise ValueError(f"`{name}` ({value!r}) must be a name (a string): a SAM policy or a stock optimizer.")
    if policy is not None and policy not in POLICY_NAMES:
        raise (
            _unknown_name("sam_policy", policy)
            if policy not in STOCK_OPTIMIZERS
            else ValueError(
                f"`sam_policy` ({policy!r}) is a stock optimizer; put it in `optim` and the policy in `sam_policy`."
            )
        )
    if optim in POLICY_NAMES:
        if policy is not None and policy != optim:
            raise ValueError(
                f"`optim` ({optim!r}) and `sam_policy` ({policy!r}) name two policies; give the policy in one of them."
            )
        policy = optim
        if base_optim in POLICY_NAMES:
            raise ValueError(
                f"`sam_base_optim` ({base_optim!r}) is a SAM policy; it must be a stock optimizer that takes the "
                "steps, e.g. 'adamw_torch' or 'sgd'. Put the policy in `optim`."
            )
        if base_optim not in STOCK_OPTIMIZERS:
            raise _unknown_name("sam_base_optim", base_optim)
    elif optim in STOCK_OPTIMIZERS:
        base_optim = optim
    else:
        raise _unknown_name("optim", optim)
    # Under a policy (even `erm`) the stock loop does not recognise these optimizers either: they are usable only as
    # `optim` itself, the plain stock run.
    reason = _incompatible_base_optimizer(base_optim)
    if policy is not None and reason is not None:
        raise ValueError(
            f"The stock optimizer {base_optim!r} cannot carry the {policy!r} policy: {reason}. For plain training with "
            f"it, pass `optim={base_optim!r}` alone."
        )
    return (None if policy is None else SAMPolicyName(policy)), base_optim


def _policy_help() -> str:
    lines = [f"{cls.name} ({', '.join(cls.uses) or 'no settings'})" for cls in POLICY_CLASSES]
    return "; ".join(lines)


@dataclass
class AESAMConfig(SAMSettings, TrainingArguments):
    r"""
    Configuration class for [`AESAMTrainer`]: every [`~transformers.TrainingArguments`] field, the settings of
    [`SAMSettings`] (`sam_rho`, `aesam_delta`, ...), and the choice of policy.

    Parameters:
        > Parameters that choose the policy

        optim (`str`, *optional*, defaults to `"aesam"`):
            A SAM policy (a name of `aesam_hf.POLICIES`; `--help` lists them with their settings), run on top of
            `sam_base_optim`; or a stock optimizer name (`"adamw_torch"`, `"sgd"`, ...),
            which means exactly the stock Trainer with that optimizer. After `__post_init__` it holds the stock
            optimizer that takes the steps, and the policy is in `sam_policy`.
        sam_policy (`str` or `None`, *optional*, defaults to `None`):
            The SAM policy, set from `optim`; `None` for a stock optimizer name. Given with a stock `optim`, it runs
            that policy on that optimizer (how a saved config reads back).
        sam_base_optim (`str`, *optional*, defaults to `"adamw_torch"`):
            The stock optimizer that takes every step (SAM steps with the SAM gradient) when `optim` names a policy.

        > Parameters that control the SAM step in the Trainer

        sam_freeze_bn_stats (`bool`, *optional*, defaults to `True`):
            Keep BatchNorm running statistics from being updated by the second pass of a SAM step.

        > Parameters that control resuming

        sam_reset_policy_on_resume (`bool`, *optional*, defaults to `False`):
            On `resume_from_checkpoint`, start the SAM policy afresh (statistics, generator, LookSAM direction) while
            the counters continue. This is how a run continues under another policy, e.g. one trained with
            `adamw_torch` continued with `aesam`.

    The default of `optim` changes from the stock `"adamw_torch_fused"` to `"aesam"` on `"adamw_torch"`. No stock field
    is changed behind the user's back: where a launcher started several processes on a machine without accelerators
    and `use_cpu` is not set, the config refuses to start and says to add `--use_cpu true`.
    """

    optim: str = field(
        default=SAMPolicyName.AESAM.value,
        metadata={
            "help": "A SAM policy, run on top of --sam_base_optim: "
            + _policy_help()
            + ". Or a stock optimizer name (adamw_torch, sgd, ...): exactly the stock Trainer."
        },
    )
    sam_policy: str | None = field(
        default=None,
        metadata={"help": "The SAM policy, set from --optim; given with a stock --optim, that policy runs on it."},
    )
    sam_base_optim: str = field(
        default=_BASE_DEFAULT,
        metadata={"help": "The stock optimizer that takes every step, SAM steps included, when --optim is a policy."},
    )
    sam_freeze_bn_stats: bool = field(
        default=True,
        metadata={"help": "Keep BatchNorm running statistics from being updated by the second pass of a SAM step."},
    )
    sam_reset_policy_on_resume: bool = field(
        default=False,
        metadata={
            "help": "On resume, start the SAM policy afresh while the counters continue: how a run continues under "
            "another policy (e.g. adamw_torch, then aesam)."
        },
    )

    def __post_init__(self):
        given_base = _plain(self.sam_base_optim)
        self.sam_policy, self.optim = decode_optim(self.optim, self.sam_base_optim, self.sam_policy)
        if self.sam_policy is None and given_base not in (self.optim, _BASE_DEFAULT):
            warnings.warn(
                f"`sam_base_optim` ({given_base!r}) has no effect: `optim` {self.optim!r} is a stock optimizer, the one "
                "that takes the steps.",
                UserWarning,
                stacklevel=2,
            )
        self.sam_base_optim = self.optim
        # Validate before `TrainingArguments.__post_init__`, which would first import DeepSpeed and rewrite `fsdp`. A
        # stock optimizer name runs the stock Trainer, which these backends serve.
        sharding = requested_sharding(self) if self.sam_policy is not None else None
        if sharding is not None:
            refuse_sharded_backend(*sharding)
        reason = None if self.use_cpu else launcher_needs_cpu()
        if reason is not None:
            raise ValueError(
                f"`use_cpu` ({self.use_cpu}): {reason}, so transformers would run each process alone, every rank "
                "training its own copy. Add `--use_cpu true` (`use_cpu=True`), or set ACCELERATE_USE_CPU=true in "
                "the launcher's environment, so that the processes form one DDP group over gloo."
            )
        self._check_optim_args()
        self._check_settings_are_used()
        super().__post_init__()  # `SAMSettings` checks every setting, then `TrainingArguments` runs

    def _check_optim_args(self) -> None:
        """`optim_args` goes to the base optimizer: a SAM setting there would be ignored, so name its flag instead."""
        if not self.optim_args or self.sam_policy is None:
            return
        keys = [part.split("=", 1)[0].strip() for part in str(self.optim_args).split(",") if "=" in part]
        misplaced = {k: _OPTIM_ARGS_ALIASES[k] for k in keys if k in _OPTIM_ARGS_ALIASES}
        if misplaced:
            flags = ", ".join(f"`{k}` -> `--{flag}`" for k, flag in misplaced.items())
            raise ValueError(
                f"`optim_args` ({self.optim_args!r}) sets SAM settings, which it does not reach (it goes to the "
                f"optimizer {_plain(self.optim)!r}): use their own flags ({flags})."
            )

    def _check_settings_are_used(self) -> None:
        """Refuse a budget the policy would ignore, and warn about any other SAM setting it would ignore.

        A budget is a promise about cost: under a policy that takes every step (`sam`) or its own number of them, the
        run would cost what the budget was meant to cap, so it is an error. The other settings only fail to change
        anything, which a warning says.
        """
        policy = None if self.sam_policy is None else POLICIES[self.sam_policy]
        for name in () if policy is None else policy.requires:
            if getattr(self, name) is None:
                raise ValueError(
                    f"`{name}` (None) must be set for `optim` {policy.name!r}: it is the fraction of the run, in (0, 1), "
                    f"that takes SAM steps (e.g. `--{name} 0.2`)."
                )
        used = () if policy is None else policy.used_settings()
        ignored = [name for name in self.non_default() if name not in used]
        if (policy is None or not policy.can_sam) and not self.sam_freeze_bn_stats:
            ignored.append("sam_freeze_bn_stats")
        shown = self.sam_policy.value if self.sam_policy is not None else _plain(self.optim)
        if "aesam_budget" in ignored:
            takers = [cls.name for cls in POLICY_CLASSES if "aesam_budget" in cls.uses]
            raise ValueError(
                f"`aesam_budget` ({self.aesam_budget!r}) has no effect under `optim` {shown!r}: only {takers} take "
                "a budget of SAM steps. Choose one of them, or leave `aesam_budget` unset."
            )
        if ignored:
            warnings.warn(
                f"{', '.join(f'`{n}` ({getattr(self, n)!r})' for n in ignored)} "
                f"{'have' if len(ignored) > 1 else 'has'} no effect under `optim` {shown!r}, which does not use "
                f"{'them' if len(ignored) > 1 else 'it'}.",
                UserWarning,
                stacklevel=3,
            )

    def set_optimizer(self, name: str = "aesam", **kwargs) -> "AESAMConfig":
        """`TrainingArguments.set_optimizer`, accepting a SAM policy name too (its base stays `sam_base_optim`).

        A stock name means exactly the stock Trainer with that optimizer, as in `optim`. Other keyword arguments are
        the stock ones (`learning_rate`, `weight_decay`, `beta1`, `beta2`, `epsilon`, `args`).
        """
        self.sam_policy, base = decode_optim(name, self.sam_base_optim)
        self.sam_base_optim = base
        super().set_optimizer(name=base, **kwargs)
        # The constructor's checks, for the new policy.
        self._check_optim_args()
        self._check_settings_are_used()
        return self


__all__ = ["AESAMConfig", "decode_optim"]
