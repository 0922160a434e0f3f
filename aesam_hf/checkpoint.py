"""The SAM state in a checkpoint (`sam_state.pt`) and how a run resumes from it.

The state travels with the optimizer's (`AESAMTrainerMixin` writes and reads it in the Trainer's optimizer hooks;
`docs/architecture.md`, "Checkpoints", says why). Resuming must keep the counters consistent with the Trainer's step
in every case, and say what differs from an uninterrupted run: `docs/algorithm.md`, "Rules every policy obeys".

Under FSDP2 the LookSAM direction g_v is held as each rank's local shards, so every rank writes its own file,
`sam_state_rank{R}.pt` (R: its rank in the shard group), and reads it back on resume (`state_name`, `find_state`).
"""

import os
from typing import Any

import torch
from transformers.utils import logging

from .controller import PolicyMismatchError, SAMController
from .state import StateError, field_of


logger = logging.get_logger(__name__)

SAM_STATE_NAME = "sam_state.pt"
SHARDED_STATE_NAME = "sam_state_rank{rank}.pt"  # one per rank under FSDP2
# The saved settings are the flags' own names (`SAMController.saved_settings`), except the run's length, which the
# Trainer sets from `max_steps`.
_SETTING_FIELDS = {"total_steps": "max_steps"}
_FRESH_FLAG = "sam_reset_policy_on_resume"


def state_name(controller: SAMController) -> str:
    """The file `controller` saves its state to: `sam_state.pt`, or under FSDP2 its rank's `sam_state_rank{R}.pt`."""
    shard = controller.shard
    return SAM_STATE_NAME if shard is None else SHARDED_STATE_NAME.format(rank=shard["rank"])


def find_state(checkpoint: str, controller: SAMController) -> tuple[str, dict[str, Any]] | None:
    """The SAM state `controller` resumes from, with its path: its own file in `checkpoint`, else one saved under
    another sharding; None when the checkpoint holds none.

    [choice] The counters and the policy's statistics are the same in every rank's file, only g_v differs: a state
    saved unsharded (or by rank 0 under FSDP2) therefore resumes the policy under another sharding when it holds no
    g_v, and when it holds one, `SAMController.load_state_dict` refuses it on every rank alike with an error that says
    so, rather than each rank starting afresh without a word.
    """
    names = [state_name(controller), SAM_STATE_NAME, SHARDED_STATE_NAME.format(rank=0)]
    for name in dict.fromkeys(names):
        path = os.path.join(checkpoint, name)
        state = read_state(path)
        if state is not None:
            return path, state
    return None


def _unusable(path: str, reason: str) -> ValueError:
    return ValueError(
        f"`{path}` is not a usable SAM state: {reason}. The file is corrupt, was edited, or was not written by this "
        "run's aesam_hf for this model. Resume from another checkpoint, or delete the file to resume with a fresh "
        "policy (the counters then take the earlier steps as plain ERM steps)."
    )


def read_state(path: str) -> dict[str, Any] | None:
    """The SAM state saved at `path`, or None if there is no such file; a file that cannot be read is an error naming
    it. Its fields are checked where they are used (`SAMController.load_state_dict`)."""
    if not os.path.isfile(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, empty, random bytes, a pickle of something else
        raise _unusable(path, f"it cannot be loaded ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise _unusable(path, f"it holds a {type(state).__name__}, not a dict")
    return state


def resume(
    controller: SAMController,
    found: tuple[str, dict[str, Any]] | None,
    global_step: int,
    checkpoint: str | None,
    fresh: bool,
) -> None:
    """Bring a new controller to the Trainer's `global_step` from the checkpoint's state (`find_state`; None: it had
    none).

    `fresh` (`sam_reset_policy_on_resume`) keeps the counters but starts the policy afresh, which is how a run
    continues under another policy. Every field the run will read is checked first: a state that cannot be used is a
    `ValueError` naming the file and the field, before training goes on.
    """
    where = f"`{checkpoint}`" if checkpoint else "the checkpoint"
    if found is None:
        if global_step > 0:
            # A stock Trainer checkpoint, `save_only_model`, or a deleted file. Counting the earlier steps as ERM
            # steps is exact for the first (a run continued under a SAM policy) and keeps t == global_step always.
            controller.t = controller.decided_steps = controller.passes = global_step
            logger.warning(
                f"Resuming at step {global_step} from {where}, which holds no {SAM_STATE_NAME} (a stock Trainer "
                f"checkpoint, or one saved with `save_only_model`): the {controller.policy.name!r} policy starts "
                f"afresh, and the counters (SAM fraction, passes) take the {global_step} earlier steps as plain ERM "
                "steps, 1 pass each."
            )
        return
    path, state = found
    try:
        t = controller.check_counters(state)["t"]
        saved = field_of(state, "policy_name")
        if not isinstance(saved, str):
            raise StateError("policy_name", f"({saved!r}) must be a policy name")
    except StateError as err:
        raise _unusable(path, str(err)) from None
    if t != global_step:
        raise ValueError(
            f"`{path}` is from optimizer step {t}, but the checkpoint is at step {global_step}: the file belongs to "
            "another checkpoint. Resume from the checkpoint it was saved with, or delete it to resume with a fresh "
            "policy."
        )
    current = controller.policy.name
    try:
        controller.load_state_dict(state, policy_state=not fresh)
    except StateError as err:
        raise _unusable(path, str(err)) from None
    except PolicyMismatchError:
        raise ValueError(
            f"{where} was trained with the {saved!r} policy (`policy_name` in `{path}`) and this run uses {current!r}. "
            f"To continue it under {current!r} with fresh statistics (the counters continue), pass "
            f"`--{_FRESH_FLAG} true`; to resume it as it was, pass `--optim {saved}`."
        ) from None
    if fresh:
        logger.warning(f"Resuming at step {global_step} under {current!r} (was {saved!r}) with fresh statistics.")
    old, new = state["settings"], controller.saved_settings()
    changes = [f"{_SETTING_FIELDS.get(k, k)} {old[k]!r} -> {new[k]!r}" for k in new if k in old and old[k] != new[k]]
    if changes:
        logger.warning(
            f"Resuming from {where} with changed SAM settings ({', '.join(changes)}): the decisions from here on "
            "differ from those of an uninterrupted run."
        )
