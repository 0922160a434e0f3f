"""Each benchmark script runs end to end on a tiny setting, and the report is built from what they wrote.

The numbers of a smoke run mean nothing (tiny models, a few steps, a busy machine): these tests pin that every code
path works and that the outputs have the shape `benchmarks/report.py` and `docs/benchmarks.md` rely on.
"""

import json
import math
import pathlib
import subprocess
import sys

import pytest


ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
# What `make data` provides: the experiment configs name these paths (relative to the repository root).
DATA = [pathlib.Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
        ROOT / "data" / "fortunes" / "train.csv", ROOT / "data" / "models" / "all-MiniLM-L6-v2" / "config.json"]  # fmt: skip

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not all(p.is_file() for p in DATA), reason="needs the data (`make data`)"),
]


def run(script: str, *args) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], capture_output=True, text=True,
                         timeout=900, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("bench")
    run("step_cost.py", "--smoke", "--output", root / "step_cost.json")
    run("memory.py", "--smoke", "--repeats", "1", "--workloads", "minilm", "--output", root / "memory.json")
    run("accuracy.py", "--smoke", "--seeds", "1", "--rho_grid", "0.05", "0.1", "--output_dir", root / "accuracy")
    return root


def test_step_cost_measures_every_question(results):
    payload = json.loads((results / "step_cost.json").read_text())
    assert set(payload["results"]) == {"vit", "minilm"} and payload["environment"]["torch"]
    for r in payload["results"].values():
        for key in ("sam_over_erm", "erm_over_stock", "sam_ga4_over_sam", "aesam_run_over_erm_run"):
            assert r[key]["min"] <= r[key]["median"] <= r[key]["max"] and r[key]["median"] > 0, key
        assert set(r["step_ms"]) == {"stock", "erm", "sam", "erm_ga4", "sam_ga4"}
        assert 0.0 <= r["aesam_sam_fraction"] <= 1.0 and r["aesam_run_target"] == pytest.approx(
            1.02 * (1 + r["aesam_sam_fraction"])
        )


def test_memory_reports_peaks_against_parameter_bytes(results):
    payload = json.loads((results / "memory.json").read_text())
    for r in payload["results"].values():
        assert r["param_bytes"] > 0 and r["input_bytes"] > 0
        assert all(p > 0 for p in r["peak_bytes"].values())
        assert r["sam_minus_erm"] == r["peak_bytes"]["sam"] - r["peak_bytes"]["erm"]
        # Counted tensor by tensor: ERM holds nothing, SAM the saved weights, AE-LookSAM also g_v (and a scratch).
        assert r["held_bytes"]["erm"] == 0 and r["held_bytes"]["sam"] == r["param_bytes"]
        assert r["held_bytes"]["aelooksam"] in (
            2 * r["param_bytes"],
            3 * r["param_bytes"],
        )  # scratch: from 2nd SAM step
    assert "| minilm |" in payload["table"]


def test_accuracy_study_tunes_rho_on_validation_and_matches_random_to_aesam(results):
    study = json.loads((results / "accuracy" / "accuracy.json").read_text())
    assert set(study["settings"]) == {"image-noise40", "glue-noise20"}  # the smoke run: the noisy settings only
    for task, tuning in study["rho_tuning"].items():
        scores = {float(k): v for k, v in tuning["scores"].items()}
        assert set(scores) == {0.05, 0.1} and tuning["chosen"] == max(scores, key=scores.get), task
    image = study["settings"]["image-noise40"]
    assert image["rho"] == study["rho_tuning"]["image"]["chosen"]
    runs = {r["policy"]: r for r in image["runs"]}
    assert set(runs) == {"adamw_torch", "aesam", "random"}
    # `random` ran at AE-SAM's measured fraction: its log shows that probability was passed.
    log = (results / "accuracy" / "image-noise40" / "random" / "seed1" / "log.txt").read_text()
    assert f"--sam_probability {runs['aesam']['sam_fraction']:.4f}" in log
    assert runs["adamw_torch"]["time_ratio"] == 1.0 and not math.isnan(runs["aesam"]["time_ratio"])
    # The noisy text setting trained on a noisy copy of the training CSV, and tested on the clean test split.
    glue_run = results / "accuracy" / "glue-noise20" / "aesam" / "seed1"
    assert "fortunes-noise20/train.csv" in (glue_run / "log.txt").read_text()
    assert json.loads((glue_run / "compare_run.json").read_text())["config"]["test_file"] == "data/fortunes/test.csv"


def test_report_builds_the_benchmarks_page(results, tmp_path):
    run("report.py", "--results_dir", results, "--docs_dir", tmp_path)
    page = (tmp_path / "benchmarks.md").read_text()
    for heading in ("## Step cost", "## Memory", "## Accuracy", "### image-noise40", "### glue-noise20"):
        assert heading in page, heading
    assert "| vit | SAM step / ERM step |" in page and "Machine and versions:" in page
    for figure in ("accuracy_vs_cost.png", "aesam_decisions.png"):
        assert (tmp_path / "figures" / figure).stat().st_size > 10_000, figure
