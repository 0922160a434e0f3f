"""What needs a CUDA GPU (marked `gpu`, skipped without one; `make gpu-check` runs them), and the GPU check's own
CPU paths (its exit without CUDA, its arguments, its measurements on a tiny model).

On the GPU: fp16 with the GradScaler Accelerate builds (the SAM norm is taken on unscaled gradients), bf16 autocast
(no scaler), and an fp16 overflow planted in the first or the second pass of a SAM step (a skipped step that leaves
the weights and the policy's statistics as they were, and halves the loss scale); SAMController on FSDP2 parameters
over NCCL; AESAMTrainer with `fsdp="full_shard"` (FSDP2 through Accelerate) in bf16 and fp32.
"""

import math
import os
import subprocess
import sys
from unittest import mock

import pytest
import torch
import torch.distributed as dist
from example_utils import ROOT
from testing_utils import TokenDataset, get_trainer, sam_logs, tiny_bert
from transformers import TrainerCallback

from aesam_hf.sharding import is_sharded
from benchmarks import gpu_check


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# Every step a SAM step, through the policy that keeps statistics (a threshold far below any ||g||²).
ALWAYS_AESAM = dict(optim="aesam", aesam_lambda1=-50.0, aesam_lambda2=-50.0)


class Recorder(TrainerCallback):
    """After every optimizer step: the weights, the policy's state and the loss scale."""

    def __init__(self, trainer):
        self.trainer, self.weights, self.policy, self.scales = trainer, [], [], []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
        self.policy.append(dict(self.trainer._sam_controller.policy.state_dict()))
        scaler = self.trainer.accelerator.scaler
        self.scales.append(scaler.get_scale() if scaler is not None else None)


def cuda_trainer(tmp_path, **kwargs):
    """The tiny BERT on the GPU (the Trainer moves it there), logging every step."""
    return get_trainer(tmp_path, model=tiny_bert(), train_dataset=TokenDataset(), use_cpu=False, **kwargs)


def first_grad_norm_sq(trainer) -> float:
    """||g||² of the first step that measured it; only overflow steps (which leave the weights) come before it."""
    return next(h["sam/grad_norm_sq"] for h in sam_logs(trainer) if "sam/grad_norm_sq" in h)


@pytest.mark.parametrize("optim", ["sam", "aesam"])
@pytest.mark.gpu
@requires_cuda
def test_fp16_with_the_real_grad_scaler(tmp_path, optim):
    reference = cuda_trainer(tmp_path / "fp32", optim=optim, max_steps=1)
    reference.train()
    trainer = cuda_trainer(tmp_path / "fp16", optim=optim, fp16=True, max_steps=6)
    trainer.train()
    scaler = trainer.accelerator.scaler
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled() and scaler.get_scale() > 1.0
    assert next(trainer.model.parameters()).device.type == "cuda"
    controller = trainer._sam_controller
    assert controller.sam_steps > 0
    # ||g||² at the initial weights: unscaled (a scaled one would be ~scale² times larger). The first steps may
    # overflow at the GradScaler's initial scale of 2^16: they are skipped and leave the weights as they were.
    assert first_grad_norm_sq(trainer) == pytest.approx(first_grad_norm_sq(reference), rel=0.05)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.gpu
@requires_cuda
def test_bf16_autocast_takes_sam_steps_without_a_scaler(tmp_path):
    reference = cuda_trainer(tmp_path / "fp32", optim="sam", max_steps=1)
    reference.train()
    sam = cuda_trainer(tmp_path / "sam", optim="sam", bf16=True, max_steps=4)
    sam.train()
    erm = cuda_trainer(tmp_path / "erm", optim="erm", bf16=True, max_steps=4)
    erm.train()
    assert sam.accelerator.mixed_precision == "bf16" and sam.accelerator.scaler is None
    assert sam._sam_controller.sam_steps == 4 and [h["sam/passes"] for h in sam_logs(sam)] == [2.0, 4.0, 6.0, 8.0]
    assert first_grad_norm_sq(sam) == pytest.approx(first_grad_norm_sq(reference), rel=0.05)
    assert any(not torch.equal(a, b) for a, b in zip(sam.model.parameters(), erm.model.parameters()))
    assert all(torch.isfinite(p).all() for p in sam.model.parameters())


@pytest.mark.parametrize("which_pass", ["first", "second"])
@pytest.mark.gpu
@requires_cuda
def test_fp16_overflow_in_either_pass_is_a_skipped_step(tmp_path, which_pass):
    trainer = cuda_trainer(tmp_path, fp16=True, max_steps=5, **ALWAYS_AESAM)
    # A real CUDA GradScaler, started at a scale low enough that only the planted inf overflows.
    trainer.accelerator.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**8)
    at = 2  # 0-based: the third optimizer step
    param = trainer.model.bert.encoder.layer[0].attention.self.query.weight
    active = {"step": False}

    class Plant(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            active["step"] = state.global_step == at

    def hook(grad):
        in_second = trainer.in_sam_second_pass
        if active["step"] and in_second == (which_pass == "second"):
            return torch.full_like(grad, float("inf"))
        return grad

    param.register_hook(hook)
    recorder = Recorder(trainer)
    trainer.add_callback(Plant())
    trainer.add_callback(recorder)
    trainer.train()

    controller = trainer._sam_controller
    assert controller.overflow_steps == 1, [h.get("sam/overflow_steps") for h in sam_logs(trainer)]
    assert sam_logs(trainer)[at].get("sam/overflow_steps") == 1.0
    for name, w in recorder.weights[at].items():
        assert torch.equal(w, recorder.weights[at - 1][name]), f"the skipped step moved {name}"
    assert recorder.policy[at] == recorder.policy[at - 1]  # mu and var untouched (undone after a second pass)
    assert recorder.scales[at] == recorder.scales[at - 1] / 2  # the GradScaler saw the overflow
    assert controller.sam_steps == 4  # a second-pass overflow is not counted as a SAM step either
    assert all(math.isfinite(v) for p in trainer.model.parameters() for v in p.detach().flatten()[:8].tolist())


def fsdp2_one_rank_matches_unsharded(device: str, backend: str) -> None:
    """A hand-written SAM loop on FSDP2 parameters in a group of one rank equals the same loop unsharded.

    One rank shards nothing away, but every step runs the sharded path (DTensors, local shards, the all-reduces over
    the `backend`) on `device`: what the 2-rank CPU test (tests/test_fsdp2.py) cannot run.
    """
    import torch.distributed as dist
    from distributed.launching import free_port
    from distributed.run_fsdp2_training import CASES, train

    cases = ("aelooksam", "asam")
    single = {name: train(CASES[name], device=device) for name in cases}
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        sharded = {name: train(CASES[name], sharded=True, device=device) for name in cases}
    finally:
        dist.destroy_process_group()
    for name in cases:
        assert [r["sam"] for r in sharded[name]["records"]] == [r["sam"] for r in single[name]["records"]], name
        assert sharded[name]["counters"] == single[name]["counters"], name
        for key, w in single[name]["weights"].items():
            assert w.device.type == device
            torch.testing.assert_close(sharded[name]["weights"][key], w, atol=1e-5, rtol=1e-5, msg=f"{name} {key}")


@pytest.mark.gpu
@requires_cuda
def test_fsdp2_on_one_gpu_matches_unsharded():
    fsdp2_one_rank_matches_unsharded("cuda", "nccl")


# ---- AESAMTrainer under FSDP2 through the Trainer's own switch (`fsdp="full_shard"`) ----


class ParamTypes(TrainerCallback):
    """The types of the model's parameters at every optimizer step: DTensors when FSDP2 sharded them."""

    def __init__(self):
        self.types: list[set[str]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.types.append({type(p).__name__ for p in model.parameters()})


# SGD, so that an update is proportional to its gradient (AdamW's first steps move every weight by about the learning
# rate, whatever the gradient's size); rho 0.5, so that a SAM update differs from an ERM one by about 100% here.
FSDP2_TRAINER_ARGS = dict(
    sam_base_optim="sgd", learning_rate=0.1, sam_rho=0.5, max_steps=6, train_sampling_strategy="sequential"
)
FSDP2_TRAINER_CASES = {  # name: (precision, AESAMConfig fields)
    "sam_bf16": ("bf16", dict(optim="sam")),
    "aesam_bf16": ("bf16", ALWAYS_AESAM),  # every step a SAM step: bf16 noise cannot flip a decision
    "aesam_fp32": ("fp32", dict(optim="aesam")),  # the paper's thresholds: decisions compared exactly
    # 2 micro-batches: both passes run the first one under Accelerate's FSDP2 `no_sync`.
    "aesam_fp32_ga2": ("fp32", dict(optim="aesam", per_device_train_batch_size=4, gradient_accumulation_steps=2)),
}
# bf16: the relative error of the whole update (w_T - w_0) allowed between FSDP2 and the unsharded run. Accelerate gives
# FSDP2 a bf16 MixedPrecisionPolicy (the forward runs on bf16 copies of the fp32 shards, LayerNorm included, and the
# gradients are reduced in bf16), while the unsharded run autocasts with fp32 weights: both carry bf16 rounding
# (2^-9 relative per value). Here bf16 autocast against fp32 differs by 1.7% of the update (CPU, this model), so two
# bf16 runs may differ by about twice that; 10% leaves room, and stays 10x below what a wrong SAM step would change
# (a SAM update differs from an ERM one by about 100% of the update here).
BF16_UPDATE_RTOL = 0.10


def _bert_run(out, device: str, precision: str, fields: dict, fsdp: bool) -> dict:
    model = tiny_bert()
    initial = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    if fsdp:
        # BERT lists `BertEmbeddings` in `_no_split_modules`, so Accelerate 1.15's default auto-wrap shards it, then
        # shards its word embeddings a second time and fails inside `fully_shard` (seen on an H200, torch 2.11): the
        # stock Trainer fails the same way. Wrapping the layers alone avoids it.
        fsdp_config = {"version": 2, "transformer_layer_cls_to_wrap": ["BertLayer"]}
        fields = dict(fields, fsdp="full_shard", fsdp_config=fsdp_config)
    trainer = get_trainer(
        out,
        model=model,
        train_dataset=TokenDataset(),
        use_cpu=device == "cpu",
        bf16=precision == "bf16",
        **FSDP2_TRAINER_ARGS,
        **fields,
    )
    types = ParamTypes()
    trainer.add_callback(types)
    trainer.train()
    weights = {
        # `full_tensor` all-gathers a DTensor: while the process group still exists.
        n: (p.full_tensor() if is_sharded(p) else p).detach().float().cpu()
        for n, p in trainer.model.named_parameters()
    }
    assert all(torch.isfinite(w).all() for w in weights.values())
    return {
        "update": torch.cat([(weights[n] - w.cpu()).flatten() for n, w in initial.items()]),
        "weights": weights,
        "logs": sam_logs(trainer),
        "types": types.types,
        "fsdp2": trainer.is_fsdp_enabled and trainer.accelerator.is_fsdp2,
        "shard": trainer._sam_controller.shard,
    }


def trainer_fsdp2_one_rank_matches_unsharded(tmp_path, device: str) -> None:
    """AESAMTrainer with `fsdp="full_shard"` (FSDP2) in a process group of one rank equals the unsharded AESAMTrainer.

    The launcher's variables (LOCAL_RANK, RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) make transformers set up a
    distributed run of one process: its `TrainingArguments` initialise the process group (NCCL on CUDA, gloo on the
    CPU), so nothing is initialised by hand, and the unsharded runs come first, without them. On CUDA, Accelerate
    shards the tiny BERT with FSDP2 (DTensor parameters, asserted). On the CPU Accelerate runs no FSDP and falls back to
    DDP, so there only the equivalence and the set-up and tear-down are checked. The group is destroyed and the
    environment restored afterwards (Accelerate also sets ACCELERATE_USE_FSDP), for the tests that follow.
    """
    from accelerate.state import AcceleratorState
    from distributed.launching import free_port

    single = {
        name: _bert_run(tmp_path / "single" / name, device, precision, fields, fsdp=False)
        for name, (precision, fields) in FSDP2_TRAINER_CASES.items()
    }
    launcher = dict(
        LOCAL_RANK="0",
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )
    with mock.patch.dict(os.environ, launcher):  # restores the whole environment on exit
        try:
            sharded = {
                name: _bert_run(tmp_path / "fsdp2" / name, device, precision, fields, fsdp=True)
                for name, (precision, fields) in FSDP2_TRAINER_CASES.items()
            }
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
            AcceleratorState._reset_state(reset_partial_state=True)
    assert not dist.is_initialized()

    for name, (precision, _) in FSDP2_TRAINER_CASES.items():
        got, want = sharded[name], single[name]
        if device == "cuda":
            assert got["fsdp2"] and got["shard"] == {"rank": 0, "world_size": 1}, name
            assert got["types"] == [{"DTensor"}] * 6, name  # trained on the FSDP2 parameters at every step
        decisions = lambda run: [h["sam/fraction"] for h in run["logs"]]  # noqa: E731
        assert decisions(got) == decisions(want) and len(decisions(got)) == 6, name
        passes = [h["sam/passes"] for h in got["logs"]]
        assert passes == [h["sam/passes"] for h in want["logs"]], name
        x = lambda run: [h["sam/grad_norm_sq"] for h in run["logs"]]  # noqa: E731
        if precision == "fp32":
            assert x(got) == pytest.approx(x(want), rel=1e-5), name
            for key, w in want["weights"].items():
                torch.testing.assert_close(got["weights"][key], w, atol=1e-5, rtol=1e-5, msg=f"{name} {key}")
        else:
            assert x(got)[0] == pytest.approx(x(want)[0], rel=0.05), name  # at the same initial weights
            error = (got["update"] - want["update"]).norm() / want["update"].norm()
            assert error < BF16_UPDATE_RTOL, (name, float(error))


@pytest.mark.gpu
@requires_cuda
def test_trainer_fsdp2_on_one_gpu_matches_unsharded(tmp_path):
    trainer_fsdp2_one_rank_matches_unsharded(tmp_path, "cuda")


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo")
def test_trainer_fsdp2_check_runs_on_cpu(tmp_path):
    """The GPU test's body on the CPU, where Accelerate falls back to DDP: its set-up, comparisons and tear-down."""
    trainer_fsdp2_one_rank_matches_unsharded(tmp_path, "cpu")


# ---- benchmarks/gpu_check.py on this machine ----


def test_the_gpu_check_without_cuda_says_so_and_exits_0():
    cmd = [sys.executable, "-m", "benchmarks.gpu_check"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no CUDA device, on any machine
    job = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert job.returncode == 0, job.stderr[-2000:]
    assert job.stdout.strip().splitlines()[-1] == gpu_check.NO_CUDA


def test_the_gpu_check_arguments():
    from transformers import HfArgumentParser

    assert "--precisions" in HfArgumentParser(gpu_check.GPUCheckArguments).format_help()
    args = gpu_check.GPUCheckArguments()
    assert (args.precisions, args.batch_size, args.seq_len) == (["bf16", "fp16"], 32, 128)
    config = gpu_check.bert_base_config()
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (768, 12, 3072)
    with pytest.raises(ValueError, match="precisions"):
        gpu_check.GPUCheckArguments(precisions=["fp8"])
    with pytest.raises(ValueError, match="warmup"):
        gpu_check.GPUCheckArguments(steps=5, warmup=5)
    with pytest.raises(ValueError, match="rounds"):
        gpu_check.GPUCheckArguments(rounds=0)


def test_the_gpu_check_measures_every_variant_on_a_tiny_model():
    """The measuring code on the CPU in bf16 (the numbers mean nothing here): every variant ran, the table is whole."""
    args = gpu_check.GPUCheckArguments(steps=3, warmup=1, rounds=1, batch_size=4, seq_len=8, skip_tests=True)
    config = gpu_check.bert_base_config(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    result = gpu_check.measure("bf16", args, config)
    assert set(result["step_ms"]) == set(gpu_check.VARIANTS)
    assert all(run["steps"] == 3 for runs in result["runs"].values() for run in runs)
    assert [run["sam_fraction"] for run in result["runs"]["sam"]] == [1.0]
    assert result["sam_over_erm"]["median"] > 0 and 0 <= result["aesam_sam_fraction"] <= 1
    table = gpu_check.table({"bf16": result})
    assert len(table.splitlines()) == 2 + len(gpu_check.VARIANTS)
