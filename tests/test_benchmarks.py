"""Each benchmark module runs end to end on a tiny setting, and the report is built from what they wrote.

The numbers of a smoke run mean nothing (tiny models, a few steps, a busy machine): these tests pin that every code
path works and that the outputs have the shape `benchmarks/report.py` and `docs/benchmarks.md` rely on. The modules
run as users run them: `python -m benchmarks.<name>` from the repository root.
"""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from example_utils import ROOT

from benchmarks import looksam_alpha, step_cost
from benchmarks.data import FASHION_MNIST_DIR


MODULES = ["step_cost", "memory", "accuracy", "looksam_alpha", "report", "compare", "fortunes", "fashion_mnist"]
# What `make data` provides: the experiment configs name these paths (relative to the repository root).
DATA = [
    ROOT / "data" / "fortunes" / "train.csv",
    ROOT / "data" / "models" / "all-MiniLM-L6-v2" / "config.json",
    FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz",
]
needs_data = pytest.mark.skipif(not all(p.is_file() for p in DATA), reason="needs the data (`make data`)")


def run(module: str, *args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", f"benchmarks.{module}", *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bench")
    run("step_cost", "--smoke", "--output", root / "step_cost.json")
    run("memory", "--smoke", "--repeats", "1", "--workloads", "minilm", "--output", root / "memory.json")
    # One regime, one seed: every path of the study (tuning, every policy, the on-request late SAM at its paper's
    # fraction, matched controls) in a few minutes.
    study = ["--smoke", "--regimes", "image-noisy", "--seeds", "1", "--paper_late"]
    run("accuracy", *study, "--output_dir", root / "accuracy")
    # Always run: the α study reads the LookSAM ratios the library logs, and a library that stopped logging them must
    # fail here (`sam_step_ratios` raises), not skip.
    alpha = ["--smoke", "--alphas", "0", "0.7", "--seeds", "1", "--output_dir", root / "looksam_alpha"]
    run("looksam_alpha", *alpha, "--regimes", "image-noisy", "--accuracy_json", root / "accuracy" / "accuracy.json")
    return {"root": root}


@pytest.mark.parametrize("name", MODULES)
def test_every_module_has_help(name, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    assert 'if __name__ == "__main__":' in (ROOT / "benchmarks" / f"{name}.py").read_text()  # runs with `-m`
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0 and "--help" in capsys.readouterr().out


def test_step_cost_workloads_are_selectable_and_checked():
    (args,) = step_cost.HfArgumentParser(step_cost.StepCostArguments).parse_args_into_dataclasses(
        args=["--workloads", "vit4"]
    )
    assert args.workloads == ["vit4"]
    with pytest.raises(ValueError, match="workloads"):
        step_cost.StepCostArguments(workloads=["vit5"])


def test_step_cost_table_reads_the_erm_overhead_against_its_noise_floor():
    def stats(median, low, high):
        return {"median": median, "min": low, "max": high}

    results = {
        "vit4": {"erm_over_stock": stats(1.004, 0.995, 1.02), "stock_over_stock": stats(1.0, 0.99, 1.015)},
        "other": {"erm_over_stock": stats(1.02, 1.015, 1.03), "stock_over_stock": stats(1.0, 0.99, 1.01)},
    }
    table = step_cost.table(results)
    row = next(line for line in table.splitlines() if line.startswith("| vit4 | `erm` policy step"))
    assert "1.004 (0.995–1.020)" in row and "| 1.010 | median only |" in row
    assert "| vit4 | stock Trainer step / stock Trainer step (noise floor) | 1.000 (0.990–1.015) | – | – |" in table
    assert "| other | `erm` policy step / stock Trainer step | 1.020 (1.015–1.030) | 1.010 | **no** |" in table


@pytest.mark.slow
@needs_data
def test_step_cost_measures_every_question(results):
    payload = json.loads((results["root"] / "step_cost.json").read_text())
    assert set(payload["results"]) == {"vit", "minilm", "vit4"} and payload["environment"]["torch"]
    for name in ("vit", "minilm"):
        r = payload["results"][name]
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
    # vit4: the `erm` policy against the stock Trainer, and the stock Trainer against itself (the noise floor).
    r = payload["results"]["vit4"]
    assert set(r["step_ms"]) == {"stock", "erm", "stock_again"} and "patch 4" in r["workload"]
    ran = r["variants_ran"]
    assert not ran["stock"]["aesam_trainer"] and not ran["stock_again"]["aesam_trainer"]
    assert ran["erm"]["aesam_trainer"] and ran["erm"]["sam_steps"] == 0 and ran["erm"]["steps"] == r["steps_per_run"]
    for ratio in ("erm_over_stock", "stock_over_stock"):
        assert (
            len(r["per_round_ms"]["erm"]) == r["rounds"] and r[ratio]["min"] <= r[ratio]["median"] <= r[ratio]["max"]
        )
    assert "wall_time_s" in payload and payload["command"].startswith("python -m benchmarks.step_cost")


@pytest.mark.slow
@needs_data
def test_memory_reports_peaks_against_parameter_bytes(results):
    payload = json.loads((results["root"] / "memory.json").read_text())
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


@pytest.mark.slow
@needs_data
def test_accuracy_study_tunes_on_validation_and_judges_every_run_at_its_selected_checkpoint(results):
    from benchmarks.accuracy import Setting

    root = results["root"]
    study = json.loads((root / "accuracy" / "accuracy.json").read_text())
    assert set(study["regimes"]) == {"image-noisy"}
    assert study["command"].startswith("python -m benchmarks.accuracy") and study["environment"]["torch"]
    assert study["environment"]["threads_per_run"] == 1
    r = study["regimes"]["image-noisy"]
    base = root / "accuracy" / "image-noisy"
    s = r["settings"]
    # Each tuning score is the selected checkpoint's accuracy on the (noisy) validation split of the first seed's run.
    for key, score in r["tuning"]["adamw"]["scores"].items():
        lr, wd = (float(part[2:]) for part in key.split("-"))
        finished = json.loads((base / Setting(lr, wd).folder / "erm" / "seed1" / "all_results.json").read_text())
        assert finished["eval_accuracy"] == score
    for policy in ("sam", "msam"):
        for rho, score in r["tuning"][policy]["scores"].items():
            folder = Setting(s["learning_rate"], s["weight_decay"], float(rho)).folder
            assert (
                json.loads((base / folder / policy / "seed1" / "all_results.json").read_text())["eval_accuracy"]
                == score
            )
    runs = {row["policy"]: row for row in r["runs"]}
    assert set(runs) == {"adamw", "sam", "aesam", "msam", "late", "late-matched", "scheduled-matched"}
    assert all(row["threads"] == 1 for row in r["runs"])
    logs = {label: (Path(row["run_dir"]) / "log.txt").read_text() for label, row in runs.items()}
    assert "--optim erm" in logs["adamw"] and "--sam_rho" not in logs["adamw"]
    assert f"--sam_rho {s['sam_rho']:g}" in logs["sam"] and f"--sam_rho {s['msam_rho']:g}" in logs["msam"]
    assert "--optim late" in logs["late"] and "--aesam_budget 0.125" in logs["late"]
    for label in ("late-matched", "scheduled-matched"):
        assert f"--aesam_budget {r['matched_budget']:g}" in logs[label]
    assert r["matched_budget"] == float(f"{runs['aesam']['sam_fraction']:.2f}")
    for label, row in runs.items():
        # Selection happened (the config's --load_best_model_at_end), the last model was scored too, and the
        # checkpoints were removed after the run.
        state = json.loads((Path(row["run_dir"]) / "trainer_state.json").read_text())
        assert state["best_global_step"] == row["selected_step"] and row["selected_step"] in (4, 8), label
        assert 0 <= row["test_last_accuracy"] <= 1 and 0 <= row["peak_clean_eval_accuracy"] <= 1, label
        assert not list(Path(row["run_dir"]).glob("checkpoint-*")), label
    assert runs["adamw"]["passes_per_step"] == 1.0 and runs["msam"]["passes_per_step"] == 1.0
    for metric in ("test_accuracy", "test_last_accuracy"):
        pairs = {(c["a"], c["b"]) for c in r["comparisons"][metric]}
        assert {("sam", "adamw"), ("aesam", "late-matched"), ("aesam", "scheduled-matched")} <= pairs
        assert all(c["n"] == 1 and c["verdict"] == "no difference" for c in r["comparisons"][metric])  # one seed
    assert r["decision"]["policy"] is None  # one seed: no policy is called "not below SAM"


@pytest.mark.slow
@needs_data
def test_looksam_alpha_records_every_sam_step_with_the_study_rho(results):
    from benchmarks.accuracy import Setting

    root = results["root"]
    payload = json.loads((root / "looksam_alpha" / "looksam_alpha.json").read_text())
    study = json.loads((root / "accuracy" / "accuracy.json").read_text())
    r = payload["regimes"]["image-noisy"]
    settings = study["regimes"]["image-noisy"]["settings"]
    assert r["sam_rho"] == settings["sam_rho"]
    assert set(r["results"]) == {"looksam-a0", "looksam-a0.7", "aelooksam-a0", "aelooksam-a0.7"}
    for label, cell in r["results"].items():
        if cell["policy"] == "looksam":
            # 8 steps with the default interval 5: SAM at steps 0 and 5, whatever α (α only weighs the other steps).
            assert cell["sam_steps"] == 2, label
        gv, diff, cos = cell["gv_over_g_quartiles"], cell["diff_over_g_quartiles"], cell["cos_quartiles"]
        assert 0 < gv[0] <= gv[1] <= gv[2] and -1 <= cos[1] <= 1
        # g_s - g = (c - 1) g + g_v with g_v orthogonal to g, so it is never shorter than g_v.
        assert diff[0] >= gv[0] - 1e-6 and diff[2] >= gv[2] - 1e-6
        folder = Setting(settings["learning_rate"], settings["weight_decay"], r["sam_rho"]).folder
        log = (root / "looksam_alpha" / "image-noisy" / folder / label / "seed1" / "log.txt").read_text()
        assert f"--looksam_alpha {cell['alpha']}" in log and "--do_predict false" in log
        assert "--logging_steps 1" in log  # one SAM step per logged window at most: the logged ratios are per step
    assert "| looksam | 0.7 |" in r["table"]


def test_looksam_ratios_are_read_from_the_sam_steps_of_the_log_history():
    ratios = {"sam/looksam_gv_over_g": 0.1, "sam/looksam_diff_over_g": 0.2, "sam/looksam_cos": 0.9}
    history = [
        {"step": 1, "sam/fraction": 1.0, "sam/passes": 2, **ratios},
        {"step": 2, "sam/fraction": 0.0, "sam/passes": 3, "sam/looksam_gv_over_g": float("nan")},
        {"step": 2, "train_runtime": 1.0, "sam/fraction": 0.5, **ratios},  # the run's summary, not a step
    ]
    assert looksam_alpha.sam_step_ratios(history, "run") == [{"gv_over_g": 0.1, "diff_over_g": 0.2, "cos": 0.9}]
    with pytest.raises(RuntimeError, match="does not log the LookSAM ratios"):
        looksam_alpha.sam_step_ratios([{"step": 1, "sam/fraction": 1.0, "sam/passes": 2}], "run")
    assert looksam_alpha.sam_step_ratios([{"step": 1, "sam/fraction": 0.0}], "run") == []  # no SAM step, no ratio


@pytest.mark.slow
@needs_data
def test_report_builds_the_benchmarks_page(results, tmp_path):
    run("report", "--results_dir", results["root"], "--docs_dir", tmp_path)
    page = (tmp_path / "benchmarks.md").read_text()
    headings = ["## Step cost", "## Memory", "## Accuracy", "### image-noisy (overfitting)", "95% interval"]
    for heading in [*headings, "## Recorded studies"]:
        assert heading in page, heading
    assert "| vit | SAM step / ERM step |" in page and "Machine and versions:" in page
    assert "| vit4 | stock Trainer step / stock Trainer step (noise floor) |" in page
    assert "| sam − adamw | 1 |" in page and "Cheapest policy whose selected-checkpoint accuracy" in page
    for figure in ("accuracy_vs_cost_image-noisy.png", "aesam_decisions_image-noisy.png"):
        assert (tmp_path / "figures" / figure).stat().st_size > 10_000, figure
    # The README's headline table, from the same accuracy.json.
    table = (results["root"] / "results_table.md").read_text()
    assert (
        table.startswith("<!-- Generated by `python -m benchmarks.report`")
        and "| image-noisy (overfitting) |" in table
    )
    # What `make bench` cost: each stage's own recorded wall time, and their sum.
    files = ["step_cost.json", "memory.json", "accuracy/accuracy.json"]
    times = [json.loads((results["root"] / f).read_text())["wall_time_s"] for f in files]
    assert "## Wall time of `make bench`" in page and f"Sum of the last invocations: {sum(times) / 60:.1f} min" in page
    assert f"| accuracy | {times[2] / 60:.1f} |" in page and "From scratch: **" in page


def test_regimes_are_the_configs_they_describe():
    from benchmarks.regimes import REGIMES

    makefile = (ROOT / "Makefile").read_text()
    for name, regime in REGIMES.items():
        config = json.loads((ROOT / "configs" / "experiments" / regime.config).read_text())
        assert config["max_steps"] > 0, name
        if regime.kind == "overfitting":
            # Memorization must be visible: the runs score their noisy training labels during training; selection
            # is on the noisy validation labels, the true ones scored beside them.
            assert config["eval_strategy"] == "steps" and config["eval_train_samples"] > 0, name
            assert config["clean_label_column_name"] == "clean_label", name
        if regime.default:
            # Every run of the study ends with the checkpoint its validation selects, and scores its last step too.
            assert config["load_best_model_at_end"] and config["metric_for_best_model"] == "accuracy", name
            assert config["save_steps"] == config["eval_steps"] and config["test_last_model"], name
        if regime.task == "glue":  # the text regime's noise is in its training CSV (`make data`)
            assert "fortunes-noisy" in config["train_file"] and "fortunes-noisy" in config["test_file"]
            assert f"--output_dir $(dir $(FORTUNES_NOISY_CSV)) --label_noise {regime.label_noise}" in makefile
            assert f"--validation_label_noise {regime.label_noise} " in makefile
            continue
        # An image regime reads its seed's dataset folder; the config names seed 42's, which `make data` builds with
        # the regime's own flags.
        data = regime.image_data
        folder = Path(data["output_dir"]).relative_to(ROOT).as_posix()
        assert config["dataset_name"] == f"{folder}/seed{config['seed']}" == f"{folder}/seed42", name
        assert data.get("label_noise", 0.0) == regime.label_noise, name
        assert regime.data_flags(42) == ["--dataset_name", config["dataset_name"]], name
        rule = makefile[makefile.index(f"-m benchmarks.fashion_mnist --output_dir {folder} ") :].split("\n\n")[0]
        flags = rule.replace("\\\n", " ").split()
        for key in ("train_samples", "validation_samples", "label_noise", "validation_label_noise"):
            if key in data:
                assert flags[flags.index(f"--{key}") + 1] == f"{data[key]:g}", (name, key)
            else:
                assert f"--{key}" not in flags, (name, key)
