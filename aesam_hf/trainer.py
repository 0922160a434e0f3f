"""`AESAMTrainerMixin` and `AESAMTrainer`: SAM policies inside `transformers.Trainer`'s `training_step`.

Implements `docs/algorithm.md` under the stock training loop: one decision per optimizer step, taken after the
last micro-batch of the step has been back-propagated (so from the full accumulated and, under DDP, all-reduced
gradient); a SAM step re-runs forward/backward on every micro-batch of the step at w + e, so gradient accumulation
2x4 gives the same update as 1x8. AE-SAM: https://huggingface.co/papers/2304.14647.

Mixed precision, clipping, the scheduler and the base optimizer are the stock Trainer's: the override only changes
what is in `.grad` when `training_step` returns on the last micro-batch.
"""

import contextlib
import copy
import functools
import math
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import has_length
from transformers.utils import logging

from .config import HPARAM_FIELDS, AESAMConfig, refuse_sharded_backend
from .controller import SAMController, StepRecord
from .policies import POLICIES, make_policy
from .sam import frozen_running_stats


logger = logging.get_logger(__name__)

SAM_STATE_NAME = "sam_state.pt"
_TAG = "aesam"

# The SAM state travels with the optimizer's through these two Trainer hooks; `docs/architecture.md` ("Checkpoints")
# says why no public mechanism serves. Checked at import so that an upstream rename fails here, loudly.
for _hook in ("_save_optimizer_and_scheduler", "_load_optimizer_and_scheduler"):
    if not callable(getattr(Trainer, _hook, None)):
        raise ImportError(
            f"aesam_hf needs `transformers.Trainer.{_hook}`, which this transformers version lacks; install a "
            "version this aesam_hf supports (see setup.cfg)."
        )


class _SAMTrainBeginCallback(TrainerCallback):
    """Builds the controller when `train()` starts: only then are `max_steps` (T) and a resumed state known."""

    def __init__(self, trainer: "AESAMTrainerMixin"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._sam_begin_training(state.max_steps, state.global_step)


class AESAMTrainerMixin:
    """Adds the SAM policies of `AESAMConfig` to any `transformers.Trainer` subclass.

    Put it first in the bases, e.g. `class MySFTTrainer(AESAMTrainerMixin, SFTTrainer)`; `args` must be an
    `AESAMConfig`. Subclasses whose `compute_loss` records metrics will record them twice on SAM steps (the second
    pass runs `compute_loss` again at w + e).
    """

    _tag_names = [_TAG]

    def __init__(self, *args, **kwargs):
        if len(args) < 2 and kwargs.get("args") is None:
            # As the stock Trainer does with TrainingArguments: defaults, i.e. AE-SAM with AdamW.
            kwargs["args"] = AESAMConfig(output_dir="trainer_output")
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, AESAMConfig):
            raise ValueError(
                f"`args` must be an AESAMConfig, got {type(self.args).__name__}; build it with AESAMConfig(...) or "
                "HfArgumentParser(AESAMConfig)."
            )
        # Accelerate can switch these on from its own config (`accelerate launch --use_fsdp`), not only from args.
        for backend, enabled in (("DeepSpeed", self.is_deepspeed_enabled), ("FSDP", self.is_fsdp_enabled)):
            if enabled:
                refuse_sharded_backend(backend, True, f"Accelerate's {backend} plugin")
        # A launcher (torchrun, `accelerate launch`) started several processes, but transformers set up none of them
        # for data parallelism: without GPUs it joins the gloo group only with `use_cpu`. Each rank would then train
        # its own copy on the full data and overwrite the others' checkpoints; the stock Trainer only warns.
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and self.args.world_size == 1:
            raise ValueError(
                f"`use_cpu` ({self.args.use_cpu}): {dist.get_world_size()} processes were launched, but the Trainer "
                f"runs each one alone (`parallel_mode` {self.args.parallel_mode.value!r}), so every rank would train "
                "its own copy. On a machine without GPUs pass `--use_cpu` (`use_cpu=True`) or set "
                "ACCELERATE_USE_CPU=true, so that the ranks form one DDP group over gloo."
            )
        if (
            "total_steps" in POLICIES[self.args.sam_policy].hparams
            and self.args.max_steps <= 0
            and self.train_dataset is not None
            and not has_length(self.train_dataset)
        ):
            raise ValueError(
                f"`max_steps` ({self.args.max_steps}) must be > 0 for `optim` {self.args.optim!r}: its threshold "
                "schedule needs the total number of steps, and the training dataset has no length."
            )
        self._sam_controller: SAMController | None = None
        self._sam_resume_state: dict[str, Any] | None = None
        self._sam_micro_batches: list[tuple[Any, Any]] = []
        self._sam_records: list[StepRecord] = []  # the steps since the last log
        self.add_callback(_SAMTrainBeginCallback(self))
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._sam_model_tags)

    @property
    def _sam_model_tags(self) -> list[str]:
        return self._tag_names + [f"sam-policy-{self.args.sam_policy.value}"]

    # ---- optimizer: the stock one named by `sam_base_optim` ----

    @staticmethod
    def get_optimizer_cls_and_kwargs(args, model=None):
        # The stock handlers look the optimizer up by `args.optim`: show them the one that takes the steps.
        if not isinstance(args, AESAMConfig):
            return Trainer.get_optimizer_cls_and_kwargs(args, model)
        with args.stock_optim():
            return Trainer.get_optimizer_cls_and_kwargs(args, model)

    # ---- the step ----

    def _sam_begin_training(self, max_steps: int, global_step: int) -> None:
        args, hp = self.args, self.args.sam_hparams
        policy = make_policy(args.sam_policy, total_steps=max_steps, seed=args.seed, **hp)
        self._sam_controller = SAMController(
            self.model.parameters(),
            policy,
            rho=hp["rho"],
            adaptive=hp["adaptive"],
            looksam_alpha=hp["looksam_alpha"],
            broadcast_grad_norm=args.world_size > 1,
        )
        if self._sam_resume_state is not None:
            self._sam_controller.load_state_dict(self._sam_resume_state)
            self._sam_resume_state = None
        if self._sam_controller.t != global_step:
            # A checkpoint without SAM state (the stock Trainer's, or `save_only_model`): keep the step index in line
            # with the Trainer so that c_t and the periodic schedule are right; the statistics start afresh.
            logger.warning(
                f"Resuming at step {global_step} without {SAM_STATE_NAME} in the checkpoint: the SAM policy's "
                "statistics and counters start afresh, so decisions differ from an uninterrupted run."
            )
            self._sam_controller.t = global_step
        self._sam_micro_batches = []
        self._sam_records = []

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        controller = self._sam_controller
        if controller is None:  # training_step called outside train()
            return super().training_step(model, inputs, num_items_in_batch)
        if controller.policy.can_sam:
            # Keep every micro-batch of the step: a SAM step re-runs all of them at w + e. The Trainer has already
            # prefetched them all for this step, so this holds references, not copies of the data.
            self._sam_micro_batches.append((copy.copy(inputs), num_items_in_batch))
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not self.accelerator.sync_gradients:
            return loss  # not the last micro-batch: the step's gradient is not complete yet

        micro_batches, self._sam_micro_batches = self._sam_micro_batches, []
        scaler = self.accelerator.scaler
        # `get_scale()` reads the scale on the host: only a policy that can take a SAM step needs it.
        scaled = controller.policy.can_sam and scaler is not None and scaler.is_enabled()
        if controller.maybe_perturb(grad_scale=scaler.get_scale() if scaled else None):
            freeze = frozen_running_stats(model) if self.args.sam_freeze_bn_stats else contextlib.nullcontext()
            try:
                with freeze:
                    for i, (mb_inputs, mb_items) in enumerate(micro_batches):
                        # As in the stock loop: DDP all-reduces once, on the last micro-batch of the pass.
                        last = i == len(micro_batches) - 1
                        no_sync = functools.partial(self.accelerator.no_sync, model=model)
                        with contextlib.nullcontext() if last else no_sync():
                            super().training_step(model, mb_inputs, mb_items)
            except BaseException:
                # e.g. out of memory with `auto_find_batch_size`: the retry must start from w, not w + e.
                controller.abort()
                raise
            controller.restore()
        self._sam_records.append(controller.record)
        return loss

    # ---- logging ----

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        controller = self._sam_controller
        is_eval = any(k.startswith(("eval_", "test_")) for k in logs)
        if controller is not None and not is_eval and (self._sam_records or "train_runtime" in logs):
            # x, mu, sigma and the decision come from the all-reduced gradient, identical on every rank: no gather.
            records, self._sam_records = self._sam_records, []
            logs.update(summarize_steps(records))
            # On the final log, `logs` is the very dict `train()` returns as `TrainOutput.metrics`: the totals reach
            # the example scripts' train_results.json / all_results.json from here.
            logs["sam/fraction_total"] = controller.sam_fraction
            logs["sam/passes"] = float(controller.passes)
        super().log(logs, *args, **kwargs)

    # ---- checkpointing: the controller's state travels with the optimizer's ----

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        # Identical on every rank, so one copy written by the main process is enough.
        if self._sam_controller is not None and self.args.should_save:
            torch.save(self._sam_controller.state_dict(), os.path.join(output_dir, SAM_STATE_NAME))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, SAM_STATE_NAME)
        if os.path.isfile(path):
            # Applied by `_sam_begin_training`, which runs right after this when the controller exists.
            self._sam_resume_state = torch.load(path, map_location="cpu", weights_only=True)

    # ---- model card ----

    def create_model_card(self, *args, tags: str | list[str] | None = None, **kwargs) -> None:
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        for tag in self._sam_model_tags:
            if tag not in tags:
                tags.append(tag)
        super().create_model_card(*args, tags=tags, **kwargs)
        path = os.path.join(self.args.output_dir, "README.md")
        if not self.is_world_process_zero() or not os.path.isfile(path):
            return
        # The stock card names the optimizer only as `args.optim`; say what the policy did, and at what cost.
        with open(path, encoding="utf-8") as f:
            card = f.read()
        section = self._sam_model_card_section()
        anchor = "### Framework versions"
        card = card.replace(anchor, f"{section}\n{anchor}", 1) if anchor in card else f"{card.rstrip()}\n\n{section}"
        with open(path, "w", encoding="utf-8") as f:
            f.write(card)

    def _sam_model_card_section(self) -> str:
        args = self.args
        policy = args.sam_policy.value
        lines = [
            "### Sharpness-aware training",
            "",
            f"Trained with aesam_hf's `{policy}` policy ([AE-SAM paper](https://huggingface.co/papers/2304.14647)) "
            f"on top of the `{args.sam_base_optim}` optimizer.",
            "",
        ]
        if POLICIES[args.sam_policy].can_sam:
            lines.append(f"- SAM radius rho: {args.sam_rho:g}{' (ASAM, adaptive)' if args.sam_adaptive else ''}")
            fields = [HPARAM_FIELDS[k] for k in POLICIES[args.sam_policy].hparams if k in HPARAM_FIELDS]
            if fields:
                lines.append(f"- policy hyper-parameters: {', '.join(f'{f}={getattr(args, f):g}' for f in fields)}")
        controller = self._sam_controller
        if controller is not None and controller.t > 0:
            steps = controller.decided_steps
            lines += [
                f"- SAM fraction: {controller.sam_fraction:.3f} (SAM on {controller.sam_steps} of {steps} optimizer "
                f"steps)",
                f"- forward/backward passes: {controller.passes} ({controller.passes / max(1, controller.t):.2f} per "
                "step; plain training takes 1)",
            ]
            if controller.overflow_steps:
                lines.append(f"- fp16 overflow steps skipped: {controller.overflow_steps}")
        return "\n".join(lines) + "\n"


class AESAMTrainer(AESAMTrainerMixin, Trainer):
    """`transformers.Trainer` with the SAM policies of `AESAMConfig` (AE-SAM by default)."""


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summarize_steps(records: list[StepRecord]) -> dict[str, float]:
    """The `sam/*` metrics of a logging window: means over its steps, and counts of the steps that went wrong.

    Device values are read here, in one transfer per window rather than one sync per step.
    """
    logs: dict[str, float] = {}
    decided = [r for r in records if not r.overflow]
    if decided:
        logs["sam/fraction"] = _mean([float(r.sam) for r in decided])
    measured = [r.grad_norm_sq for r in decided if r.grad_norm_sq is not None]
    if measured:
        xs = torch.stack(measured).tolist()
        finite = [x for x in xs if math.isfinite(x)]
        if finite:
            logs["sam/grad_norm_sq"] = _mean(finite)
        if len(finite) < len(xs):
            # No loss scaler skipped these steps (that would be an overflow step): the optimizer took them.
            logs["sam/nonfinite_steps"] = float(len(xs) - len(finite))
    for key in dict.fromkeys(k for r in decided for k in r.policy_stats):
        logs[f"sam/{key}"] = _mean([r.policy_stats[key] for r in decided if key in r.policy_stats])
    geometry = [r.looksam.ratios() for r in decided if r.looksam is not None]
    for key in geometry[0] if geometry else ():
        logs[f"sam/looksam_{key}"] = _mean(torch.stack([g[key] for g in geometry]).tolist())
    overflow = len(records) - len(decided)
    if overflow:
        logs["sam/overflow_steps"] = float(overflow)
    return logs
