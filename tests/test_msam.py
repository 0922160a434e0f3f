"""Momentum-SAM (`msam`): one pass per step at w - rho * m / ||m||, the optimizer stepping from w.

Pinned against a hand-written reference of the rule (Becker, Altrock, Risse 2024; the reference code perturbs along
minus AdamW's raw first moment, normalized by one global norm), rho = 0 against the base optimizer, and the weights
that evaluation, checkpoints and the caller see. Exact resume is in `test_resume_matrix.py` (every registry policy).
"""

import os

import pytest
import torch
from safetensors.torch import load_file
from testing_utils import MLPRegressionModel, RegressionDataset, get_config, get_trainer
from transformers import TrainerCallback

from aesam_hf import AESAMTrainer, SAMController, make_policy


STEPS = 6
DATA = RegressionDataset(length=16, dim=4)
# One batch holds the whole data set, so every step sees the same examples whatever the sampler's order: the
# reference loop below can take the very same steps.
FULL_BATCH = dict(per_device_train_batch_size=16, max_steps=STEPS, learning_rate=0.05, max_grad_norm=1.0)


def _reference_msam(rho: float) -> dict[str, torch.Tensor]:
    """The rule written out by hand: AdamW (the Trainer's defaults, constant lr, clipping at 1), each step's gradient
    taken at w - rho * exp_avg / ||exp_avg|| once AdamW has a first moment."""
    model = MLPRegressionModel()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.05, weight_decay=0.0)
    x, y = DATA.x, DATA.y
    for _ in range(STEPS):
        saved = [p.detach().clone() for p in params]
        moments = [optimizer.state[p]["exp_avg"] for p in params if p in optimizer.state]
        if moments:
            norm = torch.sqrt(sum((m.double() ** 2).sum() for m in moments)).item()
            with torch.no_grad():
                for p, m in zip(params, moments):
                    p.sub_(rho * m / (norm + 1e-12))
        model(x, y)["loss"].backward()
        with torch.no_grad():
            for p, w in zip(params, saved):
                p.copy_(w)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
    return {n: p.detach() for n, p in model.named_parameters()}


def test_msam_in_the_trainer_matches_the_hand_written_rule(tmp_path):
    trainer = get_trainer(tmp_path, model=MLPRegressionModel(), train_dataset=DATA, optim="msam", sam_rho=0.3,
                          **FULL_BATCH)  # fmt: skip
    trainer.train()
    reference = _reference_msam(0.3)
    plain = get_trainer(tmp_path / "adamw", model=MLPRegressionModel(), train_dataset=DATA, optim="adamw_torch",
                        **FULL_BATCH)  # fmt: skip
    plain.train()
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(p.detach(), reference[name], rtol=1e-5, atol=1e-6)
    # And it is not AdamW: the perturbation changed the run.
    assert any(not torch.allclose(p, q) for p, q in zip(trainer.model.parameters(), plain.model.parameters()))
    assert trainer._sam_controller.passes == STEPS  # one pass per step


def test_msam_with_rho_zero_is_the_base_optimizer_exactly(tmp_path):
    msam = get_trainer(tmp_path / "msam", optim="msam", sam_rho=0.0, max_steps=STEPS)
    msam.train()
    stock = get_trainer(tmp_path / "stock", optim="adamw_torch", max_steps=STEPS)
    stock.train()
    for p, q in zip(msam.model.parameters(), stock.model.parameters()):
        assert torch.equal(p, q)


class _Weights(TrainerCallback):
    """The weights after every optimizer step, and the weights each evaluation sees."""

    def __init__(self):
        self.after_step, self.at_evaluation = [], []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after_step.append({n: p.detach().clone() for n, p in model.named_parameters()})

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        self.at_evaluation.append({n: p.detach().clone() for n, p in model.named_parameters()})


@pytest.mark.parametrize("ga", [1, 2])
def test_evaluation_checkpoints_and_the_caller_see_the_unperturbed_weights(tmp_path, ga):
    args = get_config(tmp_path, optim="msam", sam_rho=0.5, max_steps=STEPS, gradient_accumulation_steps=ga,
                      eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2)  # fmt: skip
    trainer = AESAMTrainer(model=MLPRegressionModel(), args=args, train_dataset=DATA, eval_dataset=DATA)
    weights = _Weights()
    trainer.add_callback(weights)
    trainer.train()
    # The optimizer stepped from w, and w is what every evaluation, checkpoint and the returned model hold.
    for i, seen in enumerate(weights.at_evaluation):
        step = 2 * (i + 1)
        after = weights.after_step[step - 1]
        assert all(torch.equal(seen[n], after[n]) for n in after), step
        saved = load_file(os.path.join(tmp_path, f"checkpoint-{step}", "model.safetensors"))
        assert all(torch.equal(saved[n], after[n]) for n in after), step
    final = {n: p for n, p in trainer.model.named_parameters()}
    assert all(torch.equal(final[n], weights.after_step[-1][n]) for n in final)


def test_the_controller_moves_along_minus_the_momentum_and_puts_w_back_by_copy():
    model = MLPRegressionModel()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    controller = SAMController(model.parameters(), make_policy("msam", sam_rho=0.2))
    assert not controller.momentum_perturb(optimizer)  # no first moment before the first step
    model(DATA.x, DATA.y)["loss"].backward()
    optimizer.step()
    w = [p.detach().clone() for p in model.parameters()]
    m = [optimizer.state[p]["exp_avg"] for p in model.parameters()]
    norm = torch.sqrt(sum((t**2).sum() for t in m))
    assert controller.momentum_perturb(optimizer)
    moved = [p.detach() - w0 for p, w0 in zip(model.parameters(), w)]
    for d, mi in zip(moved, m):
        torch.testing.assert_close(d, -0.2 * mi / norm, rtol=1e-5, atol=1e-7)
    controller.momentum_restore()
    assert all(torch.equal(p, w0) for p, w0 in zip(model.parameters(), w))
