"""LookSAM's reuse weight α on the image task: the size of SAM's own correction against the one a reuse step adds.

On a SAM step, SAM changes the gradient by g_s - g. LookSAM keeps g_v, the part of g_s orthogonal to g, and on the
non-SAM steps that follow adds α ||g|| / ||g_v|| · g_v (spec; α = 0.7 by default): an orthogonal push of norm α ||g||,
whatever the size of the orthogonal change SAM itself made, ||g_v||. Where ||g_v|| / ||g|| is much smaller than α, a
reuse step applies many times more of SAM's correction than SAM does.

Two questions, on the accuracy study's clean image setting (`accuracy.py`: same config, `sam_rho` as tuned there):

1. At every SAM step of `looksam` runs: ||g_v|| / ||g||, ||g_s - g|| / ||g|| and cos(g_s, g), recorded by wrapping
   the library's `looksam_direction_` (the policy itself is unchanged).
2. Validation accuracy of `looksam` against α. α = 0 is periodic SAM (every k-th step SAM, the others plain ERM).

    python benchmarks/looksam_alpha.py                  # 4 values of α x 2 seeds, ~10 minutes on 2 cores
    python benchmarks/looksam_alpha.py --smoke          # every code path on a tiny setting

Validation, not test, accuracy: this chooses α, so the test split stays unseen.
"""

import json
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402
from accuracy import QUIET, SMOKE_EXTRA  # noqa: E402
from workloads import environment  # noqa: E402

from aesam_hf.sam import grad_norm_sq  # noqa: E402


RATIOS_FILE = "looksam_ratios.json"


@dataclass
class LookSAMAlphaArguments:
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.3, 0.7], metadata={"help": "Values of α."})
    seeds: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "Seeds of every α."})
    sam_rho: float | None = field(
        default=None, metadata={"help": "rho of every run; default: the one accuracy.py tuned for the image task."}
    )
    accuracy_json: str = field(
        default="outputs/bench/accuracy/accuracy.json", metadata={"help": "accuracy.py's results, for its rho."}
    )
    output_dir: str = field(default="outputs/bench/looksam_alpha", metadata={"help": "Runs and results go here."})
    smoke: bool = field(default=False, metadata={"help": "A tiny setting that exercises every path in seconds."})


def global_norm(tensors) -> torch.Tensor:
    """||.|| over all tensors, computed as the library computes ||g|| (one global norm, in float32)."""
    return grad_norm_sq(list(tensors)).sqrt()


def record_ratios(out: list[dict]):
    """`looksam_direction_` that also appends this SAM step's ratios to `out` (measured before it rewrites g)."""
    import aesam_hf.controller as controller

    original = controller.looksam_direction_

    def wrapper(buffer, sam_grads, inv_scale=1.0):
        g_norm = global_norm(buffer)
        g_s = [s.float() * inv_scale for s in sam_grads]
        diff_norm = global_norm([s - b.float() for s, b in zip(g_s, buffer, strict=True)])
        dot = sum(torch.vdot(s.flatten(), b.float().flatten()) for s, b in zip(g_s, buffer, strict=True))
        cos = dot / (global_norm(g_s) * g_norm).clamp_min(1e-30)
        geometry = original(buffer, sam_grads, inv_scale)
        g_v_norm = geometry.g_v_norm
        out.append(
            {"gv_over_g": float(g_v_norm / g_norm), "diff_over_g": float(diff_norm / g_norm), "cos": float(cos)}
        )
        return geometry

    controller.looksam_direction_ = wrapper


def child(argv: list[str]) -> None:
    """The image example in this process, with the recording wrapper; the ratios go next to its results."""
    import run_image_classification

    ratios: list[dict] = []
    record_ratios(ratios)
    run_image_classification.main(argv)
    output_dir = Path(argv[argv.index("--output_dir") + 1])
    (output_dir / RATIOS_FILE).write_text(json.dumps(ratios), encoding="utf-8")


def quartiles(values: list[float]) -> list[float]:
    if not values:  # no SAM step (a run shorter than the SAM interval)
        return [float("nan")] * 3
    return [float(q) for q in statistics.quantiles(values, n=4, method="inclusive")] if len(values) > 1 else values * 3


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:  # as compare.py launches it: --child <example script> <config> <flags>
        child(argv[2:])
        return {}
    (args,) = HfArgumentParser(LookSAMAlphaArguments).parse_args_into_dataclasses(args=argv)
    rho = args.sam_rho
    if rho is None:
        study = Path(args.accuracy_json)
        tuned = json.loads(study.read_text(encoding="utf-8")).get("rho_tuning", {}) if study.is_file() else {}
        if "image" not in tuned:
            raise ValueError(f"`sam_rho` is not set and `accuracy_json` ({args.accuracy_json!r}) has no rho tuned for "
                             "the image task: run benchmarks/accuracy.py first, or pass --sam_rho.")  # fmt: skip
        rho = float(tuned["image"]["chosen"])
    extra = (SMOKE_EXTRA["image"] if args.smoke else []) + QUIET + ["--sam_rho", str(rho), "--do_predict", "false"]
    # Each run goes through compare.py's runner (reused when finished), launched as this script's child.
    launcher = f"{sys.executable} {Path(__file__).resolve()} --child"
    results = {}
    for alpha in args.alphas:
        run_args = compare.CompareArguments(task="image", output_dir=str(Path(args.output_dir) / f"alpha{alpha:g}"),
                                            metric="eval_accuracy", policies=["looksam"], launcher=launcher)  # fmt: skip
        rows, ratios = [], []
        for seed in args.seeds:
            rows.append(compare.run_one(run_args, "looksam", seed, extra + ["--looksam_alpha", str(alpha)]))
            run_dir = Path(run_args.output_dir) / "looksam" / f"seed{seed}"
            ratios += json.loads((run_dir / RATIOS_FILE).read_text(encoding="utf-8"))
        accuracies = [r["eval_accuracy"] for r in rows]
        gv = [r["gv_over_g"] for r in ratios]
        results[f"{alpha:g}"] = {
            "eval_accuracy": accuracies,
            "mean": statistics.fmean(accuracies),
            "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "sam_steps": len(ratios),
            "gv_over_g_quartiles": quartiles(gv),
            "diff_over_g_quartiles": quartiles([r["diff_over_g"] for r in ratios]),
            "cos_quartiles": quartiles([r["cos"] for r in ratios]),
        }
        print(f"  alpha {alpha:g}: validation {100 * results[f'{alpha:g}']['mean']:.2f}% "
              f"(seeds {', '.join(f'{100 * a:.2f}' for a in accuracies)}); median ||g_v||/||g|| "
              f"{results[f'{alpha:g}']['gv_over_g_quartiles'][1]:.3f}", flush=True)  # fmt: skip
    lines = ["| α | validation accuracy (%) | ‖g_v‖/‖g‖ at SAM steps: median [IQR] | ‖g_s − g‖/‖g‖ | cos(g_s, g) | "
             "reuse push / SAM's (α ÷ median ‖g_v‖/‖g‖) |",
             "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for alpha, r in results.items():
        q, d, c = r["gv_over_g_quartiles"], r["diff_over_g_quartiles"], r["cos_quartiles"]
        push = f"{float(alpha) / q[1]:.1f}x" if float(alpha) > 0 else "– (no reuse)"
        lines.append(f"| {alpha} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} | {q[1]:.3f} [{q[0]:.3f}, {q[2]:.3f}] "
                     f"| {d[1]:.3f} | {c[1]:.4f} | {push} |")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    payload = {"command": "python benchmarks/looksam_alpha.py " + " ".join(argv), "arguments": asdict(args),
               "environment": environment(), "sam_rho": rho, "results": results, "table": table}  # fmt: skip
    out = Path(args.output_dir) / "looksam_alpha.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return payload


if __name__ == "__main__":
    main()
