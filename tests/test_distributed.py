"""2-process DDP (torchrun, gloo on CPU) against 1 process with the same effective batch."""

import os
import pathlib
import socket
import subprocess
import sys

import pytest
import torch


SCRIPT = pathlib.Path(__file__).parent / "distributed" / "run_ddp_training.py"
sys.path.insert(0, str(SCRIPT.parent))

from run_ddp_training import main as train_one_process  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.parametrize("optim, ga_steps", [("sam", 1), ("aesam", 1), ("aelooksam", 1), ("random", 1), ("aesam", 2)])
def test_two_ranks_equal_one_rank(tmp_path, optim, ga_steps):
    per_device = 4 // ga_steps
    # `python -m torch.distributed.run` is torchrun, found without relying on the venv being on PATH.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()), str(SCRIPT),
           str(tmp_path / "ddp"), optim, str(per_device), str(ga_steps)]  # fmt: skip
    # Bounded in time: a rank that deadlocks (e.g. ranks disagreeing on a SAM step) fails the test.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]  # two ranks really ran
    assert ranks[0]["decisions"] == ranks[1]["decisions"]
    for name, p in ranks[0]["params"].items():
        assert torch.equal(p, ranks[1]["params"][name]), name

    train_one_process(str(tmp_path / "single"), optim, 8, 1)
    single = torch.load(tmp_path / "single" / "rank0.pt")
    assert single["world_size"] == 1
    assert ranks[0]["decisions"] == single["decisions"]
    for a, b in zip(ranks[0]["grad_norm_sq"], single["grad_norm_sq"]):
        assert a == pytest.approx(b, rel=1e-5)
    for name, p in single["params"].items():
        torch.testing.assert_close(ranks[0]["params"][name], p, atol=1e-5, rtol=1e-5, msg=name)
