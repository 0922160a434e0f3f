"""Trains a tiny MLP with `SAMController` in a hand-written loop, sharded with FSDP2 (`fully_shard`); run under torchrun.

    torchrun --nproc_per_node 2 tests/distributed/run_fsdp2_training.py OUT_DIR

One launch runs every case of `CASES` in one gloo group (a launch costs seconds, a case a fraction of one). Each rank
trains on its half of every global batch; FSDP2 averages the gradients over the ranks, as DDP does. Each rank writes
`OUT_DIR/rank{R}.pt`: per case what `train` returns (full final weights, the controller's counters and decisions), the
sizes of SAM's buffers on this rank, a checkpoint round trip of the controller, and the errors of two misuses.

`train(case)` is the unsharded reference: one process, the whole batch, no FSDP. `train(case, sharded=True)` in a
process group of one rank (the GPU test) shards over that rank alone.
"""

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from aesam_hf import SAMController, SAMSettings, exit_gloo_process, make_policy


STEPS = 8
RESUME_AT = 2  # a non-SAM step of `aelooksam` here: the resumed controller's first step reuses the loaded g_v
BATCH = 8  # the global batch of every step
DIM = 6
# mu + sigma: AE-SAM takes a SAM step on some of the 8 steps, not on all (mu lags behind a falling x).
SETTINGS = dict(sam_interval=2, aesam_lambda1=1.0, aesam_lambda2=1.0, sam_rho=0.1)
CASES = {
    "sam": dict(policy="sam"),
    "sam_ga2": dict(policy="sam", ga=2),
    "aesam": dict(policy="aesam"),
    "aesam_ga2": dict(policy="aesam", ga=2),
    "aelooksam": dict(policy="aelooksam"),
    "aelooksam_ga2": dict(policy="aelooksam", ga=2),
    "looksam": dict(policy="looksam"),
    "asam": dict(policy="sam", adaptive=True),
}


def make_model(device: str = "cpu") -> nn.Module:
    """The same initial weights in every process. The last layer's weight (1 x 32) lies whole on rank 0: rank 1's
    shard of it is empty, which the local-shard arithmetic must handle."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(DIM, 32), nn.LayerNorm(32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    return model.to(device)


def shard(model: nn.Module) -> nn.Module:
    """FSDP2 on the model's device (`fully_shard` would pick a CUDA mesh whenever CUDA is there)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(next(model.parameters()).device.type, (dist.get_world_size(),))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the root takes the rest (the LayerNorm)
    return model


def batches() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, BATCH, DIM, generator=g)
    y = torch.sin(x.sum(-1, keepdim=True)) + 0.1 * torch.randn(STEPS, BATCH, 1, generator=g)
    return x, y


def controller(model: nn.Module, case: dict) -> SAMController:
    settings = SAMSettings(**SETTINGS, sam_adaptive=case.get("adaptive", False))
    return SAMController(model.parameters(), make_policy(case["policy"], settings, total_steps=STEPS))


def run_steps(model: nn.Module, optimizer, sam: SAMController, case: dict, steps: range) -> list[dict]:
    """The hand-written loop of the README, with `ga` micro-batches per step; this rank's rows of each batch."""
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    ga = case.get("ga", 1)
    xs, ys = (b.to(next(model.parameters()).device) for b in batches())
    rows = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    records = []

    def backward(x: torch.Tensor, y: torch.Tensor) -> None:
        for xm, ym in zip(x.chunk(ga), y.chunk(ga)):
            (nn.functional.mse_loss(model(xm), ym) / ga).backward()

    for t in steps:
        x, y = xs[t, rows], ys[t, rows]
        backward(x, y)
        if sam.maybe_perturb():
            backward(x, y)
            sam.restore()
        optimizer.step()
        optimizer.zero_grad()
        r = sam.record
        records.append(
            {
                "sam": r.sam,
                "x": None if r.grad_norm_sq is None else float(r.grad_norm_sq),
                "g_v_norm": None if sam.g_v_norm is None else float(sam.g_v_norm),
            }
        )
    return records


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights on every rank (`full_tensor` all-gathers a DTensor)."""
    return {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for n, p in model.named_parameters()
    }


def numel(tensors) -> int:
    return sum(t.numel() for t in tensors)


def train(case: dict, sharded: bool = False, device: str = "cpu") -> dict:
    model = make_model(device)
    if sharded:
        shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sam = controller(model, case)
    records = run_steps(model, optimizer, sam, case, range(STEPS))
    local = [p.to_local() if sharded else p for p in model.parameters()]
    return {
        "records": records,
        "counters": {k: getattr(sam, k) for k in ("t", "sam_steps", "decided_steps", "passes")},
        "policy": sam.policy.state_dict(),
        "weights": full_weights(model),
        "numel": {
            "params": numel(model.parameters()),  # a DTensor's numel is the whole tensor's
            "local": numel(local),
            "w_saved": numel(sam._w_saved or []),
            "g_v": None if sam.g_v is None else numel(sam.g_v),
            "g_v_types": None if sam.g_v is None else sorted({type(g).__name__ for g in sam.g_v}),
        },
    }


def resume(out_dir: str, case: dict) -> dict:
    """Train half the steps, save the controller's state (one file per rank), go on with a controller built from it."""
    rank = dist.get_rank()
    model = shard(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sam = controller(model, case)
    run_steps(model, optimizer, sam, case, range(RESUME_AT))
    state = sam.state_dict()
    path = os.path.join(out_dir, f"sam_state_rank{rank}.pt")
    torch.save(state, path)
    dist.barrier()  # both files written
    resumed = controller(model, case)
    resumed.load_state_dict(torch.load(path, weights_only=False))
    loaded_g_v_equal = all(torch.equal(a, b) for a, b in zip(resumed.g_v, sam.g_v))
    # The other rank's shards: refused, not loaded.
    other = controller(model, case)
    try:
        other.load_state_dict(torch.load(os.path.join(out_dir, f"sam_state_rank{1 - rank}.pt"), weights_only=False))
        other_rank_error = None
    except ValueError as e:
        other_rank_error = str(e)
    records = run_steps(model, optimizer, resumed, case, range(RESUME_AT, STEPS))
    return {
        "records": records,
        "g_v_shard": state["g_v_shard"],
        "g_v_shapes": [tuple(g.shape) for g in state["g_v"]],
        "local_shapes": [tuple(p.to_local().shape) for p in model.parameters()],
        "loaded_g_v_equal": loaded_g_v_equal,
        "other_rank_error": other_rank_error,
        "counters": {k: getattr(resumed, k) for k in ("t", "sam_steps", "decided_steps", "passes")},
        "weights": full_weights(model),
    }


def built_before_sharding() -> str | None:
    """The controller built before `fully_shard` holds the parameters FSDP2 replaces: its first step must say so."""
    model = make_model()
    sam = controller(model, dict(policy="sam"))
    shard(model)
    xs, ys = batches()
    nn.functional.mse_loss(model(xs[0]), ys[0]).backward()
    try:
        sam.maybe_perturb()
    except RuntimeError as e:
        return str(e)
    return None


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result = {"world_size": dist.get_world_size(), "cases": {}}
    for name, case in CASES.items():
        result["cases"][name] = train(case, sharded=True)
    result["resume"] = resume(out_dir, CASES["aelooksam"])
    result["built_before_sharding"] = built_before_sharding()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    # The group is left to `exit_gloo_process`: destroying it here would make that call a no-op (no group left), and
    # the interpreter's finalization, where torch 2.13's gloo aborts, would run (a CI run lost all 12 tests to it).


if __name__ == "__main__":
    main(sys.argv[1])
    exit_gloo_process()  # as the examples end (torch 2.13's gloo teardown abort, `aesam_hf.teardown`)
