"""Checkpoint weights load completely, or loading stops with an error (`aesam_hf.weights`).

transformers 5.x saves a ViT under its legacy key names, which the stock Trainer's loaders (`resume_from_checkpoint`,
`load_best_model_at_end`) do not map back: they log the keys and keep the encoder they had. BERT, whose names
round-trip, is the control. Every model here starts from another seed than the run it continues, so a tensor that did
not load shows.
"""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from testing_utils import (
    CPU_TEST_ARGS,
    MLPRegressionModel,
    TokenDataset,
    get_config,
    get_trainer,
    tiny_bert,
    tiny_vit,
)
from transformers import Trainer, TrainerCallback, TrainingArguments, ViTForImageClassification

from aesam_hf import AESAMTrainer
from aesam_hf.weights import load_checkpoint_weights


class ImageDataset(torch.utils.data.Dataset):
    """Random 1x8x8 images with random labels among the tiny ViT's 3 classes."""

    def __init__(self, length: int = 32, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.pixels = torch.randn(length, 1, 8, 8, generator=gen)
        self.labels = torch.randint(0, 3, (length,), generator=gen)

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, i):
        return {"pixel_values": self.pixels[i], "labels": self.labels[i]}


MODELS = {"vit": (tiny_vit, ImageDataset), "bert": (tiny_bert, TokenDataset)}
# The legacy name transformers 5.x writes for `vit.layers.0.attention.k_proj.weight`.
SAVED_KEY, MODEL_KEY = "vit.encoder.layer.0.attention.attention.key.weight", "vit.layers.0.attention.k_proj.weight"


class StepCounter(TrainerCallback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def assert_same_weights(model: torch.nn.Module, reference: dict[str, torch.Tensor], what: str) -> None:
    ours = model.state_dict()
    assert ours.keys() == reference.keys(), what
    for name, tensor in reference.items():
        assert torch.equal(ours[name], tensor), f"{what}: {name} differs"


def train(output_dir, model, train_dataset, resume: str | None = None, **kwargs) -> AESAMTrainer:
    trainer = get_trainer(output_dir, model=model, train_dataset=train_dataset, **kwargs)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_the_stock_trainer_loads_a_vit_checkpoint_without_its_encoder(tmp_path):
    """The upstream fault (README, "Known issues"). If this fails, transformers loads these checkpoints completely
    again: the known issue and its test can go."""
    common = {**CPU_TEST_ARGS, "max_steps": 2, "save_strategy": "steps", "save_steps": 2}
    Trainer(
        model=tiny_vit(), args=TrainingArguments(tmp_path / "full", **common), train_dataset=ImageDataset()
    ).train()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    saved = ViTForImageClassification.from_pretrained(checkpoint).state_dict()
    model = tiny_vit(seed=1)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    stock = Trainer(model=model, args=TrainingArguments(tmp_path / "stock", **common))
    stock._load_from_checkpoint(str(checkpoint))
    for name, tensor in model.state_dict().items():
        kept = ".layers." in name  # the encoder: saved under its legacy names
        assert torch.equal(tensor, initial[name] if kept else saved[name]), name


@pytest.mark.parametrize("optim", ["aesam", "adamw_torch"])
@pytest.mark.parametrize("name", ["vit", "bert"])
def test_resume_equals_the_uninterrupted_run(tmp_path, name, optim):
    make, data = MODELS[name]
    common = dict(optim=optim, max_steps=4, save_strategy="steps", save_steps=2)
    full = make()
    train(tmp_path / "full", full, data(), **common)
    resumed = make(seed=1)
    train(tmp_path / "resumed", resumed, data(), resume=str(tmp_path / "full" / "checkpoint-2"), **common)
    assert_same_weights(resumed, full.state_dict(), f"{name} resumed at step 2 of 4")


def test_load_best_model_at_end_loads_the_best_checkpoint(tmp_path):
    args = get_config(
        tmp_path,
        max_steps=8,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
    )
    trainer = AESAMTrainer(
        model=tiny_vit(), args=args, train_dataset=ImageDataset(), eval_dataset=ImageDataset(16, seed=1)
    )
    trainer.train()
    best, last = trainer.state.best_model_checkpoint, str(tmp_path / "checkpoint-8")
    # The random labels of the evaluation set are overfit against: the best checkpoint is an early one.
    assert best is not None and best != last, [h.get("eval_loss") for h in trainer.state.log_history]
    with torch.no_grad():
        differs = any(not torch.equal(a, b) for a, b in zip(trainer.model.parameters(), tiny_vit().parameters()))
    assert differs  # the model trained
    assert_same_weights(trainer.model, ViTForImageClassification.from_pretrained(best).state_dict(), best)


def _rewrite(path, edit) -> None:
    state = load_file(path)
    tensor = state.pop(SAVED_KEY if SAVED_KEY in state else next(iter(state)))
    if edit == "rename":
        state[SAVED_KEY.replace(".key.", ".kee.")] = tensor
    save_file(state, path, metadata={"format": "pt"})


@pytest.mark.parametrize(
    "model_name, edit", [("vit", "drop"), ("vit", "rename"), ("mlp", "drop")], ids=["vit-drop", "vit-rename", "mlp"]
)
def test_a_checkpoint_that_does_not_load_completely_is_an_error_naming_the_file_and_key(tmp_path, model_name, edit):
    make, data = MODELS.get(model_name, (MLPRegressionModel, lambda: None))
    common = dict(max_steps=4, save_strategy="steps", save_steps=2)
    train(tmp_path / "first", make(), data(), **common)
    checkpoint = tmp_path / "first" / "checkpoint-2"
    path = checkpoint / "model.safetensors"
    dropped = SAVED_KEY if model_name == "vit" else next(iter(load_file(path)))
    _rewrite(path, edit)

    counter = StepCounter()
    resumed = get_trainer(tmp_path / "resumed", model=make(seed=1), train_dataset=data(), **common)
    resumed.add_callback(counter)
    with pytest.raises(ValueError, match="does not load completely") as err:
        resumed.train(resume_from_checkpoint=str(checkpoint))
    message = str(err.value)
    assert str(path) in message
    assert (MODEL_KEY if model_name == "vit" else dropped) in message
    if edit == "rename":
        assert ".kee." in message and "does not map" in message
    assert counter.steps == 0


@pytest.mark.parametrize("layout", ["single", "sharded", "bin"])
@pytest.mark.parametrize("name", ["vit", "bert"])
def test_load_checkpoint_weights_reads_every_layout(tmp_path, name, layout):
    make = MODELS[name][0]
    source = make()
    source.save_pretrained(tmp_path, max_shard_size="8KB" if layout == "sharded" else "5GB")
    if layout == "bin":
        path = tmp_path / "model.safetensors"
        torch.save(load_file(path), tmp_path / "pytorch_model.bin")
        path.unlink()
    files = sorted(os.listdir(tmp_path))
    if layout == "sharded":
        assert "model.safetensors.index.json" in files
        weight_map = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
        assert len(set(weight_map.values())) > 1, files
    target = make(seed=1)
    load_checkpoint_weights(target, str(tmp_path))
    assert_same_weights(target, source.state_dict(), f"{name}, {layout}: {files}")


def test_a_directory_without_weights_is_an_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match="holds no model weights") as err:
        load_checkpoint_weights(tiny_vit(), str(tmp_path))
    assert str(tmp_path) in str(err.value)


def test_names_another_transformers_version_does_not_map_point_at_that_version(tmp_path):
    tiny_vit().save_pretrained(tmp_path)
    _rewrite(tmp_path / "model.safetensors", "rename")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "transformers_version": "4.57.1"}))
    with pytest.raises(ValueError, match="Load it with transformers 4.57.1") as err:
        load_checkpoint_weights(tiny_vit(seed=1), str(tmp_path))
    assert MODEL_KEY in str(err.value) and "does not map" in str(err.value)
