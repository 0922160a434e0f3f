"""Each hyper-parameter's default and rule live in `aesam_hf.hparams`; the config, policies and controller read them."""

import dataclasses
import inspect

import pytest
import torch
from torch import nn

from aesam_hf import DEFAULTS, POLICIES, AESAMConfig, SAMController, make_policy
from aesam_hf.config import HPARAM_FIELDS
from aesam_hf.hparams import check


def test_every_hyperparameter_has_a_config_field_and_a_rule():
    names = {f.name for f in dataclasses.fields(DEFAULTS)}
    assert set(HPARAM_FIELDS) == names
    for name in names:
        check(name, getattr(DEFAULTS, name))  # every default obeys its own rule


def test_config_defaults_are_the_library_defaults():
    fields = {f.name: f for f in dataclasses.fields(AESAMConfig)}
    for hparam, field_name in HPARAM_FIELDS.items():
        assert fields[field_name].default == getattr(DEFAULTS, hparam), field_name
        # The class docstring documents the same default.
        assert f"{field_name} (`" in AESAMConfig.__doc__
        assert f"defaults to `{getattr(DEFAULTS, hparam)}`" in AESAMConfig.__doc__.split(f"{field_name} (`")[1]


@pytest.mark.parametrize("cls", list(POLICIES.values()), ids=lambda c: c.name.value)
def test_policy_constructor_defaults_are_the_library_defaults(cls):
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name in HPARAM_FIELDS:
            assert parameter.default == getattr(DEFAULTS, name), (cls.__name__, name)


def test_controller_defaults_are_the_library_defaults():
    parameters = inspect.signature(SAMController.__init__).parameters
    for name in ("rho", "adaptive", "looksam_alpha"):
        assert parameters[name].default == getattr(DEFAULTS, name)


@pytest.mark.parametrize(
    "hparam, value",
    [
        ("rho", float("inf")),
        ("rho", float("nan")),
        ("rho", -1.0),
        ("looksam_alpha", float("inf")),
        ("looksam_alpha", -0.1),
        ("interval", 0),
        ("interval", 2.5),
        ("interval", True),
        ("probability", 1.5),
        ("delta", 1.0),
        ("lambda1", float("-inf")),
        ("lambda2", float("nan")),
        ("adaptive", "yes"),
    ],
)
def test_a_broken_rule_names_the_argument_as_the_caller_spelled_it(hparam, value):
    with pytest.raises(ValueError, match="`sam_whatever`"):
        check(hparam, value, "sam_whatever")
    with pytest.raises(ValueError, match=f"`{hparam}`"):
        check(hparam, value)


def test_make_policy_ignores_what_the_policy_does_not_take():
    # One set of values for every policy, as the Trainer passes them.
    values = {"total_steps": 10, "seed": 3, **dataclasses.asdict(DEFAULTS)}
    for name in POLICIES:
        assert make_policy(name, **values).name is name


def test_non_finite_radius_and_alpha_are_refused_by_the_controller():
    params = nn.Linear(2, 1).parameters()
    with pytest.raises(ValueError, match="`rho`"):
        SAMController(params, make_policy("sam"), rho=float("inf"))
    with pytest.raises(ValueError, match="`alpha`"):
        SAMController(nn.Linear(2, 1).parameters(), make_policy("looksam"), looksam_alpha=float("inf"))
    assert SAMController([nn.Parameter(torch.ones(2))], make_policy("sam"), rho=0.0).rho == 0.0
