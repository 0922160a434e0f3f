"""What the example scripts promise as scripts: one self-contained file each, the experiment configs, JSON + flags,
`--help`. Their training behaviour is in `test_run_glue.py` and `test_run_image_classification.py`.
"""

import ast
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest
from example_utils import EXAMPLES, EXPERIMENTS, ROOT, load_example
from transformers import HfArgumentParser

from aesam_hf import AESAMConfig


SCRIPTS = ["run_glue", "run_image_classification"]


def imported_modules(path) -> set[str]:
    """The top-level names of every module a file imports, wherever in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_is_one_self_contained_file(script):
    """A user copies one file: it imports only the standard library, installed packages and `aesam_hf`."""
    path = EXAMPLES / f"{script}.py"
    assert "sys.path" not in path.read_text()
    for name in imported_modules(path) - {"aesam_hf"}:
        if name in sys.stdlib_module_names:
            continue
        spec = importlib.util.find_spec(name)
        assert spec is not None, f"{script} imports {name!r}, which is not installed"
        origin = pathlib.Path(spec.origin or next(iter(spec.submodule_search_locations or []))).resolve()
        # An installed package may live under the repository (a `.venv` there), in site-packages.
        installed = "site-packages" in origin.parts or pathlib.Path(sys.prefix).resolve() in origin.parents
        assert installed or ROOT not in origin.parents, f"{script} imports {name!r} from the repository: {origin}"


def test_no_sys_path_manipulation_in_examples_or_benchmarks():
    files = sorted([*EXAMPLES.glob("*.py"), *(ROOT / "benchmarks").glob("*.py")])
    assert files and not [f.name for f in files if "sys.path" in f.read_text()]


@pytest.mark.parametrize("config", sorted(EXPERIMENTS.glob("*.json")), ids=lambda p: p.name)
def test_experiment_configs_parse_and_flags_override_them(config):
    script = load_example("run_glue" if config.name.startswith("glue_") else "run_image_classification")
    parser = HfArgumentParser((script.ModelArguments, script.DataTrainingArguments, AESAMConfig))
    # The data need not exist to parse; the image configs name one source each.
    # `use_cpu`: the online configs ask for bf16, which TrainingArguments refuses on a machine without a GPU.
    _, _, training_args = script.parse_args(parser, [str(config), "--seed", "7", "--use_cpu", "true"])
    assert training_args.seed == 7  # a flag after the file overrides it
    assert training_args.sam_policy == json.loads(config.read_text())["optim"] == "aesam"
    # The policy is a flag: one config per task, every policy.
    _, _, training_args = script.parse_args(parser, [str(config), "--optim", "sam", "--use_cpu", "true"])
    assert training_args.sam_policy == "sam"


def test_the_experiment_configs_are_the_documented_ones():
    # One per task and model, plus the regimes of the accuracy study (benchmarks/regimes.py); each is named where a
    # user finds it: the examples' README or a regime of the study.
    from benchmarks.regimes import REGIMES

    names = sorted(p.stem for p in EXPERIMENTS.glob("*.json"))
    assert names == [
        "glue_fortunes_minilm",
        "glue_fortunes_noisy_minilm",
        "glue_sst2_bert",
        "image_cifar10_vit",
        "image_fashion_mnist_clean",
        "image_fashion_mnist_noisy",
        "image_fashion_mnist_vit",
    ]
    readme = (ROOT / "examples" / "README.md").read_text()
    studied = {r.config for r in REGIMES.values()}
    assert [n for n in names if f"{n}.json" not in readme and f"{n}.json" not in studied] == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_json_config_values_keep_their_types_and_unknown_keys_are_errors(script, tmp_path):
    parse = load_example(script).parse_args
    config = tmp_path / "config.json"
    values = {"output_dir": str(tmp_path), "sam_rho": 0.1, "do_train": True, "label_names": ["labels", "y"]}
    values |= {"lr_scheduler_kwargs": {"min_lr": 0.001}, "hub_model_id": None, "max_steps": 3}
    config.write_text(json.dumps(values))
    (args,) = parse(HfArgumentParser(AESAMConfig), [str(config), "--max_steps", "5"])
    assert (args.sam_rho, args.do_train, args.label_names, args.max_steps) == (0.1, True, ["labels", "y"], 5)
    assert args.lr_scheduler_kwargs == {"min_lr": 0.001} and args.hub_model_id is None
    config.write_text(json.dumps({"output_dir": str(tmp_path), "sam_rhoo": 0.1}))
    with pytest.raises(ValueError, match="sam_rhoo"):
        parse(HfArgumentParser(AESAMConfig), [str(config)])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        parse(HfArgumentParser(AESAMConfig), [str(tmp_path / "missing.json")])


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{script}.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--optim" in out.stdout
