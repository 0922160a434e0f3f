"""`SAMController`: one optimizer step of a SAM policy, for the Trainer and for hand-written loops.

Follows `../shared/spec/aesam.md`: it measures x = ||g||² on the full (accumulated, all-reduced) gradient, asks the
policy (`aesam_hf.policies`) whether the step is a SAM step, and either moves the weights to w + e for the caller's
second forward/backward pass and restores them by copy afterwards, or leaves the gradient as it is (ERM) or adds the
LookSAM component. AE-SAM: https://huggingface.co/papers/2304.14647.

Use in a plain PyTorch loop::

    sam = SAMController(model.parameters(), make_policy("aesam", total_steps=T), rho=0.05)
    for batch in loader:
        loss_fn(model, batch).backward()
        if sam.maybe_perturb():             # decides; on a SAM step w <- w + e and the grads are cleared
            with frozen_running_stats(model):
                loss_fn(model, batch).backward()
            sam.restore()                   # w restored exactly; the grads are now the SAM gradient
        optimizer.step()
        optimizer.zero_grad()

No `transformers` import.
"""

import copy
import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .policies import SAMPolicy
from .sam import apply_looksam_, grad_norm_sq, looksam_direction_, sam_perturbation_


def check_rho(value: float, name: str = "rho") -> None:
    # rho = 0 is allowed (the second pass then recomputes g at w), a negative radius is a descent step, not SAM.
    if not value >= 0.0:
        raise ValueError(f"`{name}` ({value!r}) must be >= 0: it is the radius of the SAM neighbourhood.")


def check_alpha(value: float, name: str = "alpha") -> None:
    if not value >= 0.0:
        raise ValueError(f"`{name}` ({value!r}) must be >= 0: it weighs the reused LookSAM direction.")


class SAMController:
    """Applies a `SAMPolicy` to a set of parameters, one optimizer step at a time.

    Args:
        params (`Iterable[torch.Tensor]`):
            The trainable parameters (those the optimizer steps). All on one device.
        policy (`SAMPolicy`):
            Decides which steps are SAM steps.
        rho (`float`, *optional*, defaults to `0.05`):
            Radius of the SAM neighbourhood.
        adaptive (`bool`, *optional*, defaults to `False`):
            ASAM's scale-invariant perturbation.
        looksam_alpha (`float`, *optional*, defaults to `0.7`):
            Weight of the reused direction on non-SAM steps of the LookSAM policies.
        broadcast_grad_norm (`bool` or `None`, *optional*, defaults to `None`):
            Broadcast x from rank 0 before deciding, so every rank takes the same decision even if the ranks' norms
            differ in the last bit. `None`: when `torch.distributed` is initialized with more than one rank.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        policy: SAMPolicy,
        rho: float = 0.05,
        adaptive: bool = False,
        looksam_alpha: float = 0.7,
        broadcast_grad_norm: bool | None = None,
    ):
        check_rho(rho)
        check_alpha(looksam_alpha)
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("`params` holds no parameter that requires grad: there is nothing to train.")
        devices = {p.device for p in self.params}
        if len(devices) > 1:
            # One global norm and one perturbation kernel per list need one device; model parallelism across
            # devices in one process (`device_map`) is not supported.
            raise ValueError(
                f"`params` span several devices ({sorted(map(str, devices))}); use one device per process."
            )
        self.policy = policy
        self.rho = rho
        self.adaptive = adaptive
        self.looksam_alpha = looksam_alpha
        if broadcast_grad_norm is None:
            broadcast_grad_norm = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.broadcast_grad_norm = broadcast_grad_norm

        # Checkpointed counters (`state_dict`).
        self.t = 0  # optimizer steps seen, overflow steps included (== TrainerState.global_step)
        self.sam_steps = 0
        self.decided_steps = 0  # steps that took a decision (not overflow steps)
        self.overflow_steps = 0
        self.passes = 0  # forward/backward passes over the step's whole batch: 1 per ERM step, 2 per SAM step
        self.g_v: list[Tensor] | None = None  # LookSAM direction, aligned with self.params
        self.g_v_norm: Tensor | None = None

        # Per-step scratch, not checkpointed.
        self._w_saved: list[Tensor] | None = None
        self._g_scratch: list[Tensor] | None = None  # LookSAM policies: g during a SAM step
        self._policy_before: dict[str, Any] | None = None
        self._grad_scale: float | None = None  # the loss scale of the current SAM step's gradients
        self._active: list[int] | None = None  # indices of the params perturbed in the current SAM step
        self.last: dict[str, Any] = {}

    # ---- the step ----

    def maybe_perturb(self, grad_scale: float | None = None) -> bool:
        """Call after the step's full gradient is in `.grad`. Returns True for a SAM step.

        On a SAM step the weights are moved to w + e and their gradients cleared: run forward/backward again on the
        same batch, then call `restore()`. On other steps the gradients are left for the optimizer (with the LookSAM
        component added for the LookSAM policies). `grad_scale` is the AMP loss scale the gradients carry, if any
        (fp16 with a GradScaler): then an inf/NaN gradient is an overflow step. Without one, an inf/NaN gradient
        raises `FloatingPointError` when the policy reads x (`aesam`, `aelooksam`); the other policies keep x on the
        device and leave the step to the optimizer, as plain training does.
        """
        t = self.t
        self.t += 1
        self.passes += 1
        idx = [i for i, p in enumerate(self.params) if p.grad is not None]
        params = [self.params[i] for i in idx]
        grads = [p.grad for p in params]
        inv_scale = 1.0 / grad_scale if grad_scale else 1.0
        x = grad_norm_sq(grads, inv_scale) if grads else torch.zeros((), device=self.params[0].device)
        self.last = {"grad_norm_sq": x}
        if not self.policy.can_sam:
            # ERM: nothing depends on x, so it stays on the device (logged later) and the step costs no host sync.
            self.decided_steps += 1
            self.last["sam"] = False
            return False

        # x is read on the host only when something depends on it: the adaptive decision, or fp16 overflow
        # detection. Other policies decide without it and the step keeps the GPU queue full.
        x_host = None
        if self.policy.uses_grad_norm or grad_scale is not None:
            if self.broadcast_grad_norm:
                # Decide from rank 0's value so that every rank takes the same decision, bit for bit.
                dist.broadcast(x, src=0)
            x_host = x.item()
            self.last["grad_norm_sq"] = x_host
            if not math.isfinite(x_host) and grad_scale is None:
                # fp32/bf16: no loss scaler will skip this step, so the optimizer would write NaN into the weights and
                # every later step would be non-finite too. Stop here, on every rank at once (x is rank 0's value),
                # rather than go on training garbage or let ranks disagree. The statistics are still untouched, so a
                # checkpoint saved before this step resumes cleanly once the cause is fixed.
                raise FloatingPointError(
                    f"The gradient of optimizer step {t} is not finite (||g||² = {x_host}) and no loss scaler skips "
                    f"the step, so the {self.policy.name.value!r} policy cannot decide and the optimizer would write "
                    "inf/NaN into the weights. Look for the cause (too high a `learning_rate`, inf/NaN in the inputs "
                    "or the loss) and resume from the last checkpoint; fp16 with a GradScaler skips such steps instead."
                )
            if not math.isfinite(x_host):
                # Overflow step (spec, "Rules"): no decision, statistics and g_v untouched, nothing perturbed. With
                # a GradScaler the optimizer step is then skipped by the scaler itself.
                self.overflow_steps += 1
                self.last["overflow"] = True
                return False

        # With fp16, the second pass can still overflow: keep what the decision changes, to undo it then.
        self._policy_before = copy.deepcopy(self.policy.state_dict()) if grad_scale is not None else None
        is_sam = self.policy.decide(t, x_host)
        self.decided_steps += 1
        self.last["sam"] = is_sam
        self.last.update(self.policy.stats())
        if not is_sam:
            if self.policy.reuses_direction and self.g_v is not None:
                with torch.no_grad():
                    g_v = [self.g_v[i] for i in idx]
                    apply_looksam_(grads, g_v, self.g_v_norm, self.looksam_alpha, x.sqrt() / inv_scale)
            return False

        self.sam_steps += 1
        self.passes += 1
        if self._w_saved is None:
            # Allocated once and reused: the saved weights are the only memory SAM adds (1x the parameters).
            self._w_saved = [torch.empty_like(p) for p in self.params]
        with torch.no_grad():
            torch._foreach_copy_([self._w_saved[i] for i in idx], params)
            if self.policy.reuses_direction:
                # g goes to a scratch buffer, not into g_v: if the second pass overflows, g_v must survive.
                if self._g_scratch is None:
                    self._g_scratch = [torch.zeros_like(p) for p in self.params]
                g_buf = [self._g_scratch[i] for i in idx]
                torch._foreach_copy_(g_buf, grads)
                if inv_scale != 1.0:
                    torch._foreach_mul_(g_buf, inv_scale)
            sam_perturbation_(params, grads, self.rho, self.adaptive, x, inv_scale)  # grads now hold e
            torch._foreach_add_(params, grads)  # w <- w + e
        for p in params:
            p.grad = None
        self._active = idx
        self._grad_scale = grad_scale
        return True

    def restore(self) -> None:
        """Call after the second backward pass: restore w by copy and, for LookSAM policies, refresh g_v."""
        idx = self._restore_weights()
        inv_scale = 1.0 / self._grad_scale if self._grad_scale else 1.0
        sam_grads = [self.params[i].grad for i in idx]
        if any(g is None for g in sam_grads):
            raise RuntimeError(
                "Some parameters got no gradient in the second SAM pass; it must run on the same batch."
            )
        if self._grad_scale is not None and not torch.isfinite(grad_norm_sq(sam_grads, inv_scale)).item():
            # The second pass overflowed (fp16): the GradScaler skips the step, so it counts as an overflow step and
            # the decision's effect on the policy statistics is undone; g_v was never touched.
            self.policy.load_state_dict(self._policy_before)
            self.sam_steps -= 1
            self.decided_steps -= 1
            self.overflow_steps += 1
            self.last = {"grad_norm_sq": float("inf"), "overflow": True}
            return
        if self.policy.reuses_direction:
            with torch.no_grad():
                scratch = [self._g_scratch[i] for i in idx]
                self.g_v_norm = looksam_direction_(scratch, sam_grads, inv_scale)
            if self.g_v is not None and len(idx) < len(self.params):
                # Parameters without a gradient this step keep their old direction.
                missing = sorted(set(range(len(self.params))) - set(idx))
                torch._foreach_copy_([self._g_scratch[i] for i in missing], [self.g_v[i] for i in missing])
            # The scratch now holds g_v: swap the buffers instead of copying.
            self.g_v, self._g_scratch = self._g_scratch, self.g_v

    def abort(self) -> None:
        """Restore w after a failed second pass (an exception), so that a retry starts from the right weights."""
        if self._active is not None:
            self._restore_weights()

    def _restore_weights(self) -> list[int]:
        if self._active is None:
            raise RuntimeError("restore() called without a preceding maybe_perturb() that returned True.")
        idx, self._active = self._active, None
        with torch.no_grad():
            # Copy back, never subtract e: w + e - e is not w in floating point, and the error would accumulate.
            torch._foreach_copy_([self.params[i] for i in idx], [self._w_saved[i] for i in idx])
        return idx

    # ---- checkpointing ----

    def state_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "sam_steps": self.sam_steps,
            "decided_steps": self.decided_steps,
            "overflow_steps": self.overflow_steps,
            "passes": self.passes,
            "policy": self.policy.state_dict(),
            "policy_name": self.policy.name.value,
            "g_v": None if self.g_v is None else [g.detach().cpu() for g in self.g_v],
            "g_v_norm": None if self.g_v_norm is None else self.g_v_norm.detach().cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["policy_name"] != self.policy.name.value:
            raise ValueError(
                f"The checkpoint's SAM state is for policy {state['policy_name']!r}, this run uses "
                f"{self.policy.name.value!r}; resume with the same `optim`."
            )
        for key in ("t", "sam_steps", "decided_steps", "overflow_steps", "passes"):
            setattr(self, key, int(state[key]))
        self.policy.load_state_dict(state["policy"])
        if state["g_v"] is None:
            self.g_v, self.g_v_norm = None, None
        else:
            self.g_v = [g.to(p.device, p.dtype) for g, p in zip(state["g_v"], self.params)]
            self.g_v_norm = state["g_v_norm"].to(self.params[0].device)

    @property
    def sam_fraction(self) -> float:
        """Fraction of the decided steps that were SAM steps."""
        return self.sam_steps / self.decided_steps if self.decided_steps else 0.0
