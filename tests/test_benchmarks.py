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
    run("looksam_alpha.py", "--smoke", "--alphas", "0", "0.7", "--seeds", "1", "--output_dir", root / "looksam_alpha",
        "--accuracy_json", root / "accuracy" / "accuracy.json")  # fmt: skip
    return root


def test_step_cost_measures_every_question(results):
    payload = json.loads((results / "step_cost.json").read_text())
    assert set(payload["results"]) == {"vit", "minilm"} and payload["environment"]["torch"]
    for r in payload["results"].values():
        assert set(r["step_ms"]) == {"stock", "erm", "sam", "erm_ga4", "sam_ga4"}
        assert all(t > 0 for t in r["step_ms"].values()) and r["pass_ms"] > 0
        # Each variant did what its name says: the stock Trainer, no SAM step for `erm`, only SAM steps for `sam`,
        # and 4 micro-batches per step for the accumulation variants.
        ran = r["variants_ran"]
        assert not ran["stock"]["aesam_trainer"] and ran["erm"]["aesam_trainer"]
        for variant, ga in {"stock": 1, "erm": 1, "sam": 1, "erm_ga4": 4, "sam_ga4": 4}.items():
            assert ran[variant]["gradient_accumulation_steps"] == ga, variant
            expected_sam = ran[variant]["steps"] if variant.startswith("sam") else 0
            assert ran[variant]["steps"] == r["steps_per_run"] and ran[variant]["sam_steps"] == expected_sam, variant
        assert 0.0 < r["aesam_sam_fraction"] <= 1.0  # the adaptive policy's first step is always a SAM step
    assert "wall_time_s" in payload and payload["environment"]["torch"]


def test_memory_reports_peaks_against_parameter_bytes(results):
    payload = json.loads((results / "memory.json").read_text())
    for r in payload["results"].values():
        assert r["param_bytes"] > 0 and r["input_bytes"] > 0
        assert all(p > 0 for p in r["peak_bytes"].values())
        ran = r["variants_ran"]
        assert ran["sam_ga4"]["gradient_accumulation_steps"] == 4 and ran["sam"]["gradient_accumulation_steps"] == 1
        assert ran["erm"]["sam_steps"] == 0 and ran["sam"]["sam_steps"] == ran["sam_ga4"]["sam_steps"] > 0
        # Counted tensor by tensor: ERM holds nothing, SAM the saved weights (with or without accumulation),
        # AE-LookSAM also g_v and, from its second SAM step, the scratch it computes the next g_v in.
        held = r["held_bytes"]
        assert held["erm"] == held["erm_ga4"] == 0
        assert held["sam"] == held["sam_ga4"] == r["param_bytes"]
        assert held["aelooksam"] in (2 * r["param_bytes"], 3 * r["param_bytes"])
    assert "| minilm |" in payload["table"] and "sam_ga4 − erm_ga4" in payload["table"]


def test_accuracy_study_tunes_rho_on_validation_and_matches_random_to_aesam(results):
    study = json.loads((results / "accuracy" / "accuracy.json").read_text())
    assert set(study["settings"]) == {"image-noise40", "glue-noise20"}  # the smoke run: the noisy settings only
    for task, tuning in study["rho_tuning"].items():
        scores = {float(k): v for k, v in tuning["scores"].items()}
        assert set(scores) == {0.05, 0.1} and tuning["chosen"] == max(scores, key=scores.get), task
        for rho, score in scores.items():
            # Each score is the validation accuracy of a `sam` run that never predicted on the test split.
            run = results / "accuracy" / "tune" / task / f"rho{rho:g}" / "sam" / "seed1"
            finished = json.loads((run / "all_results.json").read_text())
            assert finished["eval_accuracy"] == score and not any(k.startswith("test_") for k in finished)
            assert "--do_predict false" in (run / "log.txt").read_text()
    assert study["command"].startswith("python benchmarks/accuracy.py") and study["environment"]["torch"]
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


def test_looksam_alpha_records_every_sam_step_with_the_study_rho(results):
    payload = json.loads((results / "looksam_alpha" / "looksam_alpha.json").read_text())
    study = json.loads((results / "accuracy" / "accuracy.json").read_text())
    assert payload["sam_rho"] == study["rho_tuning"]["image"]["chosen"]
    assert set(payload["results"]) == {"0", "0.7"}
    for alpha, r in payload["results"].items():
        # 6 steps with the default interval 5: SAM at steps 0 and 5, whatever α (α only weighs the other steps).
        assert r["sam_steps"] == 2, alpha
        gv, diff, cos = r["gv_over_g_quartiles"], r["diff_over_g_quartiles"], r["cos_quartiles"]
        assert 0 < gv[0] <= gv[1] <= gv[2] and -1 <= cos[1] <= 1
        # g_s - g = (c - 1) g + g_v with g_v orthogonal to g, so it is never shorter than g_v.
        assert diff[0] >= gv[0] - 1e-6 and diff[2] >= gv[2] - 1e-6
        log = (results / "looksam_alpha" / f"alpha{alpha}" / "looksam" / "seed1" / "log.txt").read_text()
        assert f"--looksam_alpha {float(alpha)}" in log and "--do_predict false" in log
    assert "| 0.7 |" in payload["table"]


def test_report_builds_the_benchmarks_page(results, tmp_path):
    run("report.py", "--results_dir", results, "--docs_dir", tmp_path)
    page = (tmp_path / "benchmarks.md").read_text()
    for heading in ("## Step cost", "## Memory", "## Accuracy", "### image-noise40", "### glue-noise20", "α (image"):
        assert heading in page, heading
    assert "| vit | SAM step / ERM step |" in page and "Machine and versions:" in page
    for figure in ("accuracy_vs_cost.png", "aesam_decisions.png"):
        assert (tmp_path / "figures" / figure).stat().st_size > 10_000, figure


def test_full_study_tunes_rho_on_the_clean_setting_of_each_task(tmp_path):
    sys.path.insert(0, str(BENCH))
    import accuracy

    study = accuracy.settings(accuracy.StudyArguments(output_dir=str(tmp_path)), tmp_path)
    # main() tunes rho on the first setting of each task: it must be the clean one.
    assert [(s.task, s.noise) for s in study] == [("image", 0.0), ("image", 0.4), ("glue", 0.0), ("glue", 0.2)]
    assert study[0].policies == accuracy.IMAGE_POLICIES and study[2].policies == accuracy.GLUE_POLICIES
    assert "--label_noise" not in study[0].extra and study[1].extra[-6:-4] == ["--label_noise", "0.4"]
    noisy_train = study[3].extra[study[3].extra.index("--train_file") + 1]
    assert "--train_file" not in study[2].extra and noisy_train.endswith("fortunes-noise20/train.csv")
