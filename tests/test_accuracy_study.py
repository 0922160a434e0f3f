"""The accuracy study's decisions, pinned without training: paired intervals, the rho grid, the matched controls,
the comparisons it reports and the demo's reading of its table."""

import json
import math
from pathlib import Path

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


def test_grid_search_grows_past_an_edge_until_the_optimum_is_inside():
    tried = []

    def score(curve):
        def run(values):
            tried.extend(values)
            return [curve(v) for v in values]

        return run

    # Validation accuracy peaking at 0.2: the grid [0.025, 0.05, 0.1] grows to 0.2 (0.1 won, at the edge), then to
    # 0.4 (0.2 won, at the edge again), which puts the optimum inside.
    result = accuracy.grid_search([0.025, 0.05, 0.1], score(lambda v: -abs(math.log(v / 0.2))))
    assert result["chosen"] == pytest.approx(0.2) and result["interior"] and result["extensions"] == 2
    assert len(tried) == len(set(tried)) == 5  # no value runs twice
    # With a peak further out, it stops after two extensions and says the choice is at the edge.
    far = accuracy.grid_search([0.025, 0.05, 0.1], score(lambda v: -abs(math.log(v / 5.0))))
    assert far["chosen"] == pytest.approx(0.4) and not far["interior"] and far["extensions"] == 2
    # An optimum inside the grid: nothing more runs; downwards, the grid halves past its smallest value.
    assert accuracy.grid_search([0.1, 0.2, 0.4], score(lambda v: -abs(v - 0.2)))["extensions"] == 0
    down = accuracy.grid_search([0.05, 0.1, 0.2], score(lambda v: -abs(math.log(v / 0.02))))
    assert down["chosen"] == pytest.approx(0.025) and down["interior"]  # after trying 0.025 and 0.0125
    # A tie goes to the smaller value.
    tie = accuracy.grid_search([1.0, 2.0, 3.0, 4.0], score(lambda v: 0.5 - 0.1 * (v in (1.0, 4.0))))
    assert tie["chosen"] == 2.0 and tie["interior"]


def test_independent_grid_searches_share_their_batches_and_keep_their_answers():
    batches = []

    def score(todo):
        batches.append(list(todo))
        # Search "a" peaks at 0.2 (beyond its grid's top: it grows upwards twice), "b" at 1.0 (inside its grid).
        return [-abs(math.log(v / {"a": 0.2, "b": 1.0}[key])) for key, v in todo]

    found = accuracy.grid_searches({"a": [0.025, 0.05, 0.1], "b": [0.5, 1.0, 2.0]}, score)
    # Both first grids in one batch of six (three pairs of runs side by side), then "a"'s extensions alone.
    assert [len(b) for b in batches] == [6, 1, 1]
    assert {key for key, _ in batches[0]} == {"a", "b"} and {key for b in batches[1:] for key, _ in b} == {"a"}
    # Each answer is the one its search gives alone.
    for key, grid in {"a": [0.025, 0.05, 0.1], "b": [0.5, 1.0, 2.0]}.items():
        alone = accuracy.grid_search(grid, lambda values, key=key: score([(key, v) for v in values]))
        assert found[key] == alone
    assert found["a"]["chosen"] == pytest.approx(0.2) and found["a"]["extensions"] == 2 and found["a"]["interior"]
    assert found["b"]["chosen"] == 1.0 and found["b"]["extensions"] == 0


def fake_runs(scheduled: list[tuple], curve=None):
    """A stand-in for `run_jobs`: each run's row without training, its validation score `curve(policy, lr, wd, rho)`.

    The rows carry no test score for a tuning run to read by mistake: tuning reads validation only.
    """
    curve = curve or (lambda policy, lr, wd, rho: -abs(lr - 0.002) - wd - abs((rho or 0.1) - 0.1))

    def run_jobs(jobs, workers):
        rows = []
        for runner, (policy, seed, flags, label) in jobs:
            value = {
                f: float(flags[flags.index(f) + 1])
                for f in ("--learning_rate", "--weight_decay", "--sam_rho")
                if f in flags
            }
            lr, wd, rho = value["--learning_rate"], value["--weight_decay"], value.get("--sam_rho")
            scheduled.append((label, seed, lr, wd, rho, tuple(flags)))
            fraction = {"sam": 1.0, "aesam": 0.45}.get(policy, 0.0)
            if policy in ("late", "scheduled"):
                fraction = float(flags[flags.index("--aesam_budget") + 1])
            rows.append(
                {
                    "policy": label,
                    "seed": seed,
                    "run_dir": str(runner.run_dir(label, seed)),
                    "eval_accuracy": curve(policy, lr, wd, rho),
                    "test_accuracy": 0.5 + 0.01 * seed + (0.05 + 0.003 * seed if policy == "sam" else 0.0),
                    "test_last_accuracy": 0.4 + 0.01 * seed,
                    "sam_fraction": fraction,
                    "passes": 10 * (1 + fraction),
                    "passes_per_step": 1 + fraction,
                    "train_time": 1.0,
                    "wall_time": 2.0,
                }
            )
        return rows

    return run_jobs


def test_tuning_gives_adamw_at_least_as_many_runs_as_rho_and_reads_validation_only(monkeypatch):
    scheduled = []
    regime = REGIMES["image-noisy"]
    args = accuracy.StudyArguments(seeds=[1, 2], regimes=["image-noisy"], output_dir="unused")
    monkeypatch.setattr(type(regime), "data_flags", lambda self, seed: [])
    batches = []
    fake = fake_runs(scheduled)
    monkeypatch.setattr(accuracy, "run_jobs", lambda jobs, workers: batches.append(jobs) or fake(jobs, workers))
    tuning = accuracy.tune(args, accuracy.RegimeRuns(args, regime))
    # Both weight decays' learning rates in one batch, then SAM's and Momentum-SAM's rho grids in one, SAM's first
    # (the slowest runs first: the last pair of runs side by side ends together).
    assert [len(b) for b in batches] == [len(regime.lr_grid) * len(regime.wd_grid), 8]
    assert [job[1][0] for job in batches[1]] == ["sam"] * 4 + ["msam"] * 4
    adamw = [run for run in scheduled if run[0] == "erm"]
    sam = [run for run in scheduled if run[0] == "sam"]
    msam = [run for run in scheduled if run[0] == "msam"]
    assert all(run[1] == 1 for run in scheduled)  # the first seed only
    assert len(adamw) >= len(sam) >= len(regime.rho_grid)
    assert {(lr, wd) for _, _, lr, wd, _, _ in adamw} == {(lr, wd) for lr in regime.lr_grid for wd in regime.wd_grid}
    assert tuning["adamw"]["chosen"] == {"learning_rate": 0.002, "weight_decay": 0.0} and tuning["adamw"]["interior"]
    # SAM's and Momentum-SAM's rho are tuned at AdamW's chosen learning rate and weight decay, each on its own grid.
    assert {(lr, wd) for _, _, lr, wd, _, _ in sam + msam} == {(0.002, 0.0)}
    assert {rho for *_, rho, _ in sam} == set(regime.rho_grid)
    assert tuning["sam"]["chosen"] == 0.1 and tuning["sam"]["interior"]
    assert {rho for *_, rho, _ in msam} == set(regime.msam_rho_grid)
    assert tuning["msam"]["chosen"] == pytest.approx(0.075) and tuning["msam"]["interior"]
    assert tuning["runs"] == len(scheduled) and tuning["runs_wall_time_s"] == 2.0 * len(scheduled)


def test_every_policy_runs_at_the_tuned_settings_and_the_controls_at_aesams_fraction(monkeypatch):
    scheduled = []
    monkeypatch.setattr(accuracy, "run_jobs", fake_runs(scheduled))
    regime = REGIMES["image-noisy"]
    monkeypatch.setattr(type(regime), "data_flags", lambda self, seed: [])
    args = accuracy.StudyArguments(seeds=[1, 2, 3], regimes=["image-noisy"], output_dir="unused")
    result = accuracy.run_regime(args, regime)
    runs = {(label, seed): (lr, wd, rho, flags) for label, seed, lr, wd, rho, flags in scheduled}
    for seed in (1, 2, 3):
        assert runs[("erm", seed)][:3] == (0.002, 0.0, None)  # AdamW takes no rho
        for label in ("sam", "aesam", "late-matched", "scheduled-matched"):
            assert runs[(label, seed)][:3] == (0.002, 0.0, 0.1)  # the SAM family at SAM's rho
        assert runs[("msam", seed)][2] == result["settings"]["msam_rho"]
        for label in ("late-matched", "scheduled-matched"):
            assert "--aesam_budget 0.45" in " ".join(runs[(label, seed)][3])  # AE-SAM's measured fraction
    # The seed phase (after the 6 + 8 tuning runs) starts with SAM's runs, then AE-SAM's: the slowest first.
    seed_phase = [label for label, *_ in scheduled[14 : 14 + 4 * 3]]
    assert seed_phase[:6] == ["sam"] * 3 + ["aesam"] * 3 and set(seed_phase[6:]) == {"erm", "msam"}
    study = {"adamw", "sam", "aesam", "msam", "late-matched", "scheduled-matched"}
    assert {r["policy"] for r in result["runs"]} == study  # late SAM at its paper's 12.5% only on request
    # On request (`--paper_late`), late SAM on its paper's last 12.5% of the steps runs for every seed too.
    scheduled.clear()
    with_late = accuracy.run_regime(
        accuracy.StudyArguments(seeds=[1, 2, 3], regimes=["image-noisy"], output_dir="unused", paper_late=True), regime
    )
    assert {r["policy"] for r in with_late["runs"]} == study | {"late"}
    for label, _seed, lr, wd, rho, flags in scheduled:
        if label == "late":
            assert (lr, wd, rho) == (0.002, 0.0, 0.1) and "--aesam_budget 0.125" in " ".join(flags)
    assert {seed for label, seed, *_ in scheduled if label == "late"} == {1, 2, 3}
    assert ("late", "adamw") in {(c["a"], c["b"]) for c in with_late["comparisons"]["test_accuracy"]}
    assert result["matched_budget"] == 0.45 and result["aesam_fraction"] == pytest.approx(0.45)
    # Both scores are compared: the selected checkpoint's (SAM +5.3 to +5.9 points) and the last step's (equal).
    selected = {(c["a"], c["b"]): c for c in result["comparisons"]["test_accuracy"]}
    last = {(c["a"], c["b"]): c for c in result["comparisons"]["test_last_accuracy"]}
    assert selected[("sam", "adamw")]["mean"] == pytest.approx(0.056) and last[("sam", "adamw")]["mean"] == 0.0
    assert {("aesam", "late-matched"), ("aesam", "scheduled-matched"), ("msam", "sam"), ("msam", "adamw")} <= set(
        selected
    )
    assert result["decision"]["policy"] == "sam"  # every cheaper policy is below it in every seed


def _summary(policy, passes):
    return {"policy": policy, "passes_per_step": (passes, 0.0)}


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ({"adamw": "no difference", "msam": "no difference", "late": "no difference"}, "adamw"),
        ({"adamw": "sam better", "msam": "no difference", "late": "no difference"}, "msam"),
        ({"adamw": "sam better", "msam": "sam better", "late": "late better"}, "late"),
        ({"adamw": "adamw better", "msam": "sam better", "late": "sam better"}, "adamw"),
        ({"adamw": "sam better", "msam": "sam better", "late": "sam better", "aesam": "sam better"}, "sam"),
    ],
)
def test_the_cheapest_policy_not_below_sam(verdicts, expected):
    summary = [_summary("adamw", 1.0), _summary("sam", 2.0), _summary("aesam", 1.45), _summary("msam", 1.0)]
    summary += [_summary("late", 1.125)]

    def versus_sam(policy, verdict):
        # AdamW's comparison is made as `sam − adamw`, the others' as `policy − sam`; the verdict names the winner.
        if policy == "adamw":
            flipped = {"sam better": "sam better", "adamw better": "adamw better"}.get(verdict, verdict)
            return {"a": "sam", "b": "adamw", "n": 5, "mean": 0.01, "low": -0.01, "high": 0.03, "verdict": flipped}
        return {"a": policy, "b": "sam", "n": 5, "mean": -0.01, "low": -0.03, "high": 0.01, "verdict": verdict}

    compared = [versus_sam(p, v) for p, v in verdicts.items()]
    compared += [versus_sam("aesam", "no difference")] * ("aesam" not in verdicts)
    decision = accuracy.cheapest_not_below_sam(summary, compared)
    assert decision["policy"] == expected
    if expected == "adamw":
        # Its difference is reported as AdamW − SAM: the `sam − adamw` interval turned round.
        assert (decision["against_sam"]["mean"], decision["against_sam"]["low"]) == (-0.01, -0.03)
    # With one seed nothing is decided: "not shown below" would then say nothing.
    one_seed = [{**c, "n": 1} for c in compared]
    assert accuracy.cheapest_not_below_sam(summary, one_seed)["policy"] is None


def test_the_study_names_runnable_flags_for_its_labels():
    settings = {"sam_rho": 0.05, "msam_rho": 0.075}
    assert accuracy.run_flags("late-matched", settings, 0.46) == "--optim late --aesam_budget 0.46 --sam_rho 0.05"
    assert accuracy.run_flags("scheduled-matched", settings, 0.46).startswith("--optim scheduled --aesam_budget 0.46")
    assert accuracy.run_flags("adamw", settings, 0.46) == "--optim adamw_torch --load_best_model_at_end"
    assert accuracy.run_flags("msam", settings, 0.46) == "--optim msam --sam_rho 0.075"


def test_a_regime_whose_config_does_not_select_is_refused(tmp_path, monkeypatch):
    config = tmp_path / "no_selection.json"
    config.write_text(json.dumps({"eval_strategy": "steps", "do_predict": True, "test_last_model": True}))
    regime = REGIMES["image-noisy"]
    monkeypatch.setattr(type(regime), "config_path", property(lambda self: str(config)))
    with pytest.raises(ValueError, match="load_best_model_at_end"):
        accuracy.check_selection(regime)


def test_the_demo_reading_quotes_the_table():
    def entry(policy, score, passes, last=float("nan"), step=float("nan"), fit=float("nan")):
        return {
            "policy": policy,
            "test_accuracy": (score, 0.0),
            "test_last_accuracy": (last, 0.0),
            "selected_step": (step, 0.0),
            "passes_per_step": (passes, 0.0),
            "train_noisy_accuracy": (fit, 0.0),
        }

    summary = [
        entry("adamw_torch", 0.66, 1.0, 0.52, 300, 0.91),
        entry("sam", 0.67, 2.0, 0.64, 700),
        entry("aesam", 0.665, 1.4, 0.58, 500),
    ]
    text = read_out(summary, "test_accuracy", "adamw_torch", 0.4, n_seeds=1)
    assert (
        "adamw_torch scored 66.0% at the checkpoint its validation selected (step 300) and 52.0% at its last" in text
    )
    assert "fit 91% of its training labels" in text and "at most 60%" in text and "It memorized noise." in text
    assert "SAM scored 67.0% at the checkpoint its validation selected (step 700) and 64.0% at its last step" in text
    assert "(+1.0 points at the selected checkpoints) for 2.00" in text
    assert "(+0.5 points, 50% of SAM's gain) for 1.40 passes per step (40% of SAM's" in text
    assert "one seed, so no interval" in text and "tuned AdamW" in text
    # Without selection (no last-step score), each is read at its end; SAM losing is said as plainly.
    summary = [entry("adamw_torch", 0.52, 1.0), entry("sam", 0.50, 2.0)]
    text = read_out(summary, "test_accuracy", "adamw_torch", 0.0, n_seeds=3)
    assert "SAM ended at 50.0% (-2.0 points)" in text and "memorized" not in text and "SAM's gain" not in text


def test_a_study_of_some_regimes_keeps_the_others_with_what_measured_them(monkeypatch, tmp_path):
    monkeypatch.setattr(accuracy, "run_jobs", fake_runs([]))
    for regime in REGIMES.values():
        monkeypatch.setattr(type(regime), "data_flags", lambda self, seed: [])
    common = ["--output_dir", str(tmp_path / "accuracy"), "--seeds", "1", "2", "--smoke"]
    accuracy.main([*common, "--regimes", "text-noisy", "image-clean"])
    # An entry of the earlier study design (read at the last step, no decision) is dropped, not reported.
    path = tmp_path / "accuracy" / "accuracy.json"
    earlier = json.loads(path.read_text())
    earlier["regimes"]["image-underfit"] = {"rho": 0.1, "rho_tuning": {}, "summary": []}
    path.write_text(json.dumps(earlier))
    accuracy.main([*common, "--regimes", "image-noisy", "text-noisy"])
    study = json.loads((tmp_path / "accuracy" / "accuracy.json").read_text())
    assert list(study["regimes"]) == ["image-noisy", "image-clean", "text-noisy"]  # the regimes' own order
    commands = {name: r["measured_by"]["command"] for name, r in study["regimes"].items()}
    assert "--regimes image-noisy text-noisy" in commands["text-noisy"] == commands["image-noisy"]
    assert "--regimes text-noisy image-clean" in commands["image-clean"]  # kept from the first invocation
    # The wall time of the second invocation does not include the kept regime's, and the report says so.
    wall = report.wall_time_section(tmp_path)
    assert "not counted in its own time: image-clean (measured by an earlier invocation)" in wall
    assert "a reused run costs nothing" in wall
    assert "| step_cost | – | – | not run" in wall
    # From scratch, every run counts once, whichever invocation made it: the smoke grids' 2 + 2 + 2 tuning runs and
    # 6 policies x 2 seeds, less seed 1's AdamW, SAM and Momentum-SAM runs (the tuning's winners, reused): 15 runs
    # of 2 s each.
    assert [r["runs_wall_time_s"] for r in study["regimes"].values()] == [30.0, 30.0, 30.0]
    assert report.from_scratch_s(study) == 45.0  # every regime is `make bench`'s: 90 s of runs, two side by side
    assert report.from_scratch_s(study, on_request=True) == 0.0
    # A regime `make bench` does not run counts apart, on its own line.
    study["regimes"]["text-noisy"]["regime"]["default"] = False
    (tmp_path / "accuracy" / "accuracy.json").write_text(json.dumps(study))
    assert report.from_scratch_s(study) == 30.0 and report.from_scratch_s(study, on_request=True) == 15.0
    wall = report.wall_time_section(tmp_path)
    assert "From scratch: **0.5 minutes**" in wall  # the accuracy row alone (no step cost or memory here)
    assert "Measured on request, not by `make bench`: text-noisy, 0.2 minutes from scratch" in wall
    kept = study["regimes"]["image-clean"]
    assert report.measured_by(kept).endswith("on the current code.")
    kept["measured_by"]["code"]["code_sha256"] = "0" * 64
    assert "**on earlier code** (the training code changed since)" in report.measured_by(kept)
    assert "did not record" in report.measured_by({"regime": {"task": "image"}})


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
    """An accuracy.json as the study writes it, two regimes, two seeds, with the seed-1 runs on disk: one regime
    evaluated during training (noisy labels), one not."""
    regimes = {}
    for name, kind, noise, evaluates in (
        ("image-noisy", "overfitting", 0.4, True),
        ("image-clean", "clean", 0.0, False),
    ):
        runs = []
        for policy in ("adamw", "sam", "aesam"):
            run_dir = tmp_path / name / policy / "seed1"
            history = [
                {"step": s, "sam/grad_norm_sq": 1.0 + s % 3, "sam/threshold": 2.0, "sam/fraction": float(s % 3 > 0)}
                for s in range(1, 11)
            ]
            if evaluates:
                history += [{"step": s, "eval_accuracy": 0.3 + s / 100} for s in (5, 10, 10)]  # the last: final eval
                history += [{"step": s, "eval_clean_accuracy": 0.5 + s / 100} for s in (5, 10)]
                history += [{"step": s, "train_subset_accuracy": 0.4 + s / 20} for s in (5, 10)]
            run_dir.mkdir(parents=True)
            (run_dir / "trainer_state.json").write_text(json.dumps({"log_history": history}))
            runs.append({"policy": policy, "seed": 1, "run_dir": str(run_dir)})
        summary = [
            {
                "policy": p,
                "seeds": 2,
                "test_accuracy": (acc, 0.01),
                "test_last_accuracy": (acc - 0.1, 0.02),
                "selected_step": (5.0, 0.0),
                "peak_clean_eval_accuracy": (acc + 0.01, 0.01),
                "train_noisy_accuracy": (0.8, 0.01),
                "sam_fraction": (passes - 1, 0.0),
                "passes_per_step": (passes, 0.0),
            }
            for p, acc, passes in (("adamw", 0.55, 1.0), ("sam", 0.61, 2.0), ("aesam", 0.60, 1.4))
        ]

        def compared(metric):
            return [
                {"a": "sam", "b": "adamw", "n": 2, "mean": 0.06, "low": 0.02, "high": 0.10, "verdict": "sam better"},
                {
                    "a": "aesam",
                    "b": "sam",
                    "n": 2,
                    "mean": -0.01,
                    "low": -0.05,
                    "high": 0.03,
                    "verdict": "no difference",
                },
            ]

        tuning = {"scores": {"0.05": 0.5, "0.1": 0.62, "0.2": 0.6}, "chosen": 0.1, "interior": True, "extensions": 0}
        adamw = {"scores": {"lr0.001-wd0": 0.6}, "chosen": {"learning_rate": 0.001, "weight_decay": 0.0}}
        regimes[name] = {
            "regime": {"kind": kind, "label_noise": noise, "task": "image", "description": name, "config": "x.json"},
            "tuning": {"adamw": {**adamw, "interior": True, "extensions": 0}, "sam": tuning, "msam": tuning},
            "settings": {"learning_rate": 0.001, "weight_decay": 0.0, "sam_rho": 0.1, "msam_rho": 0.1},
            "aesam_fraction": 0.4,
            "matched_budget": 0.4,
            "runs": runs,
            "summary": summary,
            "comparisons": {"test_accuracy": compared("test_accuracy"), "test_last_accuracy": compared("last")},
            "decision": {
                "policy": "aesam" if evaluates else "adamw",
                "passes_per_step": 1.4 if evaluates else 1.0,
                "flags": "--optim aesam --sam_rho 0.1"
                if evaluates
                else "--optim adamw_torch --load_best_model_at_end",
                "against_sam": {"n": 2, "mean": -0.01, "low": -0.05, "high": 0.03, "verdict": "no difference"},
            },
            "trace_run": str(tmp_path / name / "aesam" / "seed1"),
        }
    return {"arguments": {"seeds": [1, 2]}, "regimes": regimes, "environment": {}, "command": "python -m x"}


def test_the_readme_results_say_which_policy_to_use_from_the_study_json(tmp_path):
    table = report.results_table(fake_study(tmp_path), "`accuracy.json`")
    lines = table.splitlines()
    assert lines[0].startswith("<!-- Generated by `python -m benchmarks.report` from `accuracy.json`")
    assert "**Which policy should I use?**" in table
    noisy = next(line for line in lines if line.startswith("| image-noisy (overfitting) |"))
    # SAM − AdamW in bold (its interval excludes 0), AE-SAM − SAM not; the matched controls were not compared here.
    assert noisy == (
        "| image-noisy (overfitting) | **+6.00** [+2.00, +10.00] | AE-SAM (`--optim aesam --sam_rho 0.1`, 1.40 "
        "passes/step; − SAM: -1.00 [-5.00, +3.00]) | -1.00 [-5.00, +3.00] | – | – |"
    )
    clean = next(line for line in lines if line.startswith("| image-clean (clean) |"))
    # Said plainly where AdamW is as good.
    assert "| AdamW with best-checkpoint selection (`--optim adamw_torch" in clean
    accuracies = next(line for line in lines if line.startswith("| image-noisy | "))
    assert accuracies == "| image-noisy | 55.00 ± 1.00 [1.00] | 61.00 ± 1.00 [2.00] | 60.00 ± 1.00 [1.40] |"
    assert "mean ± std over 2 seeds" in table and "(docs/benchmarks.md)" in table


def test_report_draws_one_cost_figure_per_regime_and_no_empty_panel(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study = fake_study(tmp_path)
    saved = []
    real_savefig = plt.Figure.savefig

    def keep(fig, path, **kwargs):  # look at each figure as it is saved
        saved.append((Path(path).name, fig))
        return real_savefig(fig, path, **kwargs)

    figures = tmp_path / "figures"
    figures.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt.Figure, "savefig", keep)
        section = report.accuracy_section(study, figures)
    names = [name for name, _ in saved]
    assert names == [
        "accuracy_vs_cost_image-noisy.png",
        "aesam_decisions_image-noisy.png",
        "accuracy_vs_cost_image-clean.png",
        "aesam_decisions_image-clean.png",
    ]
    cost = dict(saved)["accuracy_vs_cost_image-noisy.png"]
    (ax,) = cost.axes
    assert "selected checkpoint" in ax.get_title() and ax.get_xlabel().startswith("forward/backward passes")
    assert len(dict(saved)["aesam_decisions_image-noisy.png"].axes) == 2
    assert len(dict(saved)["aesam_decisions_image-clean.png"].axes) == 1  # no evaluations: no empty second panel
    # The curves show validation on the true labels where the selection set is noisy; the final evaluation
    # repeats the last step and is drawn once.
    curve = report.curves(tmp_path / "image-noisy" / "sam" / "seed1")
    assert curve["validation_step"] == [5, 10] and curve["validation"] == [0.55, 0.6] and curve["step"] == [5, 10]
    assert "Cheapest policy whose selected-checkpoint accuracy is not below SAM's: **AE-SAM**" in section
    assert "**AdamW with best-checkpoint selection**" in section
    assert "| AdamW (tuned) (`adamw`) | 55.00 ± 1.00 | 45.00 ± 2.00 | 5 | 56.00 ± 1.00 |" in section
    assert (
        "| sam − adamw | 2 | **+6.00** [+2.00, +10.00] | sam better | **+6.00** [+2.00, +10.00] | sam better |"
        in section
    )
