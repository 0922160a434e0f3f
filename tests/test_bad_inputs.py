"""Bad input: each is refused before training starts, with a `ValueError` that names the argument and its value.

Grows with the project; docs/reliability.md counts the cases. Faults during training are in test_faults.py.
"""

import pytest
import torch
from torch import nn
from transformers import HfArgumentParser

from aesam_hf import AESAMConfig, SAMController, SAMSettings, make_policy
from aesam_hf.settings import check


def _config(tmp_path, **kwargs):
    return AESAMConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kwargs)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"optim": "adam_sam"}, "optim"),
        ({"sam_base_optim": "aesam"}, "sam_base_optim"),
        ({"sam_base_optim": "not_an_optimizer"}, "sam_base_optim"),
        ({"optim": "sam", "sam_base_optim": "lomo"}, "optim='lomo'"),
        ({"sam_rho": -0.01}, "sam_rho"),
        ({"sam_rho": float("inf")}, "sam_rho"),
        ({"looksam_alpha": float("inf")}, "looksam_alpha"),
        ({"aesam_delta": 1.0}, "aesam_delta"),
        ({"aesam_delta": 0.0}, "aesam_delta"),
        ({"aesam_delta": -0.5}, "aesam_delta"),
        ({"sam_probability": 1.01}, "sam_probability"),
        ({"sam_probability": -0.1}, "sam_probability"),
        ({"sam_interval": 0}, "sam_interval"),
        ({"aesam_lambda1": float("inf")}, "aesam_lambda1"),
        ({"looksam_alpha": -0.5}, "looksam_alpha"),
        ({"deepspeed": {"zero_optimization": {"stage": 2}}}, "deepspeed"),
        ({"fsdp": "full_shard", "fsdp_config": {"version": 1}}, "fsdp"),
        ({"fsdp": ["full_shard", "auto_wrap"], "fsdp_config": {"fsdp_version": 1}}, "fsdp"),
        ({"fsdp": "full_shard", "fsdp_config": '{"version": 1}'}, "fsdp"),  # a JSON string, as from the command line
        # From Python a number can arrive as a string (the command line converts): named, not a bare TypeError.
        ({"aesam_budget": "0.3"}, "aesam_budget"),
        ({"sam_rho": "0.05"}, "sam_rho"),
        ({"sam_probability": "0.5"}, "sam_probability"),
        ({"aesam_delta": "0.9"}, "aesam_delta"),
        ({"aesam_lambda1": "-1"}, "aesam_lambda1"),
        ({"looksam_alpha": "0.1"}, "looksam_alpha"),
    ],
)
def test_bad_values_raise_naming_the_argument_and_value(tmp_path, kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`") as err:
        _config(tmp_path, **kwargs)
    shown = next(iter(kwargs.values())) if argument != "sam_base_optim" else kwargs["sam_base_optim"]
    if not isinstance(shown, dict):
        assert str(shown) in str(err.value) or repr(shown) in str(err.value)


@pytest.mark.parametrize(
    "variable, backend", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")]
)
def test_sharding_backend_from_an_accelerate_config_is_refused(tmp_path, monkeypatch, variable, backend):
    # `accelerate launch` with such a config sets only the environment, not `fsdp`/`deepspeed`. Without
    # `fsdp_version: 2` Accelerate builds an FSDP1 plugin (FSDP_VERSION defaults to 1).
    monkeypatch.delenv("FSDP_VERSION", raising=False)
    monkeypatch.setenv(variable, "true")
    with pytest.raises(ValueError, match=f"`distributed_type: {backend}` in the accelerate config") as err:
        _config(tmp_path)
    assert "MULTI_GPU" in str(err.value) and "FSDP2 is supported" in str(err.value)
    assert ("FSDP version 1 flattens the parameters" in str(err.value)) == (backend == "FSDP")
    monkeypatch.setenv(variable, "false")
    _config(tmp_path)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fsdp": "full_shard"},  # transformers' default FSDP version is 2
        {"fsdp": True, "fsdp_config": {"version": 2}},
        {"fsdp": ["full_shard", "auto_wrap"], "fsdp_config": {"fsdp_version": 2, "reshard_after_forward": True}},
        {"fsdp": "full_shard", "fsdp_config": '{"version": 2}'},
    ],
)
def test_fsdp2_is_accepted(tmp_path, kwargs):
    config = _config(tmp_path, **kwargs)
    assert config.fsdp_plugin_args["fsdp_version"] == 2


def test_fsdp2_from_an_accelerate_config_is_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    _config(tmp_path)
    # The Trainer's own switch wins over the environment: Accelerate then gets the Trainer's plugin.
    monkeypatch.setenv("FSDP_VERSION", "1")
    _config(tmp_path, fsdp=True, fsdp_config={"version": 2})


def test_fsdp_version_from_a_json_fsdp_config(tmp_path):
    path = tmp_path / "fsdp.json"
    path.write_text('{"fsdp_version": 1}')
    with pytest.raises(ValueError, match="FSDP version 1"):
        _config(tmp_path, fsdp=True, fsdp_config=str(path))
    path.write_text('{"fsdp_version": 2}')
    assert _config(tmp_path, fsdp=True, fsdp_config=str(path)).fsdp_plugin_args["fsdp_version"] == 2


def test_unknown_optim_lists_the_allowed_names(tmp_path):
    with pytest.raises(ValueError, match="aelooksam") as err:
        _config(tmp_path, optim="adam_sam")
    assert "adamw_torch" in str(err.value)


def test_lomo_only_as_a_stock_optim(tmp_path):
    with pytest.raises(ValueError, match="optim='lomo'"):
        _config(tmp_path, optim="erm", sam_base_optim="lomo")


def test_cli_rejects_an_unknown_policy_naming_it(tmp_path):
    with pytest.raises(ValueError, match="`optim` \\('nope'\\)"):
        HfArgumentParser(AESAMConfig).parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--optim", "nope"])


@pytest.mark.parametrize(
    "name, value",
    [
        ("sam_rho", float("inf")),
        ("sam_rho", float("nan")),
        ("sam_rho", -1.0),
        ("looksam_alpha", float("inf")),
        ("looksam_alpha", -0.1),
        ("sam_interval", 0),
        ("sam_interval", 2.5),
        ("sam_interval", True),
        ("sam_probability", 1.5),
        ("aesam_delta", 1.0),
        ("aesam_lambda1", float("-inf")),
        ("aesam_lambda2", float("nan")),
        ("sam_adaptive", "yes"),
    ],
)
def test_a_broken_rule_names_the_setting_wherever_it_is_given(name, value):
    with pytest.raises(ValueError, match=f"`{name}`"):
        check(name, value)
    with pytest.raises(ValueError, match=f"`{name}`"):
        SAMSettings(**{name: value})
    with pytest.raises(ValueError, match=f"`{name}`"):
        make_policy("aelooksam", total_steps=10, **{name: value})


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"name": "aesam", "aesam_delta": 1.0, "total_steps": 10}, "aesam_delta"),
        ({"name": "aesam", "aesam_delta": 0.0, "total_steps": 10}, "aesam_delta"),
        ({"name": "aesam", "total_steps": None}, "total_steps"),
        ({"name": "aelooksam", "total_steps": 0}, "total_steps"),
        ({"name": "scheduled", "total_steps": None}, "total_steps"),
        ({"name": "aesam", "aesam_lambda1": float("nan"), "total_steps": 10}, "aesam_lambda1"),
        ({"name": "random", "sam_probability": 1.5}, "sam_probability"),
        ({"name": "periodic", "sam_interval": 0}, "sam_interval"),
        ({"name": "looksam", "sam_interval": -2}, "sam_interval"),
    ],
)
def test_bad_settings_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        make_policy(**kwargs)


def test_controller_rejects_parameters_that_train_nothing():
    with pytest.raises(ValueError, match="params"):
        SAMController([nn.Parameter(torch.zeros(2), requires_grad=False)], make_policy("sam"))


@pytest.mark.parametrize("optim", ["sam", "random", "periodic", "looksam", "erm", "adamw_torch"])
def test_a_budget_the_policy_would_ignore_is_refused(tmp_path, optim):
    # A budget caps the cost; under these policies the run would silently cost what the budget was meant to cap.
    with pytest.raises(ValueError, match=r"`aesam_budget` \(0.3\) has no effect under `optim` .*'aesam', 'aelooksam'"):
        _config(tmp_path, optim=optim, aesam_budget=0.3)


@pytest.mark.parametrize(
    "optim, kwargs, ignored",
    [
        ("aesam", {"sam_interval": 3}, ["sam_interval"]),
        ("sam", {"sam_probability": 0.3, "looksam_alpha": 0.5}, ["sam_probability", "looksam_alpha"]),
        ("adamw_torch", {"sam_rho": 0.2}, ["sam_rho"]),
        ("erm", {"sam_freeze_bn_stats": False}, ["sam_freeze_bn_stats"]),
    ],
)
def test_a_setting_the_policy_does_not_use_is_warned_about(tmp_path, optim, kwargs, ignored):
    with pytest.warns(UserWarning, match="no effect under `optim`") as record:
        _config(tmp_path, optim=optim, **kwargs)
    message = next(str(w.message) for w in record if "no effect" in str(w.message))
    assert all(f"`{name}`" in message for name in ignored), message


def test_late_without_a_budget_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"`aesam_budget` \(None\) must be set for `optim` 'late'"):
        _config(tmp_path, optim="late")


def test_settings_the_policy_uses_are_not_warned_about(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        _config(tmp_path, optim="aelooksam", sam_rho=0.2, looksam_alpha=0.3, aesam_budget=0.4, aesam_delta=0.8)
        _config(tmp_path, optim="periodic", sam_interval=3, sam_adaptive=True)


@pytest.mark.parametrize("field", ["optim", "sam_base_optim"])
@pytest.mark.parametrize("value", [None, 3])
def test_a_name_that_is_not_a_string_is_refused_naming_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"`{field}` \\({value!r}\\) must be a name"):
        _config(tmp_path, **{field: value})


def test_set_optimizer_runs_the_constructor_checks(tmp_path):
    with pytest.raises(ValueError, match="`aesam_budget` \\(None\\) must be set for `optim` 'late'"):
        _config(tmp_path, optim="sam").set_optimizer("late")
    with pytest.raises(ValueError, match="`aesam_budget` \\(0.3\\) has no effect under `optim` 'sam'"):
        _config(tmp_path, optim="aesam", aesam_budget=0.3).set_optimizer("sam")


def test_a_base_optimizer_a_stock_optim_overrides_is_warned_about(tmp_path):
    with pytest.warns(UserWarning, match="`sam_base_optim` \\('adafactor'\\) has no effect"):
        _config(tmp_path, optim="sgd", sam_base_optim="adafactor")


def test_late_warns_when_its_budget_rounds_to_no_sam_step():
    with pytest.warns(UserWarning, match="rounds to no SAM step"):
        make_policy("late", total_steps=4, aesam_budget=0.1)
