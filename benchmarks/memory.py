"""Peak memory of a SAM step over an ERM step, against the bytes of the parameters.

A SAM step keeps a copy of the weights while it evaluates the gradient at w + e (restoring by copy is exact, where
subtracting e again is not), so it should need about one parameter-sized buffer more than ERM, plus the micro-batch
inputs it keeps for the second pass; the LookSAM policies keep one more (the direction g_v). Target: SAM - ERM <=
1.1 x parameter bytes + cached inputs.

Each variant runs in a fresh process, so its peak is its own: the peak resident set size (`ru_maxrss`) on a CPU, with
glibc's mmap threshold fixed so that freed tensors leave the RSS (see `MALLOC_ENV`), or
`torch.cuda.max_memory_allocated` when there is a GPU. The same run is repeated and the median taken. What the SAM
controller holds between steps is also counted tensor by tensor (`held_bytes`), which no allocator can blur.

    python -m benchmarks.memory                 # MiniLM-L6 (90 MB of parameters) and the ViT, ~5 minutes
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from benchmarks.io import write_results
from benchmarks.workloads import WORKLOADS, environment, make_trainer, make_workload


REPO = Path(__file__).resolve().parent.parent
# name: (optim, gradient accumulation steps); the effective batch is the workload's in every variant.
VARIANTS = {
    "erm": ("erm", 1),
    "sam": ("sam", 1),
    "aelooksam": ("aelooksam", 1),
    "erm_ga4": ("erm", 4),
    "sam_ga4": ("sam", 4),
}
# (variant, its ERM baseline, checked against the target): with GA 4 a SAM step keeps all 4 micro-batches' inputs.
COMPARISONS = [("sam", "erm", True), ("sam_ga4", "erm_ga4", True), ("aelooksam", "erm", False)]
# glibc raises its mmap threshold each time a large block is freed, up to 32 MiB, after which tensors come from the
# heap and a freed one stays in the RSS until the heap is trimmed: the peak then depends on the allocation history
# (tens of MB between identical MiniLM runs). Fixing the threshold (which also stops its growth) puts every block of
# 64 KiB or more in its own mapping, returned to the system when freed, so the peak RSS follows the live tensors.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}


@dataclass
class MemoryArguments:
    workloads: list[str] = field(default_factory=lambda: ["minilm", "vit"], metadata={"help": "minilm and/or vit."})
    steps: int = field(default=6, metadata={"help": "Optimizer steps per run (the peak is reached in the first)."})
    repeats: int = field(default=3, metadata={"help": "Runs per variant; the median peak is reported."})
    output: str = field(default="outputs/bench/memory.json", metadata={"help": "Where the results JSON goes."})
    smoke: bool = field(default=False, metadata={"help": "Tiny models: every code path in seconds."})
    fixed_malloc: bool = field(
        default=True,
        metadata={
            "help": "Fix glibc's mmap threshold in the runs (MALLOC_MMAP_THRESHOLD_), so that freed tensors leave the "
            "RSS; false: glibc's default dynamic threshold, as users run, with peaks that depend on allocation history."
        },
    )
    child: str | None = field(
        default=None, metadata={"help": "Internal: run one `workload:variant` and print its peak."}
    )

    def __post_init__(self):
        if not self.workloads or set(self.workloads) - set(WORKLOADS):
            raise ValueError(f"`workloads` ({self.workloads}) must be a non-empty list among {list(WORKLOADS)}.")
        for name in ("steps", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` ({getattr(self, name)}) must be >= 1.")


def child(spec: str, steps: int, smoke: bool) -> None:
    """One training run in this process; prints its peak memory in bytes and what it held."""
    name, variant = spec.split(":")
    optim, ga = VARIANTS[variant]
    workload = make_workload(name, steps, smoke=smoke)
    with tempfile.TemporaryDirectory() as tmp:
        trainer, _ = make_trainer(workload, optim, steps, tmp, ga=ga)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    # What the SAM controller itself keeps between steps, counted tensor by tensor: independent of the allocator.
    controller = trainer._sam_controller
    buffers = [controller._w_saved, controller.g_v, controller._g_scratch]
    held = sum(t.numel() * t.element_size() for b in buffers if b is not None for t in b)
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    batch = torch.utils.data.default_collate([workload.dataset[i] for i in range(workload.batch_size)])
    input_bytes = sum(t.numel() * t.element_size() for t in batch.values() if torch.is_tensor(t))
    info = {
        "peak_bytes": peak,
        "held_bytes": held,
        "param_bytes": workload.param_bytes(),
        "input_bytes": input_bytes,
        "description": workload.description,
        "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
        "sam_steps": controller.sam_steps,
    }
    print(json.dumps(info))


def run_child(spec: str, args: MemoryArguments) -> dict:
    """One variant in a fresh process (this module with `--child`), so that its peak is its own."""
    cmd = [sys.executable, "-m", "benchmarks.memory", "--child", spec, "--steps", str(args.steps)]
    cmd += ["--smoke"] if args.smoke else []
    env = {**os.environ, **(MALLOC_ENV if args.fixed_malloc else {})}
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"{spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    (args,) = HfArgumentParser(MemoryArguments).parse_args_into_dataclasses(args=argv)
    if args.child:
        child(args.child, args.steps, args.smoke)
        return {}
    start = time.perf_counter()
    results = {}
    for name in args.workloads:
        peaks = {v: [] for v in VARIANTS}
        ran = {}
        for _ in range(args.repeats):
            for variant in VARIANTS:  # interleaved, as in step_cost.py
                info = run_child(f"{name}:{variant}", args)
                peaks[variant].append(info["peak_bytes"])
                ran[variant] = {k: info[k] for k in ("held_bytes", "gradient_accumulation_steps", "sam_steps")}
        peak = {v: statistics.median(p) for v, p in peaks.items()}
        results[name] = {
            "workload": info["description"],
            "param_bytes": info["param_bytes"],
            "input_bytes": info["input_bytes"],
            "peak_bytes": peak,
            "all_peaks": peaks,
            "held_bytes": {v: r["held_bytes"] for v, r in ran.items()},
            "variants_ran": ran,
            "differences": {f"{v}-{base}": peak[v] - peak[base] for v, base, _ in COMPARISONS},
            "target": 1.1 * info["param_bytes"] + info["input_bytes"],
            "measure": "cuda max_memory_allocated"
            if torch.cuda.is_available()
            else "peak RSS (ru_maxrss), "
            + (
                "glibc mmap threshold fixed at 64 KiB"
                if args.fixed_malloc
                else "glibc's default (dynamic) mmap threshold"
            ),
        }
    mb = 2**20
    lines = [
        "| workload | parameters (MB) | comparison | baseline peak (MB) | difference (MB, runs) | held by the "
        "controller (MB) | target (MB) | met |",
        "|---|---:|---|---:|---:|---:|---:|:---:|",
    ]
    for name, r in results.items():
        for variant, base, checked in COMPARISONS:
            diff = r["differences"][f"{variant}-{base}"]
            runs = ", ".join(f"{(a - b) / mb:.0f}" for a, b in zip(r["all_peaks"][variant], r["all_peaks"][base]))
            met = ("yes" if diff <= r["target"] else "**no**") if checked else "–"
            target = f"{r['target'] / mb:.1f}" if checked else "–"
            lines.append(
                f"| {name} | {r['param_bytes'] / mb:.1f} | {variant} − {base} | {r['peak_bytes'][base] / mb:.0f} "
                f"| {diff / mb:.1f} ({runs}) | {r['held_bytes'][variant] / mb:.1f} | {target} | {met} |"
            )
    print("\n".join(lines))
    table = "\n".join(lines)
    return write_results(args.output, "memory", argv, args, environment(), start, results=results, table=table)


if __name__ == "__main__":
    main()
