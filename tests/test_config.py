"""AESAMConfig: `optim` decoded once into the policy and the stock optimizer, validation before training, the CLI."""

import json
import subprocess
import sys

import pytest
from transformers import HfArgumentParser, Trainer, TrainingArguments
from transformers.training_args import OptimizerNames

from aesam_hf import AESAMConfig, SAMPolicyName, decode_optim
from aesam_hf.config import POLICY_NAMES


def _config(tmp_path, **kwargs):
    # `late` requires a budget: give it one, as a user must.
    required = {"aesam_budget": 0.2} if kwargs.get("optim") == "late" else {}
    return AESAMConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **{**required, **kwargs})


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_a_policy_name_becomes_the_policy_and_optim_the_stock_optimizer(tmp_path, name):
    args = _config(tmp_path, optim=name)
    assert args.sam_policy == SAMPolicyName(name)
    # Stock code reads a stock value: no swap, no override of the Trainer's optimizer factory.
    assert args.optim == OptimizerNames.ADAMW_TORCH and args.sam_base_optim == "adamw_torch"
    optimizer_cls, _ = Trainer.get_optimizer_cls_and_kwargs(args)
    assert optimizer_cls is Trainer.get_optimizer_cls_and_kwargs(TrainingArguments(optim="adamw_torch"))[0]


def test_default_is_aesam_on_adamw(tmp_path):
    args = _config(tmp_path)
    assert (args.sam_policy, args.optim) == (SAMPolicyName.AESAM, OptimizerNames.ADAMW_TORCH)


def test_a_stock_optimizer_name_means_the_stock_trainer(tmp_path):
    args = _config(tmp_path, optim="sgd")
    assert args.sam_policy is None and args.optim == OptimizerNames.SGD


def test_cli_and_json_give_the_same_config(tmp_path):
    flags = ["--output_dir", str(tmp_path), "--optim", "aelooksam", "--sam_rho", "0.1", "--aesam_delta", "0.95"]
    flags += ["--sam_base_optim", "sgd", "--use_cpu", "--report_to", "none"]
    (from_cli,) = HfArgumentParser(AESAMConfig).parse_args_into_dataclasses(flags)
    values = {"output_dir": str(tmp_path), "optim": "aelooksam", "sam_rho": 0.1, "aesam_delta": 0.95}
    path = tmp_path / "args.json"
    path.write_text(json.dumps({**values, "sam_base_optim": "sgd", "use_cpu": True, "report_to": "none"}))
    (from_json,) = HfArgumentParser(AESAMConfig).parse_json_file(str(path))
    for args in (from_cli, from_json):
        assert (args.sam_policy, args.optim, args.sam_rho, args.aesam_delta) == ("aelooksam", "sgd", 0.1, 0.95)


@pytest.mark.parametrize("optim", [*POLICY_NAMES, "adamw_torch"])
def test_a_config_round_trips_through_its_dict_and_json_to_the_same_run(tmp_path, optim):
    args = _config(tmp_path, optim=optim, sam_base_optim="sgd", sam_rho=0.1)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(args.to_dict()))
    (again,) = HfArgumentParser(AESAMConfig).parse_json_file(str(path))
    for name in ("optim", "sam_policy", "sam_base_optim", "sam_rho", "aesam_budget", "use_cpu", "output_dir"):
        assert getattr(again, name) == getattr(args, name), name


def test_help_parses_and_lists_every_policy():
    # argparse formats every help string with %: a stray % in a field's help crashes `--help`.
    code = "from transformers import HfArgumentParser; from aesam_hf import AESAMConfig; HfArgumentParser(AESAMConfig).parse_args(['--help'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--optim", "--sam_rho", "--aesam_delta", "--sam_interval", "--looksam_alpha", "step % k"):
        assert flag in out.stdout
    for name in POLICY_NAMES:
        assert f"{name} (" in " ".join(out.stdout.split()), name


def test_a_typo_in_optim_is_one_line_with_a_suggestion(tmp_path):
    code = (
        "from transformers import HfArgumentParser; from aesam_hf import AESAMConfig; "
        f"HfArgumentParser(AESAMConfig).parse_args_into_dataclasses(['--output_dir', {str(tmp_path)!r}, "
        "'--optim', 'aesamm'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "`optim` ('aesamm') is neither a SAM policy" in out.stderr and "Did you mean 'aesam'?" in out.stderr
    assert "usage:" not in out.stderr  # not argparse's 100-line usage with 48 choices


def test_set_optimizer_accepts_policies_and_stock_names(tmp_path):
    args = _config(tmp_path, optim="sam", sam_base_optim="sgd")
    args.set_optimizer("aelooksam", learning_rate=1e-3)
    assert (args.sam_policy, args.optim, args.learning_rate) == ("aelooksam", "sgd", 1e-3)
    args.set_optimizer("adamw_torch")
    assert (args.sam_policy, args.optim, args.sam_base_optim) == (None, "adamw_torch", "adamw_torch")
    with pytest.raises(ValueError, match="`optim` \\('nope'\\)"):
        args.set_optimizer("nope")


def test_decode_optim_is_the_one_mapping():
    assert decode_optim("aesam", "sgd") == (SAMPolicyName.AESAM, "sgd")
    assert decode_optim("sgd", "adamw_torch") == (None, "sgd")
    assert decode_optim("sgd", "adamw_torch", "aesam") == (SAMPolicyName.AESAM, "sgd")  # a decoded config
    assert decode_optim(SAMPolicyName.SAM, OptimizerNames.SGD) == (SAMPolicyName.SAM, "sgd")
    with pytest.raises(ValueError, match="name two policies"):
        decode_optim("sam", "adamw_torch", "aesam")


def test_optim_args_that_set_a_sam_setting_are_refused_with_the_flag_named(tmp_path):
    with pytest.raises(ValueError, match=r"`rho` -> `--sam_rho`"):
        _config(tmp_path, optim="sam", optim_args="rho=0.2")
    with pytest.raises(ValueError, match=r"`sam_interval` -> `--sam_interval`"):
        _config(tmp_path, optim="periodic", optim_args="sam_interval=3")
    # The base optimizer's own arguments pass, as in the stock Trainer.
    assert _config(tmp_path, optim="sam", optim_args="alpha=5.0").optim_args == "alpha=5.0"


def test_several_processes_on_a_machine_without_accelerators_need_use_cpu(tmp_path, monkeypatch):
    import torch

    from aesam_hf.backends import launcher_needs_cpu

    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launcher_needs_cpu() is None  # one process: transformers picks the device
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    assert "2 processes" in launcher_needs_cpu()
    with pytest.raises(ValueError, match=r"`use_cpu` \(False\).*Add `--use_cpu true`"):
        AESAMConfig(output_dir=str(tmp_path), report_to="none")
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    assert launcher_needs_cpu() is None  # GPUs: each process takes one
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    assert launcher_needs_cpu() is None  # said explicitly: transformers reads it itself
    monkeypatch.delenv("WORLD_SIZE")
    args = AESAMConfig(output_dir=str(tmp_path), report_to="none")
    assert args.use_cpu is False  # not rewritten behind the user's back
