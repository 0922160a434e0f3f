"""Parameters sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`): the SAM step on the local shards.

Under FSDP2 every parameter is a `DTensor` placed `Shard(dim)` on a 1-D device mesh, and so is its gradient (already
reduce-scattered, i.e. averaged over the ranks like DDP's). Each rank holds one slice of every tensor. The SAM step is
elementwise (w <- w + e, the restore by copy, the LookSAM buffers) except for a few global sums: ||g||², ||w ⊙ g||,
<g_s, g>, ||g_v||. So the controller works on the local shards (`local_tensors`), and each global sum is the sum over
the local shards all-reduced over the mesh's process group (`all_reduce_sum`). That costs one all-reduce of a scalar
or two per sum, never an all-gather of the weights, and SAM's buffers (saved w, g_v) take 1 / world size of the
parameters' memory on each rank, as the parameters do.

Without DTensors (one device, DataParallel, DDP) `shard_group` returns None, and the callers then run their unsharded
code unchanged: no extra collective, no extra copy.
No `transformers` import.
"""

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor


if dist.is_available():
    from torch.distributed.tensor import DTensor, Shard
else:  # a torch build without torch.distributed: nothing can be sharded
    DTensor = Shard = None


def is_sharded(tensor: Tensor) -> bool:
    """True for a `DTensor` (a parameter or gradient that FSDP2 sharded)."""
    return DTensor is not None and isinstance(tensor, DTensor)


def shard_group(params: Sequence[Tensor]) -> "dist.ProcessGroup | None":
    """The process group over which `params` are sharded; None when none of them is a DTensor.

    Raises for the layouts on which summing the local shards over one group would be wrong, rather than compute a norm
    that counts some entries twice or not at all: plain tensors mixed with DTensors (a plain tensor is whole on every
    rank), several meshes, a mesh of more than one dimension (HSDP, tensor parallelism), a placement other than
    `Shard` (a replicated or partial tensor).
    """
    sharded = [p for p in params if is_sharded(p)]
    if not sharded:
        return None
    if len(sharded) < len(params):
        raise ValueError(
            f"{len(params) - len(sharded)} of the {len(params)} parameters are plain tensors and the others FSDP2 "
            "DTensors: the SAM norms would count the plain ones once per rank. Apply `fully_shard` to the root module "
            "too, so that it shards every parameter."
        )
    mesh = sharded[0].device_mesh
    for p in sharded:
        if p.device_mesh != mesh:
            raise ValueError("The parameters are sharded over several device meshes; SAMController needs one.")
        if mesh.ndim != 1 or not all(isinstance(placement, Shard) for placement in p.placements):
            raise ValueError(
                f"A parameter is placed {p.placements} on a {mesh.ndim}-D mesh; SAMController supports FSDP2's "
                "`fully_shard` on a 1-D mesh (every parameter `Shard`ed), not HSDP or tensor parallelism."
            )
    return mesh.get_group()


def local_tensors(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The local shards of `tensors` (DTensors), as plain tensors that share the shards' storage.

    Writing to them writes the parameters (or gradients) in place, which is how the perturbation and the restore reach
    the sharded weights that FSDP2 all-gathers at the next forward pass. Taken outside autograd.
    """
    with torch.no_grad():
        return [t.to_local() for t in tensors]


def all_reduce_sum(tensor: Tensor, group: "dist.ProcessGroup | None") -> Tensor:
    """Sum `tensor` over `group`'s ranks in place and return it; without a group (nothing sharded), return it as is."""
    if group is not None:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def shard_of(group: "dist.ProcessGroup") -> dict[str, int]:
    """This rank's place in `group`: saved with local shards, so that they are loaded back on the same rank only."""
    return {"rank": dist.get_rank(group), "world_size": dist.get_world_size(group)}
