"""aesam_hf: Adaptive Sharpness-Aware Minimization (AE-SAM, Jiang et al., ICLR 2023) for the Hugging Face Trainer.

Paper: https://huggingface.co/papers/2304.14647. The algorithms: `docs/algorithm.md`; the modules: `docs/architecture.md`.
"""

__version__ = "0.1.0.dev0"

from .checkpoint import SAM_STATE_NAME
from .config import AESAMConfig, split_optim
from .controller import SAMController, StepRecord
from .hparams import DEFAULTS
from .policies import (
    POLICIES,
    AdaptivePolicy,
    AELookSAMPolicy,
    ERMPolicy,
    LookSAMPolicy,
    PeriodicPolicy,
    RandomPolicy,
    SAMAlwaysPolicy,
    SAMPolicy,
    SAMPolicyName,
    make_policy,
)
from .sam import LookSAMGeometry, capture_rng, frozen_running_stats, grad_norm_sq, replay_rng
from .teardown import exit_gloo_process
from .trainer import AESAMTrainer, AESAMTrainerMixin


__all__ = [
    "__version__",
    "AESAMConfig",
    "AESAMTrainer",
    "AESAMTrainerMixin",
    "SAM_STATE_NAME",
    "SAMController",
    "StepRecord",
    "LookSAMGeometry",
    "DEFAULTS",
    "split_optim",
    "POLICIES",
    "SAMPolicy",
    "SAMPolicyName",
    "ERMPolicy",
    "SAMAlwaysPolicy",
    "RandomPolicy",
    "PeriodicPolicy",
    "LookSAMPolicy",
    "AdaptivePolicy",
    "AELookSAMPolicy",
    "make_policy",
    "frozen_running_stats",
    "capture_rng",
    "replay_rng",
    "grad_norm_sq",
    "exit_gloo_process",
]
