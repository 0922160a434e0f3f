"""Resume at every checkpoint of a short run ≡ the uninterrupted run, over the whole space of settings.

The matrix: every policy of the registry (and a stock optimizer name) × gradient accumulation {1, 2} × {full batches,
a short batch ending each epoch} × {budget off, on (the policies that take one)}. For each combination one run saves
a checkpoint at every step; a fresh trainer then resumes from each of them in turn, and its decisions, logged
statistics, final weights and final SAM state must equal the uninterrupted run's bit for bit. A SIGKILL variant kills
a forked training process right after a checkpoint is written and resumes from it.

`docs/reliability.md` ("Matrices") gives the counts.
"""

import multiprocessing
import os
import signal

import pytest
import torch
from testing_utils import MLPRegressionModel, RegressionDataset, get_trainer, sam_logs
from transformers import TrainerCallback

from aesam_hf import POLICIES
from aesam_hf.policies import SAMPolicyName


# A budget over 6 steps warns that the run is short: that is not what these tests are about.
pytestmark = pytest.mark.filterwarnings("ignore:`budget`:UserWarning")

STEPS = 6
BATCH = 4
# The settings that make every policy take both kinds of step within 6 steps.
POLICY_ARGS = {
    SAMPolicyName.RANDOM: {"sam_probability": 0.5},
    SAMPolicyName.PERIODIC: {"sam_interval": 2},
    SAMPolicyName.LOOKSAM: {"sam_interval": 2},
}
BUDGETED = [name for name, cls in POLICIES.items() if "aesam_budget" in cls.uses]
READS_X = {name.value for name, cls in POLICIES.items() if cls.uses_grad_norm}
REQUIRE_BUDGET = {name.value for name, cls in POLICIES.items() if "aesam_budget" in cls.requires}


def _cases() -> list:
    cases = []
    for optim in [*(p.value for p in POLICIES), "adamw_torch"]:
        budgets = (None, 0.4) if optim in {p.value for p in BUDGETED} else (None,)
        if optim in REQUIRE_BUDGET:
            budgets = (0.4,)
        for ga in (1, 2):
            for batches in ("full", "short"):
                for budget in budgets:
                    cases.append(pytest.param(optim, ga, batches, budget, id=f"{optim}-ga{ga}-{batches}-b{budget}"))
    return cases


CASES = _cases()


def _dataset(ga: int, batches: str) -> RegressionDataset:
    """Full: every step sees GA x 4 examples. Short: each epoch ends on a step with fewer (8, 8, 4 under GA 2;
    4, 4, 4, 4, 2 under GA 1), which a policy reading ||g||² takes no decision from."""
    length = {("full", 1): 32, ("full", 2): 32, ("short", 1): 18, ("short", 2): 20}[(batches, ga)]
    return RegressionDataset(length=length, dim=4)


def _trainer(output_dir, optim: str, ga: int, batches: str, budget: float | None, **kwargs):
    extra = dict(POLICY_ARGS.get(optim, {}))
    if budget is not None:
        extra["aesam_budget"] = budget
    return get_trainer(
        output_dir,
        model=MLPRegressionModel(),
        train_dataset=_dataset(ga, batches),
        optim=optim,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ga,
        max_steps=STEPS,
        save_strategy="steps",
        save_steps=1,
        **extra,
        **kwargs,
    )


def _outcome(trainer) -> dict:
    """What must not differ: every step's logged values, the final weights and the final SAM state."""
    controller = trainer._sam_controller
    state = controller.state_dict() if controller is not None else {"g_v": None}  # a stock name: no controller
    return {
        "logs": sam_logs(trainer),
        "weights": {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
        "state": {k: v for k, v in state.items() if k not in ("g_v", "g_v_norm")},
        "g_v": state["g_v"],
    }


def _assert_same(resumed: dict, reference: dict, where: str) -> None:
    assert resumed["logs"] == reference["logs"], where
    for name, w in reference["weights"].items():
        assert torch.equal(resumed["weights"][name], w), (where, name)
    assert _plain(resumed["state"]) == _plain(reference["state"]), where
    if reference["g_v"] is None:
        assert resumed["g_v"] is None, where
    else:
        assert all(torch.equal(a, b) for a, b in zip(resumed["g_v"], reference["g_v"])), where


def _plain(value):
    """A state with tensors turned into lists, comparable with ==."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The uninterrupted runs, shared by the in-process and SIGKILL tests: {case id: (output_dir, outcome)}."""
    return {}


def _reference(references, tmp_path_factory, optim, ga, batches, budget):
    key = (optim, ga, batches, budget)
    if key not in references:
        out = tmp_path_factory.mktemp("reference")
        trainer = _trainer(out, optim, ga, batches, budget)
        trainer.train()
        references[key] = (out, _outcome(trainer))
    return references[key]


@pytest.mark.parametrize("optim, ga, batches, budget", CASES)
def test_resume_at_every_checkpoint_equals_the_uninterrupted_run(
    tmp_path, tmp_path_factory, references, optim, ga, batches, budget
):
    out, reference = _reference(references, tmp_path_factory, optim, ga, batches, budget)
    if batches == "short" and optim in READS_X:
        assert reference["state"]["partial_steps"] > 0  # the case holds the short batch it is about
    for step in range(1, STEPS):
        resumed = _trainer(tmp_path / f"from-{step}", optim, ga, batches, budget)
        resumed.train(resume_from_checkpoint=str(out / f"checkpoint-{step}"))
        _assert_same(_outcome(resumed), reference, f"resumed at checkpoint-{step}")


class _KillAfterSave(TrainerCallback):
    """SIGKILLs the process right after checkpoint `step` is written: no exit handler, no flush, no cleanup."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _train_and_get_killed(output_dir, optim, ga, batches, budget, step) -> None:
    trainer = _trainer(output_dir, optim, ga, batches, budget)
    trainer.add_callback(_KillAfterSave(step))
    trainer.train()


# The policies whose state holds more than counters (statistics, a generator, g_v), on the hardest data layout.
KILLED = [
    pytest.param(optim, 2, "short", budget, id=f"{optim}-ga2-short-b{budget}")
    for optim, budget in (("aesam", None), ("aesam", 0.4), ("aelooksam", None), ("random", None), ("scheduled", 0.4))
]


@pytest.mark.parametrize("optim, ga, batches, budget", KILLED)
def test_resume_after_sigkill_equals_the_uninterrupted_run(
    tmp_path, tmp_path_factory, references, optim, ga, batches, budget
):
    _, reference = _reference(references, tmp_path_factory, optim, ga, batches, budget)
    step = 2  # under GA 2 with short batches, just before the short batch ending the first epoch
    # Forked: the child has the parent's modules already imported, so a kill costs no interpreter start.
    child = multiprocessing.get_context("fork").Process(
        target=_train_and_get_killed, args=(tmp_path / "killed", optim, ga, batches, budget, step)
    )
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL
    assert sorted(os.listdir(tmp_path / "killed")) == [f"checkpoint-{s}" for s in range(1, step + 1)]
    resumed = _trainer(tmp_path / "resumed", optim, ga, batches, budget)
    resumed.train(resume_from_checkpoint=str(tmp_path / "killed" / f"checkpoint-{step}"))
    _assert_same(_outcome(resumed), reference, f"resumed after SIGKILL at checkpoint-{step}")
