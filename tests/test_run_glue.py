"""`examples/run_glue.py` end to end on tiny slices of the real local data, its metrics, and its input checks.

The script runs in-process through its `main(argv)` (fast, and the Hub can be replaced by a recorder for the
`push_to_hub` test); under `accelerate launch` it runs as users run it.
"""

import json
import logging
import pathlib
import re

import huggingface_hub.constants
import numpy as np
import pytest
from distributed.launching import MULTI_CPU_CONFIG, accelerate_launch
from example_utils import (
    EXAMPLES,
    QUIET,
    assert_two_ranks_ran,
    load_example,
    minilm_path,
    require_fortunes,
    write_csv,
)
from transformers import BertForSequenceClassification, PretrainedConfig

from benchmarks.fortunes import DEFAULT_TOPICS


run_glue = load_example("run_glue")


def glue_args(model_dir, csv, output_dir, *extra) -> list[str]:
    """A short run on the fortunes CSVs: train, evaluate and predict on a few examples, every step logged."""
    data = ["--train_file", csv["train"], "--validation_file", csv["validation"], "--test_file", csv["test"]]
    samples = ["--max_train_samples", "64", "--max_eval_samples", "32", "--max_predict_samples", "16"]
    shape = ["--max_seq_length", "32", "--pad_to_max_length", "false", "--per_device_train_batch_size", "8"]
    run = ["--do_train", "--do_eval", "--do_predict", "--output_dir", output_dir, "--logging_steps", "1"]
    return [str(a) for a in ["--model_name_or_path", model_dir, *data, *samples, *shape, *run, *QUIET, *extra]]


def file_args(model_dir, train, validation, test, output_dir, *extra) -> list[str]:
    """A run on hand-written CSVs whose labels need not be those of the model's head."""
    data = ["--train_file", train, "--validation_file", validation] + (["--test_file", test] if test else [])
    model = ["--model_name_or_path", model_dir, "--ignore_mismatched_sizes"]
    return [str(a) for a in [*model, *data, "--output_dir", output_dir, *QUIET, *extra]]


@require_fortunes
def test_run_glue_on_fortunes_csv_with_tiny_bert(fortunes_csv, tiny_bert_dir, tmp_path):
    metrics = run_glue.main(glue_args(tiny_bert_dir, fortunes_csv, tmp_path, "--optim", "aesam", "--max_steps", "6"))
    assert metrics["sam/passes"] == 6 + round(6 * metrics["sam/fraction_total"])
    for key in ("eval_accuracy", "train_runtime", "sam/fraction_total"):
        assert key in json.loads((tmp_path / "all_results.json").read_text())
    lines = (tmp_path / "predict_results_test.txt").read_text().splitlines()
    topics = set(DEFAULT_TOPICS)
    assert len(lines) == 17 and all(line.split("\t")[1] in topics for line in lines[1:])
    assert 0.0 <= metrics["test_accuracy"] <= 1.0  # the test CSV has labels: they are scored
    config = json.loads((tmp_path / "config.json").read_text())
    assert sorted(config["label2id"]) == sorted(topics)
    card = (tmp_path / "README.md").read_text()
    assert "- sam-policy-aesam" in card and f"SAM fraction: {metrics['sam/fraction_total']:.3f}" in card
    # The log history reaches a file: the benchmarks read every step's `sam/*` values from it.
    history = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
    assert len([h for h in history if "sam/passes" in h and "train_runtime" not in h]) == 6


@require_fortunes
def test_run_glue_scores_a_training_subset_against_its_labels_at_every_evaluation(
    fortunes_csv, tiny_bert_dir, tmp_path
):
    during = ["--eval_strategy", "steps", "--eval_steps", "2", "--eval_train_samples", "16", "--max_steps", "4"]
    metrics = run_glue.main(glue_args(tiny_bert_dir, fortunes_csv, tmp_path, "--optim", "sam", *during))
    history = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
    # `aesam_hf.callbacks.TrainSubsetCallback`: once per evaluation, and in the final metrics.
    assert [e["step"] for e in history if "train_subset_accuracy" in e] == [2, 4]
    assert 0.0 <= metrics["train_subset_accuracy"] <= 1.0 and "eval_accuracy" in metrics


@require_fortunes
@pytest.mark.slow
def test_run_glue_fine_tunes_pretrained_minilm(fortunes_csv, tmp_path):
    extra = ["--optim", "sam", "--max_steps", "3", "--gradient_accumulation_steps", "2"]
    metrics = run_glue.main(
        glue_args(minilm_path(), fortunes_csv, tmp_path, *extra, "--per_device_train_batch_size", "4")
    )
    assert metrics["sam/passes"] == 6 and metrics["sam/fraction_total"] == 1.0
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    # The pretrained encoder is loaded, not re-initialised: its weights are the package's.
    tuned = BertForSequenceClassification.from_pretrained(tmp_path)
    original = BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=4)
    emb = "bert.embeddings.word_embeddings.weight"
    assert (tuned.state_dict()[emb] - original.state_dict()[emb]).abs().max() < 1e-2


@require_fortunes
def test_run_glue_freeze_input_embeddings_keeps_them_and_trains_the_rest(fortunes_csv, tiny_bert_dir, tmp_path):
    extra = ["--optim", "sam", "--max_steps", "3", "--freeze_input_embeddings", "true", "--learning_rate", "1e-2"]
    run_glue.main(glue_args(tiny_bert_dir, fortunes_csv, tmp_path, *extra))
    tuned = BertForSequenceClassification.from_pretrained(tmp_path).state_dict()
    original = BertForSequenceClassification.from_pretrained(tiny_bert_dir).state_dict()
    # SAM perturbs and restores only what trains: the frozen table comes back bit for bit, the encoder moved.
    assert tuned["bert.embeddings.word_embeddings.weight"].equal(original["bert.embeddings.word_embeddings.weight"])
    layer = "bert.encoder.layer.0.attention.self.query.weight"
    assert not tuned[layer].equal(original[layer])


@require_fortunes
def test_run_glue_resumes_from_the_last_checkpoint(fortunes_csv, tiny_bert_dir, tmp_path, caplog):
    run_glue.main(glue_args(tiny_bert_dir, fortunes_csv, tmp_path, "--max_steps", "4", "--save_steps", "2"))
    assert (tmp_path / "checkpoint-4" / "sam_state.pt").is_file()
    with caplog.at_level(logging.INFO):
        metrics = run_glue.main(
            glue_args(tiny_bert_dir, fortunes_csv, tmp_path, "--max_steps", "6", "--save_steps", "2")
        )
    assert "resuming training at" in caplog.text and "checkpoint-4" in caplog.text
    # The Trainer itself resumed (not only our message): it restored the state of checkpoint-4 and skipped to step 4.
    assert "Resuming training from checkpoint with epoch" in caplog.text and "global step 4" in caplog.text
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    # The SAM counters came back from the checkpoint: the totals cover all 6 steps, not the 2 run after resuming.
    assert metrics["sam/passes"] == 6 + round(6 * metrics["sam/fraction_total"])


@require_fortunes
def test_run_glue_test_last_model_scores_the_model_training_ended_with(fortunes_csv, tiny_bert_dir, tmp_path):
    """With `--load_best_model_at_end`, `test_last_*` is the test score of the last model: the one the same run
    without best-model loading predicts with."""
    during = ["--eval_strategy", "steps", "--eval_steps", "2", "--save_steps", "2", "--max_steps", "4"]
    # The fortunes CSVs keep the true topic as `clean_label`: here the same as `label` (no noise).
    run = ["--optim", "sam", "--learning_rate", "3e-2", *during, "--clean_label_column_name", "clean_label"]
    best = ["--load_best_model_at_end", "--metric_for_best_model", "accuracy", "--test_last_model"]
    run_glue.main(glue_args(tiny_bert_dir, fortunes_csv, tmp_path / "best", *run, *best))
    run_glue.main(glue_args(tiny_bert_dir, fortunes_csv, tmp_path / "last", *run))
    selected, last = (json.loads((tmp_path / d / "all_results.json").read_text()) for d in ("best", "last"))
    assert selected["test_last_accuracy"] == last["test_accuracy"]
    assert selected["test_last_loss"] == last["test_loss"]
    assert "test_last_accuracy" not in last
    state = json.loads((tmp_path / "best" / "trainer_state.json").read_text())
    # The selected checkpoint is not the last one, and it is what the run's own `test_*` scores.
    assert state["best_global_step"] == 2 and selected["test_loss"] != selected["test_last_loss"]
    history = state["log_history"]
    assert [e["step"] for e in history if "test_last_accuracy" in e] == [4]
    # Every evaluation, the last step's included, also scored the true labels.
    evals = [e for e in history if "eval_accuracy" in e]
    cleans = [e for e in history if "eval_clean_accuracy" in e]
    assert [e["step"] for e in evals] == [e["step"] for e in cleans] == [2, 4]
    assert all(c["eval_clean_accuracy"] == e["eval_accuracy"] for e, c in zip(evals, cleans, strict=True))


def test_run_glue_scores_the_true_validation_labels_at_every_evaluation(tiny_bert_dir, tmp_path):
    header = [("sentence", "label", "clean_label")]
    rows = [(f"good {i}", "pos", "pos") for i in range(8)] + [(f"bad {i}", "neg", "neg") for i in range(8)]
    train = write_csv(tmp_path / "train.csv", header + rows)
    # Every validation label is the wrong one, and 15 examples (an accuracy is never 1/2): scored on the true labels,
    # the accuracy is the complement of the one on the given labels.
    wrong = [(f"good {i}", "neg", "pos") for i in range(10)] + [(f"bad {i}", "pos", "neg") for i in range(5)]
    validation = write_csv(tmp_path / "validation.csv", header + wrong)
    during = [
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--max_steps",
        "4",
        "--per_device_train_batch_size",
        "8",
    ]
    run = ["--do_train", "--do_eval", *during, "--max_seq_length", "16", "--clean_label_column_name", "clean_label"]
    metrics = run_glue.main(file_args(tiny_bert_dir, train, validation, None, tmp_path / "out", *run))
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    evals = [e for e in history if "eval_accuracy" in e]
    cleans = [e for e in history if "eval_clean_accuracy" in e]
    assert [e["step"] for e in evals] == [e["step"] for e in cleans] == [2, 4]
    for e, c in zip(evals, cleans, strict=True):
        assert c["eval_clean_accuracy"] == pytest.approx(1 - e["eval_accuracy"], abs=1e-9)
    assert metrics["eval_clean_accuracy"] == pytest.approx(1 - metrics["eval_accuracy"], abs=1e-9)
    assert "eval_clean_accuracy" in json.loads((tmp_path / "out" / "all_results.json").read_text())


def test_run_glue_new_flags_name_themselves_in_their_errors(tiny_bert_dir, tmp_path):
    rows = [("sentence", "label")] + [(f"good {i}", "pos") for i in range(4)] + [(f"bad {i}", "neg") for i in range(4)]
    train = write_csv(tmp_path / "train.csv", rows)
    # (Backquoted: the script's own message, not the argument parser's about an unknown flag.)
    with pytest.raises(ValueError, match=r"`clean_label_column_name` \('x'\)"):
        run_glue.main(
            file_args(tiny_bert_dir, train, train, None, tmp_path / "a", "--do_eval", "--clean_label_column_name", "x")
        )
    unlabelled = write_csv(tmp_path / "test.csv", [("sentence", "label"), ("x", -1), ("y", -1)])
    run = ["--do_train", "--do_predict", "--max_steps", "1", "--test_last_model"]
    with pytest.raises(ValueError, match=r"`test_last_model` \(True\)"):
        run_glue.main(file_args(tiny_bert_dir, train, train, unlabelled, tmp_path / "b", *run))


def test_sentence_keys_never_read_a_label_column_as_text():
    # The fortunes CSVs: the true topic beside the (noisy) label is no second sentence.
    assert run_glue.sentence_keys(None, ["sentence", "label", "clean_label"]) == ("sentence", None)
    assert run_glue.sentence_keys(None, ["noisy_label", "text", "label"]) == ("text", None)
    assert run_glue.sentence_keys(None, ["question", "clean_label", "answer", "label"]) == ("question", "answer")
    assert run_glue.sentence_keys(None, ["sentence", "label"]) == ("sentence", None)
    with pytest.raises(ValueError, match="train_file"):
        run_glue.sentence_keys(None, ["label", "clean_label"])


class RecordingHub:
    """Stands in for `huggingface_hub.HfApi` (the Hub is unreachable here): records what would be uploaded."""

    def __init__(self):
        self.repos, self.uploads = [], []

    def create_repo(self, repo_id, **kwargs):
        self.repos.append(repo_id)
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, **kwargs):
        folder = pathlib.Path(folder_path)
        files = sorted(p.name for p in folder.iterdir())
        self.uploads.append({"repo_id": repo_id, "files": files, "card": (folder / "README.md").read_text()})
        return None


@require_fortunes
def test_run_glue_push_to_hub_uploads_model_and_card(fortunes_csv, tiny_bert_dir, tmp_path, monkeypatch):
    import transformers.trainer

    hub = RecordingHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    push = ["--push_to_hub", "--hub_model_id", "someone/minilm-fortunes-aesam"]
    args = glue_args(tiny_bert_dir, fortunes_csv, tmp_path, "--optim", "aesam", "--max_steps", "4", *push)
    metrics = run_glue.main([*args, "--save_strategy", "no"])
    assert hub.repos == ["someone/minilm-fortunes-aesam"]
    final = hub.uploads[-1]  # the end of training; `hub_strategy="every_save"` may push earlier ones
    assert final["repo_id"] == "someone/minilm-fortunes-aesam"
    assert {"model.safetensors", "config.json", "tokenizer.json", "all_results.json"} <= set(final["files"])
    card = final["card"]
    expected = ["- aesam", "- sam-policy-aesam", "`aesam` policy", "SAM radius rho: 0.05", "aesam_delta=0.9"]
    for line in [*expected, f"SAM fraction: {metrics['sam/fraction_total']:.3f}"]:
        assert line in card, line


def test_run_glue_regression_csv_reports_mse_and_writes_values(tiny_bert_dir, tmp_path):
    header = [("sentence", "label")]
    train = write_csv(tmp_path / "train.csv", header + [(f"sentence number {i}", i / 10) for i in range(16)])
    test = write_csv(tmp_path / "test.csv", header + [("another sentence", 0.5), ("and one more", 1.5)])
    run = ["--do_train", "--do_eval", "--do_predict", "--max_steps", "2", "--per_device_train_batch_size", "8"]
    metrics = run_glue.main(
        file_args(tiny_bert_dir, train, train, test, tmp_path / "out", *run, "--max_seq_length", "16")
    )
    assert "eval_mse" in metrics and "test_mse" in metrics and "eval_accuracy" not in metrics
    lines = (tmp_path / "out" / "predict_results_test.txt").read_text().splitlines()
    assert len(lines) == 3 and re.fullmatch(r"1\t-?\d+\.\d{3}", lines[2])


def test_run_glue_test_file_without_labels_is_predicted_not_scored(tiny_bert_dir, tmp_path):
    rows = [("sentence", "label")] + [(f"good {i}", "pos") for i in range(8)] + [(f"bad {i}", "neg") for i in range(8)]
    train = write_csv(tmp_path / "train.csv", rows)
    run = ["--do_train", "--do_predict", "--max_steps", "1", "--per_device_train_batch_size", "8"]
    # GLUE's convention (-1) and an empty label column both mean "unknown".
    for name, test_rows in {"minus_one": [("x", -1), ("y", -1)], "empty": [("x", ""), ("y", "")]}.items():
        test = write_csv(tmp_path / f"{name}.csv", [("sentence", "label")] + test_rows)
        out = tmp_path / name
        metrics = run_glue.main(file_args(tiny_bert_dir, train, train, test, out, *run, "--max_seq_length", "16"))
        assert not any(k.startswith("test_") for k in metrics), name
        lines = (out / "predict_results_test.txt").read_text().splitlines()
        assert [line.split("\t")[1] in ("pos", "neg") for line in lines[1:]] == [True, True], name


def test_run_glue_label_missing_from_training_is_an_error(tiny_bert_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", [("sentence", "label"), ("a", "pos"), ("b", "neg")])
    validation = write_csv(tmp_path / "validation.csv", [("sentence", "label"), ("c", "neutral")])
    with pytest.raises(ValueError, match="'neutral' is not among the training labels"):
        run_glue.main(file_args(tiny_bert_dir, train, validation, None, tmp_path / "out", "--do_eval"))


def test_run_glue_keeps_a_pretrained_classifier_label_order():
    """As transformers' run_glue: a checkpoint whose labels match (in another order) keeps its ids."""
    config = PretrainedConfig(id2label={0: "POS", 1: "NEG"}, label2id={"POS": 0, "NEG": 1})
    assert run_glue.label_mapping(config, ["neg", "pos"], ["neg", "pos"]) == {"neg": 1, "pos": 0}
    # GLUE: raw labels are ClassLabel ids 0..K-1, mapped through the names.
    assert run_glue.label_mapping(config, ["neg", "pos"], [0, 1]) == {0: 1, 1: 0}
    fresh = PretrainedConfig(num_labels=2)
    assert run_glue.label_mapping(fresh, ["neg", "pos"], ["neg", "pos"]) == {"neg": 0, "pos": 1}


def test_run_glue_errors_name_the_argument(tmp_path):
    sst2 = ["--model_name_or_path", "x", "--task_name", "sst2", "--output_dir", str(tmp_path)]
    with pytest.raises(ValueError, match="--train_file"):
        run_glue.main(["--model_name_or_path", "x", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="task_name"):
        run_glue.main(["--model_name_or_path", "x", "--task_name", "imdb", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="max_train_samples"):
        run_glue.main([*sst2, "--max_train_samples", "0"])
    with pytest.raises(ValueError, match="sam_rho"):
        run_glue.main([*sst2, "--optim", "sam", "--sam_rho", "-1"])


def test_every_glue_task_has_keys_and_metrics():
    assert set(run_glue.TASK_TO_KEYS) == set(run_glue.GLUE_TASK_METRICS)


# ---- metrics ----


def test_glue_metrics_fall_back_to_sklearn_offline(monkeypatch, caplog):
    import evaluate

    def offline(*args, **kwargs):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(evaluate, "load", offline)
    # Not declared offline: evaluate is tried, and fails.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    preds, labels = np.array([1, 0, 1, 1, 0, 1]), np.array([1, 0, 0, 1, 1, 1])
    with caplog.at_level(logging.WARNING):
        mrpc = run_glue.load_glue_metric("mrpc")(preds, labels)
    assert "could not load" in caplog.text and "ConnectionError" in caplog.text
    # tp=3, fp=1, fn=1: precision = recall = 3/4, so F1 = 3/4; 4 of 6 right.
    assert mrpc == pytest.approx({"accuracy": 4 / 6, "f1": 0.75})
    # Matthews = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (3 - 1) / sqrt(4*4*2*2) = 0.25
    assert run_glue.load_glue_metric("cola")(preds, labels) == pytest.approx({"matthews_correlation": 0.25})
    x, y = np.array([0.1, 0.4, 0.3, 0.9]), np.array([0.0, 0.5, 0.2, 1.0])
    stsb = run_glue.load_glue_metric("stsb")(x, y)
    assert stsb["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert stsb["spearmanr"] == pytest.approx(1.0)  # same order
    mse = run_glue.load_glue_metric(None, is_regression=True)(x, y)
    assert mse == pytest.approx({"mse": 0.01})  # every error is 0.1


def test_glue_metrics_use_evaluate_when_it_loads(monkeypatch):
    import evaluate

    class Loaded:
        def compute(self, predictions, references):
            return {"accuracy": 0.5}

    calls = []
    monkeypatch.setattr(evaluate, "load", lambda *args, **kwargs: calls.append(args) or Loaded())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert run_glue.load_glue_metric("sst2")(np.array([1]), np.array([1])) == {"accuracy": 0.5}
    assert calls == [("glue", "sst2")]
    # Declared offline (`HF_HUB_OFFLINE=1`, as huggingface_hub reads it): not even tried.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert run_glue.load_glue_metric("sst2")(np.array([1]), np.array([0])) == {"accuracy": 0.0}
    assert calls == [("glue", "sst2")]
    with pytest.raises(ValueError, match="task_name"):
        run_glue.load_glue_metric("imdb")


# ---- under `accelerate launch`, 2 CPU processes ----


@require_fortunes
@pytest.mark.distributed
def test_run_glue_under_accelerate_launch_two_cpu_processes(fortunes_csv, tiny_bert_dir, tmp_path):
    args = glue_args(
        tiny_bert_dir, fortunes_csv, tmp_path, "--optim", "aesam", "--max_steps", "4", "--use_cpu", "true"
    )
    job = accelerate_launch(EXAMPLES / "run_glue.py", args, config_file=MULTI_CPU_CONFIG, timeout=300)
    assert_two_ranks_ran(job, tmp_path, steps=4)
