"""The one way a benchmark module writes its results: the command, its arguments, the machine, the numbers, the time.

Every results file (`step_cost.json`, `memory.json`, `accuracy.json`, `looksam_alpha.json`, `gpu_check.json`) starts
with the same header, so `benchmarks/report.py` can say what measured each number; the data builders and the runner
write their small JSON files through `write_json` as well.
"""

import json
import time
from dataclasses import asdict
from pathlib import Path


def command_line(module: str, argv: list[str]) -> str:
    """How `module` was invoked, as the results files record it."""
    return f"python -m benchmarks.{module} " + " ".join(argv)


def write_json(path: str | Path, payload: dict) -> Path:
    """`payload` as indented JSON at `path`, its folder made first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return path


def write_results(
    path: str | Path, module: str, argv: list[str], args, environment: dict, start: float, **fields
) -> dict:
    """Write a module's results file: its header (command, arguments, environment), `fields`, and the wall time since
    `start` (`time.perf_counter()`); returns what was written. Written again as a study goes, it is always complete."""
    payload = {
        "command": command_line(module, argv),
        "arguments": asdict(args),
        "environment": environment,
        **fields,
        "wall_time_s": time.perf_counter() - start,
    }
    write_json(path, payload)
    return payload
