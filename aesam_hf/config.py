"""`AESAMConfig`: `transformers.TrainingArguments` extended with the SAM policies of aesam_hf.

The policies and their hyper-parameters are described in `docs/algorithm.md`; AE-SAM is Jiang et al., ICLR 2023,
https://huggingface.co/papers/2304.14647. How `--optim` reaches the training step: `docs/architecture.md`.
"""

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.training_args import OptimizerNames
from transformers.utils import logging, strtobool

from .hparams import DEFAULTS, check
from .policies import POLICIES, SAMPolicyName


logger = logging.get_logger(__name__)

POLICY_NAMES: tuple[str, ...] = tuple(p.value for p in SAMPolicyName)
STOCK_OPTIMIZERS: tuple[str, ...] = tuple(o.value for o in OptimizerNames)

# Policy and controller hyper-parameter (as `aesam_hf.hparams` names it) -> the config field that sets it.
HPARAM_FIELDS: dict[str, str] = {
    "rho": "sam_rho",
    "adaptive": "sam_adaptive",
    "looksam_alpha": "looksam_alpha",
    "interval": "sam_interval",
    "probability": "sam_probability",
    "delta": "aesam_delta",
    "lambda1": "aesam_lambda1",
    "lambda2": "aesam_lambda2",
    "budget": "aesam_budget",
}


def _plain(name: str | Enum) -> str:
    """`OptimizerNames.SGD` or `SAMPolicyName.SAM` -> its string: the config holds names as plain strings."""
    return name.value if isinstance(name, Enum) else name


def _incompatible_base_optimizer(name: str) -> str | None:
    """Why a stock optimizer cannot carry SAM steps, or None if it can."""
    if name in (OptimizerNames.LOMO.value, OptimizerNames.ADALOMO.value):
        return "LOMO fuses the update into the backward pass, so the SAM pass at w + e would already move the weights"
    if "layerwise" in name:
        return (
            "layer-wise optimizers step inside backward hooks, so the SAM pass at w + e would already move the weights"
        )
    return None


def split_optim(optim: str | Enum, base_optim: str | Enum, name: str = "optim") -> tuple[SAMPolicyName, str]:
    """What `optim` means: (the SAM policy, the stock optimizer that takes every step). The one place that knows it.

    A policy name (`aesam`) runs that policy on top of `base_optim`; a stock optimizer name (`adamw_torch`) keeps its
    stock meaning, plain ERM with that optimizer, so existing scripts and configs run unchanged.
    """
    optim, base_optim = _plain(optim), _plain(base_optim)
    if optim in STOCK_OPTIMIZERS:
        return SAMPolicyName.ERM, optim
    if optim not in POLICY_NAMES:
        raise ValueError(
            f"`{name}` ({optim!r}) must be a SAM policy, one of {list(POLICY_NAMES)}, or a stock optimizer name "
            f"(meaning plain ERM), one of {list(STOCK_OPTIMIZERS)}."
        )
    if base_optim in POLICY_NAMES:
        raise ValueError(
            f"`sam_base_optim` ({base_optim!r}) is a SAM policy; it must be a stock optimizer that takes the steps, "
            f"e.g. 'adamw_torch' or 'sgd' (one of {list(STOCK_OPTIMIZERS)}). Put the policy in `{name}`."
        )
    if base_optim not in STOCK_OPTIMIZERS:
        raise ValueError(
            f"`sam_base_optim` ({base_optim!r}) must be a stock optimizer, one of {list(STOCK_OPTIMIZERS)}."
        )
    # Under a policy name (even `erm`) the stock loop does not recognise these optimizers either: they are usable only
    # as `optim` itself, which means plain ERM.
    reason = _incompatible_base_optimizer(base_optim)
    if reason is not None:
        raise ValueError(
            f"`sam_base_optim` ({base_optim!r}) cannot be used with `{name}` {optim!r}: {reason}. For plain training "
            f"with it, pass `optim={base_optim!r}`."
        )
    return SAMPolicyName(optim), base_optim


# transformers 5.24 asks Accelerate for FSDP2 unless `fsdp_config` says otherwise; Accelerate's own plugin, built from
# `accelerate launch`'s environment, defaults to FSDP1 (`FSDP_VERSION` unset).
_TRANSFORMERS_FSDP_DEFAULT = 2
_ACCELERATE_FSDP_DEFAULT = "1"
_FSDP2_HOWTO = (
    "FSDP2 is supported: `fsdp=True` (or `fsdp='full_shard'`) with `fsdp_config={'version': 2}` (transformers' "
    "default), or `accelerate launch` with `fsdp_version: 2` in an FSDP config (FSDP_VERSION=2)."
)


def refuse_sharded_backend(backend: str | None, value: Any = True, source: str | None = None) -> None:
    """Raise if a sharding backend AESAMTrainer cannot run (FSDP1, DeepSpeed) is asked for: the one check for every way
    of asking.

    DeepSpeed ZeRO shards the gradient and the weights out of SAMController's reach. FSDP1 flattens the parameters into
    plain tensors that the controller would take for whole ones, so its norms would be one rank's. FSDP2 (DTensor
    parameters) is supported, by the Trainer and in hand-written loops (README, "FSDP2"), and so are DDP, a single
    device and DataParallel. `source` is what asked, e.g. the config field.
    """
    if backend is None:
        return
    where = source or backend
    if backend.upper() == "FSDP":
        reason = (
            "FSDP version 1 flattens the parameters into plain tensors that SAMController would take for whole ones, "
            "so its norms and perturbation would be one rank's"
        )
    else:
        reason = "the SAM step needs the full gradient and weights on every rank"
    raise ValueError(
        f"{where} ({value!r}) is not supported by AESAMTrainer: {reason}. {_FSDP2_HOWTO} Or use multi-process DDP: "
        "`torchrun`, or `accelerate launch` with a `distributed_type: MULTI_GPU` config (e.g. "
        "configs/accelerate/multi_gpu.yaml). In a hand-written training loop, `SAMController` supports parameters "
        "sharded with FSDP2's `fully_shard` too."
    )


def _fsdp_config(args: TrainingArguments) -> dict[str, Any]:
    """`fsdp_config` as a dict, before or after `TrainingArguments` processed it (a JSON string or path, `fsdp_`-prefixed
    keys)."""
    config = args.fsdp_config
    if isinstance(config, str) and config.lstrip().startswith("{"):
        config = json.loads(config)
    elif isinstance(config, str) and os.path.isfile(config):
        with open(config, encoding="utf-8") as f:
            config = json.load(f)
    if not isinstance(config, dict):
        return {}
    return {k.removeprefix("fsdp_"): v for k, v in config.items()}


def requested_fsdp_version(args: TrainingArguments) -> Any:
    """The FSDP version the Trainer asks Accelerate for, or None when no FSDP is asked for.

    From `fsdp`/`fsdp_config` when `fsdp` is set (Accelerate then gets the Trainer's plugin), else from `accelerate
    launch`'s environment (ACCELERATE_USE_FSDP, FSDP_VERSION), with each one's default.
    """
    if args.fsdp:
        config = _fsdp_config(args)
        if config.get("xla", False):
            return "xla"  # XLA's FSDP, not Accelerate's
        version = config.get("version", _TRANSFORMERS_FSDP_DEFAULT)
    elif os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        version = os.environ.get("FSDP_VERSION", _ACCELERATE_FSDP_DEFAULT)
    else:
        return None
    try:
        return int(version)
    except (TypeError, ValueError):
        return version


def fsdp_fallback_warning(distributed_type: Any) -> str:
    """What to tell a user who asked for FSDP2 where Accelerate does not run FSDP (on CPUs)."""
    name = getattr(distributed_type, "value", distributed_type)
    return (
        f"FSDP2 was asked for, but Accelerate runs FSDP on accelerators only and runs {name} here instead (DDP when "
        "there are several processes): nothing is sharded, every rank holds the whole model, and AESAMTrainer trains "
        "it as under DDP."
    )


def _requested_sharding(args: TrainingArguments) -> tuple[str, Any, str] | None:
    """(backend, value, source) of the first sharding request that AESAMTrainer refuses, in the fields or the accelerate
    environment; FSDP2 is not refused."""
    if args.deepspeed:
        return "DeepSpeed", args.deepspeed, "`deepspeed`"
    version = requested_fsdp_version(args)
    if version is not None and version != 2:
        if version == "xla":
            return "FSDP", args.fsdp, "`fsdp` on XLA (`fsdp_config['xla']`)"
        if args.fsdp:
            return "FSDP", args.fsdp, f"`fsdp` with FSDP version {version} (`fsdp_config`)"
        return "FSDP", f"FSDP_VERSION={version}", "`distributed_type: FSDP` in the accelerate config"
    # `accelerate launch` with a DeepSpeed config asks through the environment, not through `deepspeed`. On GPUs
    # Accelerate would shard, and on CPUs it silently falls back to DDP, so refuse on every device.
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "DEEPSPEED", "ACCELERATE_USE_DEEPSPEED=true", "`distributed_type: DEEPSPEED` in the accelerate config"
    return None


def _launcher_wants_cpu() -> str | None:
    """Why this process must train on the CPU although `use_cpu` is False, or None. See `AESAMConfig.use_cpu`.

    `accelerate launch` with a `distributed_type: MULTI_GPU` config (how configs/accelerate/multi_cpu.yaml starts
    several CPU processes) hands them to torchrun and passes the config's `use_cpu: true` on to none of them, and
    torchrun says nothing about devices. Without `use_cpu`, transformers joins no gloo group on a machine without
    accelerators, and each process would train alone.
    """
    flag = os.environ.get("ACCELERATE_USE_CPU")
    if flag is not None:
        # Said explicitly (accelerate's single-process launcher always says it): obeyed either way.
        return "ACCELERATE_USE_CPU=true" if strtobool(flag) else None
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not torch.accelerator.is_available():
        return f"a launcher started {world_size} processes (WORLD_SIZE) on a machine without accelerators"
    return None


@dataclass
class AESAMConfig(TrainingArguments):
    r"""
    Configuration class for [`AESAMTrainer`]: every [`~transformers.TrainingArguments`] field, plus the SAM policy.

    Parameters:
        > Parameters that control which steps are SAM steps

        optim (`str`, *optional*, defaults to `"aesam"`):
            The SAM policy: `"erm"`, `"sam"`, `"random"`, `"periodic"`, `"looksam"`, `"aesam"`, `"aelooksam"` or
            `"scheduled"` (random SAM steps at AE-SAM's expected rate over time, a cheap baseline). A
            stock optimizer name (`"adamw_torch"`, `"sgd"`, ...) is also accepted and means plain ERM with that
            optimizer, so existing scripts keep working.
        sam_base_optim (`str`, *optional*, defaults to `"adamw_torch"`):
            The stock optimizer that takes every step (SAM steps with the SAM gradient). Ignored, and set to `optim`,
            when `optim` is itself a stock optimizer name.
        sam_interval (`int`, *optional*, defaults to `5`):
            `k` of the `periodic` and `looksam` policies: a SAM step when `step % k == 0`.
        sam_probability (`float`, *optional*, defaults to `0.5`):
            `p` of the `random` policy: the probability of a SAM step, drawn from a generator seeded with `seed`.
        aesam_delta (`float`, *optional*, defaults to `0.9`):
            EMA rate of the running mean and variance of ||g||² (`aesam`, `aelooksam`).
        aesam_lambda1 (`float`, *optional*, defaults to `-1.0`):
            Threshold coefficient c_t at the end of training (`aesam`, `aelooksam`, `scheduled`).
        aesam_lambda2 (`float`, *optional*, defaults to `1.0`):
            Threshold coefficient c_t at the start of training (`aesam`, `aelooksam`, `scheduled`).
        aesam_budget (`float` or `None`, *optional*, defaults to `None`):
            The fraction of SAM steps you can afford over the run, in (0, 1) (`aesam`, `aelooksam`, `scheduled`).
            The adaptive policies still choose *which* steps by ||g||², with a threshold corrected so that the run's
            fraction lands on the budget. `None`: the paper's schedule alone decides.

        > Parameters that control the SAM step

        sam_rho (`float`, *optional*, defaults to `0.05`):
            Radius of the SAM neighbourhood.
        sam_adaptive (`bool`, *optional*, defaults to `False`):
            Use ASAM's scale-invariant perturbation `rho * w² g / ||w g||`.
        looksam_alpha (`float`, *optional*, defaults to `0.1`):
            Weight of the reused SAM direction on non-SAM steps (`looksam`, `aelooksam`). The LookSAM paper used
            `0.7`, which collapsed LookSAM on our image task (`docs/algorithm.md`, "The LookSAM gradient").
        sam_freeze_bn_stats (`bool`, *optional*, defaults to `True`):
            Keep BatchNorm running statistics from being updated by the second pass of a SAM step.

        > Parameters that control resuming

        sam_reset_policy_on_resume (`bool`, *optional*, defaults to `False`):
            On `resume_from_checkpoint`, start the SAM policy afresh (statistics, generator, LookSAM direction) while
            the counters continue. This is how a run continues under another policy, e.g. one trained with
            `adamw_torch` continued with `aesam`.

    The default of `optim` changes from the stock `"adamw_torch_fused"` to `"aesam"`; its base optimizer defaults to
    `"adamw_torch"`. `use_cpu` is set to `True` when `ACCELERATE_USE_CPU=true`, and when a launcher (torchrun,
    `accelerate launch`) started several processes on a machine without accelerators, so that they form one DDP group
    over gloo; `ACCELERATE_USE_CPU=false` turns the latter off.
    """

    optim: str = field(
        default=SAMPolicyName.AESAM.value,
        metadata={
            "help": "The SAM policy (erm, sam, random, periodic, looksam, aesam, aelooksam), or a stock optimizer "
            "name meaning plain ERM with that optimizer.",
            "choices": list(POLICY_NAMES + STOCK_OPTIMIZERS),
        },
    )
    sam_interval: int = field(
        default=DEFAULTS.interval,
        metadata={"help": "k of the periodic and looksam policies: a SAM step when step %% k == 0."},
    )
    sam_probability: float = field(
        default=DEFAULTS.probability,
        metadata={"help": "p of the random policy: the probability of a SAM step at each step."},
    )
    aesam_delta: float = field(
        default=DEFAULTS.delta, metadata={"help": "EMA rate, in (0, 1), of the running mean and variance of ||g||^2."}
    )
    aesam_lambda1: float = field(
        default=DEFAULTS.lambda1,
        metadata={"help": "Threshold coefficient c_t at the end of training (aesam, aelooksam)."},
    )
    aesam_lambda2: float = field(
        default=DEFAULTS.lambda2,
        metadata={"help": "Threshold coefficient c_t at the start of training (aesam, aelooksam)."},
    )
    aesam_budget: float | None = field(
        default=DEFAULTS.budget,
        metadata={
            "help": "Target fraction of SAM steps over the run, in (0, 1) (aesam, aelooksam, scheduled); the "
            "threshold is corrected so the run's fraction lands on it. Default: off, the paper's schedule decides."
        },
    )
    sam_base_optim: str = field(
        default=OptimizerNames.ADAMW_TORCH.value,
        metadata={
            "help": "The stock optimizer that takes every step, SAM steps included.",
            "choices": list(STOCK_OPTIMIZERS),
        },
    )
    sam_rho: float = field(
        default=DEFAULTS.rho, metadata={"help": "Radius rho >= 0 (finite) of the SAM neighbourhood."}
    )
    sam_adaptive: bool = field(
        default=DEFAULTS.adaptive, metadata={"help": "Use ASAM's scale-invariant perturbation rho * w^2 g / ||w g||."}
    )
    looksam_alpha: float = field(
        default=DEFAULTS.looksam_alpha,
        metadata={"help": "Weight >= 0 of the reused SAM direction on non-SAM steps (looksam, aelooksam)."},
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
        cpu_reason = None if self.use_cpu else _launcher_wants_cpu()
        if cpu_reason is not None:
            logger.info(f"`use_cpu` set to True: {cpu_reason}.")
            self.use_cpu = True
        # Normalise: names become plain strings, and `sam_base_optim` the optimizer that really takes the steps.
        self.optim = _plain(self.optim)
        _, self.sam_base_optim = split_optim(self.optim, self.sam_base_optim)
        # Validate before `super().__post_init__()`, which would first import DeepSpeed and rewrite `fsdp`.
        sharding = _requested_sharding(self)
        if sharding is not None:
            refuse_sharded_backend(*sharding)
        for hparam, name in HPARAM_FIELDS.items():
            check(hparam, getattr(self, name), name)
        self._check_settings_are_used()
        with self.stock_optim():
            super().__post_init__()

    def _check_settings_are_used(self) -> None:
        """Refuse a budget the policy would ignore, and warn about any other SAM setting it would ignore.

        A budget is a promise about cost: under a policy that takes every step (`sam`) or its own number of them, the
        run would cost what the budget was meant to cap, so it is an error. The other settings only fail to change
        anything, which a warning says.
        """
        policy = POLICIES[self.sam_policy]
        used = set(policy.hparams)
        if policy.can_sam:
            used |= {"rho", "adaptive"}
        if policy.reuses_direction:
            used.add("looksam_alpha")
        defaults = {f.name: f.default for f in fields(self)}
        ignored = [
            name
            for hparam, name in HPARAM_FIELDS.items()
            if hparam not in used and getattr(self, name) != defaults[name]
        ]
        if not policy.can_sam and self.sam_freeze_bn_stats != defaults["sam_freeze_bn_stats"]:
            ignored.append("sam_freeze_bn_stats")
        if "aesam_budget" in ignored:
            takers = [name.value for name, cls in POLICIES.items() if "budget" in cls.hparams]
            raise ValueError(
                f"`aesam_budget` ({self.aesam_budget!r}) has no effect under `optim` {self.optim!r}: only {takers} take "
                "a budget of SAM steps. Choose one of them, or leave `aesam_budget` unset."
            )
        if ignored:
            warnings.warn(
                f"{', '.join(f'`{n}` ({getattr(self, n)!r})' for n in ignored)} {'have' if len(ignored) > 1 else 'has'} no effect under `optim` "
                f"{self.optim!r}, which does not use it.",
                UserWarning,
                stacklevel=3,
            )

    @contextlib.contextmanager
    def stock_optim(self) -> Iterator["AESAMConfig"]:
        """Inside the block `optim` holds the stock optimizer that takes the steps, for stock code that reads it.

        `TrainingArguments` turns `optim` into an `OptimizerNames` and rejects policy names; the Trainer's optimizer
        factory looks its handler up by `optim`. Outside the block `optim` is always what the user chose.
        """
        optim = self.optim
        self.optim = self.sam_base_optim
        try:
            yield self
        finally:
            self.optim = optim

    def set_optimizer(self, name: str = "aesam", **kwargs) -> "AESAMConfig":
        """`TrainingArguments.set_optimizer`, accepting a SAM policy name too (its base stays `sam_base_optim`).

        A stock name means plain ERM with that optimizer, as in `optim`. Other keyword arguments are the stock ones
        (`learning_rate`, `weight_decay`, `beta1`, `beta2`, `epsilon`, `args`).
        """
        _, base = split_optim(name, self.sam_base_optim, name="name")
        self.optim, self.sam_base_optim = _plain(name), base
        with self.stock_optim():
            super().set_optimizer(name=base, **kwargs)
        return self

    @property
    def sam_policy(self) -> SAMPolicyName:
        """The policy `optim` selects: itself for a policy name, `erm` for a stock optimizer name."""
        return split_optim(self.optim, self.sam_base_optim)[0]

    @property
    def sam_hparams(self) -> dict[str, Any]:
        """The policy and controller hyper-parameters, by the names `aesam_hf.hparams` gives them."""
        return {hparam: getattr(self, name) for hparam, name in HPARAM_FIELDS.items()}
