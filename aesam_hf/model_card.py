"""The model card's "Sharpness-aware training" section: which policy trained the model, on which optimizer, at what cost.

The stock card names the optimizer only as `args.optim`; this section says what the policy did, so a model on the
Hub records how it was trained.
"""

import os

from .config import AESAMConfig
from .controller import SAMController
from .policies import POLICIES


_ANCHOR = "### Framework versions"


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def card_section(args: AESAMConfig, controller: SAMController | None, optimizer: str) -> str:
    """The section's Markdown; `optimizer` is the optimizer that really took the steps."""
    policy = POLICIES[args.sam_policy]
    lines = [
        "### Sharpness-aware training",
        "",
        f"Trained with aesam_hf's `{policy.name}` policy "
        f"([AE-SAM paper](https://huggingface.co/papers/2304.14647)) on top of the `{optimizer}` optimizer.",
        "",
    ]
    if policy.can_sam or policy.momentum:
        lines.append(f"- SAM radius rho: {args.sam_rho:g}{' (ASAM, adaptive)' if args.sam_adaptive else ''}")
        fields = [name for name in policy.used_settings() if name not in ("sam_rho", "sam_adaptive")]
        if fields:
            values = ", ".join(f"{f}={_fmt(getattr(args, f))}" for f in fields)
            lines.append(f"- policy settings: {values}")
    if controller is not None and controller.t > 0:
        lines += [
            f"- SAM fraction: {controller.sam_fraction:.3f} (SAM on {controller.sam_steps} of "
            f"{controller.decided_steps} optimizer steps)",
            f"- forward/backward passes: {controller.passes} ({controller.passes / controller.t:.2f} per step; plain "
            "training takes 1)",
        ]
        if controller.overflow_steps:
            lines.append(f"- fp16 overflow steps skipped: {controller.overflow_steps}")
    return "\n".join(lines) + "\n"


def add_card_section(path: str, section: str) -> None:
    """Insert `section` before the card's framework versions (or at its end) in the card at `path`, if there is one."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        card = f.read()
    card = card.replace(_ANCHOR, f"{section}\n{_ANCHOR}", 1) if _ANCHOR in card else f"{card.rstrip()}\n\n{section}"
    with open(path, "w", encoding="utf-8") as f:
        f.write(card)
