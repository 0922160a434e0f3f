"""`SAMController`: one optimizer step of a SAM policy, for the Trainer and for hand-written loops.

Follows `docs/algorithm.md`. Each step is measure → decide → act: measure x = ||g||² on the full (accumulated,
all-reduced) gradient, ask the policy (`aesam_hf.policies`) whether this is a SAM step, then either move the weights to
w + e for the caller's second forward/backward pass (`restore()` puts w back by copy afterwards), add the reused
LookSAM direction to the gradient (LookSAM policies, non-SAM steps), or leave the gradient alone (ERM).
AE-SAM: https://huggingface.co/papers/2304.14647.

Use in a plain PyTorch loop::

    sam = SAMController(model.parameters(), make_policy("aesam", total_steps=T, sam_rho=0.05))
    for batch in loader:
        loss_fn(model, batch).backward()
        if sam.maybe_perturb():             # decides; on a SAM step w <- w + e and the grads are cleared
            with frozen_running_stats(model):
                loss_fn(model, batch).backward()
            sam.restore()                   # w restored exactly; the grads are now the SAM gradient
        optimizer.step()
        optimizer.zero_grad()

Parameters sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`): build the controller after `fully_shard`, from
the sharded model's parameters. It then works on each rank's local shards and all-reduces the global sums
(`aesam_hf.sharding`); see "FSDP2" in the README.

No `transformers` import.
"""

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from . import state as saved
from .policies import SAMPolicy
from .sam import EPS, LookSAMGeometry, apply_looksam_, grad_norm_sq, looksam_direction_, sam_perturbation_
from .sharding import all_reduce_sum, local_tensors, shard_group, shard_of


class PolicyMismatchError(ValueError):
    """A saved state of another policy: `saved` and `current` name both (the checkpoint module says which flag to pass)."""

    def __init__(self, saved: str, current: str):
        self.saved, self.current = saved, current
        super().__init__(
            f"The SAM state is for policy {saved!r}, this run uses {current!r}; resume with the same policy, or start "
            "the policy afresh (`load_state_dict(state, policy_state=False)` keeps the counters)."
        )


@dataclass
class StepRecord:
    """What the controller did at one optimizer step: read it from `SAMController.record` after the step.

    Device tensors stay on the device (reading them is the caller's sync, e.g. once per logging window).
    """

    step: int
    sam: bool = False
    # fp16: the step's gradient (first or second pass) was inf/NaN and the loss scaler skips the step.
    overflow: bool = False
    # A short batch (the end of an epoch): a policy that decides from x takes no decision from it.
    partial: bool = False
    # x = ||g||², unscaled; None where nothing needed it (ERM, or a non-SAM step of a policy that ignores x).
    grad_norm_sq: Tensor | None = None
    # The policy's statistics after its decision (`SAMPolicy.stats()`), e.g. AE-SAM's mu, sigma and threshold.
    policy_stats: dict[str, float] = field(default_factory=dict)
    # SAM steps of the LookSAM policies: how g_s splits into g and the stored direction g_v.
    looksam: LookSAMGeometry | None = None


class SAMController:
    """Applies a `SAMPolicy` to a set of parameters, one optimizer step at a time.

    Args:
        params (`Iterable[torch.Tensor]`):
            The trainable parameters (those the optimizer steps). All on one device. Under FSDP2, the parameters of
            the model after `fully_shard` (DTensors): the controller then keeps its buffers as local shards.
        policy (`SAMPolicy`):
            Decides which steps are SAM steps (`make_policy`). Its `settings` record also holds the SAM step's own
            settings, read from there: `sam_rho`, `sam_adaptive` (ASAM) and `looksam_alpha`.
        broadcast_grad_norm (`bool` or `None`, *optional*, defaults to `None`):
            Broadcast x from rank 0 before deciding, so every rank takes the same decision even if the ranks' norms
            differ in the last bit. `None`: when `torch.distributed` is initialized with more than one rank.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        policy: SAMPolicy,
        broadcast_grad_norm: bool | None = None,
    ):
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
        # FSDP2: the process group the parameters are sharded over; None (unsharded) leaves every code path as it was.
        self._shard_group = shard_group(self.params)
        self.policy = policy
        self.settings = policy.settings  # validated when the record was built
        if broadcast_grad_norm is None:
            broadcast_grad_norm = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.broadcast_grad_norm = broadcast_grad_norm

        # Checkpointed counters (`state_dict`).
        self.t = 0  # optimizer steps seen, overflow steps included (== TrainerState.global_step)
        self.sam_steps = 0
        self.decided_steps = 0  # steps that took a decision (not overflow steps)
        self.overflow_steps = 0
        self.partial_steps = 0  # short batches on which a policy that reads x took no decision
        # The most examples one step has seen: a step with fewer is a short one. Checkpointed, since a resumed run
        # must see the short batch ending an epoch as short too (it decides differently otherwise).
        self.largest_batch = 0
        self.passes = 0  # forward/backward passes over the step's whole batch: 1 per ERM step, 2 per SAM step
        self.g_v: list[Tensor] | None = None  # LookSAM direction, aligned with self.params (local shards under FSDP2)
        self.g_v_norm: Tensor | None = None

        # Per-step scratch, not checkpointed.
        self.record = StepRecord(step=-1)
        self._w_saved: list[Tensor] | None = None  # local shards under FSDP2, as the other buffers
        self._g_scratch: list[Tensor] | None = None  # LookSAM policies: g during a SAM step
        self._policy_before: dict[str, Any] | None = None
        self._grad_scale: float | None = None  # the loss scale of the current SAM step's gradients
        self._active: list[int] | None = None  # indices of the params perturbed in the current SAM step
        self._momentum_active = False  # Momentum-SAM: the weights are at w - rho * m / ||m|| until restored
        self._momentum_index: list[int] = []

    # ---- the step: measure, decide, act ----

    def maybe_perturb(
        self, grad_scale: float | None = None, partial: bool = False, examples: int | None = None
    ) -> bool:
        """Call after the step's full gradient is in `.grad`. Returns True for a SAM step.

        SAM step: the weights move to w + e and their gradients are cleared; run forward/backward again on the same
        batch, then call `restore()`. Non-SAM step of a LookSAM policy: the reused direction is added to `.grad`.
        Otherwise `.grad` is left as it is. `grad_scale` is the AMP loss scale the gradients carry, if any (fp16 with
        a GradScaler): an inf/NaN gradient is then an overflow step, which the scaler skips. `partial` says the step's
        batch is shorter than the others (the end of an epoch): a policy that reads x then takes an ERM step.
        `examples`, the number of examples in the step's batch, lets the controller tell that itself: a step with
        fewer than the largest seen so far is partial.
        """
        if examples is not None:
            partial = partial or examples < self.largest_batch
            self.largest_batch = max(self.largest_batch, examples)
        self.record = record = StepRecord(step=self.t)
        self.t += 1
        self.passes += 1
        if not self.policy.can_sam:
            # ERM costs nothing beyond the stock step: no norm, no host sync, the gradient untouched.
            self.decided_steps += 1
            return False
        idx = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not idx and dist.is_available() and dist.is_initialized():
            self._no_gradient()
        inv_scale = 1.0 / grad_scale if grad_scale else 1.0
        x = x_host = None
        if self.policy.uses_grad_norm or grad_scale is not None:
            # x is read on the host only when something depends on it: the adaptive decision, or fp16 overflow
            # detection. The other policies decide without it and keep the device queue full.
            x = self._measure(idx, inv_scale)
            x_host, partial = self._to_host(x, partial)
            if not math.isfinite(x_host):
                self._non_finite(x_host, scaled=grad_scale is not None)
                return False  # an overflow step: no decision, statistics and g_v untouched, nothing perturbed
        if partial and self.policy.uses_grad_norm:
            # [choice] ||g||² of a mini-batch grows as the batch shrinks (its noise term scales with 1 / b), so a short
            # last batch looks sharp to the adaptive rule. Its x is not comparable with the others: no decision and
            # no statistics update; the step is a plain ERM step.
            self.partial_steps += 1
            record.partial = True
            return False
        record.sam = self._decide(record.step, x_host, keep_undo=grad_scale is not None)
        reuses = not record.sam and self.policy.reuses_direction and self.g_v is not None
        if (record.sam or reuses) and x is None:
            x = self._measure(idx, inv_scale)
        if record.sam:
            self._perturb(idx, x, inv_scale, grad_scale)
        elif reuses:
            self._add_reused_direction(idx, x, inv_scale)
        return record.sam

    def _local(self, tensors: list[Tensor]) -> list[Tensor]:
        """The tensors the arithmetic runs on: the local shards under FSDP2, the tensors themselves otherwise."""
        return tensors if self._shard_group is None else local_tensors(tensors)

    def _no_gradient(self) -> None:
        # In a process group no step leaves every parameter without a gradient, unless these are not the model's
        # parameters any more: `fully_shard` replaces them with new DTensor parameters (the norm would be 0 and SAM
        # would perturb nothing, silently).
        raise RuntimeError(
            f"None of the {len(self.params)} parameters given to SAMController has a gradient at optimizer step "
            f"{self.record.step + 1}. If the model was sharded with `fully_shard` (FSDP2) after the controller was built, "
            "the controller holds the parameters FSDP2 replaced: build it after `fully_shard`, from "
            "`model.parameters()`. Otherwise call `maybe_perturb()` after `backward()`, before `zero_grad()`."
        )

    def _measure(self, idx: list[int], inv_scale: float) -> Tensor:
        """x = ||g||², unscaled, on the device."""
        grads = self._local([self.params[i].grad for i in idx])
        if grads:
            x = grad_norm_sq(grads, inv_scale, self._shard_group)
        else:
            x = torch.zeros((), device=self.params[0].device)
        self.record.grad_norm_sq = x
        return x

    def _to_host(self, x: Tensor, partial: bool) -> tuple[float, bool]:
        if not self.broadcast_grad_norm:
            return x.item(), partial
        # Decide from rank 0's values so that every rank takes the same decision, bit for bit.
        both = torch.stack([x.float(), torch.tensor(float(partial), device=x.device)])
        dist.broadcast(both, src=0)
        self.record.grad_norm_sq = both[0]
        x_host, partial_host = both.tolist()
        return x_host, bool(partial_host)

    def _non_finite(self, x: float, scaled: bool) -> None:
        if not scaled:
            # fp32/bf16: no loss scaler will skip this step, so the optimizer would write NaN into the weights and
            # every later step would be non-finite too. Stop here, on every rank at once (x is rank 0's value). The
            # statistics are untouched, so a checkpoint saved before this step resumes cleanly.
            raise FloatingPointError(
                f"The gradient of optimizer step {self.record.step + 1} is not finite (||g||² = {x}) and no loss scaler "
                f"skips the step, so the {self.policy.name!r} policy cannot decide and the optimizer would "
                "write inf/NaN into the weights. Look for the cause (too high a `learning_rate`, inf/NaN in the "
                "inputs or the loss); fp16 with a GradScaler skips such steps."
            )
        self.overflow_steps += 1
        self.record.overflow = True

    def _decide(self, t: int, x: float | None, keep_undo: bool) -> bool:
        # fp16: the second pass can still overflow; keep what the decision changes, to undo it then.
        self._policy_before = copy.deepcopy(self.policy.state_dict()) if keep_undo else None
        is_sam = self.policy.decide(t, x)
        self.decided_steps += 1
        self.record.policy_stats = dict(self.policy.stats())
        return is_sam

    def _perturb(self, idx: list[int], x: Tensor, inv_scale: float, grad_scale: float | None) -> None:
        """w <- w + e, keeping w (and, for LookSAM policies, g) to restore and project after the second pass."""
        self.sam_steps += 1
        self.passes += 1
        params = self._local([self.params[i] for i in idx])
        grads = self._local([self.params[i].grad for i in idx])
        if self._w_saved is None:
            # Allocated once and reused: the saved weights are the only memory SAM adds (1x the parameters, of the
            # local shards under FSDP2).
            self._w_saved = [torch.empty_like(p) for p in self._local(self.params)]
        with torch.no_grad():
            torch._foreach_copy_([self._w_saved[i] for i in idx], params)
            if self.policy.reuses_direction:
                # g goes to a scratch buffer, not into g_v: if the second pass overflows, g_v must survive.
                if self._g_scratch is None:
                    self._g_scratch = [torch.zeros_like(p) for p in self._local(self.params)]
                g_buf = [self._g_scratch[i] for i in idx]
                torch._foreach_copy_(g_buf, grads)
                if inv_scale != 1.0:
                    torch._foreach_mul_(g_buf, inv_scale)
            sam_perturbation_(
                params, grads, self.settings.sam_rho, self.settings.sam_adaptive, x, inv_scale, self._shard_group
            )  # grads hold e
            torch._foreach_add_(params, grads)  # w <- w + e
        for i in idx:
            self.params[i].grad = None
        self._active = idx
        self._grad_scale = grad_scale

    def _add_reused_direction(self, idx: list[int], x: Tensor, inv_scale: float) -> None:
        """LookSAM, non-SAM step: g <- g + alpha * ||g|| / ||g_v|| * g_v, in the gradients' (scaled) units."""
        with torch.no_grad():
            grads = self._local([self.params[i].grad for i in idx])
            g_v = [self.g_v[i] for i in idx]
            apply_looksam_(grads, g_v, self.g_v_norm, self.settings.looksam_alpha, x.sqrt() / inv_scale)

    def restore(self) -> None:
        """Call after the second backward pass: restore w by copy and, for LookSAM policies, refresh g_v.

        The SAM gradient is checked once (one host sync per SAM step): with a loss scaler, a non-finite g_s is an
        overflow step; without one, `FloatingPointError` is raised with the weights already back at the finite w.
        """
        idx = self._restore_weights()
        inv_scale = 1.0 / self._grad_scale if self._grad_scale else 1.0
        sam_grads = [self.params[i].grad for i in idx]
        missing = [i for i, g in zip(idx, sam_grads) if g is None]
        if missing:
            raise RuntimeError(
                f"{len(missing)} parameter tensor(s) got a gradient in the first pass of step {self.record.step + 1} but "
                "none in the second: the two passes ran different sub-networks. Run the second pass on the same "
                "inputs with the random state of the first (`capture_rng` / `replay_rng`, as AESAMTrainer does); a "
                "model that draws from Python's `random` or NumPy cannot be replayed this way."
            )
        sam_grads = self._local(sam_grads)
        # Under FSDP2 the norm is all-reduced: a non-finite entry in any rank's shard stops every rank alike. x of the
        # first pass comes along in the same host read, to say which pass went non-finite.
        x_s = grad_norm_sq(sam_grads, inv_scale, self._shard_group)
        x_s, x = torch.stack([x_s.float(), self.record.grad_norm_sq.float().to(x_s.device)]).tolist()
        if not math.isfinite(x_s) and self._grad_scale is not None:
            # The second pass overflowed (fp16): the GradScaler skips the step, so it counts as an overflow step and
            # the decision's effect on the policy statistics is undone; g_v was never touched.
            self.policy.load_state_dict(self._policy_before)
            self.sam_steps -= 1
            self.decided_steps -= 1
            self.overflow_steps += 1
            self.record = StepRecord(step=self.record.step, overflow=True)
            return
        if not math.isfinite(x_s):
            # fp32/bf16: nothing would skip the step. w is already restored (and finite if g was), so stop before the
            # optimizer writes the non-finite g_s into it.
            for i in idx:
                self.params[i].grad = None
            step = self.record.step + 1
            if not math.isfinite(x):
                # A policy that does not read x decided without it: the first pass was already non-finite.
                raise FloatingPointError(
                    f"The gradient of optimizer step {step} is not finite already in the first pass, at w (||g||² = "
                    f"{x}), and no loss scaler skips the step; the weights are restored to w and the optimizer did "
                    "not step. Look for the cause (too high a `learning_rate`, inf/NaN in the inputs or the loss); "
                    "fp16 with a GradScaler skips such steps."
                )
            raise FloatingPointError(
                f"The SAM gradient of optimizer step {step} (the second pass, at w + e) is not finite "
                f"(||g_s||² = {x_s}) while the first pass's was finite, and no loss scaler skips the step; the weights "
                "are restored to w and the optimizer did not step. Look for the cause (too large a `sam_rho` or "
                "`learning_rate`, a loss that overflows near w)."
            )
        if self.policy.reuses_direction:
            with torch.no_grad():
                scratch = [self._g_scratch[i] for i in idx]
                self.record.looksam = looksam_direction_(scratch, sam_grads, inv_scale, self._shard_group)
                self.g_v_norm = self.record.looksam.g_v_norm
            if self.g_v is not None and len(idx) < len(self.params):
                # Parameters without a gradient this step keep their old direction.
                missing = sorted(set(range(len(self.params))) - set(idx))
                torch._foreach_copy_([self._g_scratch[i] for i in missing], [self.g_v[i] for i in missing])
            # The scratch now holds g_v: swap the buffers instead of copying.
            self.g_v, self._g_scratch = self._g_scratch, self.g_v

    # ---- Momentum-SAM: one pass at w - rho * m / ||m|| ----

    def momentum_perturb(self, optimizer: torch.optim.Optimizer) -> bool:
        """Before the step's first forward pass: move the weights to w - rho * m / ||m|| (`msam`). True if moved.

        m is the optimizer's momentum (AdamW's raw `exp_avg`, SGD's `momentum_buffer`; a wrapper such as
        Accelerate's is looked through), the norm one global L2 norm over every parameter of every group, as in the
        reference code. No momentum yet (the first step) or rho = 0: the weights stay at w, so rho = 0 is the base
        optimizer exactly. One host read per step (the norm). Call `momentum_restore()` after the last backward pass.
        """
        if self._shard_group is not None:
            raise ValueError("The 'msam' policy does not support parameters sharded with FSDP2 yet; use DDP.")
        rho = self.settings.sam_rho
        state = getattr(optimizer, "optimizer", optimizer).state
        pairs = [(p, state.get(p, {})) for p in self.params]
        pairs = [(p, s.get("exp_avg", s.get("momentum_buffer"))) for p, s in pairs]
        pairs = [(p, m) for p, m in pairs if m is not None]
        if rho == 0.0 or not pairs:
            return False
        params, moments = [p for p, _ in pairs], [m for _, m in pairs]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(moments, 2)), 2).item()
        if not math.isfinite(norm) or norm == 0.0:
            return False  # nothing to move along (or a non-finite momentum, which the step's own check will see)
        if self._w_saved is None:
            self._w_saved = [torch.empty_like(p) for p in self.params]
        moved = {id(p) for p in params}
        self._momentum_index = [i for i, p in enumerate(self.params) if id(p) in moved]
        with torch.no_grad():
            torch._foreach_copy_([self._w_saved[i] for i in self._momentum_index], params)
            torch._foreach_add_(params, moments, alpha=-rho / (norm + EPS))
        self._momentum_active = True
        return True

    def momentum_restore(self) -> None:
        """After the step's last backward pass: w back by copy (the gradients, taken at the moved weights, stay)."""
        if not self._momentum_active:
            return
        index, self._momentum_active = self._momentum_index, False
        with torch.no_grad():
            torch._foreach_copy_([self.params[i] for i in index], [self._w_saved[i] for i in index])

    def abort(self) -> None:
        """Restore w after a failed second pass (an exception), so that a retry starts from the right weights."""
        if self._active is not None:
            self._restore_weights()
        self.momentum_restore()

    def _restore_weights(self) -> list[int]:
        if self._active is None:
            raise RuntimeError("restore() called without a preceding maybe_perturb() that returned True.")
        idx, self._active = self._active, None
        with torch.no_grad():
            # Copy back, never subtract e: w + e - e is not w in floating point, and the error would accumulate.
            torch._foreach_copy_(self._local([self.params[i] for i in idx]), [self._w_saved[i] for i in idx])
        return idx

    # ---- checkpointing ----

    # The counters of `state_dict`, in the order they are saved.
    COUNTERS = ("t", "sam_steps", "decided_steps", "overflow_steps", "partial_steps", "passes", "largest_batch")

    def state_dict(self) -> dict[str, Any]:
        """The counters, the policy's state and the LookSAM direction g_v, on the CPU: everything a decision reads.

        [choice] Under FSDP2, g_v is this rank's local shards, saved with the rank (`g_v_shard`): call `state_dict()`
        on every rank and save one file per rank. No collective runs, so a call on one rank cannot hang the others,
        and no rank ever holds the whole g_v. Such a state loads back only on the same rank of a job sharded the same
        way (same world size, same model).
        """
        state = {key: getattr(self, key) for key in self.COUNTERS}
        state.update(
            policy=self.policy.state_dict(),
            policy_name=self.policy.name,
            g_v=None if self.g_v is None else [g.detach().cpu() for g in self.g_v],
            g_v_norm=None if self.g_v_norm is None else self.g_v_norm.detach().cpu(),
            settings=self.saved_settings(),
        )
        if self._shard_group is not None:
            state["g_v_shard"] = shard_of(self._shard_group)
        return state

    def saved_settings(self) -> dict[str, Any]:
        """The values the decisions depend on, by their setting names; saved with the state so that a resumed run can
        say what changed."""
        saved = {name: getattr(self.settings, name) for name in self.policy.used_settings()}
        if self.policy.needs_total_steps:
            saved["total_steps"] = self.policy.total_steps
        if hasattr(self.policy, "generator"):  # the policies that draw at random: their sequence is the seed's
            saved["seed"] = self.policy.seed
        return saved

    def load_state_dict(self, state: dict[str, Any], policy_state: bool = True) -> None:
        """Load the counters and, unless `policy_state=False`, the policy's statistics and the LookSAM direction.

        `policy_state=False` continues the counters under a fresh policy, which may then be another one. Every field
        is checked before anything is set (`aesam_hf.state`): a state that cannot be used raises a `StateError`
        naming the field, and leaves the controller as it was.
        """
        counters = self.check_counters(state)
        if policy_state:
            name = saved.field_of(state, "policy_name")
            if name != self.policy.name:
                raise PolicyMismatchError(name, self.policy.name)
            g_v, g_v_norm = self._check_g_v(state)
            self.policy.load_state_dict(saved.field_of(state, "policy"))  # checks its fields before setting them
            if g_v is None:
                self.g_v, self.g_v_norm = None, None
            else:
                self.g_v = [g.to(p.device, p.dtype) for g, p in zip(g_v, self._local(self.params))]
                self.g_v_norm = g_v_norm.to(self.params[0].device)
        for key, value in counters.items():
            setattr(self, key, value)

    def check_counters(self, state: Any) -> dict[str, int]:
        """The counters of a saved state, checked one by one and against each other."""
        counters = {key: saved.count(state, key) for key in self.COUNTERS}
        settings = saved.field_of(state, "settings")
        if not isinstance(settings, dict):
            raise saved.StateError("settings", f"must be a dict, got {type(settings).__name__}")
        for key, value in settings.items():  # compared with this run's to say what changed: plain finite values
            if value is not None and not isinstance(value, bool):
                saved.finite(settings, key, "settings.")
        # Every step is decided, an overflow step or a short one; every step costs a pass and a SAM step one more.
        t, sam, decided = counters["t"], counters["sam_steps"], counters["decided_steps"]
        if decided + counters["overflow_steps"] + counters["partial_steps"] != t or sam > decided:
            raise saved.StateError(
                "t",
                f"({t}) must equal decided_steps + overflow_steps + partial_steps, with sam_steps <= decided_steps"
                f" (got {counters})",
            )
        if counters["passes"] < t + sam:
            raise saved.StateError("passes", f"({counters['passes']}) must be >= t + sam_steps ({t + sam})")
        return counters

    def _check_g_v(self, state: dict[str, Any]) -> tuple[list[Tensor] | None, Tensor | None]:
        """The saved LookSAM direction, checked against this controller's (local) parameters."""
        g_v, g_v_norm = saved.field_of(state, "g_v"), saved.field_of(state, "g_v_norm")
        if g_v is None:
            if g_v_norm is not None:
                raise saved.StateError("g_v_norm", "must be None when `g_v` is None")
            return None, None
        self._check_g_v_shard(state)
        local = self._local(self.params)
        if not isinstance(g_v, (list, tuple)) or len(g_v) != len(local):
            what = f"{len(g_v)} entries" if isinstance(g_v, (list, tuple)) else f"a {type(g_v).__name__}"
            raise saved.StateError("g_v", f"must be a list of {len(local)} tensors, one per parameter; got {what}")
        g_v = [saved.tensor(g, f"g_v[{i}]", p.shape) for i, (g, p) in enumerate(zip(g_v, local))]
        g_v_norm = saved.tensor(g_v_norm, "g_v_norm", ())
        if float(g_v_norm) < 0:
            raise saved.StateError("g_v_norm", f"({float(g_v_norm)}) must be >= 0")
        return g_v, g_v_norm

    def _check_g_v_shard(self, state: dict[str, Any]) -> None:
        """g_v must load on the sharding it was saved from: another rank's local shards would load without error."""
        saved_on = state.get("g_v_shard")
        here = None if self._shard_group is None else shard_of(self._shard_group)
        if saved_on != here:
            raise saved.StateError(
                "g_v_shard",
                f"says the LookSAM direction g_v was saved {_sharding(saved_on)}; this controller runs "
                f"{_sharding(here)}. Under FSDP2 each rank loads the state it saved itself (`state_dict()`), in a job "
                "sharded the same way. To change the sharding, start the policy afresh "
                "(`load_state_dict(state, policy_state=False)` keeps the counters)",
            )

    @property
    def shard(self) -> dict[str, int] | None:
        """Under FSDP2, this rank's place in the shard group (`{"rank", "world_size"}`); None when unsharded."""
        return None if self._shard_group is None else shard_of(self._shard_group)

    def weights_are_finite(self) -> bool:
        """Whether every weight is finite: one host sync, and under FSDP2 one all-reduce of a flag.

        Under FSDP2 each rank checks its local shards and the flags are summed over the shard group, so every rank
        gets the same answer (a rank that alone raised would leave the others waiting in the next collective).
        """
        with torch.no_grad():
            # In float32: the norm of finite fp16 weights can pass 65504, which fp16 would read as inf.
            norms = torch._foreach_norm(self._local(self.params), 2, dtype=torch.float32)
            bad = (~torch.isfinite(torch.stack(norms))).any().float()
        return not bool(all_reduce_sum(bad, self._shard_group))

    @property
    def sam_fraction(self) -> float:
        """Fraction of the decided steps that were SAM steps."""
        return self.sam_steps / self.decided_steps if self.decided_steps else 0.0


def _sharding(shard: dict[str, int] | None) -> str:
    return "unsharded" if shard is None else f"on FSDP2 shard {shard['rank']} of {shard['world_size']}"
