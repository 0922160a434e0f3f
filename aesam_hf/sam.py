"""The SAM step's tensor work in pure PyTorch: gradient norm, perturbation, exact restore, LookSAM direction.

SAM: Foret et al. 2021, https://huggingface.co/papers/2010.01412 (ASAM: Kwon et al. 2021). LookSAM: Liu et al. 2022.
Follows `docs/algorithm.md`, sections "What g is", "The SAM step" and "The LookSAM gradient".

Every function works on lists of tensors with `torch._foreach_*` kernels (one launch per list, not one per
parameter) and never reads a value back to the host, so none of them adds a device synchronisation.

Gradients may carry an AMP loss scale `s` (fp16 with a GradScaler): the functions take `inv_scale = 1 / s` and return
values in unscaled units, leaving the gradients themselves scaled, because the GradScaler unscales them later.
Parameters sharded with FSDP2 (`aesam_hf.sharding`): the callers pass the local shards and the shards' process
`group`, and every global sum (a norm, a dot product) is the local one all-reduced over it. Without a `group` the
functions compute exactly what they did before sharding was supported, with no collective.
No `transformers` import: hand-written loops use this module directly.
"""

import contextlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .sharding import all_reduce_sum


# The epsilon in e = rho * g / (||g|| + 1e-12): keeps a zero gradient from dividing by zero.
EPS = 1e-12


def global_norm(norms: Sequence[Tensor], group: "dist.ProcessGroup | None" = None) -> Tensor:
    """The L2 norm of a vector whose pieces have the L2 norms `norms` (and, with a `group`, so do the other ranks')."""
    if group is None:
        return torch.linalg.vector_norm(torch.stack(norms))
    # Squares add across shards, norms do not: reduce the local sum of squares.
    return all_reduce_sum(torch.stack(norms).square().sum(), group).sqrt()


def grad_norm_sq(grads: Sequence[Tensor], inv_scale: float = 1.0, group: "dist.ProcessGroup | None" = None) -> Tensor:
    """x = ||g||²: one global squared L2 norm over every tensor (not per layer: docs/algorithm.md), in float32, unscaled.

    Returns a 0-dim tensor on the gradients' device; inf/NaN when any entry of `g` is (an overflow step), on every rank
    of a `group`.
    """
    norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
    return global_norm(norms, group).mul(inv_scale).square()


def sam_perturbation_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    rho: float,
    adaptive: bool,
    norm_sq: Tensor,
    inv_scale: float = 1.0,
    group: "dist.ProcessGroup | None" = None,
) -> None:
    """Overwrite `grads` in place with the ascent step e (they are not needed afterwards).

    SAM:  e = rho * g / (||g|| + eps).
    ASAM: e_i = rho * w_i² g_i / (||w ⊙ g|| + eps)   [choice: per-element |w| scaling, eta = 0].
    Scaled gradients G = s*g give the same e: the scale is taken out of the norm before eps is added.
    """
    if adaptive:
        torch._foreach_mul_(grads, params)  # w ⊙ G
        norm = global_norm(torch._foreach_norm(grads, 2, dtype=torch.float32), group)
        torch._foreach_mul_(grads, params)  # w² ⊙ G
    else:
        norm = norm_sq.sqrt() / inv_scale  # ||G|| = s * ||g||
    # rho * G / (||G|| + s*eps) == rho * g / (||g|| + eps)
    factor = rho / (norm + EPS / inv_scale)
    torch._foreach_mul_(grads, factor.to(grads[0].dtype))


class LookSAMGeometry(NamedTuple):
    """How g_s = c * g + g_v splits at a SAM step: c = <g_s, g> / ||g||², g_v orthogonal to g (0-dim tensors).

    Kept on the device; `ratios` derives the quantities worth watching without touching the gradients again.
    """

    g_v_norm: Tensor  # ||g_v||, reused by every later non-SAM step
    g_norm: Tensor  # ||g||
    proj: Tensor  # c

    def ratios(self) -> dict[str, Tensor]:
        """||g_v|| / ||g||, ||g_s - g|| / ||g|| and cos(g_s, g), from the orthogonal split (Pythagoras)."""
        v = self.g_v_norm / self.g_norm.clamp_min(EPS)  # ||g_v|| / ||g||
        return {
            "gv_over_g": v,
            "diff_over_g": torch.sqrt(v.square() + (self.proj - 1.0).square()),  # g_s - g = g_v + (c - 1) g
            "cos": self.proj
            / torch.sqrt(v.square() + self.proj.square()).clamp_min(EPS),  # ||g_s||² = ||g_v||² + c²||g||²
        }


def looksam_direction_(
    buffer: Sequence[Tensor],
    sam_grads: Sequence[Tensor],
    inv_scale: float = 1.0,
    group: "dist.ProcessGroup | None" = None,
) -> LookSAMGeometry:
    """Turn `buffer` (holding the plain gradient g, unscaled) into g_v, the part of g_s orthogonal to g.

    g_v = g_s - (<g_s, g> / ||g||²) g, with global dot product and norms [choice]. `sam_grads` carry this step's loss
    scale; g_v is stored unscaled.
    """
    # No foreach kernel computes dot products; this loop runs on SAM steps of the LookSAM policies only.
    dot = torch.stack([torch.vdot(a.flatten().float(), b.flatten().float()) for a, b in zip(sam_grads, buffer)]).sum()
    g_sq = torch.stack(torch._foreach_norm(buffer, 2, dtype=torch.float32)).square().sum()
    if group is not None:
        dot, g_sq = all_reduce_sum(torch.stack([dot, g_sq]), group).unbind()  # one collective for both sums
    coeff = dot * inv_scale / g_sq.clamp_min(EPS)
    torch._foreach_mul_(buffer, -coeff.to(buffer[0].dtype))  # -c * g
    torch._foreach_add_(buffer, sam_grads, alpha=inv_scale)  # + g_s
    g_v_norm = global_norm(torch._foreach_norm(buffer, 2, dtype=torch.float32), group)
    return LookSAMGeometry(g_v_norm=g_v_norm, g_norm=g_sq.sqrt(), proj=coeff)


def apply_looksam_(
    grads: Sequence[Tensor], g_v: Sequence[Tensor], g_v_norm: Tensor, alpha: float, grad_norm: Tensor
) -> None:
    """g <- g + alpha * (||g|| / ||g_v||) * g_v, in place, in the units of `grads`.

    `grad_norm` must be ||G|| of the gradients as they are (scaled if they are scaled): the formula is then exact in
    any units, since g_v enters only through its direction.
    """
    factor = alpha * grad_norm / g_v_norm.clamp_min(EPS)
    torch._foreach_add_(grads, torch._foreach_mul(g_v, factor.to(g_v[0].dtype)))


@contextlib.contextmanager
def frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """Inside the block, BatchNorm-style layers normalise with batch statistics but do not update their buffers.

    [choice] The second SAM pass sees perturbed weights; its statistics would bias the running estimates used at
    eval time. Switching `track_running_stats` off for the block is exact (no momentum tricks) and costs nothing.
    """
    layers = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats and m.training
    ]
    for m in layers:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True


class RNGState(NamedTuple):
    """The random state a forward pass draws from: the CPU generator and the generators of its CUDA devices."""

    cpu: Tensor
    cuda: tuple[tuple[int, Tensor], ...]  # (device index, generator state); empty on the CPU


def capture_rng(devices: torch.device | Sequence[torch.device]) -> RNGState:
    """The random state now, to replay it for the second pass of a SAM step (`replay_rng`).

    `devices`: the devices the forward pass runs on, several under `DataParallel` (each replica draws from its own
    GPU's generator). Costs a copy of a few kilobytes on the host and no device synchronisation.
    """
    devices = (
        [torch.device(devices)] if isinstance(devices, (str, torch.device)) else [torch.device(d) for d in devices]
    )
    cuda = tuple(
        (d.index if d.index is not None else torch.cuda.current_device(), torch.cuda.get_rng_state(d))
        for d in devices
        if d.type == "cuda"
    )
    return RNGState(torch.get_rng_state(), cuda)


@contextlib.contextmanager
def replay_rng(state: RNGState) -> Iterator[None]:
    """Inside the block, draw the same random numbers as after `state` was captured; afterwards, go on as before.

    [choice] The second pass of a SAM step must see the sub-network the first pass saw: the same dropout masks, the
    same LayerDrop / stochastic-depth layers, the same routed experts. Otherwise g_s is the gradient of another
    function, and parameters of a layer dropped only in one pass get a gradient in only one. Replaying the first
    pass's random state makes the two passes draw the same numbers; restoring the state afterwards leaves the run's
    random stream where the first pass left it, so later steps draw what they would have drawn without SAM.
    """
    with torch.random.fork_rng(devices=[index for index, _ in state.cuda], device_type="cuda"):
        torch.set_rng_state(state.cpu)
        for index, generator_state in state.cuda:
            torch.cuda.set_rng_state(generator_state, index)
        yield
