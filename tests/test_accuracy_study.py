"""The accuracy study's decisions, pinned without training: paired intervals, the rho grid, the matched controls,
the comparisons it reports and the demo's reading of its table."""

import json
import math

import pytest
from scipy import stats as scipy_stats

from benchmarks import accuracy, report
from benchmarks.compare import MEMORIZATION_MARGIN, label_noise, memorization, read_out
from benchmarks.regimes import REGIMES
from benchmarks.stats import paired_difference


def test_paired_difference_is_students_t_interval_over_seeds():
    a = {1: 0.70, 2: 0.72, 3: 0.74, 9: 0.5}  # seed 9 has no partner: left out
    b = {1: 0.69, 2: 0.70, 3: 0.71}
    d = paired_difference(a, b, ("sam", "adamw"))
    # differences 0.01, 0.02, 0.03: mean 0.02, std 0.01, t(0.975, 2) = 4.303
    half = scipy_stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
    assert d.n == 3 and d.mean == pytest.approx(0.02)
    assert (d.low, d.high) == (pytest.approx(0.02 - half), pytest.approx(0.02 + half))
    assert d.low < 0 < d.high and d.verdict == "no difference"  # 3 seeds cannot resolve this one
    clear = paired_difference({s: 0.8 + 0.001 * s for s in range(5)}, {s: 0.7 for s in range(5)}, ("x", "y"))
    assert clear.low > 0 and clear.verdict == "x better"
    assert paired_difference({1: 0.1, 2: 0.2, 3: 0.3}, {1: 0.3, 2: 0.41, 3: 0.5}, ("x", "y")).verdict == "y better"
    # Two seeds 5 points apart each way but far from each other: t with 1 degree of freedom is wide.
    assert paired_difference({1: 0.1, 2: 0.2}, {1: 0.3, 2: 0.45}, ("x", "y")).verdict == "no difference"


def test_scipys_paired_interval_gives_the_numbers_of_the_hand_written_one():
    """The interval now comes from `scipy.stats.ttest_rel`; on this fixed example (5 seeds of test accuracy) the
    hand-written t interval it replaced gave these bounds, to the last digits."""
    a = dict(enumerate([0.5527, 0.5391, 0.5702, 0.5618, 0.5480]))
    b = dict(enumerate([0.6012, 0.5825, 0.6190, 0.5944, 0.6003]))
    d = paired_difference(a, b, ("adamw", "sam"))
    assert d.low == pytest.approx(-0.05466200807808802, abs=1e-12)
    assert d.high == pytest.approx(-0.03557799192191194, abs=1e-12)
    assert d.verdict == "sam better"


def test_a_single_seed_gives_no_interval_and_no_claim():
    d = paired_difference({1: 0.9}, {1: 0.1}, ("x", "y"))
    assert d.n == 1 and math.isnan(d.low) and d.verdict == "no difference"
    with pytest.raises(ValueError, match="share no seed"):
        paired_difference({1: 0.9}, {2: 0.1}, ("x", "y"))


def tune(monkeypatch, curve, grid) -> dict:
    """`tune_rho` with each `sam` run replaced by `curve(rho)` as its validation accuracy."""
    calls = []

    def fake_run_jobs(jobs, workers):
        rows = []
        for _runner, (policy, seed, flags, _label) in jobs:
            assert policy == "sam" and seed == 1 and "--do_predict" not in flags
            rho = float(flags[flags.index("--sam_rho") + 1])
            calls.append(rho)
            rows.append({"eval_accuracy": curve(rho), "wall_time": 1.0})
        return rows

    monkeypatch.setattr(accuracy, "run_jobs", fake_run_jobs)
    args = accuracy.StudyArguments(seeds=[1, 2], rho_grid=grid, output_dir="unused")
    tuning = accuracy.tune_rho(args, accuracy.RegimeRuns(args, REGIMES["image-noisy"]))
    assert len(calls) == len(set(calls))  # no rho is run twice
    return tuning


def test_rho_grid_grows_past_an_edge_until_the_optimum_is_inside(monkeypatch):
    # Validation accuracy peaking at rho = 0.2: the grid [0.05, 0.1] must grow to 0.2 (the best, at the edge again)
    # and 0.4 (which puts it inside).
    tuning = tune(monkeypatch, lambda rho: -abs(math.log(rho / 0.2)), [0.05, 0.1])
    assert tuning["chosen"] == pytest.approx(0.2) and tuning["interior"] and tuning["extensions"] == 2
    assert set(map(float, tuning["scores"])) == {0.05, 0.1, 0.2, 0.4}
    assert tuning["runs_wall_time_s"] == 4.0  # every tuning run's time counts, the extensions' too (1 s each here)
    # With a peak further out, the study stops after two extensions and says the choice is at the edge.
    tuning = tune(monkeypatch, lambda rho: -abs(math.log(rho / 5.0)), [0.05, 0.1])
    assert tuning["chosen"] == pytest.approx(0.4) and not tuning["interior"]
    # Downwards too.
    tuning = tune(monkeypatch, lambda rho: -abs(math.log(rho / 0.02)), [0.05, 0.1, 0.2])
    assert tuning["chosen"] == pytest.approx(0.025) and tuning["interior"]  # after trying 0.025 and 0.0125


def test_matched_controls_take_aesam_fraction():
    controls = {label: (policy, flags) for policy, flags, label in accuracy.matched_controls(0.43)}
    assert controls["random-matched"] == ("random", ["--sam_probability", "0.43"])
    assert controls["scheduled-matched"] == ("scheduled", ["--aesam_budget", "0.43"])
    assert controls["periodic-matched"] == ("periodic", ["--sam_interval", "2"])  # 1/0.43 = 2.3 -> every 2nd step
    assert dict((label, flags) for _, flags, label in accuracy.matched_controls(0.15))["periodic-matched"] == [
        "--sam_interval",
        "7",
    ]


def test_comparisons_pair_the_questions_the_study_asks():
    rows = [
        {"policy": policy, "seed": seed, "test_accuracy": score + 0.001 * seed}
        for seed in (1, 2, 3)
        for policy, score in [
            ("adamw_torch", 0.5),
            ("sam", 0.6),
            ("aesam", 0.55),
            ("random-matched", 0.54),
            ("scheduled-matched", 0.55),
            ("periodic-matched", 0.53),
            ("aesam-b0.2", 0.52),
            ("random-p0.2", 0.51),
        ]
    ]
    found = {(c["a"], c["b"]): c for c in accuracy.comparisons(rows, REGIMES["image-noisy"])}
    expected = {("sam", "adamw_torch"), ("aesam", "adamw_torch"), ("aesam", "sam"), ("aesam-b0.2", "random-p0.2")}
    expected |= {("aesam", c) for c in ("random-matched", "scheduled-matched", "periodic-matched")}
    expected |= {("scheduled-matched", "random-matched"), ("sam", "scheduled-matched")}
    assert set(found) == expected  # budgets 0.35 and 0.5 did not run: not compared
    assert found[("sam", "adamw_torch")]["mean"] == pytest.approx(0.1)
    assert found[("aesam", "sam")]["verdict"] == "sam better"


def test_the_demo_reading_quotes_the_table():
    def entry(policy, score, passes, peak=float("nan"), fit=float("nan")):
        return {
            "policy": policy,
            "test_accuracy": (score, 0.0),
            "passes_per_step": (passes, 0.0),
            "peak_eval_accuracy": (peak, 0.0),
            "train_noisy_accuracy": (fit, 0.0),
        }

    summary = [entry("adamw_torch", 0.52, 1.0, 0.70, 0.91), entry("sam", 0.64, 2.0), entry("aesam", 0.58, 1.4)]
    text = read_out(summary, "test_accuracy", "adamw_torch", 0.4, n_seeds=1)
    assert "peaked at 70.0% validation accuracy" in text and "fit 91% of its training labels" in text
    assert "at most 60%" in text and "It memorized noise." in text
    assert "SAM ended at 64.0% (+12.0 points) for 2.00" in text
    assert "aesam ended at 58.0% (+6.0 points, 50% of SAM's gain) for 1.40 passes per step (40% of SAM's" in text
    assert "one seed, so no interval" in text
    # SAM losing is said as plainly.
    summary[1] = entry("sam", 0.50, 2.0)
    text = read_out(summary, "test_accuracy", "adamw_torch", 0.0, n_seeds=3)
    assert "SAM ended at 50.0% (-2.0 points)" in text and "memorized" not in text and "SAM's gain" not in text


def fake_runs(scheduled: list[str]):
    """A stand-in for `run_jobs`: each run's row without training (validation peaks at rho 0.1); labels recorded."""

    def run_jobs(jobs, workers):
        rows = []
        for _runner, (policy, seed, flags, label) in jobs:
            scheduled.append(label or policy)
            rho = float(flags[flags.index("--sam_rho") + 1])
            fraction = {"sam": 1.0, "aesam": 0.5}.get(policy, 0.0)
            rows.append(
                {
                    "policy": label or policy,
                    "seed": seed,
                    "eval_accuracy": -abs(rho - 0.1),
                    "test_accuracy": 0.5,
                    "sam_fraction": fraction,
                    "passes": 10 * (1 + fraction),
                    "train_time": 1.0,
                    "wall_time": 2.0,
                }
            )
        return rows

    return run_jobs


def test_a_core_only_regime_runs_adamw_sam_and_aesam_alone(monkeypatch):
    scheduled = []
    fake_run_jobs = fake_runs(scheduled)
    monkeypatch.setattr(accuracy, "run_jobs", fake_run_jobs)
    args = accuracy.StudyArguments(seeds=[1, 2], regimes=["text-noisy"], core_only=["text-noisy"], output_dir="unused")
    result = accuracy.run_regime(args, REGIMES["text-noisy"])
    assert set(scheduled) == {"sam", "adamw_torch", "aesam"}  # no budget, no matched control
    assert not result["regime"]["full"] and not result["controls"]
    with pytest.raises(ValueError, match="core_only"):
        accuracy.StudyArguments(regimes=["image-noisy"], core_only=["text-noisy"], output_dir="unused")


def test_a_study_of_some_regimes_keeps_the_others_with_what_measured_them(monkeypatch, tmp_path):
    monkeypatch.setattr(accuracy, "run_jobs", fake_runs([]))
    common = ["--output_dir", str(tmp_path / "accuracy"), "--seeds", "1", "2"]
    accuracy.main([*common, "--regimes", "text-noisy", "image-underfit", "--core_only", "text-noisy"])
    accuracy.main([*common, "--regimes", "image-noisy", "text-noisy", "--core_only", "image-noisy", "text-noisy"])
    study = json.loads((tmp_path / "accuracy" / "accuracy.json").read_text())
    assert list(study["regimes"]) == ["image-noisy", "text-noisy", "image-underfit"]  # the regimes' own order
    commands = {name: r["measured_by"]["command"] for name, r in study["regimes"].items()}
    assert "--regimes image-noisy text-noisy" in commands["text-noisy"] == commands["image-noisy"]
    assert "--regimes text-noisy image-underfit" in commands["image-underfit"]  # kept from the first invocation
    # The report says which invocation measured a regime, and flags one whose training code has changed since.
    # The wall time of the second invocation does not include the kept regime's, and the report says so.
    wall = report.wall_time_section(tmp_path)
    assert "not counted in its own time: image-underfit (measured by an earlier invocation)" in wall
    assert "a reused run costs nothing" in wall
    assert "| step_cost | – | – | not run" in wall
    # From scratch, every run counts, whichever invocation made it: 4 rho runs + 3 policies x 2 seeds, 2 s each.
    assert [r["runs_wall_time_s"] for r in study["regimes"].values()] == [20.0, 20.0, 20.0]
    assert report.from_scratch_s(study) == 30.0  # 60 s of runs, two side by side
    assert "| accuracy | " in wall and " | 0.5 | `python -m benchmarks.accuracy" in wall
    kept = study["regimes"]["image-underfit"]
    assert report.measured_by(kept).endswith("on the current code.")
    kept["measured_by"]["code"]["code_sha256"] = "0" * 64
    assert "**on earlier code** (the training code changed since)" in report.measured_by(kept)
    assert "did not record" in report.measured_by({"rho": 0.1})


@pytest.mark.parametrize(
    ("fit", "sentence"),
    [
        (0.91, "It memorized noise."),
        (0.60 + MEMORIZATION_MARGIN + 0.001, "It memorized noise."),
        (0.63, "Within the margin of that: no clear memorization."),
        (0.60, "It had not memorized noise."),
        (0.45, "It had not memorized noise."),
    ],
)
def test_memorization_is_said_only_when_the_fit_exceeds_one_minus_noise_by_the_margin(fit, sentence):
    assert memorization(fit, 0.4) == sentence
    summary = [
        {
            "policy": policy,
            "test_accuracy": (0.5, 0.0),
            "passes_per_step": (passes, 0.0),
            "peak_eval_accuracy": (0.6, 0.0),
            "train_noisy_accuracy": (fit, 0.0),
        }
        for policy, passes in (("adamw_torch", 1.0), ("sam", 2.0))
    ]
    text = read_out(summary, "test_accuracy", "adamw_torch", 0.4, n_seeds=1)
    assert sentence in text and text.count("memorized") == sentence.count("memorized")


def test_the_demo_reads_the_label_noise_from_the_data_it_runs_on(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "spec.json").write_text(json.dumps({"label_noise": 0.4}))
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "spec.json").write_text(json.dumps({"label_noise": 0.2}))
    assert label_noise({"dataset_name": str(tmp_path / "images")}) == 0.4
    assert label_noise({"train_file": str(tmp_path / "text" / "train.csv")}) == 0.2
    assert label_noise({"dataset_name": "uoft-cs/cifar10"}) == 0.0  # a Hub dataset: nothing recorded, no claim


def fake_study(tmp_path) -> dict:
    """An accuracy.json as the study writes it, two regimes, two seeds, with an AE-SAM run per regime on disk: one
    regime evaluated during training (noisy labels), one not (as image-underfit)."""
    regimes = {}
    for name, kind, noise, evaluates in (
        ("image-noisy", "overfitting", 0.4, True),
        ("image-underfit", "underfitting", 0.0, False),
    ):
        root = tmp_path / name / "rho0.1"
        for policy in ("adamw_torch", "sam", "aesam"):
            history = [
                {"step": s, "sam/grad_norm_sq": 1.0 + s % 3, "sam/threshold": 2.0, "sam/fraction": float(s % 3 > 0)}
                for s in range(1, 11)
            ]
            if evaluates:
                history += [{"step": s, "eval_accuracy": 0.5 + s / 100} for s in (5, 10, 10)]  # the last: final eval
                history += [{"step": s, "train_subset_accuracy": 0.4 + s / 20} for s in (5, 10)]
            (root / policy / "seed1").mkdir(parents=True)
            (root / policy / "seed1" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
        summary = [
            {"policy": p, "seeds": 2, "test_accuracy": (acc, 0.01), "passes_per_step": (passes, 0.0)}
            for p, acc, passes in (("adamw_torch", 0.55, 1.0), ("sam", 0.61, 2.0), ("aesam", 0.60, 1.4))
        ]
        comparisons = [
            {"a": "sam", "b": "adamw_torch", "n": 2, "mean": 0.06, "low": 0.02, "high": 0.10, "verdict": "sam better"},
            {
                "a": "aesam",
                "b": "adamw_torch",
                "n": 2,
                "mean": 0.05,
                "low": -0.01,
                "high": 0.11,
                "verdict": "no difference",
            },
        ]
        regimes[name] = {
            "regime": {"kind": kind, "label_noise": noise},
            "rho": 0.1,
            "rho_tuning": {
                "scores": {"0.0125": 0.5, "0.025": 0.55, "0.05": 0.6, "0.1": 0.62, "0.2": 0.6, "0.4": 0.5},
                "chosen": 0.1,
            },
            "summary": summary,
            "comparisons": comparisons,
            "trace_run": str(root / "aesam" / "seed1"),
        }
    return {"arguments": {"seeds": [1, 2]}, "regimes": regimes}


def test_the_results_table_is_generated_from_the_study_json(tmp_path):
    table = report.results_table(fake_study(tmp_path), "`accuracy.json`")
    lines = table.splitlines()
    assert lines[0].startswith("<!-- Generated by `python -m benchmarks.report` from `accuracy.json`")
    row = next(line for line in lines if line.startswith("| image-noisy (overfitting) |"))
    # AdamW, SAM, AE-SAM with their passes per step; SAM − AdamW in bold (its interval excludes 0), AE-SAM's not;
    # AE-SAM − SAM was not compared in this JSON.
    assert "| 55.00 ± 1.00 [1.00] | 61.00 ± 1.00 [2.00] | 60.00 ± 1.00 [1.40] |" in row
    assert "| **+6.00** [+2.00, +10.00] | +5.00 [-1.00, +11.00] | – |" in row
    assert "Mean over 2 seeds" in table and "(benchmarks.md)" in table


def test_report_figures_have_readable_ticks_and_no_empty_panel(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study = fake_study(tmp_path)
    saved = []
    real_savefig = plt.Figure.savefig

    def keep(fig, path, **kwargs):  # look at each figure as it is saved
        saved.append(fig)
        return real_savefig(fig, path, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt.Figure, "savefig", keep)
        report.rho_figure(study, tmp_path / "rho.png")
        for name, r in study["regimes"].items():
            assert report.decisions_figure(name, r, 1, tmp_path / f"{name}.png")
    rho, noisy, underfit = saved
    (ax,) = rho.axes
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["0.0125", "0.025", "0.05", "0.1", "0.2", "0.4"]  # one plain label per rho tried
    assert not [t for t in ax.get_xticklabels(minor=True) if t.get_text()]
    assert len(noisy.axes) == 2 and all(ax.has_data() for ax in noisy.axes)
    assert len(underfit.axes) == 1 and underfit.axes[0].has_data()  # no evaluations: no empty second panel
    # The final evaluation repeats the last step: drawn once.
    curve = report.curves(tmp_path / "image-noisy" / "rho0.1" / "sam" / "seed1")
    assert curve["validation_step"] == [5, 10] and curve["step"] == [5, 10]
