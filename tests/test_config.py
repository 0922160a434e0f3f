"""AESAMConfig: policy names in `optim`, the base optimizer, validation before training, the CLI."""

import json
import subprocess
import sys

import pytest
from transformers import HfArgumentParser, Trainer, TrainingArguments
from transformers.training_args import OptimizerNames

from aesam_hf import AESAMConfig, AESAMTrainer, SAMPolicyName, split_optim
from aesam_hf.config import POLICY_NAMES


def _config(tmp_path, **kwargs):
    return AESAMConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kwargs)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_name_is_accepted(tmp_path, name):
    args = _config(tmp_path, optim=name)
    assert args.optim == name
    assert args.sam_policy == SAMPolicyName(name)
    assert args.sam_base_optim == "adamw_torch"


def test_default_is_aesam(tmp_path):
    assert _config(tmp_path).sam_policy is SAMPolicyName.AESAM


def test_stock_optimizer_means_erm_with_that_optimizer(tmp_path):
    args = _config(tmp_path, optim="sgd")
    assert args.sam_policy is SAMPolicyName.ERM
    assert args.sam_base_optim == "sgd"


def test_cli_and_json_give_the_same_config(tmp_path):
    flags = [
        "--output_dir",
        str(tmp_path),
        "--optim",
        "aelooksam",
        "--sam_rho",
        "0.1",
        "--aesam_delta",
        "0.95",
        "--sam_base_optim",
        "sgd",
        "--use_cpu",
        "--report_to",
        "none",
    ]
    (from_cli,) = HfArgumentParser(AESAMConfig).parse_args_into_dataclasses(flags)
    path = tmp_path / "args.json"
    path.write_text(
        json.dumps(
            {
                "output_dir": str(tmp_path),
                "optim": "aelooksam",
                "sam_rho": 0.1,
                "aesam_delta": 0.95,
                "sam_base_optim": "sgd",
                "use_cpu": True,
                "report_to": "none",
            }
        )
    )
    (from_json,) = HfArgumentParser(AESAMConfig).parse_json_file(str(path))
    for args in (from_cli, from_json):
        assert (args.optim, args.sam_rho, args.aesam_delta, args.sam_base_optim) == ("aelooksam", 0.1, 0.95, "sgd")


def test_help_parses():
    # argparse formats every help string with %: a stray % in a field's help crashes `--help`.
    code = "from transformers import HfArgumentParser; from aesam_hf import AESAMConfig; HfArgumentParser(AESAMConfig).parse_args(['--help'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--optim", "--sam_rho", "--aesam_delta", "--sam_interval", "--looksam_alpha", "step %% k"):
        assert flag.replace("%%", "%") in out.stdout


def test_set_optimizer_accepts_policies_and_stock_names(tmp_path):
    args = _config(tmp_path, optim="sam", sam_base_optim="sgd")
    args.set_optimizer("aelooksam", learning_rate=1e-3)
    assert (args.optim, args.sam_base_optim, args.learning_rate) == ("aelooksam", "sgd", 1e-3)
    args.set_optimizer("adamw_torch")
    assert (args.optim, args.sam_base_optim, args.sam_policy) == ("adamw_torch", "adamw_torch", SAMPolicyName.ERM)
    with pytest.raises(ValueError, match="`name`"):
        args.set_optimizer("nope")


@pytest.mark.parametrize("name", POLICY_NAMES + ("adamw_torch", "sgd"))
def test_split_optim_is_the_one_mapping_and_optim_keeps_its_meaning(tmp_path, name):
    policy, base = split_optim(name, "sgd")
    assert (policy, base) == ((SAMPolicyName(name), "sgd") if name in POLICY_NAMES else (SAMPolicyName.ERM, name))
    args = _config(tmp_path, optim=name, sam_base_optim="sgd")
    # After __post_init__ `optim` is what the user chose, a plain string, and stays so through the Trainer's use.
    assert args.optim == name and type(args.optim) is str
    assert (args.sam_policy, args.sam_base_optim) == (policy, base)
    optimizer_cls, _ = AESAMTrainer.get_optimizer_cls_and_kwargs(args)
    assert optimizer_cls is Trainer.get_optimizer_cls_and_kwargs(TrainingArguments(optim=base))[0]
    assert args.optim == name and type(args.optim) is str


def test_enum_names_are_accepted_and_stored_as_strings(tmp_path):
    args = _config(tmp_path, optim=SAMPolicyName.SAM, sam_base_optim=OptimizerNames.SGD)
    assert (args.optim, args.sam_base_optim) == ("sam", "sgd")
    assert type(args.optim) is str and type(args.sam_base_optim) is str
    assert split_optim(OptimizerNames.ADAMW_TORCH, "sgd") == (SAMPolicyName.ERM, "adamw_torch")


def test_config_round_trips_through_its_dict(tmp_path):
    args = _config(tmp_path, optim="aelooksam", sam_base_optim="sgd", sam_rho=0.1)
    (again,) = HfArgumentParser(AESAMConfig).parse_dict(
        {k: v for k, v in args.to_dict().items() if k in ("output_dir", "optim", "sam_base_optim", "sam_rho")}
    )
    assert (again.optim, again.sam_base_optim, again.sam_rho, again.sam_policy) == (
        "aelooksam",
        "sgd",
        0.1,
        SAMPolicyName.AELOOKSAM,
    )
