"""Trains the tiny regression MLP with AESAMTrainer and saves what each rank saw; run under torchrun (gloo).

torchrun --nproc_per_node 2 tests/distributed/run_ddp_training.py OUT_DIR OPTIM PER_DEVICE_BATCH GA_STEPS
"""

import os
import sys

import torch


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from testing_utils import MLPRegressionModel, RegressionDataset, get_trainer, sam_logs  # noqa: E402

from aesam_hf import exit_gloo_process  # noqa: E402


def main(out_dir: str, optim: str, batch_size: int, ga_steps: int) -> None:
    trainer = get_trainer(
        out_dir,
        model=MLPRegressionModel(),
        train_dataset=RegressionDataset(length=64, dim=4),
        optim=optim,
        max_steps=8,
        sam_rho=0.5,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=ga_steps,
        train_sampling_strategy="sequential",
        ddp_find_unused_parameters=False,
    )
    trainer.train()
    rank = trainer.args.process_index
    torch.save(
        {
            "world_size": trainer.args.world_size,
            "decisions": [h["sam/fraction"] for h in sam_logs(trainer)],
            "grad_norm_sq": [h.get("sam/grad_norm_sq") for h in sam_logs(trainer)],
            "params": {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    exit_gloo_process()  # as the examples end (torch 2.13's gloo teardown abort, `aesam_hf.teardown`)
