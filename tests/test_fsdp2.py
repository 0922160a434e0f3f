"""SAMController on parameters sharded with FSDP2 (`fully_shard`), in a hand-written loop, on CPU over gloo.

One torchrun launch of 2 ranks runs every case (`tests/distributed/run_fsdp2_training.py`); each is compared with one
unsharded process on the whole batch. The in-process tests use a process group of one rank (no launch) for what
needs DTensors but not two processes: the sharding checks and the loading rules of the controller's state.
"""

import contextlib
import os
import pathlib

import pytest
import torch
import torch.distributed as dist
from distributed.launching import load_ranks, torchrun
from distributed.run_fsdp2_training import CASES, RESUME_AT, make_model, shard, train
from testing_utils import MLPRegressionModel, get_trainer, sam_logs
from torch import nn
from transformers import TrainerCallback

from aesam_hf import SAM_STATE_NAME, AESAMTrainer, SAMController, make_policy
from aesam_hf.sharding import is_sharded, local_tensors, shard_group


requires_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)
SCRIPT = pathlib.Path(__file__).parent / "distributed" / "run_fsdp2_training.py"
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of the 2 FSDP2 ranks saved, every case in one launch."""
    out = tmp_path_factory.mktemp("fsdp2")
    job = torchrun(SCRIPT, [out], timeout=240)  # bounded: ranks that disagree on a step would hang
    assert job.returncode == 0, job.output[-3000:]
    ranks = load_ranks(out)
    assert [r["world_size"] for r in ranks] == [2, 2]
    return ranks


@contextlib.contextmanager
def one_rank_group():
    """A gloo group of one rank in this process, destroyed afterwards (the other tests run without a group)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def decisions(result: dict) -> list[bool]:
    return [r["sam"] for r in result["records"]]


@pytest.mark.distributed
@requires_gloo
@pytest.mark.parametrize("case", list(CASES))
def test_two_fsdp2_ranks_equal_one_unsharded_process(ranks, case):
    a, b = (r["cases"][case] for r in ranks)
    # Every rank took the same decisions and holds the same weights.
    assert a["records"] == b["records"] and a["counters"] == b["counters"] and a["policy"] == b["policy"]
    for name, w in a["weights"].items():
        assert torch.equal(w, b["weights"][name]), name

    single = train(CASES[case])
    assert decisions(a) == decisions(single) and a["counters"] == single["counters"]
    assert 0 < a["counters"]["sam_steps"]
    for got, want in zip(a["records"], single["records"]):
        for key in ("x", "g_v_norm"):  # x where it was measured, ||g_v|| once there is one
            assert (got[key] is None) == (want[key] is None), key
            assert got[key] is None or got[key] == pytest.approx(want[key], rel=1e-5), key
    assert a["policy"].keys() == single["policy"].keys()
    for key in ("mu", "var"):  # the adaptive policies' statistics
        assert key not in a["policy"] or a["policy"][key] == pytest.approx(single["policy"][key], rel=1e-5)
    assert a["weights"].keys() == single["weights"].keys()
    for name, w in single["weights"].items():
        torch.testing.assert_close(a["weights"][name], w, **TOL, msg=name)


@pytest.mark.distributed
@requires_gloo
def test_the_cases_cover_both_kinds_of_step(ranks):
    # AE-SAM decides both ways, and LookSAM's non-SAM steps reuse g_v: the equivalence covers every branch.
    for case in ("aesam", "aelooksam", "looksam"):
        assert set(decisions(ranks[0]["cases"][case])) == {True, False}, case


@pytest.mark.distributed
@requires_gloo
def test_sam_buffers_hold_the_local_shards_only(ranks):
    for case in ("sam", "looksam"):
        sizes = [r["cases"][case]["numel"] for r in ranks]
        total = sizes[0]["params"]
        assert sum(s["local"] for s in sizes) == total  # the shards partition the parameters
        for s in sizes:
            assert s["w_saved"] == s["local"] < 0.55 * total  # about half of the parameters on each of 2 ranks
            assert s["g_v"] in (None, s["local"]) and s["g_v_types"] in (None, ["Tensor"])  # plain local tensors
    assert ranks[0]["cases"]["looksam"]["numel"]["g_v"] is not None


@pytest.mark.distributed
@requires_gloo
def test_controller_state_round_trip_under_fsdp2(ranks):
    """Each rank saves its own state (local g_v shards); a controller built from it continues the run exactly."""
    for rank, r in enumerate(ranks):
        resumed = r["resume"]
        assert resumed["g_v_shard"] == {"rank": rank, "world_size": 2}
        assert resumed["g_v_shapes"] == resumed["local_shapes"] and resumed["loaded_g_v_equal"]
        assert not resumed["records"][0]["sam"]  # the first step after the resume reuses the loaded g_v
        uninterrupted = r["cases"]["aelooksam"]
        assert resumed["records"] == uninterrupted["records"][RESUME_AT:]
        assert resumed["counters"] == uninterrupted["counters"]
        for name, w in uninterrupted["weights"].items():
            assert torch.equal(resumed["weights"][name], w), name
        # Another rank's shards are refused, not loaded silently.
        assert f"saved on FSDP2 shard {1 - rank} of 2; this controller runs on FSDP2 shard {rank} of 2" in (
            resumed["other_rank_error"] or ""
        )


@pytest.mark.distributed
@requires_gloo
def test_a_controller_built_before_fully_shard_says_so(ranks):
    for r in ranks:
        assert "build it after `fully_shard`" in (r["built_before_sharding"] or "")


# ---- in this process, a group of one rank ----


@requires_gloo
def test_one_fsdp2_rank_equals_unsharded():
    single = train(CASES["aelooksam"])
    with one_rank_group():
        sharded = train(CASES["aelooksam"], sharded=True)
    assert decisions(sharded) == decisions(single) and set(decisions(single)) == {True, False}
    for name, w in single["weights"].items():
        torch.testing.assert_close(sharded["weights"][name], w, **TOL, msg=name)


@requires_gloo
@one_rank_group()
def test_shard_group_refuses_layouts_it_would_sum_wrongly():
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    assert shard_group([torch.zeros(3), nn.Parameter(torch.zeros(2))]) is None  # nothing sharded: the old path
    mesh = init_device_mesh("cpu", (1,))
    sharded = distribute_tensor(torch.arange(4.0), mesh, [Shard(0)])
    assert shard_group([sharded]) is mesh.get_group()
    assert torch.equal(local_tensors([sharded])[0], torch.arange(4.0))
    with pytest.raises(ValueError, match="plain tensors"):
        shard_group([sharded, torch.zeros(2)])
    with pytest.raises(ValueError, match="1-D mesh"):
        shard_group([distribute_tensor(torch.arange(4.0), mesh, [Replicate()])])
    mesh_2d = init_device_mesh("cpu", (1, 1), mesh_dim_names=("replicate", "shard"))
    with pytest.raises(ValueError, match="1-D mesh"):
        shard_group([distribute_tensor(torch.arange(4.0), mesh_2d, [Replicate(), Shard(0)])])


@requires_gloo
@one_rank_group()
def test_unsharded_and_sharded_states_do_not_mix():
    def trained_controller(sharded: bool) -> SAMController:
        model = make_model()
        if sharded:
            shard(model)
        sam = SAMController(model.parameters(), make_policy("looksam", sam_interval=2, sam_rho=0.1))
        nn.functional.mse_loss(model(torch.ones(2, 6)), torch.zeros(2, 1)).backward()
        assert sam.maybe_perturb()
        nn.functional.mse_loss(model(torch.ones(2, 6)), torch.zeros(2, 1)).backward()
        sam.restore()
        return sam

    sharded, plain = trained_controller(True), trained_controller(False)
    assert sharded.state_dict()["g_v_shard"] == {"rank": 0, "world_size": 1}
    assert "g_v_shard" not in plain.state_dict()  # the unsharded state is as it was
    with pytest.raises(ValueError, match="saved unsharded; this controller runs on FSDP2 shard 0 of 1"):
        sharded.load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match="saved on FSDP2 shard 0 of 1; this controller runs unsharded"):
        plain.load_state_dict(sharded.state_dict())
    counters = dict(t=plain.t, passes=plain.passes)
    plain.load_state_dict(sharded.state_dict(), policy_state=False)  # the counters alone carry over
    assert dict(t=plain.t, passes=plain.passes) == counters
    state = sharded.state_dict()
    state["g_v"] = [g[:1] for g in state["g_v"]]
    with pytest.raises(ValueError, match=r"`g_v\[0\]` has shape"):
        sharded.load_state_dict(state)


# ---- AESAMTrainer on a model sharded before it reaches the Trainer, a group of one rank ----


def shard_mlp(model: nn.Module) -> nn.Module:
    """FSDP2 on `MLPRegressionModel`: every Linear, then the root (on the CPU, over the one-rank gloo group)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for module in model.modules():
        if isinstance(module, nn.Linear):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


class PreShardedTrainer(AESAMTrainer):
    """Checkpoints the model as a full state dict: the stock Trainer, which does not know the model is sharded, would
    hand its DTensors to safetensors, which cannot save them. Optimizer, scheduler and SAM state are the stock path."""

    def _save(self, output_dir=None, state_dict=None):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        os.makedirs(output_dir, exist_ok=True)
        state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
        torch.save(state, os.path.join(output_dir, "full_model.pt"))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        state = torch.load(os.path.join(resume_from_checkpoint, "full_model.pt"), weights_only=True)
        set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True))


class ParamTypes(TrainerCallback):
    """The types of the model's parameters at every optimizer step, and the weights after the last one (full)."""

    def __init__(self):
        self.types: list[set[str]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.types.append({type(p).__name__ for p in model.parameters()})


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: (p.full_tensor() if is_sharded(p) else p).detach().clone() for n, p in model.named_parameters()}


def trainer_run(out, sharded: bool, resume: str | None = None, **kwargs) -> tuple[PreShardedTrainer, ParamTypes]:
    model = MLPRegressionModel(seed=kwargs.pop("model_seed", 0))
    trainer = get_trainer(out, model=shard_mlp(model) if sharded else model, trainer_cls=PreShardedTrainer, **kwargs)
    types = ParamTypes()
    trainer.add_callback(types)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, types


def logged(trainer, key: str) -> list[float]:
    return [h[key] for h in sam_logs(trainer)]


# Clipping on (the gradients' norm is well above 1 here), the batch in order, a rate at which AE-SAM decides both ways.
TRAINER_ARGS = dict(
    max_steps=8, sam_rho=0.5, learning_rate=0.01, max_grad_norm=1.0, train_sampling_strategy="sequential"
)


@requires_gloo
@pytest.mark.parametrize("ga", [1, 2])
@pytest.mark.parametrize("optim", ["sam", "aesam", "aelooksam"])
def test_trainer_on_fsdp2_parameters_equals_unsharded(tmp_path, optim, ga):
    args = dict(optim=optim, per_device_train_batch_size=8 // ga, gradient_accumulation_steps=ga, **TRAINER_ARGS)
    single, _ = trainer_run(tmp_path / "single", sharded=False, **args)
    with one_rank_group():
        sharded, types = trainer_run(tmp_path / "sharded", sharded=True, **args)
        weights = full_weights(sharded.model)
        assert sharded._sam_controller.shard == {"rank": 0, "world_size": 1}
    assert types.types == [{"DTensor"}] * 8  # the Trainer trained the FSDP2 parameters, never plain copies
    assert logged(sharded, "sam/fraction") == logged(single, "sam/fraction")  # the same decisions
    if optim != "sam":
        assert set(logged(single, "sam/fraction")) == {0.0, 1.0}  # both kinds of step are compared
        assert logged(sharded, "sam/grad_norm_sq") == pytest.approx(logged(single, "sam/grad_norm_sq"), rel=1e-5)
    assert logged(sharded, "sam/passes") == logged(single, "sam/passes")
    assert logged(sharded, "grad_norm") == pytest.approx(logged(single, "grad_norm"), rel=1e-5)  # clipped from it
    for name, w in full_weights(single.model).items():
        torch.testing.assert_close(weights[name], w, **TOL, msg=name)


@requires_gloo
def test_trainer_on_fsdp2_parameters_resumes_bit_for_bit(tmp_path):
    args = dict(optim="aelooksam", save_strategy="steps", save_steps=4, **TRAINER_ARGS)
    with one_rank_group():
        full, _ = trainer_run(tmp_path / "full", sharded=True, **args)
        checkpoint = tmp_path / "full" / "checkpoint-4"
        # One SAM state per rank, holding this rank's shards of g_v.
        assert (checkpoint / "sam_state_rank0.pt").is_file() and not (checkpoint / SAM_STATE_NAME).exists()
        state = torch.load(checkpoint / "sam_state_rank0.pt", weights_only=True)
        assert state["g_v_shard"] == {"rank": 0, "world_size": 1} and state["g_v"] is not None
        resumed, types = trainer_run(
            tmp_path / "resumed", sharded=True, resume=str(checkpoint), model_seed=123, **args
        )
        assert types.types == [{"DTensor"}] * 4
        tail = lambda t: [h for h in sam_logs(t) if h["step"] > 4]  # noqa: E731
        assert [h["step"] for h in tail(resumed)] == [5, 6, 7, 8]
        for got, want in zip(tail(resumed), tail(full)):
            for key in ("sam/fraction", "sam/passes", "sam/grad_norm_sq", "sam/fraction_total"):
                assert got.get(key) == want.get(key), key
        for name, w in full_weights(full.model).items():
            assert torch.equal(full_weights(resumed.model)[name], w), name
        c_full, c_res = full._sam_controller, resumed._sam_controller
        assert c_res.state_dict()["policy"] == c_full.state_dict()["policy"]
        assert all(torch.equal(a, b) for a, b in zip(c_res.g_v, c_full.g_v))


@requires_gloo
def test_an_unsharded_checkpoint_with_g_v_is_refused_by_a_sharded_trainer(tmp_path):
    args = dict(optim="aelooksam", save_strategy="steps", save_steps=4, **TRAINER_ARGS)
    trainer_run(tmp_path / "plain", sharded=False, **args)
    checkpoint = str(tmp_path / "plain" / "checkpoint-4")
    with one_rank_group(), pytest.raises(ValueError, match="saved unsharded; this controller runs on FSDP2 shard 0"):
        trainer_run(tmp_path / "resumed", sharded=True, resume=checkpoint, **args)


@requires_gloo
@one_rank_group()
def test_the_weight_check_reads_the_local_shards():
    model = shard_mlp(MLPRegressionModel())
    sam = SAMController(model.parameters(), make_policy("sam"))
    assert sam.weights_are_finite()
    with torch.no_grad():
        next(model.parameters()).to_local()[0, 0] = float("nan")
    assert not sam.weights_are_finite()
