"""The README's plain-PyTorch example and the shipped config files run as written."""

import pathlib
import re

from transformers import HfArgumentParser

from aesam_hf import AESAMConfig


ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_readme_plain_pytorch_example_runs(capsys):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    loop = next(b for b in blocks if "SAMController(" in b)
    exec(compile(loop, "README.md", "exec"), {})  # noqa: S102
    out = capsys.readouterr().out
    sam_steps, steps = map(int, re.search(r"SAM steps: (\d+)/(\d+)", out).groups())
    assert steps == 20 and 0 < sam_steps < 20


def test_experiment_configs_parse(tmp_path):
    for path in sorted((ROOT / "configs" / "experiments").glob("*.json")):
        (args,) = HfArgumentParser(AESAMConfig).parse_json_file(str(path))
        assert args.sam_policy.value in path.read_text()
