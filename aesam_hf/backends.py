"""Which distributed backends `AESAMTrainer` can run, asked for by the config's fields or by a launcher's environment.

DeepSpeed ZeRO shards the gradient and the weights out of `SAMController`'s reach, and FSDP1 flattens the parameters
into plain tensors that the controller would take for whole ones: both are refused, with the way to go (FSDP2, DDP).
On a machine without accelerators a launcher (torchrun, `accelerate launch` with a MULTI_GPU config) can start
several processes that transformers then runs each alone: `launcher_needs_cpu` says so, so that the config can refuse
to start instead of letting every rank train its own copy.
"""

import json
import os
from typing import Any

import torch
from transformers import TrainingArguments


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


def requested_sharding(args: TrainingArguments) -> tuple[str, Any, str] | None:
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


def launcher_needs_cpu() -> str | None:
    """Why these processes cannot train as one job unless `use_cpu` is set, or None.

    `accelerate launch` with a `distributed_type: MULTI_GPU` config (how configs/accelerate/multi_cpu.yaml starts
    several CPU processes) hands them to torchrun and passes the config's `use_cpu: true` on to none of them, and
    torchrun says nothing about devices. Without `use_cpu` (or ACCELERATE_USE_CPU=true, which transformers reads
    itself), transformers joins no gloo group on a machine without accelerators, and each process would train alone.
    """
    if os.environ.get("ACCELERATE_USE_CPU") is not None:
        return None  # said explicitly, either way: transformers obeys it
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not torch.accelerator.is_available():
        return f"a launcher started {world_size} processes (WORLD_SIZE) on a machine without accelerators"
    return None
