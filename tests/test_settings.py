"""One record of settings, one registry of policies: everything else derives from them.

`SAMSettings` declares each setting's name, default, help and rule once; the config inherits the fields, the policies
declare which they read (`uses`), and the help texts, the model card and the checkpoint's settings read both.
"""

import dataclasses
import re
import subprocess
import sys
import warnings

import pytest

from aesam_hf import POLICIES, POLICY_CLASSES, AESAMConfig, SAMController, SAMSettings, make_policy
from aesam_hf.settings import _RULES, DEFAULTS, SETTINGS, check


def test_every_setting_has_a_rule_and_its_default_obeys_it():
    assert set(_RULES) == set(SETTINGS)
    for name in SETTINGS:
        check(name, DEFAULTS[name])


def test_the_config_inherits_the_settings_with_their_defaults_and_help():
    config = {f.name: f for f in dataclasses.fields(AESAMConfig)}
    for f in dataclasses.fields(SAMSettings):
        assert config[f.name].default == f.default and config[f.name].metadata["help"] == f.metadata["help"]
        # The class docstring documents the same default.
        assert f"defaults to `{f.default}`" in SAMSettings.__doc__.split(f"{f.name} (`")[1].split("\n")[0]


def test_the_registry_is_the_one_list_of_policies():
    names = [cls.name for cls in POLICY_CLASSES]
    assert [p.value for p in POLICIES] == names
    for cls in POLICY_CLASSES:
        assert set(cls.uses) <= set(SETTINGS), cls.name
    # The command line's help lists every policy with its settings, from the registry.
    help_text = dataclasses.fields(AESAMConfig)
    optim_help = next(f for f in help_text if f.name == "optim").metadata["help"]
    for cls in POLICY_CLASSES:
        assert f"{cls.name} (" in optim_help


def _table_rows(text: str, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header line starts with `header`, as lists of cells."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_docs_tables_list_exactly_the_registry():
    import pathlib
    import re

    algorithm = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "algorithm.md").read_text()
    policies = [re.match(r"`(\w+)`", row[0]).group(1) for row in _table_rows(algorithm, "| `optim` |")]
    assert policies == [cls.name for cls in POLICY_CLASSES]
    # The settings table says which policies read each decision setting: the ones whose `uses` name it.
    for row in _table_rows(algorithm, "| setting |"):
        name = re.match(r"`(\w+)`", row[0]).group(1)
        readers = [cls.name for cls in POLICY_CLASSES if name in cls.uses]
        if readers:
            assert re.findall(r"`(\w+)`", row[2]) == readers, (name, row[2])


def test_make_policy_refuses_what_is_not_a_setting_and_warns_about_what_the_policy_ignores():
    with pytest.raises(ValueError, match=r"\['rho'\] is not a setting.*did you mean 'sam_rho'"):
        make_policy("sam", rho=0.1)
    with pytest.warns(UserWarning, match=r"\['sam_interval'\] have no effect under the 'aesam' policy"):
        make_policy("aesam", total_steps=10, sam_interval=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy = make_policy("periodic", sam_interval=3, sam_rho=0.2)
    assert (policy.settings.sam_interval, policy.settings.sam_rho) == (3, 0.2)


def test_the_controller_reads_the_step_settings_from_the_policy_record():
    import torch

    policy = make_policy("looksam", sam_rho=0.3, looksam_alpha=0.2, sam_adaptive=True)
    controller = SAMController([torch.nn.Parameter(torch.ones(2))], policy)
    assert controller.saved_settings() == {
        "sam_rho": 0.3,
        "sam_adaptive": True,
        "looksam_alpha": 0.2,
        "sam_interval": 5,
    }


def test_a_flag_reaches_the_controller_without_a_rename(tmp_path):
    from testing_utils import get_trainer

    trainer = get_trainer(tmp_path, optim="aelooksam", sam_rho=0.07, aesam_delta=0.8, max_steps=2)
    trainer.train()
    controller = trainer._sam_controller
    assert controller.settings is trainer.args  # the config is the record the policy and the controller read
    assert controller.saved_settings()["sam_rho"] == 0.07 and controller.saved_settings()["aesam_delta"] == 0.8


def test_the_torch_only_core_imports_without_transformers():
    # In a fresh interpreter: the package's `__init__` runs first, so it must not load the Trainer parts eagerly.
    code = (
        "import sys; import aesam_hf.sam, aesam_hf.policies, aesam_hf.settings; "
        "from aesam_hf import SAMController, make_policy, SAMSettings; "
        "import aesam_hf.controller; "
        "print(sorted(m for m in ('transformers', 'datasets', 'peft', 'accelerate', 'trl') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = "import sys; from aesam_hf import AESAMConfig; print('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "True\n"


def test_the_readme_optim_table_names_every_policy_of_the_registry():
    import pathlib

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = _table_rows(readme, "| `--optim` |")
    named = {name for row in rows for name in re.findall(r"`(\w+)`", row[0])}
    assert {cls.name for cls in POLICY_CLASSES} <= named, named
