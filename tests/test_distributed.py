"""Multi-process DDP (torchrun and `accelerate launch`, gloo on CPU): equivalence with 1 process, launch configs."""

import pathlib

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from distributed.launching import (
    ACCELERATE_CONFIGS,
    MULTI_CPU_CONFIG,
    REGRESSION_ARGS,
    accelerate_launch,
    load_ranks,
    torchrun,
)
from distributed.run_ddp_training import main as train_one_process


DISTRIBUTED = pathlib.Path(__file__).parent / "distributed"
SCRIPT = DISTRIBUTED / "run_ddp_training.py"
TRAIN = DISTRIBUTED / "train_regression.py"


TRAIN_ARGS = REGRESSION_ARGS + ["--save_strategy", "no"]


@pytest.mark.distributed
@pytest.mark.parametrize("optim, ga_steps", [("sam", 1), ("aesam", 1), ("aelooksam", 1), ("random", 1), ("aesam", 2)])
def test_two_ranks_equal_one_rank(tmp_path, optim, ga_steps):
    per_device = 4 // ga_steps
    # Bounded in time: a rank that deadlocks (e.g. ranks disagreeing on a SAM step) fails the test.
    job = torchrun(SCRIPT, [tmp_path / "ddp", optim, per_device, ga_steps], timeout=240)
    assert job.returncode == 0, job.output[-3000:]
    ranks = load_ranks(tmp_path / "ddp")
    assert [r["world_size"] for r in ranks] == [2, 2]  # two ranks really ran
    assert ranks[0]["decisions"] == ranks[1]["decisions"]
    for name, p in ranks[0]["params"].items():
        assert torch.equal(p, ranks[1]["params"][name]), name

    train_one_process(str(tmp_path / "single"), optim, 8, 1)
    single = torch.load(tmp_path / "single" / "rank0.pt")
    assert single["world_size"] == 1
    assert ranks[0]["decisions"] == single["decisions"]
    # x where it was measured (every step of the adaptive policies, the SAM steps of the others), as on one process.
    assert [x is None for x in ranks[0]["grad_norm_sq"]] == [x is None for x in single["grad_norm_sq"]]
    for a, b in zip(ranks[0]["grad_norm_sq"], single["grad_norm_sq"]):
        assert a is None or a == pytest.approx(b, rel=1e-5)
    for name, p in single["params"].items():
        torch.testing.assert_close(ranks[0]["params"][name], p, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.distributed
@pytest.mark.parametrize("ga_steps", [1, 2])
def test_a_sam_step_synchronises_gradients_once_per_pass(tmp_path, ga_steps):
    """The perturbation reuses the all-reduced g; the second pass all-reduces once, on its last micro-batch.

    `periodic` with k=2 alternates SAM and ERM steps; a DDP comm hook counts the all-reduce rounds of each step.
    """
    flags = f"--optim periodic --sam_interval 2 --max_steps 4 --gradient_accumulation_steps {ga_steps}"
    args = TRAIN_ARGS + ["--output_dir", tmp_path] + flags.split() + ["--test_count_allreduce", "true"]
    job = torchrun(TRAIN, args, timeout=120)
    assert job.returncode == 0, job.output[-3000:]
    for rank in load_ranks(tmp_path):
        assert [s["allreduce_rounds"] for s in rank["snapshots"]] == [2, 1, 2, 1], rank["rank"]
        assert [log["sam/fraction"] for log in rank["logs"]] == [1.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize(
    "name, distributed_type, num_processes, mixed_precision, use_cpu",
    [
        ("single_cpu", DistributedType.NO, 1, "no", True),
        ("multi_cpu", DistributedType.MULTI_GPU, 2, "no", True),
        ("single_gpu", DistributedType.NO, 1, "bf16", False),
        ("multi_gpu", DistributedType.MULTI_GPU, 8, "fp16", False),
    ],
)
def test_accelerate_configs_load(name, distributed_type, num_processes, mixed_precision, use_cpu):
    # Accelerate's own loader rejects unknown keys and bad values; the GPU configs cannot run here.
    config = load_config_from_file(str(ACCELERATE_CONFIGS / f"{name}.yaml"))
    assert config.distributed_type == distributed_type
    assert (config.num_processes, config.mixed_precision, config.use_cpu) == (num_processes, mixed_precision, use_cpu)
    assert not config.fsdp_config and not config.deepspeed_config


@pytest.mark.distributed
def test_accelerate_launch_with_the_multi_cpu_yaml_and_no_use_cpu_is_refused_before_training(tmp_path):
    # The yaml's `use_cpu: true` does not reach the workers. AESAMConfig does not rewrite `use_cpu` behind the user's
    # back: it stops before any model is built and says what to add (with `--use_cpu` the other tests form 2 ranks).
    args = [a for a in TRAIN_ARGS if a != "--use_cpu"] + [
        "--output_dir",
        tmp_path,
        "--optim",
        "aesam",
        "--max_steps",
        "6",
    ]
    job = accelerate_launch(TRAIN, args, config_file=MULTI_CPU_CONFIG, timeout=120)
    assert job.returncode != 0
    assert "`use_cpu` (False): a launcher started 2 processes" in job.output, job.output[-3000:]
    assert "Add `--use_cpu true`" in job.output
    assert not (tmp_path / "rank0.pt").exists()


@pytest.mark.distributed
def test_several_processes_told_not_to_use_the_cpu_on_a_machine_without_accelerators_are_refused(tmp_path):
    # ACCELERATE_USE_CPU=false turns the inference off: transformers would run each process alone, each training its
    # own copy; the error says what to add.
    args = [a for a in TRAIN_ARGS if a != "--use_cpu"] + ["--output_dir", tmp_path, "--max_steps", "2"]
    job = torchrun(TRAIN, args, timeout=120, env={"ACCELERATE_USE_CPU": "false"})
    assert job.returncode != 0
    assert "`use_cpu` (False): 2 processes were launched" in job.output, job.output[-3000:]
    assert "add `--use_cpu true`" in job.output
    assert not (tmp_path / "rank0.pt").exists()


FSDP_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
fsdp_config:
  fsdp_version: {version}
  fsdp_auto_wrap_policy: NO_WRAP
  fsdp_reshard_after_forward: {reshard}
  fsdp_state_dict_type: FULL_STATE_DICT
machine_rank: 0
main_training_function: main
mixed_precision: 'no'
num_machines: 1
num_processes: 2
rdzv_backend: static
same_network: true
use_cpu: true
"""


@pytest.mark.distributed
def test_accelerate_launch_with_an_fsdp2_config_runs_and_says_it_falls_back_to_ddp_on_cpu(tmp_path):
    # FSDP2 is accepted. On CPUs Accelerate runs no FSDP and quietly falls back to DDP: AESAMTrainer says so, and the
    # two ranks train one model, as under DDP (what sharded training needs a GPU to show: tests/test_gpu.py).
    config = tmp_path / "fsdp2.yaml"
    config.write_text(FSDP_CONFIG.format(version=2, reshard="true"))
    args = TRAIN_ARGS + ["--output_dir", tmp_path, "--optim", "aesam", "--max_steps", "3"]
    job = accelerate_launch(TRAIN, args, config_file=config, timeout=120)
    assert job.returncode == 0, job.output[-3000:]
    assert "FSDP2 was asked for, but Accelerate runs FSDP on accelerators only" in job.output
    ranks = load_ranks(tmp_path)
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    assert ranks[0]["logs"] == ranks[1]["logs"] and len(ranks[0]["logs"]) == 3
    for name, p in ranks[0]["params"].items():
        assert torch.equal(p, ranks[1]["params"][name]), name


@pytest.mark.distributed
def test_accelerate_launch_with_an_fsdp1_config_is_refused(tmp_path):
    # FSDP1 flattens the parameters; the error names the fix (FSDP2, or DDP) on every device.
    config = tmp_path / "fsdp1.yaml"
    config.write_text(FSDP_CONFIG.format(version=1, reshard="FULL_SHARD"))
    args = TRAIN_ARGS + ["--output_dir", tmp_path, "--max_steps", "2"]
    job = accelerate_launch(TRAIN, args, config_file=config, timeout=120)
    assert job.returncode != 0
    assert "`distributed_type: FSDP` in the accelerate config ('FSDP_VERSION=1')" in job.output, job.output[-3000:]
    assert "FSDP version 1 flattens the parameters" in job.output and "fsdp_version: 2" in job.output
    assert "distributed_type: MULTI_GPU" in job.output
    assert not (tmp_path / "rank0.pt").exists()
