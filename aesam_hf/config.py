"""`AESAMConfig`: `transformers.TrainingArguments` extended with the SAM policies of aesam_hf.

The policies and their hyper-parameters follow `../shared/spec/aesam.md`; AE-SAM is Jiang et al., ICLR 2023,
https://huggingface.co/papers/2304.14647.
"""

import os
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments
from transformers.training_args import OptimizerNames

from .controller import check_alpha, check_rho
from .policies import (
    SAMPolicyName,
    check_delta,
    check_finite,
    check_interval,
    check_probability,
)


POLICY_NAMES: tuple[str, ...] = tuple(p.value for p in SAMPolicyName)
STOCK_OPTIMIZERS: tuple[str, ...] = tuple(o.value for o in OptimizerNames)


def _incompatible_base_optimizer(name: str) -> str | None:
    """Why a stock optimizer cannot carry SAM steps, or None if it can."""
    if name in (OptimizerNames.LOMO.value, OptimizerNames.ADALOMO.value):
        return "LOMO fuses the update into the backward pass, so the SAM pass at w + e would already move the weights"
    if "layerwise" in name:
        return (
            "layer-wise optimizers step inside backward hooks, so the SAM pass at w + e would already move the weights"
        )
    return None


# Policy hyper-parameter (as `make_policy` names it) -> the config field that sets it.
POLICY_HPARAM_FIELDS: dict[str, str] = {
    "seed": "seed",
    "interval": "sam_interval",
    "probability": "sam_probability",
    "delta": "aesam_delta",
    "lambda1": "aesam_lambda1",
    "lambda2": "aesam_lambda2",
}


@dataclass
class AESAMConfig(TrainingArguments):
    r"""
    Configuration class for [`AESAMTrainer`]: every [`~transformers.TrainingArguments`] field, plus the SAM policy.

    Parameters:
        > Parameters that control which steps are SAM steps

        optim (`str`, *optional*, defaults to `"aesam"`):
            The SAM policy: `"erm"`, `"sam"`, `"random"`, `"periodic"`, `"looksam"`, `"aesam"` or `"aelooksam"`. A
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
            Threshold coefficient c_t at the end of training (`aesam`, `aelooksam`).
        aesam_lambda2 (`float`, *optional*, defaults to `1.0`):
            Threshold coefficient c_t at the start of training (`aesam`, `aelooksam`).

        > Parameters that control the SAM step

        sam_rho (`float`, *optional*, defaults to `0.05`):
            Radius of the SAM neighbourhood.
        sam_adaptive (`bool`, *optional*, defaults to `False`):
            Use ASAM's scale-invariant perturbation `rho * w² g / ||w g||`.
        looksam_alpha (`float`, *optional*, defaults to `0.7`):
            Weight of the reused SAM direction on non-SAM steps (`looksam`, `aelooksam`).
        sam_freeze_bn_stats (`bool`, *optional*, defaults to `True`):
            Keep BatchNorm running statistics from being updated by the second pass of a SAM step.

    The default of `optim` changes from the stock `"adamw_torch_fused"` to `"aesam"`; its base optimizer defaults to
    `"adamw_torch"`.
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
        default=5, metadata={"help": "k of the periodic and looksam policies: a SAM step when step %% k == 0."}
    )
    sam_probability: float = field(
        default=0.5, metadata={"help": "p of the random policy: the probability of a SAM step at each step."}
    )
    aesam_delta: float = field(
        default=0.9, metadata={"help": "EMA rate, in (0, 1), of the running mean and variance of ||g||^2."}
    )
    aesam_lambda1: float = field(
        default=-1.0, metadata={"help": "Threshold coefficient c_t at the end of training (aesam, aelooksam)."}
    )
    aesam_lambda2: float = field(
        default=1.0, metadata={"help": "Threshold coefficient c_t at the start of training (aesam, aelooksam)."}
    )
    sam_base_optim: str = field(
        default=OptimizerNames.ADAMW_TORCH.value,
        metadata={
            "help": "The stock optimizer that takes every step, SAM steps included.",
            "choices": list(STOCK_OPTIMIZERS),
        },
    )
    sam_rho: float = field(default=0.05, metadata={"help": "Radius rho >= 0 of the SAM neighbourhood."})
    sam_adaptive: bool = field(
        default=False, metadata={"help": "Use ASAM's scale-invariant perturbation rho * w^2 g / ||w g||."}
    )
    looksam_alpha: float = field(
        default=0.7,
        metadata={"help": "Weight >= 0 of the reused SAM direction on non-SAM steps (looksam, aelooksam)."},
    )
    sam_freeze_bn_stats: bool = field(
        default=True,
        metadata={"help": "Keep BatchNorm running statistics from being updated by the second pass of a SAM step."},
    )

    def __post_init__(self):
        # `TrainingArguments.__post_init__` turns `optim` into an `OptimizerNames` and would reject a policy name, so
        # it runs with the base optimizer in `optim`, and the policy name is put back afterwards.
        optim = getattr(self.optim, "value", self.optim)
        if optim in STOCK_OPTIMIZERS:
            # A stock name keeps its stock meaning: plain ERM with that optimizer.
            self.sam_base_optim = optim
        elif optim not in POLICY_NAMES:
            raise ValueError(
                f"`optim` ({optim!r}) must be a SAM policy, one of {list(POLICY_NAMES)}, or a stock optimizer name "
                f"(meaning plain ERM), one of {list(STOCK_OPTIMIZERS)}."
            )
        self.sam_base_optim = getattr(self.sam_base_optim, "value", self.sam_base_optim)
        self._check_base_optimizer()
        # Checked before `super().__post_init__()`, which would first import DeepSpeed and rewrite `fsdp`.
        # The SAM step needs the whole gradient and the whole weight vector on each rank; DeepSpeed ZeRO and FSDP
        # shard them. (DDP, single device and DataParallel are supported.)
        if self.deepspeed:
            raise ValueError(
                f"`deepspeed` ({self.deepspeed!r}) is not supported by AESAMTrainer yet: the SAM step needs the full "
                "gradient on every rank. Use multi-process DDP (`accelerate launch` / `torchrun`) instead."
            )
        if self.fsdp:
            raise ValueError(
                f"`fsdp` ({self.fsdp!r}) is not supported by AESAMTrainer yet: the SAM step needs the full gradient "
                "and weights on every rank. Use multi-process DDP (`accelerate launch` / `torchrun`) instead."
            )
        # `accelerate launch` with an FSDP or DeepSpeed config asks for the backend through the environment, not
        # through these fields. Refused here too, on every device: on GPUs Accelerate would shard, and on CPUs it
        # silently falls back to DDP, so the run would not be what the config file says.
        for variable, backend in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")):
            if os.environ.get(variable, "false").lower() == "true":
                raise ValueError(
                    f"`distributed_type: {backend}` in the accelerate config ({variable}=true) is not supported by "
                    "AESAMTrainer yet: the SAM step needs the full gradient and weights on every rank. Launch with a "
                    "DDP config instead (`distributed_type: MULTI_GPU`, e.g. configs/accelerate/multi_gpu.yaml)."
                )
        self.optim = self.sam_base_optim
        super().__post_init__()
        self.optim = optim

        check_rho(self.sam_rho, "sam_rho")
        check_interval(self.sam_interval, "sam_interval")
        check_probability(self.sam_probability, "sam_probability")
        check_delta(self.aesam_delta, "aesam_delta")
        check_finite(self.aesam_lambda1, "aesam_lambda1")
        check_finite(self.aesam_lambda2, "aesam_lambda2")
        check_alpha(self.looksam_alpha, "looksam_alpha")

    def _check_base_optimizer(self) -> None:
        base = self.sam_base_optim
        if base in POLICY_NAMES:
            raise ValueError(
                f"`sam_base_optim` ({base!r}) is a SAM policy; it must be a stock optimizer that takes the steps, "
                f"e.g. 'adamw_torch' or 'sgd' (one of {list(STOCK_OPTIMIZERS)}). Put the policy in `optim`."
            )
        if base not in STOCK_OPTIMIZERS:
            raise ValueError(
                f"`sam_base_optim` ({base!r}) must be a stock optimizer, one of {list(STOCK_OPTIMIZERS)}."
            )
        reason = _incompatible_base_optimizer(base)
        optim = getattr(self.optim, "value", self.optim)
        # Under a policy name (even `erm`) the stock loop does not recognise these optimizers either: they are
        # usable only as `optim` itself, which means plain ERM.
        if reason is not None and optim in POLICY_NAMES:
            raise ValueError(
                f"`sam_base_optim` ({base!r}) cannot be used with `optim` {optim!r}: {reason}. For plain training "
                f"with it, pass `optim={base!r}`."
            )

    def set_optimizer(self, name: str = "aesam", **kwargs) -> "AESAMConfig":
        """`TrainingArguments.set_optimizer`, accepting a SAM policy name too (its base stays `sam_base_optim`).

        A stock name means plain ERM with that optimizer, as in `optim`. Other keyword arguments are the stock ones
        (`learning_rate`, `weight_decay`, `beta1`, `beta2`, `epsilon`, `args`).
        """
        name = getattr(name, "value", name)
        if name not in POLICY_NAMES + STOCK_OPTIMIZERS:
            raise ValueError(
                f"`name` ({name!r}) must be a SAM policy, one of {list(POLICY_NAMES)}, or a stock optimizer."
            )
        base = name if name in STOCK_OPTIMIZERS else self.sam_base_optim
        super().set_optimizer(name=base, **kwargs)
        self.optim, self.sam_base_optim = name, base
        return self

    @property
    def sam_policy(self) -> SAMPolicyName:
        """The policy `optim` selects: itself for a policy name, `erm` for a stock optimizer name."""
        optim = getattr(self.optim, "value", self.optim)
        return SAMPolicyName(optim) if optim in POLICY_NAMES else SAMPolicyName.ERM

    @property
    def sam_policy_kwargs(self) -> dict[str, Any]:
        """The policy hyper-parameters this config holds, by the names `make_policy` takes (all but `total_steps`)."""
        return {hparam: getattr(self, name) for hparam, name in POLICY_HPARAM_FIELDS.items()}
