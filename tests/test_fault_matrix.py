"""A NaN planted at every forward pass × every save strategy × every SAM policy: no file ever holds a non-finite value.

The rule (`docs/reliability.md`, "The write barrier"): every path that writes weights goes through `save_model`, which
checks them first; only a checked checkpoint is named as the one to resume from, and rotation (`save_total_limit`)
never deletes it for a later one. The matrix plants a NaN loss on each training forward call of a 6-step run in turn,
so on every kind of pass (the first pass of an ERM step, of a SAM step, the second pass at w + e), and runs it under
each save strategy (`steps`, `epoch`, `best`) with `save_total_limit=1`, then calls `save_model()` as a script does at
the end. `erm` and stock optimizer names stay exactly stock (`test_faults.py::test_erm_keeps_the_stock_behaviour_on_nan`).
"""

import os
import re

import pytest
import torch
from safetensors.torch import load_file
from testing_utils import MLPRegressionModel, RegressionDataset, get_config, get_trainer

from aesam_hf import POLICIES, AESAMTrainer, SAMController
from aesam_hf.policies import SAMPolicyName


pytestmark = pytest.mark.filterwarnings("ignore:`budget`:UserWarning")

STEPS = 6
# Every policy but `erm` (and stock names, which are the stock Trainer): those the write barrier guards.
SAM_POLICIES = [p.value for p, cls in POLICIES.items() if cls.can_sam or cls.momentum]
POLICY_ARGS = {
    SAMPolicyName.RANDOM: {"sam_probability": 0.5},
    SAMPolicyName.PERIODIC: {"sam_interval": 2},
    SAMPolicyName.LOOKSAM: {"sam_interval": 2},
    SAMPolicyName.LATE: {"aesam_budget": 0.5},
}
# 16 examples in batches of 8: an epoch is 2 steps, so `epoch` saves at steps 2, 4 and 6 like `steps` every 2.
STRATEGIES = {
    "steps": {"save_strategy": "steps", "save_steps": 2},
    "epoch": {"save_strategy": "epoch"},
    "best": {
        "save_strategy": "best",
        "eval_strategy": "steps",
        "eval_steps": 1,
        "metric_for_best_model": "loss",
        "greater_is_better": False,
    },
}


class NaNOnCall(MLPRegressionModel):
    """The regression MLP whose training loss is NaN on one (0-based) training forward call."""

    def __init__(self, call: int | None):
        super().__init__()
        self.call, self.count = call, 0

    def forward(self, input_x, labels=None):
        out = super().forward(input_x, labels)
        if self.training:
            if self.count == self.call:
                out["loss"] = out["loss"] * float("nan")
            self.count += 1
        return out


def _trainer(output_dir, optim: str, strategy: str, call: int | None) -> AESAMTrainer:
    args = get_config(
        output_dir,
        optim=optim,
        max_steps=STEPS,
        save_total_limit=1,
        **POLICY_ARGS.get(optim, {}),
        **STRATEGIES[strategy],
    )
    data = RegressionDataset(length=16, dim=4)
    return AESAMTrainer(model=NaNOnCall(call), args=args, train_dataset=data, eval_dataset=data)


def _forward_calls(optim: str, tmp_path_factory) -> int:
    """How many training forward calls a clean run makes: one per step, two per SAM step."""
    trainer = _trainer(tmp_path_factory.mktemp("clean"), optim, "steps", None)
    trainer.train()
    return trainer.model.count


def _non_finite(obj, where: str) -> list[str]:
    """The paths of every non-finite float (tensor or number) in a loaded object."""
    if isinstance(obj, torch.Tensor):
        return [where] if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else []
    if isinstance(obj, float):
        return [] if obj == obj and abs(obj) != float("inf") else [where]
    if isinstance(obj, dict):
        return [bad for k, v in obj.items() for bad in _non_finite(v, f"{where}.{k}")]
    if isinstance(obj, (list, tuple)):
        return [bad for i, v in enumerate(obj) for bad in _non_finite(v, f"{where}[{i}]")]
    return []


def non_finite_files(output_dir) -> list[str]:
    """Every non-finite value in every weight, optimizer and SAM state file under `output_dir`."""
    bad = []
    for root, _, files in os.walk(output_dir):
        for name in files:
            path = os.path.join(root, name)
            if name.endswith(".safetensors"):
                bad += _non_finite(load_file(path), path)
            elif name.endswith((".pt", ".pth", ".bin")) and name != "training_args.bin":
                bad += _non_finite(torch.load(path, map_location="cpu", weights_only=False), path)  # our own files
    return bad


def _checkpoints(output_dir) -> list[str]:
    found = [d for d in os.listdir(output_dir) if re.fullmatch(r"checkpoint-\d+", d)]
    return sorted(found, key=lambda d: int(d.split("-")[1]))


@pytest.fixture(scope="module")
def forward_calls(tmp_path_factory) -> dict[str, int]:
    return {optim: _forward_calls(optim, tmp_path_factory) for optim in SAM_POLICIES}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("optim", SAM_POLICIES)
def test_a_nan_on_any_pass_never_reaches_a_file(tmp_path, forward_calls, optim, strategy):
    for call in range(forward_calls[optim]):
        out = tmp_path / f"nan-on-call-{call}"
        trainer = _trainer(out, optim, strategy, call)
        with pytest.raises(FloatingPointError) as err:
            trainer.train()
        try:
            trainer.save_model()  # the final save of a script that goes on after the error
        except FloatingPointError:
            pass
        where = f"{optim}, save_strategy {strategy}, NaN on forward call {call}"
        assert non_finite_files(out) == [], where
        checkpoints = _checkpoints(out)
        if checkpoints:
            # The error names the newest checkpoint on disk, which rotation kept and which holds finite weights.
            assert f"`{out / checkpoints[-1]}`" in str(err.value), (where, str(err.value), checkpoints)
        else:
            assert "No checkpoint was saved" in str(err.value), (where, str(err.value))


def test_the_epoch_save_after_an_unchecked_nan_is_refused_and_the_finite_checkpoint_survives_rotation(tmp_path):
    # Finding 1 of the reliability review, as reported: `random` at a tiny probability, `save_strategy="epoch"`,
    # `save_total_limit=1`. The NaN is born on the ERM step 5 (forward call 4), after checkpoint-4 was written.
    args = get_config(
        tmp_path, optim="random", sam_probability=1e-6, max_steps=STEPS, save_strategy="epoch", save_total_limit=1
    )
    trainer = AESAMTrainer(model=NaNOnCall(4), args=args, train_dataset=RegressionDataset(length=16, dim=4))
    with pytest.raises(FloatingPointError, match="checkpoint-6` is not written") as err:
        trainer.train()
    assert _checkpoints(tmp_path) == ["checkpoint-4"]
    assert f"`{tmp_path / 'checkpoint-4'}`, was checked and holds finite weights" in str(err.value)
    assert non_finite_files(tmp_path) == []


@pytest.mark.parametrize("how", ["save_model", "push_to_hub"])
def test_every_way_of_writing_weights_passes_the_barrier(tmp_path, how):
    trainer = get_trainer(tmp_path / "run", optim="sam", max_steps=2)
    trainer.train()
    with torch.no_grad():
        next(trainer.model.parameters())[0] = float("nan")
    trainer.hub_model_id = "nobody/never-created"  # push_to_hub creates no repo then: the save comes first
    with pytest.raises(FloatingPointError, match="are not finite"):
        if how == "save_model":
            trainer.save_model(str(tmp_path / "final"))
        else:
            trainer.push_to_hub()
    assert not (tmp_path / "final").exists() and not (tmp_path / "run" / "model.safetensors").exists()


def test_the_barrier_reads_the_weights_once_per_checkpoint(tmp_path, monkeypatch):
    # The cost stays one host read per checkpoint: count the checks over a run that saves 3 times.
    trainer = get_trainer(tmp_path, optim="sam", max_steps=STEPS, save_strategy="steps", save_steps=2)
    calls = []
    original = SAMController.weights_are_finite
    monkeypatch.setattr(SAMController, "weights_are_finite", lambda self: calls.append(1) or original(self))
    trainer.train()
    assert len(calls) == 3 + 1  # checkpoints 2, 4, 6, and the model `train()` returns
