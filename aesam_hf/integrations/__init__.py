"""The SAM policies in Trainer classes other than `transformers.Trainer`.

- `make_aesam_config` / `make_aesam_trainer`: the pair for any `TrainingArguments` / `Trainer` subclass, keeping the
  defaults of its config class.
- `AESAMSeq2SeqConfig` / `AESAMSeq2SeqTrainer`: transformers' `Seq2SeqTrainingArguments` / `Seq2SeqTrainer`.
- `aesam_hf.integrations.trl` (`pip install aesam_hf[trl]`): TRL's SFT and DPO pairs. Import it by name: `aesam_hf`
  and this package do not need trl.
"""

from .pairs import AESAMSeq2SeqConfig, AESAMSeq2SeqTrainer, make_aesam_config, make_aesam_trainer


__all__ = ["make_aesam_config", "make_aesam_trainer", "AESAMSeq2SeqConfig", "AESAMSeq2SeqTrainer"]
