"""Benchmark infrastructure, run as modules from the repository root: `python -m benchmarks.<name> --help`.

- `compare`: several policies and seeds on one example task, a table and a figure (`make demo`);
- `step_cost`, `memory`, `accuracy`, `looksam_alpha`: the measurements of `docs/benchmarks.md`; `report` writes it;
- `gpu_check`: the `gpu` tests, step cost and peak memory on a CUDA GPU (`make gpu-check`);
- `fortunes`: the offline text task's CSVs (`make data`);
- `runner` (cached runs of the example scripts), `results` (tables, figures), `workloads`, `data`: what they share.
"""
