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
import dataclasses
import functools
import os
from typing import Any

import torch
import torch.distributed as dist
import transformers
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length
from transformers.utils import logging

from .backends import fsdp_fallback_warning, refuse_sharded_backend, requested_fsdp_version
from .checkpoint import find_state, resume, state_name
from .config import AESAMConfig
from .controller import SAMController, StepRecord
from .metrics import summarize_steps, unrecorded
from .model_card import add_card_section, card_section
from .policies import POLICIES, make_policy
from .sam import capture_rng, frozen_running_stats, replay_rng
from .teardown import destroy_gloo_group_at_exit, in_gloo_group
from .weights import is_peft_model, load_checkpoint_weights, saved_transformers_version, weights_file


logger = logging.get_logger(__name__)

_TAG = "aesam"

# The SAM state travels with the optimizer's through the first two Trainer hooks; `docs/architecture.md`
# ("Checkpoints") says why no public mechanism serves. The write barrier and the complete checkpoint loading override
# the others. Checked at import so that an upstream rename fails here, loudly, instead of silently bypassing them.
_HOOKS = (
    "_save_optimizer_and_scheduler",
    "_load_optimizer_and_scheduler",
    "_save_checkpoint",
    "_load_from_checkpoint",
    "_load_best_model",
)
for _hook in _HOOKS:
    if not callable(getattr(Trainer, _hook, None)):
        raise ImportError(
            f"aesam_hf needs `transformers.Trainer.{_hook}`, which this transformers version lacks; install a "
            "version this aesam_hf supports (see setup.cfg)."
        )


class _SAMCallback(TrainerCallback):
    """Builds the controller when `train()` starts, and checks the weights the run returns."""

    def __init__(self, trainer: "AESAMTrainerMixin"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        # Only now are `max_steps` (T) and a resumed state known.
        self.trainer._sam_begin_training(state.max_steps, state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        # Checkpoints are checked where they are written (`save_model`); this is the model `train()` hands back.
        self.trainer._sam_check_weights("training ends here")


class AESAMTrainerMixin:
    """Adds the SAM policies of `AESAMConfig` to any `transformers.Trainer` subclass.

    Put it first in the bases, e.g. `class MySFTTrainer(AESAMTrainerMixin, SFTTrainer)`, or build the pair with
    `aesam_hf.integrations.make_aesam_config` / `make_aesam_trainer`; `args` must be an `AESAMConfig`. What
    `compute_loss` records (`self._metrics`, numeric counters such as TRL's token totals) is recorded once per step:
    the second pass of a SAM step runs it again at w + e, and `metrics.unrecorded` drops what that pass recorded.
    """

    _tag_names = [_TAG]
    # The config class this trainer pairs with: the default `args`, and what a plain `AESAMConfig` is converted to (as
    # TRL converts a plain `TrainingArguments` to its own config). `make_aesam_trainer` sets it.
    aesam_config_class: type[AESAMConfig] = AESAMConfig

    def __init__(self, *args, **kwargs):
        if len(args) >= 2:
            args = (args[0], self._sam_paired_args(args[1]), *args[2:])
        else:
            kwargs["args"] = self._sam_paired_args(kwargs.get("args"))
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, AESAMConfig):
            raise ValueError(
                f"`args` must be an AESAMConfig, got {type(self.args).__name__}; build it with "
                f"{self.aesam_config_class.__name__}(...) or HfArgumentParser({self.aesam_config_class.__name__})."
            )
        # Accelerate can switch these on from its own config (`accelerate launch --use_fsdp`), not only from args. A stock
        # optimizer name runs the stock Trainer, which these backends serve.
        if self.args.sam_policy is not None:
            self._sam_check_backend()
        # A launcher (torchrun, `accelerate launch`) started several processes, but transformers set up none of them
        # for data parallelism: without accelerators it joins the gloo group only with `use_cpu` (AESAMConfig refuses
        # the common case already; this is e.g. ACCELERATE_USE_CPU=false). Each rank would then train its own copy on
        # the full data and overwrite the others' checkpoints; the stock Trainer only warns.
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and self.args.world_size == 1:
            flag = os.environ.get("ACCELERATE_USE_CPU")
            raise ValueError(
                f"`use_cpu` ({self.args.use_cpu}): {dist.get_world_size()} processes were launched, but the Trainer "
                f"runs each one alone (`parallel_mode` {self.args.parallel_mode.value!r}), so every rank would train "
                "its own copy. On a machine without GPUs add `--use_cpu true` (`use_cpu=True`), or set "
                "ACCELERATE_USE_CPU=true" + (f" (it is {flag!r})" if flag is not None else "") + ", so that the "
                "ranks form one DDP group over gloo."
            )
        if in_gloo_group():
            destroy_gloo_group_at_exit()  # torch 2.13's gloo teardown abort: `aesam_hf.teardown`
        if (
            self.args.sam_policy is not None
            and POLICIES[self.args.sam_policy].needs_total_steps
            and self.args.max_steps <= 0
            and self.train_dataset is not None
            and not has_length(self.train_dataset)
        ):
            raise ValueError(
                f"`max_steps` ({self.args.max_steps}) must be > 0 for `optim` {self.args.sam_policy.value!r}: its threshold "
                "schedule needs the total number of steps, and the training dataset has no length."
            )
        self._sam_controller: SAMController | None = None
        self._sam_resume_from: str | None = None  # the checkpoint to resume from, read by `_sam_begin_training`
        # The last checkpoint saved (after the weight check) or resumed from: the one to name for a clean resume.
        self._sam_checkpoint: str | None = None
        self._sam_checkpoint_checked = False
        self._sam_user_optimizer = self.optimizer is not None or self.optimizer_cls_and_kwargs is not None
        self._sam_micro_batches: list[tuple[Any, Any, Any]] = []  # (inputs, num_items_in_batch, RNG state)
        self._sam_records: list[StepRecord] = []  # the steps since the last log
        self.add_callback(_SAMCallback(self))
        if self.args.sam_policy is not None and hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._sam_model_tags)

    def _sam_check_backend(self) -> None:
        """Refuse the sharding backends a SAM policy cannot run under, and say when FSDP2 quietly becomes DDP."""
        if self.is_deepspeed_enabled:
            refuse_sharded_backend("DeepSpeed", True, "Accelerate's DeepSpeed plugin")
        if self.is_fsdp_enabled:
            version = getattr(self.accelerator.state.fsdp_plugin, "fsdp_version", 1)
            if version != 2:
                refuse_sharded_backend("FSDP", f"fsdp_version={version}", "Accelerate's FSDP plugin")
        elif requested_fsdp_version(self.args) is not None:
            # FSDP2 asked for, but Accelerate runs FSDP on accelerators only: on CPUs it quietly runs DDP.
            logger.warning(fsdp_fallback_warning(self.accelerator.distributed_type))

    def _sam_paired_args(self, args: Any) -> Any:
        """The `args` to hand to the wrapped Trainer: defaults when None, a plain AESAMConfig as the paired class."""
        paired = self.aesam_config_class
        if args is None:
            # As the stock Trainer does with TrainingArguments: defaults, i.e. AE-SAM with AdamW.
            return paired(output_dir="trainer_output")
        if isinstance(args, AESAMConfig) and not isinstance(args, paired):
            # The values are the AESAMConfig's, so the paired class's own defaults of stock fields are not applied:
            # what TRL does with a plain TrainingArguments, said out loud here.
            logger.warning(
                f"`args` is a {type(args).__name__}; converted to {paired.__name__}, keeping its values (the "
                f"defaults {paired.__name__} sets for stock fields such as `learning_rate` do not apply). Build "
                f"{paired.__name__}(...) to get them."
            )
            values = args.to_dict()
            values["hub_token"] = args.hub_token  # `to_dict` hides it
            names = {f.name for f in dataclasses.fields(paired) if f.init}
            return paired(**{k: v for k, v in values.items() if k in names})
        return args

    @property
    def in_sam_second_pass(self) -> bool:
        """True while the second pass of a SAM step runs (at w + e): for subclasses that record outside `_metrics`."""
        return self._sam_controller is not None and self._sam_controller._active is not None

    @property
    def _sam_model_tags(self) -> list[str]:
        return self._tag_names + [f"sam-policy-{self.args.sam_policy.value}"]

    # ---- the step ----

    def _sam_begin_training(self, max_steps: int, global_step: int) -> None:
        args = self.args
        if args.sam_policy is None:
            return  # a stock optimizer name: exactly the stock Trainer, nothing of ours runs
        # The config is the settings record: the policy and the controller read `sam_rho`, ... from it by name.
        policy = make_policy(args.sam_policy, settings=args, total_steps=max_steps, seed=args.seed)
        # Built now, from the parameters as they are after the Trainer prepared the model: under FSDP2 `fully_shard`
        # has replaced them with DTensors by then (a controller built before would hold the replaced ones).
        self._sam_controller = SAMController(self.model.parameters(), policy, broadcast_grad_norm=args.world_size > 1)
        checkpoint, self._sam_resume_from = self._sam_resume_from, None
        # Each run names its own checkpoints (`hyperparameter_search` trains the same trainer again).
        self._sam_checkpoint, self._sam_checkpoint_checked = checkpoint, False
        # The file depends on the controller's sharding (one per rank under FSDP2), known only now.
        found = None if checkpoint is None else find_state(checkpoint, self._sam_controller)
        resume(self._sam_controller, found, global_step, self._sam_checkpoint, args.sam_reset_policy_on_resume)
        controller, step_size = self._sam_controller, self._train_batch_size * args.gradient_accumulation_steps
        if controller.policy.uses_grad_norm and controller.largest_batch > step_size:
            # Resumed with smaller steps: against the checkpoint's largest step, every step would be a short one and
            # the policy would never decide again. The reference restarts from this run's steps.
            logger.warning(
                f"Resuming with {step_size} examples per step, fewer than the {controller.largest_batch} of the "
                "checkpoint's steps: the short-batch rule starts afresh from this run's steps, and the decisions "
                "differ from those of an uninterrupted run."
            )
            controller.largest_batch = 0
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
            # Keep every micro-batch of the step, with the random state its pass starts from: a SAM step re-runs all
            # of them at w + e on the same sub-network. The Trainer has already prefetched them for this step, so
            # this holds references, not copies of the data.
            rng = capture_rng(self._sam_rng_devices)
            self._sam_micro_batches.append((copy.copy(inputs), num_items_in_batch, rng))
        if controller.policy.momentum and not controller._momentum_active:
            # Momentum-SAM: the step's first micro-batch; its passes run at w - rho * m / ||m||.
            controller.momentum_perturb(self.optimizer)
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        except BaseException:
            controller.momentum_restore()  # e.g. out of memory with `auto_find_batch_size`: retry from w
            raise
        if not self.accelerator.sync_gradients:
            return loss  # not the last micro-batch: the step's gradient is not complete yet
        # The optimizer, the clipping and every later evaluation or checkpoint see w, never the moved weights.
        controller.momentum_restore()

        micro_batches, self._sam_micro_batches = self._sam_micro_batches, []
        try:
            self._sam_step(model, controller, micro_batches)
        except FloatingPointError as err:
            # Stop before the optimizer step, and before any later checkpoint: say where a clean resume starts.
            raise FloatingPointError(f"{err} {self._sam_resume_hint()}") from None
        self._sam_records.append(controller.record)
        return loss

    def _sam_step(self, model: nn.Module, controller: SAMController, micro_batches: list) -> None:
        """After the last micro-batch: decide, and on a SAM step re-run every micro-batch at w + e."""
        scaler = self.accelerator.scaler
        # `get_scale()` reads the scale on the host: only a policy that can take a SAM step needs it.
        scaled = controller.policy.can_sam and scaler is not None and scaler.is_enabled()
        grad_scale = scaler.get_scale() if scaled else None
        if not controller.maybe_perturb(grad_scale=grad_scale, examples=self._sam_examples(micro_batches)):
            return
        freeze = frozen_running_stats(model) if self.args.sam_freeze_bn_stats else contextlib.nullcontext()
        no_sync = functools.partial(self.accelerator.no_sync, model=model)
        try:
            with freeze, unrecorded(self):
                for i, (mb_inputs, mb_items, rng) in enumerate(micro_batches):
                    # As in the stock loop: DDP all-reduces once, on the last micro-batch of the pass.
                    last = i == len(micro_batches) - 1
                    with contextlib.nullcontext() if last else no_sync(), replay_rng(rng):
                        super().training_step(model, mb_inputs, mb_items)
        except BaseException:
            # e.g. out of memory with `auto_find_batch_size`: the retry must start from w, not w + e.
            controller.abort()
            raise
        controller.restore()

    @property
    def _sam_rng_devices(self) -> list[torch.device]:
        # DataParallel runs one replica per GPU, each drawing from its own GPU's generator.
        if self.args.n_gpu > 1:
            return [torch.device("cuda", i) for i in range(self.args.n_gpu)]
        return [self.args.device]

    @staticmethod
    def _sam_examples(micro_batches: list) -> int | None:
        """The examples this step saw, for the controller to tell the short batch ending an epoch (None: unknown).

        The controller compares them with the largest step so far, not with the configured batch size: packed or
        padding-free batches (TRL's `packing=True` gives one row per micro-batch) and `split_batches` count
        differently, but never shrink. Only policies that read x use it; counting costs no sync.
        """
        seen = 0
        for inputs, _, _ in micro_batches:
            values = inputs.values() if isinstance(inputs, dict) else ()
            tensor = next((v for v in values if torch.is_tensor(v) and v.dim() > 0), None)
            if tensor is None:
                return None  # no batch dimension to count: treat the step as full
            seen += tensor.shape[0]
        return seen

    def _sam_resume_hint(self) -> str:
        if self._sam_checkpoint is None:
            return "No checkpoint was saved before this step."
        if not self._sam_checkpoint_checked:
            return f"No checkpoint was written since this run resumed from `{self._sam_checkpoint}`."
        return (
            f"The last checkpoint written, `{self._sam_checkpoint}`, was checked and holds finite weights: resume from "
            "it once fixed."
        )

    def _sam_check_weights(self, consequence: str) -> None:
        """Raise rather than let non-finite weights reach a checkpoint or the caller (one host sync).

        The write barrier: `save_model` calls it before anything is written, and every path that writes weights goes
        through `save_model` (checkpoints of every save strategy, best-model tracking, the final save, Hub pushes).
        """
        controller = self._sam_controller
        if controller is None or not (controller.policy.can_sam or controller.policy.momentum):
            return  # `erm` lets every gradient through, as the stock Trainer does (stock names build no controller)
        if controller.weights_are_finite():  # under FSDP2: the local shards, the same answer on every rank
            return
        raise FloatingPointError(
            f"The weights after optimizer step {controller.t} are not finite, so {consequence}: a gradient with "
            f"inf/NaN reached the optimizer on a step the {controller.policy.name!r} policy did not check (its "
            "non-SAM steps are plain ERM steps, as in the stock Trainer). " + self._sam_resume_hint()
        )

    # ---- evaluation leaves the training run's random stream alone ----

    def evaluate(self, *args, **kwargs) -> dict[str, float]:
        """The stock evaluation, with torch's random state (CPU and every GPU in use) restored afterwards.

        [choice] Creating the evaluation DataLoader draws a seed from the global generator, and a model may draw in
        eval mode too; in the stock Trainer, an evaluation during training therefore shifts every later dropout mask
        and random augmentation, so a run's weights depend on `eval_strategy`. Here a run trains the same with or
        without evaluations: compare policies, or `eval_steps`, without changing what is compared.
        """
        if self.args.sam_policy is None:
            return super().evaluate(*args, **kwargs)  # a stock optimizer name: exactly the stock Trainer
        cuda = [
            torch.cuda.current_device() if d.index is None else d.index
            for d in self._sam_rng_devices
            if d.type == "cuda"
        ]
        with torch.random.fork_rng(devices=cuda, device_type="cuda"):
            return super().evaluate(*args, **kwargs)

    # ---- logging ----

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        controller = self._sam_controller
        # The Trainer's training logs carry `loss` (every logging step) or `train_runtime` (the last): evaluations and
        # callbacks' own logs (e.g. `train_subset_*`) must not take the pending step records.
        is_train = "loss" in logs or "train_runtime" in logs
        if controller is not None and is_train and (self._sam_records or "train_runtime" in logs):
            # x, mu, sigma and the decision come from the all-reduced gradient, identical on every rank: no gather.
            records, self._sam_records = self._sam_records, []
            logs.update(summarize_steps(records))
            # On the final log, `logs` is the very dict `train()` returns as `TrainOutput.metrics`: the totals reach
            # the example scripts' train_results.json / all_results.json from here.
            logs["sam/fraction_total"] = controller.sam_fraction
            logs["sam/passes"] = float(controller.passes)
        super().log(logs, *args, **kwargs)

    # ---- checkpointing: the controller's state travels with the optimizer's ----

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The stock `save_model`, behind the write barrier: non-finite weights are never written."""
        self._sam_check_weights(f"`{output_dir or self.args.output_dir}` is not written")
        super().save_model(output_dir, _internal_call=_internal_call)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        # `save_model` runs first in the stock method, so a checkpoint that fails the check leaves no file behind and
        # rotation (`save_total_limit`) never deletes the last finite checkpoint for a later one.
        super()._save_checkpoint(model, trial)
        self._sam_checkpoint = os.path.join(
            self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        )
        self._sam_checkpoint_checked = True

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        controller = self._sam_controller
        if controller is not None and controller.shard is not None:
            # FSDP2: g_v is this rank's local shards, so every rank writes its own file (`sam_state_rank{R}.pt`).
            os.makedirs(output_dir, exist_ok=True)
            torch.save(controller.state_dict(), os.path.join(output_dir, state_name(controller)))
        elif controller is not None and self.args.should_save:
            # Identical on every rank, so one copy written by the main process is enough.
            torch.save(controller.state_dict(), os.path.join(output_dir, state_name(controller)))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            # Read and applied by `_sam_begin_training`, which runs right after this.
            self._sam_resume_from = checkpoint

    # ---- loading weights: every tensor of the checkpoint, or an error ----

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        # The stock loader logs the keys that did not load and trains on: under transformers 5.x a ViT resumes with
        # its initial encoder (`aesam_hf.weights` says why). A resumed run must be the run it continues.
        model = self.model if model is None else model
        if not self._sam_loads_weights(model, resume_from_checkpoint):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        logger.info(f"Loading model from {resume_from_checkpoint}.")
        version = saved_transformers_version(resume_from_checkpoint)
        if version is not None and version != transformers.__version__:
            logger.warning(
                f"You are resuming training from a checkpoint trained with {version} of Transformers but your "
                f"current version is {transformers.__version__}. This is not recommended and could yield to errors "
                "or unwanted behaviors."
            )
        load_checkpoint_weights(model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        # The same loss in the stock loader keeps the last encoder while it logs that the best model was loaded.
        checkpoint = self.state.best_model_checkpoint
        if not self._sam_loads_weights(self.model, checkpoint):
            return super()._load_best_model()  # including its warning when the checkpoint holds no weights
        logger.info(f"Loading best model from {checkpoint} (score: {self.state.best_metric}).")
        load_checkpoint_weights(self.model, checkpoint)

    def _sam_loads_weights(self, model: nn.Module, checkpoint: str) -> bool:
        """Whether `load_checkpoint_weights` loads this checkpoint: full weights into a plain model, no sharded
        engine. PEFT adapters, FSDP, DeepSpeed and SageMaker checkpoints take the stock paths."""
        sharded = self.is_fsdp_enabled or self.is_deepspeed_enabled or transformers.utils.is_sagemaker_mp_enabled()
        if sharded or is_peft_model(model):
            return False
        return weights_file(checkpoint) is not None

    # ---- model card ----

    def create_model_card(self, *args, tags: str | list[str] | None = None, **kwargs) -> None:
        if self.args.sam_policy is None:
            return super().create_model_card(*args, tags=tags, **kwargs)  # a stock optimizer name: the stock card
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        for tag in self._sam_model_tags:
            if tag not in tags:
                tags.append(tag)
        super().create_model_card(*args, tags=tags, **kwargs)
        if self.is_world_process_zero():
            section = card_section(self.args, self._sam_controller, self._sam_optimizer_name())
            add_card_section(os.path.join(self.args.output_dir, "README.md"), section)

    def _sam_optimizer_name(self) -> str:
        """The optimizer that took the steps: the one the user passed, or the stock one `sam_base_optim` names."""
        if not self._sam_user_optimizer:
            return self.args.sam_base_optim
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # unwrap accelerate's AcceleratedOptimizer
        if optimizer is None:
            return self.optimizer_cls_and_kwargs[0].__name__
        return f"{type(optimizer).__module__}.{type(optimizer).__name__}"


class AESAMTrainer(AESAMTrainerMixin, Trainer):
    """`transformers.Trainer` with the SAM policies of `AESAMConfig` (AE-SAM by default)."""
