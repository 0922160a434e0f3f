"""`make gpu-check`: what only a CUDA GPU can check, in one short run (under 8 minutes on one H100).

1. The tests marked `gpu` (`tests/test_gpu.py`: fp16 with the real CUDA `GradScaler`, bf16 autocast, fp16 overflow
   in either pass), run with pytest in a subprocess.
2. The step cost of the policies on a BERT-base-sized model built from its config (`BertConfig()`: 12 layers, hidden
   768, 110M parameters; batch 32 x 128 tokens), in bf16 and in fp16: the stock `Trainer` (`adamw_torch`), and
   `AESAMTrainer` with `erm`, `sam` and `aesam` on the same optimizer. Ratios are taken within a round: SAM/ERM (the
   floor is about 2), AE-SAM/ERM (about 1 + its SAM fraction), `erm`/stock (about 1).
3. The peak `torch.cuda.max_memory_allocated` of each variant's run, and how much more than the stock Trainer's it
   is in parameter copies (SAM keeps one copy of w: about 1.0).

Every variant is a fresh `trainer.train()` from the same weights on the same batches, after one untimed warm-up run;
rounds are interleaved in a rotated order, as in `benchmarks/step_cost.py`. It writes `--output` (JSON) and the table
beside it (`.md`), prints the table, and exits 1 if a `gpu` test failed. Without CUDA it prints "no CUDA device:
nothing to check" and exits 0.

    python -m benchmarks.gpu_check                          # make gpu-check
    python -m benchmarks.gpu_check --rounds 1 --skip_tests  # the measurements alone, about a minute
"""

import gc
import importlib.util
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    HfArgumentParser,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)

from aesam_hf import AESAMConfig, AESAMTrainer
from benchmarks.io import write_results
from benchmarks.workloads import ListDataset, StepTimer, environment, median


ROOT = Path(__file__).resolve().parent.parent
NO_CUDA = "no CUDA device: nothing to check"
PRECISIONS = ("bf16", "fp16")
# name: (optim, stock Trainer). Every one steps with AdamW (`adamw_torch`).
VARIANTS = {"stock": ("adamw_torch", True), "erm": ("erm", False), "sam": ("sam", False), "aesam": ("aesam", False)}


@dataclass
class GPUCheckArguments:
    output: str = field(default="outputs/gpu_check/gpu_check.json", metadata={"help": "Where the JSON goes."})
    precisions: list[str] = field(
        default_factory=lambda: list(PRECISIONS), metadata={"help": "Mixed precision modes to time: bf16, fp16."}
    )
    rounds: int = field(default=2, metadata={"help": "Rounds of interleaved runs of every variant."})
    steps: int = field(default=30, metadata={"help": "Optimizer steps per run."})
    warmup: int = field(default=5, metadata={"help": "Steps of each run left out of its median."})
    batch_size: int = field(default=32, metadata={"help": "Sequences per step."})
    seq_len: int = field(default=128, metadata={"help": "Tokens per sequence."})
    skip_tests: bool = field(default=False, metadata={"help": "Time and measure only; do not run the `gpu` tests."})

    def __post_init__(self):
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown or not self.precisions:
            raise ValueError(f"`precisions` ({self.precisions}) must be a non-empty list among {list(PRECISIONS)}.")
        for name in ("rounds", "steps", "batch_size", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` ({getattr(self, name)}) must be >= 1.")
        if not 0 <= self.warmup < self.steps:
            raise ValueError(f"`warmup` ({self.warmup}) must be in [0, steps) = [0, {self.steps}).")


def run_gpu_tests() -> dict:
    """The tests marked `gpu`, in their own process (a failure there must not take the measurements down)."""
    if importlib.util.find_spec("pytest") is None:
        return {"returncode": None, "summary": "pytest is not installed: the gpu tests did not run"}
    cmd = [sys.executable, "-m", "pytest", "tests/test_gpu.py", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    start = time.perf_counter()
    job = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    lines = [line for line in job.stdout.splitlines() if line.strip()]
    return {
        "command": " ".join(cmd[1:]),
        "returncode": job.returncode,
        "summary": lines[-1] if lines else job.stderr[-500:],
        "wall_time_s": time.perf_counter() - start,
        "output_tail": (job.stdout + job.stderr)[-4000:],
    }


def bert_base_config(**overrides) -> BertConfig:
    """BERT-base's architecture (the `BertConfig()` defaults) with two labels; `overrides` shrink it for a test."""
    return BertConfig(num_labels=2, **overrides)


def token_batches(config: BertConfig, n: int, seq_len: int) -> ListDataset:
    """`n` random sequences (no padding) with random labels: the cost of a step does not depend on what it learns."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, config.vocab_size, (n, seq_len), generator=gen)
    labels = torch.randint(0, config.num_labels, (n,), generator=gen)
    mask = torch.ones(seq_len, dtype=torch.long)
    return ListDataset([{"input_ids": ids[i], "attention_mask": mask, "labels": labels[i]} for i in range(n)])


def make_trainer(
    config: BertConfig, data: ListDataset, variant: str, precision: str, args: GPUCheckArguments, output_dir: str
) -> tuple[Trainer, StepTimer]:
    optim, stock = VARIANTS[variant]
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    common = dict(
        output_dir=output_dir,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-5,
        logging_steps=args.steps + 1,  # nothing logged, saved or evaluated during the timed steps
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        train_sampling_strategy="sequential",
        use_cpu=not torch.cuda.is_available(),
        seed=0,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
    )
    timer = StepTimer()  # synchronizes the device before reading the clock
    if stock:
        trainer = Trainer(model=model, args=TrainingArguments(optim=optim, **common), train_dataset=data)
    else:
        config_args = AESAMConfig(optim=optim, sam_base_optim="adamw_torch", **common)
        trainer = AESAMTrainer(model=model, args=config_args, train_dataset=data)
    trainer.add_callback(timer)
    trainer.remove_callback(PrinterCallback)
    return trainer, timer


def run_variant(config, data, variant: str, precision: str, args: GPUCheckArguments, output_dir: str) -> dict:
    """One fresh run: its step times, peak device memory and what it did. Its memory is freed before returning."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer, timer = make_trainer(config, data, variant, precision, args, output_dir)
    trainer.train()
    controller = getattr(trainer, "_sam_controller", None)
    result = {
        "step_s": timer.times,
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "steps": trainer.state.global_step,
        "sam_fraction": controller.sam_fraction if controller is not None else 0.0,
        "scaler": type(trainer.accelerator.scaler).__name__ if trainer.accelerator.scaler is not None else None,
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "param_bytes": sum(p.numel() * p.element_size() for p in trainer.model.parameters()),
    }
    del trainer, controller
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def measure(precision: str, args: GPUCheckArguments, config: BertConfig | None = None) -> dict:
    """Every variant in `args.rounds` interleaved rounds, for one precision."""
    config = config or bert_base_config()
    data = token_batches(config, args.batch_size * (args.steps + 1), args.seq_len)
    times = {v: [] for v in VARIANTS}
    per_round = {v: [] for v in VARIANTS}
    runs = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        run_variant(config, data, "erm", precision, args, tmp)  # untimed: kernel selection, allocator warm-up
        for r in range(args.rounds):
            order = list(VARIANTS)[r % len(VARIANTS) :] + list(VARIANTS)[: r % len(VARIANTS)]
            for variant in order:
                run = run_variant(config, data, variant, precision, args, tmp)
                kept = run["step_s"][args.warmup :]
                times[variant] += kept
                per_round[variant].append(median(kept))
                runs[variant].append({k: v for k, v in run.items() if k != "step_s"})
            done = ", ".join(f"{v} {1e3 * per_round[v][-1]:.1f} ms" for v in order)
            print(f"  {precision} round {r + 1}/{args.rounds}: {done}", flush=True)

    def ratio(num: str, den: str) -> dict[str, float]:
        values = [a / b for a, b in zip(per_round[num], per_round[den], strict=True)]
        return {"median": median(values), "min": min(values), "max": max(values)}

    params, param_bytes = runs["stock"][0]["params"], runs["stock"][0]["param_bytes"]
    peaks = {v: max((r["peak_bytes"] or 0) for r in rs) for v, rs in runs.items()}
    return {
        "model": f"BertForSequenceClassification from its config ({params / 1e6:.1f}M parameters)",
        "batch": f"{args.batch_size} x {args.seq_len} tokens",
        "param_bytes": param_bytes,
        "step_ms": {v: 1e3 * median(t) for v, t in times.items()},
        "per_round_ms": {v: [1e3 * t for t in ts] for v, ts in per_round.items()},
        "sam_over_erm": ratio("sam", "erm"),
        "aesam_over_erm": ratio("aesam", "erm"),
        "erm_over_stock": ratio("erm", "stock"),
        "aesam_sam_fraction": median([r["sam_fraction"] for r in runs["aesam"]]),
        "peak_bytes": peaks if torch.cuda.is_available() else None,
        "extra_over_stock_in_param_copies": (
            {v: (peaks[v] - peaks["stock"]) / param_bytes for v in VARIANTS} if torch.cuda.is_available() else None
        ),
        "runs": runs,
    }


def table(results: dict[str, dict]) -> str:
    """One row per precision and variant: step time, ratios, SAM fraction, peak memory."""
    lines = [
        "| precision | variant | step (ms) | / ERM step | / stock step | SAM fraction | peak memory (MiB) "
        "| extra over stock (parameter copies) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for precision, r in results.items():
        erm_ms, stock_ms = r["step_ms"]["erm"], r["step_ms"]["stock"]
        for variant in VARIANTS:
            ms = r["step_ms"][variant]
            fraction = {"sam": 1.0, "aesam": r["aesam_sam_fraction"]}.get(variant, 0.0)
            peak = r["peak_bytes"][variant] / 2**20 if r["peak_bytes"] else float("nan")
            extra = r["extra_over_stock_in_param_copies"][variant] if r["peak_bytes"] else float("nan")
            lines.append(
                f"| {precision} | {variant} | {ms:.1f} | {ms / erm_ms:.3f} | {ms / stock_ms:.3f} | {fraction:.2f} "
                f"| {peak:.0f} | {extra:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    (args,) = HfArgumentParser(GPUCheckArguments).parse_args_into_dataclasses(args=argv)
    if not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    start = time.perf_counter()
    tests = None if args.skip_tests else run_gpu_tests()
    if tests is not None:
        print(f"gpu tests: {tests['summary']}", flush=True)
    results = {}
    for precision in args.precisions:
        print(f"== step cost, {precision}", flush=True)
        results[precision] = measure(precision, args)
    text = table(results)
    print(text)
    out = Path(args.output)
    fields = {"date": time.strftime("%Y-%m-%d"), "tests": tests, "results": results}
    payload = write_results(out, "gpu_check", argv, args, environment(), start, **fields)
    out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    print(f"Written to {out} and {out.with_suffix('.md')} in {payload['wall_time_s']:.0f} s")
    return 0 if tests is None or tests["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
