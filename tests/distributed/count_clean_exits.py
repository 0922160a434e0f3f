"""How often a finished 2-rank gloo job exits non-zero: torch 2.13's teardown abort, counted (docs/reliability.md).

    python tests/distributed/count_clean_exits.py --launches 20

Launches each job `--launches` times with `torchrun`/`accelerate launch` (2 CPU ranks) and counts the launches that
exited non-zero, and among them those whose output holds the abort's message. The jobs: the bare gloo script of
`tests/distributed/bare_gloo.py` left to interpreter finalization (`none`), with the group destroyed at exit (`atexit`),
and ended by `aesam_hf.teardown.exit_gloo_process` (`exit`); and the image example as its test runs it (training,
evaluation, prediction, a model card), which ends with `exit_gloo_process`.
"""

import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # run as a script: the repo's packages and the tests' launch helpers

from distributed.launching import MULTI_CPU_CONFIG, accelerate_launch, torchrun  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from benchmarks.workloads import environment  # noqa: E402


ABORT = "terminate called without an active exception"
BARE = REPO / "tests" / "distributed" / "bare_gloo.py"
EXAMPLE_ARGS = (
    f"{REPO / 'configs' / 'experiments' / 'image_fashion_mnist_vit.json'} --max_train_samples 256 "
    "--max_eval_samples 64 --max_predict_samples 64 --optim aelooksam --max_steps 4 --per_device_train_batch_size 16 "
    "--use_cpu true --report_to none --disable_tqdm true"
).split()


@dataclass
class CleanExitArguments:
    launches: int = field(default=20, metadata={"help": "Launches of each job."})
    jobs: list[str] = field(
        default_factory=lambda: ["bare-none", "bare-atexit", "bare-exit", "example"],
        metadata={"help": "Which jobs: bare-none, bare-atexit, bare-exit, example."},
    )
    output: str = field(default="outputs/bench/clean_exit.json", metadata={"help": "Where the counts go (JSON)."})


def launch(job: str, out_dir: Path):
    if job.startswith("bare-"):
        return torchrun(BARE, [out_dir, job.removeprefix("bare-")], timeout=120, env={"PYTHONPATH": str(REPO)})
    args = [*EXAMPLE_ARGS, "--output_dir", str(out_dir)]
    return accelerate_launch(REPO / "examples" / "run_image_classification.py", args, MULTI_CPU_CONFIG, timeout=300)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    (args,) = HfArgumentParser(CleanExitArguments).parse_args_into_dataclasses(args=argv)
    counts = {}
    start = time.perf_counter()
    for job in args.jobs:
        codes, aborts = [], 0
        for _ in range(args.launches):
            with tempfile.TemporaryDirectory() as tmp:
                result = launch(job, Path(tmp))
            codes.append(result.returncode)
            aborts += result.returncode != 0 and ABORT in result.output
        counts[job] = {
            "launches": len(codes),
            "non_zero": sum(c != 0 for c in codes),
            "aborts": aborts,
            "codes": codes,
        }
        print(  # noqa: T201 (a measurement script run by hand: its progress)
            f"{job}: {counts[job]['non_zero']} of {len(codes)} exited non-zero ({aborts} with the abort)", flush=True
        )
    payload = {
        "command": "python tests/distributed/count_clean_exits.py " + " ".join(argv),
        "arguments": asdict(args),
        "environment": environment(),
        "counts": counts,
        "wall_time_s": time.perf_counter() - start,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return payload


if __name__ == "__main__":
    main()
