"""Starts the multi-process test jobs (torchrun or `accelerate launch`), bounded in time and killed as a whole.

Reusable from any test:

    result = accelerate_launch(EXAMPLES / "run_glue.py", ["--max_steps", "4", ...], timeout=300)
    assert result.returncode == 0, result.output[-3000:]

Every job gets a free rendezvous port (tests run side by side without "address in use") and `OMP_NUM_THREADS=1` (two
ranks on a small machine would otherwise each start one thread per core and slow each other down). A job that runs
past its timeout is killed with all its ranks and raises `TimeoutError`, so a deadlock fails the test instead of
hanging it.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import psutil
import torch


REPO = pathlib.Path(__file__).resolve().parents[2]
ACCELERATE_CONFIGS = REPO / "configs" / "accelerate"
# Two CPU processes on this machine (DDP over gloo); the scripts pass `--use_cpu` (see the yaml).
MULTI_CPU_CONFIG = ACCELERATE_CONFIGS / "multi_cpu.yaml"


# train_regression.py flags shared by the multi-process tests: the tiny regression task, logged at every step.
# `--use_cpu` keeps them on the CPU on a machine with GPUs too. A bounded `ddp_timeout`: a rank left waiting in a
# collective gives up after a minute instead of the default 30.
REGRESSION_ARGS = (
    "--use_cpu --report_to none --disable_tqdm true --logging_steps 1 --seed 42 --per_device_train_batch_size 4 "
    "--train_sampling_strategy sequential --learning_rate 0.05 --lr_scheduler_type constant --sam_rho 0.5 "
    "--ddp_timeout 60"
).split()


def load_ranks(out_dir: pathlib.Path, world_size: int = 2) -> list[dict]:
    """What each rank of a finished job saved to `rank<r>.pt` (the scripts in this folder write them)."""
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


@dataclass
class JobResult:
    returncode: int
    output: str  # stdout and stderr of the launcher and of every rank, interleaved


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **(extra or {})}


def torchrun_cmd(script: str | os.PathLike, args: list[str], nproc: int = 2) -> list[str]:
    # `python -m torch.distributed.run` is torchrun, found without relying on the venv being on PATH.
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(free_port()),
        str(script),
        *map(str, args),
    ]


def accelerate_cmd(
    script: str | os.PathLike, args: list[str], config_file: str | os.PathLike = MULTI_CPU_CONFIG
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_file),
        "--main_process_port",
        str(free_port()),
        str(script),
        *map(str, args),
    ]


class Job:
    """A launcher process and its ranks, with the output going to a file (a pipe nobody reads could fill and block)."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None):
        self.cmd = cmd
        self._log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=job_env(env), text=True)

    def output(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def kill(self) -> None:
        """SIGKILL the launcher and every rank: a real crash, nothing gets to clean up.

        torchrun starts each rank in a session of its own, so killing the launcher's process group would miss them;
        the tree is collected first, then every process in it is killed.
        """
        try:
            ranks = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            ranks = []
        self.proc.send_signal(signal.SIGKILL)
        for p in ranks:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        # The launcher is reaped by Popen (psutil reaping it first would leave Popen a returncode of 0), the ranks,
        # which are not our children, by psutil.
        self.proc.wait(timeout=30)
        psutil.wait_procs(ranks, timeout=30)

    def wait(self, timeout: float) -> JobResult:
        try:
            returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(
                f"{' '.join(self.cmd)} ran past {timeout}s (a deadlock?); killed. Output:\n{self.output()[-5000:]}"
            ) from None
        return JobResult(returncode, self.output())

    def wait_for(self, condition, timeout: float, poll: float = 0.1) -> None:
        """Wait until `condition()` holds while the job runs; fails if the job ends or the time runs out first."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the job ended (exit {self.proc.returncode}) first. Output:\n{self.output()[-5000:]}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"condition not met within {timeout}s. Output:\n{self.output()[-5000:]}")
            time.sleep(poll)


def torchrun(script, args: list[str], nproc: int = 2, timeout: float = 240, env: dict | None = None) -> JobResult:
    return Job(torchrun_cmd(script, args, nproc), env).wait(timeout)


def accelerate_launch(
    script, args: list[str], config_file=MULTI_CPU_CONFIG, timeout: float = 240, env: dict | None = None
) -> JobResult:
    return Job(accelerate_cmd(script, args, config_file), env).wait(timeout)
