"""Config/Trainer pairs for any `TrainingArguments`/`Trainer` subclass: the SAM policies on top of its defaults.

TRL's trainers, `Seq2SeqTrainer` and many user trainers come with a config class that changes stock defaults (TRL's
`SFTConfig`: `learning_rate` 2e-5, `bf16`, `gradient_checkpointing`, `logging_steps` 10). A dataclass takes each field
from the last class of its reversed MRO that declares it, and every `TrainingArguments` subclass declares every stock
field: `class C(AESAMConfig, SFTConfig)` therefore gets the stock defaults back, and `class C(SFTConfig, AESAMConfig)`
gets the stock `optim` (plain ERM). `make_aesam_config` builds the class that keeps both sets of defaults, and
`make_aesam_trainer` the trainer that pairs with it. How the SAM step works: `docs/architecture.md`.
"""

import sys
from dataclasses import Field, dataclass, field, fields

from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments

from ..config import AESAMConfig
from ..trainer import AESAMTrainerMixin


def _caller_module() -> str:
    """The module that called the factory, as `collections.namedtuple` finds it: the new class pickles from there."""
    return sys._getframe(2).f_globals.get("__name__", "__main__")


def _copy_field(f: Field) -> Field:
    """A fresh `field()` equal to `f`: a `Field` object belongs to the class that processed it."""
    return field(
        default=f.default,
        default_factory=f.default_factory,
        init=f.init,
        repr=f.repr,
        hash=f.hash,
        compare=f.compare,
        metadata=f.metadata,
        kw_only=f.kw_only,
    )


def make_aesam_config(
    config_class: type[TrainingArguments], name: str | None = None, module: str | None = None
) -> type[AESAMConfig]:
    """`config_class` with the SAM fields of `AESAMConfig`: every default of `config_class`, and `optim="aesam"`.

    The result is an `AESAMConfig` and a `config_class`, parsed by `HfArgumentParser` like either (`--optim aesam
    --sam_rho 0.1`); its `__post_init__` runs `config_class`'s, then `AESAMConfig`'s checks. `name` defaults to
    `"AESAM" + config_class.__name__`, `module` to the caller's (where pickle looks the class up): assign the result
    to a module-level name equal to `name`.
    """
    if not (isinstance(config_class, type) and issubclass(config_class, TrainingArguments)):
        raise TypeError(f"`config_class` ({config_class!r}) must be a subclass of transformers.TrainingArguments.")
    if issubclass(config_class, AESAMConfig):
        return config_class
    name = name or f"AESAM{config_class.__name__}"
    stock = {f.name: f for f in fields(TrainingArguments)}
    # AESAMConfig's new fields reach the subclass through the MRO. The stock fields it redeclares (`optim`) would be
    # overwritten by `config_class`'s copy of the stock field, which comes later in the reversed MRO: declare them again.
    redeclared = [f for f in fields(AESAMConfig) if f.name in stock and f is not stock[f.name]]
    namespace = {
        "__module__": module or _caller_module(),
        "__qualname__": name,
        "__doc__": (
            f"[`{config_class.__name__}`] with the SAM policies of [`AESAMConfig`]: every default of "
            f"`{config_class.__name__}`, except `optim`, which defaults to `{AESAMConfig.optim!r}`. The SAM fields "
            "are described in [`AESAMConfig`]."
        ),
        "__annotations__": {f.name: f.type for f in redeclared},
        **{f.name: _copy_field(f) for f in redeclared},
    }
    return dataclass(type(name, (config_class, AESAMConfig), namespace))


def make_aesam_trainer(
    trainer_class: type[Trainer],
    config_class: type[AESAMConfig],
    name: str | None = None,
    module: str | None = None,
) -> type[AESAMTrainerMixin]:
    """`trainer_class` with the SAM policies: `AESAMTrainerMixin` first in its bases, paired with `config_class`.

    `config_class` (from `make_aesam_config`) gives the default `args`, and a plain `AESAMConfig` passed as `args` is
    converted to it, keeping its values. What `compute_loss` records is recorded once per step, SAM steps included.
    `name` defaults to `"AESAM" + trainer_class.__name__`, `module` to the caller's.
    """
    if not (isinstance(trainer_class, type) and issubclass(trainer_class, Trainer)):
        raise TypeError(f"`trainer_class` ({trainer_class!r}) must be a subclass of transformers.Trainer.")
    if not (isinstance(config_class, type) and issubclass(config_class, AESAMConfig)):
        raise TypeError(
            f"`config_class` ({config_class!r}) must be a subclass of AESAMConfig, e.g. "
            f"make_aesam_config({trainer_class.__name__}'s config class)."
        )
    if issubclass(trainer_class, AESAMTrainerMixin):
        raise TypeError(f"`trainer_class` ({trainer_class.__name__}) already has the AESAMTrainerMixin.")
    name = name or f"AESAM{trainer_class.__name__}"
    namespace = {
        "__module__": module or _caller_module(),
        "__qualname__": name,
        "__doc__": (
            f"[`{trainer_class.__name__}`] with the SAM policies of [`{config_class.__name__}`] (see "
            "[`AESAMTrainerMixin`])."
        ),
        "aesam_config_class": config_class,
    }
    return type(name, (AESAMTrainerMixin, trainer_class), namespace)


AESAMSeq2SeqConfig = make_aesam_config(Seq2SeqTrainingArguments, name="AESAMSeq2SeqConfig")
AESAMSeq2SeqTrainer = make_aesam_trainer(Seq2SeqTrainer, AESAMSeq2SeqConfig)
