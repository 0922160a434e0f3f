"""Trains the tiny regression MLP with AESAMTrainer under torchrun or `accelerate launch`; saves what each rank saw.

    torchrun --nproc_per_node 2 tests/distributed/train_regression.py --output_dir OUT --use_cpu --optim aesam ...
    accelerate launch --config_file configs/accelerate/multi_cpu.yaml tests/distributed/train_regression.py ...

Every `AESAMConfig` flag is accepted. Each rank writes `OUT/rank{R}.pt`: its rank and world size, the per-step SAM
log entries, a snapshot after every optimizer step (policy state, loss scale, parameters, DDP all-reduce rounds) and
the final parameters.

The `--test_*` flags are TEST HOOKS for the fault-tolerance tests, not features of aesam_hf: they plant a NaN/inf
loss on one rank, kill one rank, or stall the job after a checkpoint so that the test can SIGKILL it mid-run.
"""

import os
import sys
import time
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser, TrainerCallback


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from testing_utils import MLPRegressionModel, RegressionDataset, sam_logs  # noqa: E402

from aesam_hf import AESAMConfig, AESAMTrainer, exit_gloo_process  # noqa: E402


@dataclass
class TestHooks:
    test_loss_factor_step: int = field(
        default=-1, metadata={"help": "Multiply the loss of the first pass of this optimizer step by the factor."}
    )
    test_loss_factor: float = field(default=float("nan"), metadata={"help": "e.g. nan or inf."})
    test_loss_factor_rank: int = field(default=1, metadata={"help": "The only rank whose loss is changed."})
    test_die_step: int = field(default=-1, metadata={"help": "At the start of this optimizer step, one rank fails."})
    test_die_rank: int = field(default=1)
    test_die_how: str = field(default="exit", metadata={"choices": ["exit", "raise"]})
    test_stall_after_save_step: int = field(
        default=-1, metadata={"help": "After saving this checkpoint, write `saved-{step}-rank{rank}`, then sleep."}
    )
    test_count_allreduce: bool = field(default=False, metadata={"help": "Count DDP all-reduce rounds per step."})


class HookedTrainer(AESAMTrainer):
    hooks: TestHooks

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        h = self.hooks
        # First pass only: the second pass of a SAM step runs while the controller holds the saved weights.
        first_pass = self._sam_controller is None or self._sam_controller._active is None
        if (
            self.state.global_step == h.test_loss_factor_step
            and self.args.process_index == h.test_loss_factor_rank
            and first_pass
        ):
            if return_outputs:
                return out[0] * h.test_loss_factor, out[1]
            return out * h.test_loss_factor
        return out


class HookCallback(TrainerCallback):
    def __init__(self, trainer: HookedTrainer, hooks: TestHooks):
        self.trainer, self.hooks = trainer, hooks
        self.allreduce_rounds = 0
        self.snapshots = []

    def on_train_begin(self, args, state, control, **kwargs):
        if self.hooks.test_count_allreduce:
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            def counting_hook(process_group, bucket):
                self.allreduce_rounds += 1
                return allreduce_hook(process_group, bucket)

            # One bucket for this tiny model, so one call per gradient synchronisation.
            self.trainer.model_wrapped.register_comm_hook(None, counting_hook)

    def on_step_begin(self, args, state, control, **kwargs):
        h = self.hooks
        if state.global_step == h.test_die_step and args.process_index == h.test_die_rank:
            if h.test_die_how == "exit":
                os._exit(3)  # no exception, no cleanup: as if the process were killed
            raise RuntimeError(f"test hook: rank {args.process_index} fails at step {state.global_step}")

    def on_step_end(self, args, state, control, **kwargs):
        controller = self.trainer._sam_controller
        scaler = self.trainer.accelerator.scaler
        self.snapshots.append(
            {
                "step": state.global_step,
                "policy": dict(controller.policy.state_dict()),
                "overflow_steps": controller.overflow_steps,
                "g_v_norm": None if controller.g_v_norm is None else controller.g_v_norm.clone(),
                "scale": scaler.get_scale() if scaler is not None else None,
                "allreduce_rounds": self.allreduce_rounds,
                "params": {n: p.detach().clone() for n, p in self.trainer.model.named_parameters()},
            }
        )
        self.allreduce_rounds = 0

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.hooks.test_stall_after_save_step:
            # Everything of this checkpoint that this rank writes is on disk: tell the test, then wait to be killed.
            marker = os.path.join(args.output_dir, f"saved-{state.global_step}-rank{args.process_index}")
            open(marker, "w").close()
            time.sleep(600)


def main() -> None:
    hooks, args = HfArgumentParser((TestHooks, AESAMConfig)).parse_args_into_dataclasses()
    trainer = HookedTrainer(model=MLPRegressionModel(), args=args, train_dataset=RegressionDataset(length=64, dim=4))
    trainer.hooks = hooks
    if args.fp16 and trainer.accelerator.scaler is None:
        # Accelerate builds a GradScaler only on GPUs; the real CPU one gives the fp16 overflow logic to test.
        trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    callback = HookCallback(trainer, hooks)
    trainer.add_callback(callback)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)

    logs = sam_logs(trainer)
    record = {
        "rank": args.process_index,
        "world_size": args.world_size,
        "logs": [
            {k: h.get(k) for k in ("step", "sam/fraction", "sam/grad_norm_sq", "sam/overflow_steps", "sam/passes")}
            for h in logs
        ],
        "snapshots": callback.snapshots,
        "controller": trainer._sam_controller.state_dict(),
        "params": {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
    }
    torch.save(record, os.path.join(args.output_dir, f"rank{args.process_index}.pt"))


if __name__ == "__main__":
    main()
    exit_gloo_process()  # as the examples end (torch 2.13's gloo teardown abort, `aesam_hf.teardown`)
