"""`AESAMTrainerMixin` and `AESAMTrainer`: SAM policies inside `transformers.Trainer`'s `training_step`.

Implements `../shared/spec/aesam.md` under the stock training loop: one decision per optimizer step, taken after the
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
from collections import defaultdict
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import has_length
from transformers.utils import logging

from .config import POLICY_HPARAM_FIELDS, AESAMConfig
from .controller import SAMController
from .policies import POLICIES, make_policy
from .sam import frozen_running_stats


logger = logging.get_logger(__name__)

SAM_STATE_NAME = "sam_state.pt"
_TAG = "aesam"


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
        if getattr(self, "is_deepspeed_enabled", False) or getattr(self, "is_fsdp_enabled", False):
            backend = "DeepSpeed" if self.is_deepspeed_enabled else "FSDP"
            raise ValueError(
                f"{backend} is not supported by AESAMTrainer yet: the SAM step needs the full gradient and weights on "
                "every rank. Use multi-process DDP (`accelerate launch` / `torchrun`) instead."
            )
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
        self._sam_metrics: dict[str, list] = defaultdict(list)
        self.add_callback(_SAMTrainBeginCallback(self))
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._sam_model_tags)

    @property
    def _sam_model_tags(self) -> list[str]:
        return self._tag_names + [f"sam-policy-{self.args.sam_policy.value}"]

    # ---- optimizer: the stock one named by `sam_base_optim` ----

    @staticmethod
    def get_optimizer_cls_and_kwargs(args, model=None):
        # The stock handlers look up `args.optim`; hand them a shallow copy that names the base optimizer.
        if isinstance(args, AESAMConfig):
            args = copy.copy(args)
            args.optim = args.sam_base_optim
        return Trainer.get_optimizer_cls_and_kwargs(args, model)

    # ---- the step ----

    def _sam_begin_training(self, max_steps: int, global_step: int) -> None:
        args = self.args
        policy = make_policy(args.sam_policy, total_steps=max_steps, **args.sam_policy_kwargs)
        self._sam_controller = SAMController(
            self.model.parameters(),
            policy,
            rho=args.sam_rho,
            adaptive=args.sam_adaptive,
            looksam_alpha=args.looksam_alpha,
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
        self._sam_metrics.clear()

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
        grad_scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else None
        if controller.maybe_perturb(grad_scale=grad_scale):
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
        self._sam_record_step(controller)
        return loss

    # ---- logging ----

    def _sam_record_step(self, controller: SAMController) -> None:
        # x, mu, sigma and the decision come from the all-reduced gradient, identical on every rank: no gather.
        last = controller.last
        metrics = self._sam_metrics
        if last.get("overflow"):
            metrics["overflow"].append(1.0)
            return
        metrics["grad_norm_sq"].append(last["grad_norm_sq"])
        metrics["sam"].append(float(last["sam"]))
        for key in ("mu", "sigma", "threshold_c", "threshold"):
            if key in last:
                metrics[key].append(last[key])

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        controller = self._sam_controller
        is_eval = any(k.startswith(("eval_", "test_")) for k in logs)
        if controller is not None and not is_eval and (self._sam_metrics or "train_runtime" in logs):
            metrics = self._sam_metrics
            if metrics["sam"]:
                logs["sam/fraction"] = sum(metrics["sam"]) / len(metrics["sam"])
            if metrics["grad_norm_sq"]:
                # Device tensors (policies that need no host sync in the step) are read here, once per log. A
                # non-finite value there is an fp16 overflow step that the step itself did not need to detect.
                xs = [float(x) for x in metrics["grad_norm_sq"]]
                finite = [x for x in xs if math.isfinite(x)]
                metrics["overflow"] += [1.0] * (len(xs) - len(finite))
                if finite:
                    logs["sam/grad_norm_sq"] = sum(finite) / len(finite)
            for key in ("mu", "sigma", "threshold_c", "threshold"):
                if metrics[key]:
                    logs[f"sam/{key}"] = sum(metrics[key]) / len(metrics[key])
            if metrics["overflow"]:
                logs["sam/overflow_steps"] = float(len(metrics["overflow"]))
            # On the final log, `logs` is the very dict `train()` returns as `TrainOutput.metrics`: the totals reach
            # the example scripts' train_results.json / all_results.json from here.
            logs["sam/fraction_total"] = controller.sam_fraction
            logs["sam/passes"] = float(controller.passes)
            metrics.clear()
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
            fields = [
                POLICY_HPARAM_FIELDS[k] for k in POLICIES[args.sam_policy].hparams if k not in ("total_steps", "seed")
            ]
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
