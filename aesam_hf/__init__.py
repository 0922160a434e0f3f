"""aesam_hf: Adaptive Sharpness-Aware Minimization (AE-SAM, Jiang et al., ICLR 2023) for the Hugging Face Trainer.

Paper: https://huggingface.co/papers/2304.14647. The algorithms: `docs/algorithm.md`; the modules: `docs/architecture.md`.

The core (settings, policies, `SAMController`, the tensor primitives) imports only torch, so a hand-written training
loop, `import aesam_hf.controller` included, never loads transformers. The Trainer parts (`AESAMConfig`,
`AESAMTrainer`, ...) are imported the first time one of their names is used: `from aesam_hf import AESAMTrainer`
loads transformers then. [choice] This is the one lazy import in the package, against the house rule of explicit
re-exports only, because importing any submodule runs this file first.
"""

import importlib
from typing import Any

from .controller import SAMController, StepRecord
from .policies import (
    POLICIES,
    POLICY_CLASSES,
    AdaptivePolicy,
    AELookSAMPolicy,
    ERMPolicy,
    LateSAMPolicy,
    LookSAMPolicy,
    MomentumSAMPolicy,
    PeriodicPolicy,
    RandomPolicy,
    SAMAlwaysPolicy,
    SAMPolicy,
    SAMPolicyName,
    ScheduledRandomPolicy,
    make_policy,
)
from .sam import LookSAMGeometry, capture_rng, frozen_running_stats, grad_norm_sq, replay_rng
from .settings import SAMSettings
from .teardown import exit_gloo_process


__version__ = "0.1.0.dev0"

# The names that need transformers -> the module that defines them.
_TRAINER_PARTS = {
    "AESAMConfig": ".config",
    "decode_optim": ".config",
    "AESAMTrainer": ".trainer",
    "AESAMTrainerMixin": ".trainer",
    "SAM_STATE_NAME": ".checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _TRAINER_PARTS:
        value = getattr(importlib.import_module(_TRAINER_PARTS[name], __name__), name)
        globals()[name] = value  # the next lookup is a plain attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "__version__",
    "AESAMConfig",
    "AESAMTrainer",
    "AESAMTrainerMixin",
    "SAM_STATE_NAME",
    "SAMController",
    "SAMSettings",
    "StepRecord",
    "LookSAMGeometry",
    "decode_optim",
    "POLICIES",
    "POLICY_CLASSES",
    "SAMPolicy",
    "SAMPolicyName",
    "ERMPolicy",
    "SAMAlwaysPolicy",
    "RandomPolicy",
    "PeriodicPolicy",
    "LookSAMPolicy",
    "AdaptivePolicy",
    "AELookSAMPolicy",
    "ScheduledRandomPolicy",
    "LateSAMPolicy",
    "MomentumSAMPolicy",
    "make_policy",
    "frozen_running_stats",
    "capture_rng",
    "replay_rng",
    "grad_norm_sq",
    "exit_gloo_process",
]
