"""A corrupted SAM state, field by field: every field a decision reads is checked when the state is loaded.

Real `sam_state.pt` files (AE-LookSAM with a budget: statistics, budget excess, g_v; `random` and `scheduled`: their
generators) are corrupted one field at a time, in every way that applies to the field: removed, replaced by a value
of the wrong type, by NaN, by a tensor of the wrong shape or dtype. Resuming must then stop with a `ValueError` that
names the file and the field, and leave the controller as it was. `docs/reliability.md` ("Matrices") gives the count.
"""

import copy
import os

import pytest
import torch
from testing_utils import MLPRegressionModel, get_trainer

from aesam_hf import SAM_STATE_NAME, SAMController, make_policy
from aesam_hf.checkpoint import find_state, resume


pytestmark = pytest.mark.filterwarnings("ignore:`budget`:UserWarning")

STEPS = 8
RUNS = {
    # Every step a SAM step at first, so g_v exists; the budget adds its excess to the statistics.
    "aelooksam": {"optim": "aelooksam", "aesam_budget": 0.5},
    "random": {"optim": "random"},
    "scheduled": {"optim": "scheduled", "aesam_budget": 0.5},
}
# Entries that are not read by any decision and may be absent: the settings are only compared with this run's to
# warn about a change, the last decision's statistics are only logged. Their values are still checked.
MAY_BE_MISSING = ("settings.", "policy.last.")


@pytest.fixture(scope="module")
def saved_states(tmp_path_factory) -> dict[str, tuple[str, dict]]:
    """{run: (checkpoint dir, its SAM state)} from real training runs."""
    states = {}
    for name, kwargs in RUNS.items():
        out = tmp_path_factory.mktemp(name)
        get_trainer(out, max_steps=STEPS, save_strategy="steps", save_steps=STEPS, **kwargs).train()
        checkpoint = str(out / f"checkpoint-{STEPS}")
        states[name] = (checkpoint, torch.load(os.path.join(checkpoint, SAM_STATE_NAME), weights_only=True))
    return states


def _controller(run: str) -> SAMController:
    kwargs = RUNS[run]
    policy = make_policy(kwargs["optim"], total_steps=STEPS, seed=42, aesam_budget=kwargs.get("aesam_budget"))
    return SAMController(MLPRegressionModel().parameters(), policy)


def _fields(value, path: str = "") -> list[tuple[str, list, object]]:
    """(name, key path, value) of every field in a state, nested ones included (`policy.mu`, `g_v[0]`)."""
    out = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, sub in items:
        name = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key
        out.append((name, sub))
        out += _fields(sub, name)
    return out


def _corruptions(value) -> dict[str, object]:
    """The ways to corrupt one value: each gives the corrupted value (`MISSING` removes the entry)."""
    ways = {"missing": MISSING, "wrong type": "corrupted"}
    if isinstance(value, torch.Tensor):
        ways["wrong shape"] = value.reshape(-1)[:1].clone() if value.dim() != 1 else value[:-1].clone()
        if value.dim() == 0:
            ways["wrong shape"] = value.reshape(1)
        if value.is_floating_point():
            ways["nan"] = torch.full_like(value, float("nan"))
        else:
            ways["wrong dtype"] = value.float()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        ways["nan"] = float("nan")
        ways["inf"] = float("inf")
    return ways


MISSING = object()


def _set(state: dict, name: str, value) -> dict:
    """A deep copy of `state` with the field `name` (a dotted/indexed path) set to `value`, or removed."""
    state = copy.deepcopy(state)
    parts = name.replace("[", ".[").split(".")
    parent = state
    for part in parts[:-1]:
        parent = parent[int(part[1:-1])] if part.startswith("[") else parent[part]
    last = parts[-1]
    key = int(last[1:-1]) if last.startswith("[") else last
    if value is MISSING:
        del parent[key]
    else:
        parent[key] = value
    return state


def _cases(states: dict) -> list[tuple[str, str, str, object]]:
    cases = []
    for run, (_, state) in states.items():
        for name, value in _fields(state):  # containers as a whole, then entry by entry
            for way, bad in _corruptions(value).items():
                cases.append((run, name, way, bad))
    return cases


def test_every_corrupted_field_is_an_error_naming_the_file_and_the_field(saved_states):
    cases = _cases(saved_states)
    accepted = []
    for run, name, way, bad in cases:
        checkpoint, state = saved_states[run]
        path = os.path.join(checkpoint, SAM_STATE_NAME)
        controller = _controller(run)
        before = copy.deepcopy(controller.state_dict())
        corrupted = _set(state, name, bad)
        try:
            resume(controller, (path, corrupted), STEPS, checkpoint, fresh=False)
        except ValueError as err:
            message = str(err)
            assert f"`{path}`" in message, (run, name, way, message)
            # A list entry removed makes the list too short; a container of the wrong type is named itself.
            field = "g_v" if way == "missing" and name.startswith("g_v[") else name
            named = {f"`{field}`", f"`{field.rsplit('.', 1)[0]}`"} if way == "wrong type" else {f"`{field}`"}
            assert any(n in message for n in named), (run, name, way, message)
            after = controller.state_dict()
            assert str(after) == str(before), (run, name, way)  # nothing was loaded
            continue
        accepted.append((run, name, way))
    # Only entries that no decision reads may be absent; nothing else loads.
    assert all(way == "missing" and name.startswith(MAY_BE_MISSING) for _, name, way in accepted), accepted
    assert len(cases) > 100


def test_the_intact_states_load_and_resume(saved_states):
    for run, (checkpoint, state) in saved_states.items():
        controller = _controller(run)
        resume(controller, find_state(checkpoint, controller), STEPS, checkpoint, fresh=False)
        assert controller.t == STEPS
        if run == "aelooksam":
            assert controller.g_v is not None and controller.policy.mu == state["policy"]["mu"]


def test_a_wrong_shape_g_v_is_refused_at_load_not_steps_later(tmp_path, saved_states):
    # Finding 3: a g_v of the wrong shape used to load silently and crash in `apply_looksam_` with a bare size
    # mismatch; a NaN mu used to load and silently disable SAM for the rest of the run.
    checkpoint, state = saved_states["aelooksam"]
    for name, bad, expected in (
        ("g_v[0]", torch.zeros(3, 3), r"`g_v\[0\]` has shape \(3, 3\), this run needs \(8, 4\)"),
        ("policy.mu", float("nan"), r"`policy.mu` \(nan\) must be a finite number"),
    ):
        resumed = tmp_path / name
        os.makedirs(resumed)
        for file in os.listdir(checkpoint):
            os.link(os.path.join(checkpoint, file), resumed / file)
        os.remove(resumed / SAM_STATE_NAME)
        torch.save(_set(state, name, bad), resumed / SAM_STATE_NAME)
        trainer = get_trainer(tmp_path / f"out-{name}", max_steps=STEPS + 2, **RUNS["aelooksam"])
        with pytest.raises(ValueError, match=expected) as err:
            trainer.train(resume_from_checkpoint=str(resumed))
        assert str(resumed / SAM_STATE_NAME) in str(err.value)
