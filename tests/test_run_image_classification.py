"""`examples/run_image_classification.py` end to end on tiny slices of real and built data, and what it carries
inline: the transforms and the accuracy metric's fallback. The Fashion-MNIST subsets it reads are built and tested in
`benchmarks/fashion_mnist.py` and `test_data_builders.py`.
"""

import json
import logging

import huggingface_hub.constants
import numpy as np
import pytest
from distributed.launching import MULTI_CPU_CONFIG, accelerate_launch
from example_utils import EXAMPLES, EXPERIMENTS, QUIET, assert_two_ranks_ran, load_example, require_fashion_mnist
from testing_utils import tiny_vit_config
from transformers import ViTForImageClassification, ViTImageProcessor


run_image_classification = load_example("run_image_classification")


def image_args(output_dir, *extra) -> list[str]:
    return [str(a) for a in ["--do_train", "--do_eval", "--output_dir", output_dir, *QUIET, *extra]]


@pytest.fixture(scope="module")
def noisy_fashion_mnist(tmp_path_factory):
    """A small noisy Fashion-MNIST dataset folder, as `python -m benchmarks.fashion_mnist` writes them."""
    from benchmarks import fashion_mnist

    out = tmp_path_factory.mktemp("fashion-mnist")
    flags = ["--train_samples", "256", "--validation_samples", "64", "--test_samples", "64", "--label_noise", "0.4"]
    return fashion_mnist.main(["--output_dir", str(out), "--seeds", "42", *flags])[42]


@require_fashion_mnist
def test_run_image_classification_on_a_noisy_dataset_folder_watches_memorization(noisy_fashion_mnist, tmp_path):
    run = ["--do_predict", "--max_steps", "6", "--per_device_train_batch_size", "32", "--optim", "aelooksam"]
    during = ["--eval_strategy", "steps", "--eval_steps", "3", "--eval_train_samples", "40"]
    data = ["--dataset_name", noisy_fashion_mnist]
    metrics = run_image_classification.main(image_args(tmp_path, *data, *run, *during))
    assert metrics["train_samples"] == 256 and metrics["test_samples"] == 64
    assert {"eval_accuracy", "test_accuracy", "sam/fraction_total", "train_subset_accuracy"} <= set(metrics)
    # The training subset was scored at each evaluation during training (`aesam_hf.callbacks.TrainSubsetCallback`).
    history = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "train_subset_accuracy" in e] == [3, 6]
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

    data = ["--train_dir", tmp_path / "train", "--validation_dir", tmp_path / "val"]
    model = ["--model_name_or_path", pretrained, "--ignore_mismatched_sizes"]
    run = ["--max_steps", "3", "--per_device_train_batch_size", "4", "--optim", "sam", "--learning_rate", "1e-2"]
    metrics = run_image_classification.main(image_args(tmp_path / "out", *data, *model, *run))
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
    data = ["--dataset_name", "someone/colours", "--image_column_name", "img", "--train_val_split", "0.25"]
    run = ["--max_steps", "2", "--per_device_train_batch_size", "6", "--config_overrides", "patch_size=4"]
    metrics = run_image_classification.main(image_args(tmp_path, *data, *run))
    assert metrics["train_samples"] == 18 and metrics["eval_samples"] == 6  # stratified 25% held out
    model = ViTForImageClassification.from_pretrained(tmp_path)
    assert model.config.id2label == {0: "3", 1: "7"} and model.config.num_channels == 3


def fake_hub_splits(monkeypatch) -> list[str]:
    """Flags for a short run on in-memory train/validation/test splits of dark and light 12x12 images, their labels
    ClassLabels (as in the folders of `benchmarks.fashion_mnist`). Every validation label is the wrong one, the true
    one kept as `clean_label`; 15 validation images, so that an accuracy is never 1/2."""
    from datasets import ClassLabel, Dataset, DatasetDict

    classes = ClassLabel(names=["dark", "light"])

    def load(*args, **kwargs) -> DatasetDict:
        # Built anew (from the same seed) for each run: the script sets transforms on the splits it loads.
        rng = np.random.default_rng(0)

        def split(true: list[int], given: list[int]) -> Dataset:
            images = [np.clip(40 + 160 * y + rng.normal(0, 20, (12, 12, 3)), 0, 255).astype(np.uint8) for y in true]
            columns = {"image": images, "label": given, "clean_label": true}
            return Dataset.from_dict(columns).cast_column("label", classes).cast_column("clean_label", classes)

        true = [0] * 10 + [1] * 5
        wrong = [1 - y for y in true]
        return DatasetDict(
            train=split([0, 1] * 12, [0, 1] * 12), validation=split(true, wrong), test=split(true, true)
        )

    monkeypatch.setattr(run_image_classification, "load_dataset", load)
    run = ["--dataset_name", "someone/shades", "--config_overrides", "patch_size=4", "--optim", "sam"]
    during = ["--eval_strategy", "steps", "--eval_steps", "1", "--save_steps", "1", "--max_steps", "2"]
    batches = ["--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16"]
    return [*run, *during, *batches, "--learning_rate", "3e-3", "--do_predict"]


def test_run_image_classification_scores_the_true_validation_labels_and_the_last_model(tmp_path, monkeypatch):
    run = [*fake_hub_splits(monkeypatch), "--clean_label_column_name", "clean_label"]
    best = ["--load_best_model_at_end", "--metric_for_best_model", "accuracy", "--test_last_model"]
    selected = run_image_classification.main(image_args(tmp_path / "best", *run, *best))
    # The same run without best-model loading: it predicts with the model training ended with.
    last = run_image_classification.main(image_args(tmp_path / "last", *run))
    assert selected["test_last_accuracy"] == last["test_accuracy"]
    assert selected["test_last_loss"] == last["test_loss"]
    assert "test_last_accuracy" in json.loads((tmp_path / "best" / "all_results.json").read_text())
    assert "test_last_accuracy" not in last
    state = json.loads((tmp_path / "best" / "trainer_state.json").read_text())
    # The selected checkpoint is not the last one, and it is what the run's own `test_*` scores.
    assert state["best_global_step"] == 1 and selected["test_loss"] != selected["test_last_loss"]
    history = state["log_history"]
    assert [e["step"] for e in history if "test_last_accuracy" in e] == [2]
    # Every evaluation, the last step's included, also scored the true labels: the complement of the given ones.
    evals = [e for e in history if "eval_accuracy" in e]
    cleans = [e for e in history if "eval_clean_accuracy" in e]
    assert [e["step"] for e in evals] == [e["step"] for e in cleans] == [1, 2]
    for e, c in zip(evals, cleans, strict=True):
        assert c["eval_clean_accuracy"] == pytest.approx(1 - e["eval_accuracy"], abs=1e-9)
    assert selected["eval_clean_accuracy"] == pytest.approx(1 - selected["eval_accuracy"], abs=1e-9)


def test_run_image_classification_clean_label_column_must_exist(tmp_path, monkeypatch):
    run = [*fake_hub_splits(monkeypatch), "--clean_label_column_name", "true_label"]
    # (Backquoted: the script's own message, not the argument parser's about an unknown flag.)
    with pytest.raises(ValueError, match=r"`clean_label_column_name` \('true_label'\)"):
        run_image_classification.main(image_args(tmp_path, *run))


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
    main, out = run_image_classification.main, ["--output_dir", str(tmp_path)]
    with pytest.raises(ValueError, match="--dataset_name"):
        main(out)
    with pytest.raises(ValueError, match="train_dir"):
        main(["--dataset_name", "x", "--train_dir", "y", *out])
    with pytest.raises(ValueError, match="eval_train_samples"):
        main(["--dataset_name", "x", "--eval_train_samples", "-1", *out])
    with pytest.raises(ValueError, match="config_overrides"):
        main(["--dataset_name", "x", "--model_name_or_path", "m", "--config_overrides", "hidden_size=8", *out])


def test_accuracy_metric_is_computed_locally_offline_or_when_evaluate_fails(monkeypatch, caplog):
    import evaluate

    calls = []

    def unreachable(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(evaluate, "load", unreachable)
    preds, labels = np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert run_image_classification.load_accuracy_metric()(preds, labels) == {"accuracy": 0.75}
    assert calls == []  # declared offline: not even tried
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with caplog.at_level(logging.WARNING):
        assert run_image_classification.load_accuracy_metric()(preds, labels) == {"accuracy": 0.75}
    assert calls == [("accuracy",)] and "ConnectionError" in caplog.text


# ---- under `accelerate launch`, 2 CPU processes ----


@require_fashion_mnist
@pytest.mark.distributed
def test_run_image_classification_under_accelerate_launch_two_cpu_processes(noisy_fashion_mnist, tmp_path):
    run = ["--optim", "aelooksam", "--max_steps", "4", "--per_device_train_batch_size", "16", "--use_cpu", "true"]
    data = ["--dataset_name", noisy_fashion_mnist, "--max_predict_samples", "64"]
    args = [EXPERIMENTS / "image_fashion_mnist_vit.json", *data, *run, "--output_dir", tmp_path, *QUIET]
    job = accelerate_launch(EXAMPLES / "run_image_classification.py", args, config_file=MULTI_CPU_CONFIG, timeout=300)
    assert_two_ranks_ran(job, tmp_path, steps=4)


def test_run_image_classification_refuses_a_clean_label_column_without_values(tmp_path, monkeypatch):
    # `load_dataset` gives every split the columns of any of them: a training split alone with true labels leaves
    # the validation split's column empty, which would score nothing.
    from datasets import Dataset, DatasetDict

    images = [np.full((12, 12, 3), 40 + 160 * y, dtype=np.uint8) for y in [0, 1] * 6]
    train = Dataset.from_dict({"image": images, "label": [0, 1] * 6, "clean_label": [0, 1] * 6})
    validation = Dataset.from_dict({"image": images[:4], "label": [0, 1] * 2, "clean_label": [None] * 4})
    hub = DatasetDict(train=train, validation=validation)
    monkeypatch.setattr(run_image_classification, "load_dataset", lambda *args, **kwargs: hub)
    run = ["--dataset_name", "someone/shades", "--max_steps", "1", "--clean_label_column_name", "clean_label"]
    with pytest.raises(ValueError, match=r"`clean_label_column_name` \('clean_label'\) has no value for 4 of the 4"):
        run_image_classification.main(image_args(tmp_path, *run))


def test_run_image_classification_numbers_plain_clean_labels_as_the_label_classes(tmp_path, monkeypatch):
    # Plain int labels 3 and 7 become classes 0 and 1; the true labels, plain ints too, must be numbered alike.
    from datasets import Dataset, DatasetDict

    rng = np.random.default_rng(0)
    true = [3, 7] * 8
    images = [np.clip(40 + 160 * (y == 7) + rng.normal(0, 20, (12, 12, 3)), 0, 255).astype(np.uint8) for y in true]
    wrong = [10 - y for y in true]  # every validation label the other class
    hub = DatasetDict(
        train=Dataset.from_dict({"img": images, "label": true, "clean_label": true}),
        validation=Dataset.from_dict({"img": images[:10], "label": wrong[:10], "clean_label": true[:10]}),
    )
    monkeypatch.setattr(run_image_classification, "load_dataset", lambda *args, **kwargs: hub)
    data = ["--dataset_name", "someone/colours", "--image_column_name", "img", "--config_overrides", "patch_size=4"]
    run = ["--max_steps", "2", "--per_device_train_batch_size", "8", "--clean_label_column_name", "clean_label"]
    metrics = run_image_classification.main(image_args(tmp_path, *data, *run))
    assert metrics["eval_clean_accuracy"] == pytest.approx(1 - metrics["eval_accuracy"], abs=1e-9)
