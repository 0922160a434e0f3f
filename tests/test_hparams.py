"""Each hyper-parameter's default and rule live in `aesam_hf.hparams`; the config, policies and controller read them."""

import dataclasses
import inspect

import pytest

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


def test_make_policy_ignores_what_the_policy_does_not_take():
    # One set of values for every policy, as the Trainer passes them.
    values = {"total_steps": 10, "seed": 3, **dataclasses.asdict(DEFAULTS)}
    for name in POLICIES:
        assert make_policy(name, **values).name is name
