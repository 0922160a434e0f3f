"""AE-SAM and the other SAM policies in TRL's trainers (`pip install aesam_hf[trl]`, trl >= 1.16).

Ready pairs: `AESAMSFTConfig` / `AESAMSFTTrainer` and `AESAMDPOConfig` / `AESAMDPOTrainer`. Each config keeps every
default of TRL's config (SFT: `learning_rate` 2e-5, `bf16`, `gradient_checkpointing`, `logging_steps` 10; DPO:
`learning_rate` 1e-6, ...) and defaults `optim` to `"aesam"`; `HfArgumentParser(AESAMSFTConfig)` parses `--optim aesam
--sam_rho 0.1`. TRL's metrics (`num_tokens`, `entropy`, `mean_token_accuracy`, `rewards/*`, ...) are recorded once per
step, from the pass at w, as in an ERM run: `AESAMTrainerMixin` drops what the second pass of a SAM step records.

Any other TRL trainer whose loss is a function of the batch (KTO, reward modelling, ...), by the same code path:

    from trl import KTOConfig, KTOTrainer
    from aesam_hf.integrations import make_aesam_config, make_aesam_trainer

    AESAMKTOConfig = make_aesam_config(KTOConfig)
    AESAMKTOTrainer = make_aesam_trainer(KTOTrainer, AESAMKTOConfig)

Not supported: the online trainers that generate completions inside the training step (GRPO, RLOO, online DPO, GKD,
distillation): the second pass of a SAM step would draw or read another batch of completions than the first.
"""

import importlib.metadata

from packaging.version import Version


_MIN_TRL = "1.16"

try:
    _trl_version = importlib.metadata.version("trl")
except importlib.metadata.PackageNotFoundError:
    raise ImportError(
        f"aesam_hf.integrations.trl needs trl >= {_MIN_TRL}, which is not installed: pip install 'aesam_hf[trl]'."
    ) from None
if Version(_trl_version) < Version(_MIN_TRL):
    raise ImportError(
        f"aesam_hf.integrations.trl needs trl >= {_MIN_TRL}, found {_trl_version}: pip install 'aesam_hf[trl]'."
    )

from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer  # noqa: E402

from .pairs import make_aesam_config, make_aesam_trainer  # noqa: E402


AESAMSFTConfig = make_aesam_config(SFTConfig)
AESAMSFTTrainer = make_aesam_trainer(SFTTrainer, AESAMSFTConfig)
AESAMDPOConfig = make_aesam_config(DPOConfig)
AESAMDPOTrainer = make_aesam_trainer(DPOTrainer, AESAMDPOConfig)

__all__ = [
    "AESAMSFTConfig",
    "AESAMSFTTrainer",
    "AESAMDPOConfig",
    "AESAMDPOTrainer",
    "make_aesam_config",
    "make_aesam_trainer",
]
