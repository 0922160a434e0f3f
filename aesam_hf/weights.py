"""Load the weights of a checkpoint directory into an existing model completely, or stop with an error that says why.

transformers 5.x saves some models (ViT, among others) under their legacy key names
(`vit.encoder.layer.0.attention.attention.key.weight`) while their `state_dict()` uses new ones
(`vit.layers.0.attention.k_proj.weight`); only `from_pretrained` maps one onto the other. The stock Trainer's checkpoint
loaders (resume, `load_best_model_at_end`) call `load_state_dict(strict=False)` and merely log what did not load, so a
resumed ViT trains on from its initial encoder and the "best" model keeps the last encoder. `AESAMTrainerMixin` loads
checkpoints through `load_checkpoint_weights` instead. `docs/reliability.md`, "Faults and what happens", lists the case.
"""

import json
import os

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import (
    CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    is_peft_available,
)


# The files `save_pretrained` and the Trainer write, in the order the stock loaders prefer them.
WEIGHT_FILES = (SAFE_WEIGHTS_NAME, WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME)
_SHOWN = 5  # keys named in an error message; the rest are counted
_LACKS = "the file lacks them: it was truncated or edited, or written from another model"


def weights_file(checkpoint_dir: str) -> str | None:
    """The file holding the full model weights in `checkpoint_dir` (one of `WEIGHT_FILES`), or None (e.g. adapters
    only, or an FSDP sharded state)."""
    for name in WEIGHT_FILES:
        path = os.path.join(checkpoint_dir, name)
        if os.path.isfile(path):
            return path
    return None


def is_peft_model(model: nn.Module) -> bool:
    """Whether `model` is a PEFT wrapper, whose checkpoints hold adapters that PEFT itself loads."""
    if not is_peft_available():
        return False
    from peft import PeftMixedModel, PeftModel  # optional: imported only when installed

    return isinstance(model, (PeftModel, PeftMixedModel))


def saved_transformers_version(checkpoint_dir: str) -> str | None:
    """The transformers version recorded in the checkpoint's `config.json`, if it has one."""
    path = os.path.join(checkpoint_dir, CONFIG_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("transformers_version")


def load_checkpoint_weights(model: nn.Module, checkpoint_dir: str) -> None:
    """Load the weights `save_pretrained` (or the Trainer) wrote to `checkpoint_dir` into `model`, every tensor of it.

    A checkpoint whose names are the model's `state_dict()` names is loaded file by file, as the stock loaders do. One
    saved under other names (transformers 5.x saves ViT under its legacy names) is read back by
    `type(model).from_pretrained` on the CPU, whose conversion mapping turns them into the model's, and copied into
    `model`: this costs a second CPU copy of the model, only when the names differ. Tensors tied to a loaded one, and
    those the model class never saves (`_keys_to_ignore_on_save`), are not required.

    Args:
        model (`nn.Module`):
            The model to load into, in place (its devices and dtypes are kept).
        checkpoint_dir (`str`):
            A directory with `model.safetensors`, `pytorch_model.bin`, or a sharded index of either.

    Raises:
        `ValueError`: when a tensor of `model` would keep its current value, or a tensor of the file would be left
        unused; the message names the file, the keys (the first few and their count) and the likely cause. The
        model is left as it was, unless a tensor's shape differs (torch copies the others before it raises).
    """
    path = weights_file(checkpoint_dir)
    if path is None:
        raise ValueError(f"`{checkpoint_dir}` holds no model weights: none of {', '.join(WEIGHT_FILES)} is there.")
    shards = _shard_files(path)
    saved = _saved_keys(shards)
    missing, unexpected = _compare(model, saved)
    if not missing and not unexpected:
        for shard in shards:
            _load_into(model, _read(shard), shard)
        return
    if not isinstance(model, PreTrainedModel):
        renamed = (
            f"the names in the file are not those of the model's `state_dict()`, and only a transformers "
            f"`PreTrainedModel` (this is a {type(model).__name__}) has a mapping between the two"
        )
        raise _incomplete(path, missing, unexpected, renamed if unexpected else _LACKS)
    _load_converted(model, checkpoint_dir, path)


def _shard_files(path: str) -> list[str]:
    """The weight files behind `path`: itself, or the shards its index names."""
    if not path.endswith(".index.json"):
        return [path]
    with open(path, encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
    folder = os.path.dirname(path)
    shards = [os.path.join(folder, name) for name in dict.fromkeys(weight_map.values())]
    absent = [s for s in shards if not os.path.isfile(s)]
    if absent:
        raise ValueError(f"`{path}` names shards that are not there: {_few(absent)}.")
    return shards


def _saved_keys(shards: list[str]) -> list[str]:
    keys = []
    for shard in shards:
        if shard.endswith(".safetensors"):
            with safe_open(shard, framework="pt") as f:  # reads the header only
                keys.extend(f.keys())
        else:
            keys.extend(torch.load(shard, map_location="cpu", weights_only=True, mmap=True).keys())
    return keys


def _read(shard: str) -> dict[str, torch.Tensor]:
    # On the CPU, as the stock loaders do: `load_state_dict` copies each tensor to the model's device.
    if shard.endswith(".safetensors"):
        return load_file(shard, device="cpu")
    return torch.load(shard, map_location="cpu", weights_only=True)


def _compare(model: nn.Module, saved: list[str]) -> tuple[list[str], list[str]]:
    """The model's keys absent from `saved` (tied and never-saved ones excepted), and the saved keys it lacks."""
    expected = model.state_dict()
    present = set(saved)
    loaded_storage = {_storage(t) for k, t in expected.items() if k in present}
    not_saved = set(model._keys_to_ignore_on_save or ()) if isinstance(model, PreTrainedModel) else set()
    missing = [
        k
        for k, t in expected.items()
        if k not in present and k not in not_saved and (_storage(t) is None or _storage(t) not in loaded_storage)
    ]
    unexpected = [k for k in saved if k not in expected]
    return missing, unexpected


def _storage(t: torch.Tensor) -> tuple | None:
    """What identifies the memory a tensor views: two keys that view the same memory are tied. None for empty
    tensors, whose data pointers say nothing."""
    if t.numel() == 0:
        return None
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, strict: bool = False) -> None:
    try:
        model.load_state_dict(state_dict, strict=strict)
    except RuntimeError as err:  # a shape that differs: torch raises even with strict=False
        raise ValueError(f"`{source}` does not fit the model: {err}") from None


def _load_converted(model: PreTrainedModel, checkpoint_dir: str, path: str) -> None:
    """Read the checkpoint with `from_pretrained` (which maps saved names to the model's), then copy it over."""
    cls = type(model)
    # [choice] The model's own class and config, on the CPU: the copy has exactly the model's keys, and the device
    # memory holds one model only. Its dtype is the model's, as it was when it saved the checkpoint, so the copy is
    # exact; `fork_rng` keeps anything `from_pretrained` draws out of the run's random stream.
    try:
        with torch.random.fork_rng(devices=[]):
            reference, info = cls.from_pretrained(
                checkpoint_dir,
                config=model.config,
                dtype=model.dtype,
                output_loading_info=True,
                local_files_only=True,
            )
    except (OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"`{path}` could not be read into a {cls.__name__}: {err}") from err
    missing = sorted(info["missing_keys"]) + sorted(k for k, *_ in info["mismatched_keys"])
    unexpected = sorted(info["unexpected_keys"])
    if missing or unexpected or info["error_msgs"]:
        version, current, fix = saved_transformers_version(checkpoint_dir), transformers.__version__, None
        if unexpected:
            reason = f"the file holds tensors under names transformers {current} does not map to {cls.__name__}'s"
            if version is not None and version != current:
                reason += f": transformers {version} wrote it"
                fix = f"Load it with transformers {version}, or use another checkpoint."
            else:
                reason += ": it was edited, or written from another model class"
            reason += " (the unused names are shown as transformers renamed them)"
        else:
            reason = _LACKS if missing else "; ".join(info["error_msgs"])
        raise _incomplete(path, missing, unexpected, reason, fix)
    state, ours = reference.state_dict(), model.state_dict()
    if state.keys() != ours.keys():
        # The model was changed after it was built (a module added, say): its config no longer describes it.
        reason = f"the model's tensors are not those a {cls.__name__} built from its config has"
        raise _incomplete(path, [k for k in ours if k not in state], [k for k in state if k not in ours], reason)
    _load_into(model, state, path, strict=True)


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return f"{shown}{', ...' if len(keys) > _SHOWN else ''}"


def _incomplete(
    path: str, missing: list[str], unexpected: list[str], reason: str, fix: str | None = None
) -> ValueError:
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's tensors ({_few(missing)}) would keep their current values")
    if unexpected:
        parts.append(f"{len(unexpected)} of the file's tensors ({_few(unexpected)}) would be left unused")
    return ValueError(
        f"`{path}` does not load completely: {' and '.join(parts) or 'some tensors did not load'}, because {reason}. "
        "A mix of checkpoint and current weights is neither, so loading stops here. "
        + (fix or "Use another checkpoint.")
    )
