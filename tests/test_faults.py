"""Faults injected into training: what the library does with each (docs/reliability.md lists them with the count).

The rule: non-finite weights never reach the optimizer, a checkpoint or the caller silently; a resumed run's
counters agree with the Trainer's step; a state file that cannot be used is an error that names it.
"""

import logging
import math
import os

import pytest
import torch
from testing_utils import MLPRegressionModel, TokenDataset, get_config, get_trainer, sam_logs, tiny_bert
from torch import nn
from transformers import BartConfig, BartForSequenceClassification, TrainerCallback
from transformers.utils import logging as hf_logging

from aesam_hf import SAM_STATE_NAME, AESAMTrainer, make_policy


class NaNOnCalls(MLPRegressionModel):
    """The regression MLP whose loss is NaN on the given (0-based) training forward calls."""

    def __init__(self, calls: set[int], **kwargs):
        super().__init__(**kwargs)
        self.calls, self.count = set(calls), 0

    def forward(self, input_x, labels=None):
        out = super().forward(input_x, labels)
        if self.training:
            if self.count in self.calls:
                out["loss"] = out["loss"] * float("nan")
            self.count += 1
        return out


def _finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(t).all() for t in state.values())


def _weights(checkpoint) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(checkpoint, "model.safetensors"))


class _Snapshot(TrainerCallback):
    """Keeps the weights as they were after the last completed optimizer step."""

    def __init__(self, into: dict):
        self.into = into

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.into.update({n: p.detach().clone() for n, p in model.named_parameters()})


# Every step a SAM step, so forward call 2k + 1 is the second pass of step k: once with a policy that reads x on the
# host (aesam with a threshold far below any x), once with one that does not (sam).
ALWAYS_SAM = {"sam": {}, "aesam": {"aesam_lambda1": -50.0, "aesam_lambda2": -50.0}}


@pytest.mark.parametrize("optim", list(ALWAYS_SAM))
def test_nan_in_the_second_pass_stops_before_the_optimizer_and_keeps_checkpoints_clean(tmp_path, optim):
    # Finding 1: the second pass of step index 4 (global step 5) is NaN; checkpoint-3 exists; saving every 3 steps.
    model = NaNOnCalls({2 * 4 + 1})
    trainer = get_trainer(
        tmp_path, model=model, optim=optim, max_steps=8, save_strategy="steps", save_steps=3, **ALWAYS_SAM[optim]
    )
    weights_before = {}
    trainer.add_callback(_Snapshot(weights_before))
    with pytest.raises(FloatingPointError, match="second pass") as err:
        trainer.train()
    assert "checkpoint-3" in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3"]  # nothing saved after the error
    assert _finite(_weights(tmp_path / "checkpoint-3"))
    # The weights are w after step 4, restored exactly; the optimizer never saw g_s.
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p, weights_before[name]), name


def test_nan_on_an_unchecked_step_never_reaches_a_checkpoint(tmp_path):
    # Finding 1, the policies without a host sync: periodic's non-SAM steps are stock ERM steps, so a NaN there
    # reaches the weights as in the stock Trainer, but the save guard refuses to write it.
    model = NaNOnCalls({2})  # step 0 is SAM (calls 0, 1); call 2 is the (only) pass of step 1
    trainer = get_trainer(
        tmp_path, model=model, optim="periodic", sam_interval=5, max_steps=4, save_strategy="steps", save_steps=3
    )
    with pytest.raises(FloatingPointError, match="checkpoint-3` is not written"):
        trainer.train()
    assert not (tmp_path / "checkpoint-3").exists()


def test_nan_at_the_last_step_is_not_returned_silently(tmp_path):
    trainer = get_trainer(tmp_path, model=NaNOnCalls({4}), optim="periodic", sam_interval=5, max_steps=4)
    with pytest.raises(FloatingPointError, match="training ends here"):
        trainer.train()


def test_erm_keeps_the_stock_behaviour_on_nan(tmp_path):
    # `erm` and stock optimizer names are the stock Trainer: no check, no extra sync.
    trainer = get_trainer(tmp_path, model=NaNOnCalls({1}), optim="adamw_torch", max_steps=3)
    trainer.train()
    assert not all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_overflow_steps_are_only_the_steps_a_scaler_skipped(tmp_path):
    # Finding 3: NaN inputs in fp32 under a policy that does not read x: no `sam/overflow_steps`, a counter of 0,
    # and the non-finite step reported as what it is.
    trainer = get_trainer(tmp_path, model=NaNOnCalls({2}), optim="periodic", sam_interval=2, max_steps=3)
    with pytest.raises(FloatingPointError):
        trainer.train()  # step 2 is a SAM step on NaN weights: its second pass is checked
    logs = sam_logs(trainer)
    assert all("sam/overflow_steps" not in h for h in logs)
    assert trainer._sam_controller.overflow_steps == 0


def test_nonfinite_steps_that_went_through_are_logged_under_their_own_name():
    from aesam_hf.controller import StepRecord
    from aesam_hf.metrics import summarize_steps

    records = [
        StepRecord(step=0, sam=True, grad_norm_sq=torch.tensor(2.0)),
        StepRecord(step=1, grad_norm_sq=torch.tensor(float("nan"))),
        StepRecord(step=2, overflow=True),
    ]
    logs = summarize_steps(records)
    assert logs["sam/nonfinite_steps"] == 1.0 and logs["sam/overflow_steps"] == 1.0
    assert logs["sam/grad_norm_sq"] == 2.0 and logs["sam/fraction"] == 0.5


# ---- stochastic structure: the second pass sees the first pass's sub-network ----


def _tiny_bart(**kwargs) -> BartForSequenceClassification:
    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=64,
        d_model=16,
        encoder_layers=4,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=32,
        num_labels=2,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        **kwargs,
    )
    return BartForSequenceClassification(config)


class _BartData(torch.utils.data.Dataset):
    def __init__(self, n=32, length=10):
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(3, 64, (n, length), generator=gen)
        self.ids[:, -1] = 2  # every sequence ends with eos, as BART's classification head needs
        self.labels = torch.randint(0, 2, (n,), generator=gen)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


@pytest.mark.parametrize("optim", ["sam", "aelooksam"])
def test_layerdrop_model_trains_with_sam(tmp_path, optim):
    # Finding 4: with encoder_layerdrop, each pass drops its own layers unless the second replays the first's draws.
    model = _tiny_bart(encoder_layerdrop=0.5, dropout=0.2)
    trainer = get_trainer(
        tmp_path, model=model, train_dataset=_BartData(), optim=optim, max_steps=6, learning_rate=1e-3
    )
    trainer.train()
    assert trainer._sam_controller.sam_steps >= 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


class _MaskRecorder(nn.Module):
    """Dropout that records its mask: the two passes of a SAM step must draw the same one."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p, self.masks = p, []

    def forward(self, x):
        mask = (torch.rand_like(x) > self.p).float()
        if self.training:
            self.masks.append(mask)
        return x * mask / (1 - self.p)


def test_the_second_pass_replays_the_first_pass_random_draws_and_the_stream_goes_on_as_without_sam(tmp_path):
    def run(optim):
        model = MLPRegressionModel()
        model.net.insert(1, _MaskRecorder())
        trainer = get_trainer(
            tmp_path / optim,
            model=model,
            optim=optim,
            max_steps=3,
            gradient_accumulation_steps=2,
            per_device_train_batch_size=4,
        )
        trainer.train()
        return model.net[1].masks

    sam, erm = run("sam"), run("erm")
    # sam: per step, micro-batches a, b then their replays a, b; erm: a, b.
    assert len(sam) == 12 and len(erm) == 6
    for step in range(3):
        first, second = sam[4 * step : 4 * step + 2], sam[4 * step + 2 : 4 * step + 4]
        for a, b in zip(first, second):
            assert torch.equal(a, b), step
        for a, b in zip(first, erm[2 * step : 2 * step + 2]):
            assert torch.equal(a, b), step  # the run's random stream is the one an ERM run draws


# ---- resume bookkeeping ----


def _train_and_checkpoint(tmp_path, optim="sam", **kwargs):
    trainer = get_trainer(tmp_path / "first", optim=optim, max_steps=6, save_strategy="steps", save_steps=3, **kwargs)
    trainer.train()
    return trainer, tmp_path / "first" / "checkpoint-3"


@pytest.fixture
def sam_warnings(caplog):
    # transformers' loggers do not propagate to the root logger by default: let caplog see aesam_hf's.
    hf_logging.enable_propagation()
    caplog.set_level(logging.WARNING)
    yield caplog
    hf_logging.disable_propagation()


def test_resume_without_sam_state_counts_the_earlier_steps_as_erm(tmp_path, sam_warnings):
    # Finding 5a: the counters stay consistent with the Trainer's step.
    _, checkpoint = _train_and_checkpoint(tmp_path)
    (checkpoint / SAM_STATE_NAME).unlink()
    resumed = get_trainer(tmp_path / "resumed", optim="sam", max_steps=6)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    c = resumed._sam_controller
    assert (c.t, c.decided_steps, c.sam_steps, c.passes) == (6, 6, 3, 3 + 2 * 3)
    assert "plain ERM steps" in sam_warnings.text and "no sam_state.pt" in sam_warnings.text


def test_sam_state_from_another_step_is_an_error_naming_both_steps(tmp_path):
    # Finding 5b.
    first, checkpoint = _train_and_checkpoint(tmp_path)
    torch.save(first._sam_controller.state_dict(), checkpoint / SAM_STATE_NAME)  # step 6's state in checkpoint-3
    resumed = get_trainer(tmp_path / "resumed", optim="sam", max_steps=6)
    with pytest.raises(ValueError, match="from optimizer step 6, but the checkpoint is at step 3"):
        resumed.train(resume_from_checkpoint=str(checkpoint))


def test_resume_with_changed_settings_names_them(tmp_path, sam_warnings):
    # Finding 5c.
    _, checkpoint = _train_and_checkpoint(tmp_path, optim="aesam")
    resumed = get_trainer(tmp_path / "resumed", optim="aesam", max_steps=8, sam_rho=0.1, aesam_delta=0.8)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for change in ("sam_rho 0.05 -> 0.1", "aesam_delta 0.9 -> 0.8", "max_steps 6 -> 8"):
        assert change in sam_warnings.text


@pytest.mark.parametrize("before", ["erm", "sam"])
def test_continue_a_run_under_another_policy(tmp_path, before, sam_warnings):
    # Finding 5d: an explicit flag, fresh statistics, counters continued.
    first, checkpoint = _train_and_checkpoint(tmp_path, optim=before)
    with pytest.raises(ValueError, match="--sam_reset_policy_on_resume true"):
        get_trainer(tmp_path / "refused", optim="aesam", max_steps=6).train(resume_from_checkpoint=str(checkpoint))
    resumed = get_trainer(tmp_path / "resumed", optim="aesam", max_steps=6, sam_reset_policy_on_resume=True)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    c = resumed._sam_controller
    earlier_passes = 3 if before == "erm" else 6
    assert c.t == 6 and c.passes == earlier_passes + 3 + (c.sam_steps - (0 if before == "erm" else 3))
    assert "with fresh statistics" in sam_warnings.text


def test_continue_a_stock_run_under_a_policy(tmp_path, sam_warnings):
    # A stock optimizer name is the stock Trainer: its checkpoints hold no SAM state, and a run continued under a
    # policy counts the earlier steps as plain ERM steps, as for any stock checkpoint.
    _, checkpoint = _train_and_checkpoint(tmp_path, optim="adamw_torch")
    assert not (checkpoint / SAM_STATE_NAME).exists()
    resumed = get_trainer(tmp_path / "resumed", optim="aesam", max_steps=6)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    c = resumed._sam_controller
    assert c.t == 6 and c.passes == 3 + 3 + c.sam_steps
    assert "holds no sam_state.pt" in sam_warnings.text


@pytest.mark.parametrize(
    "content", [b"", b"\x80\x04\x95 truncated", os.urandom(256), "truncate"], ids=["empty", "junk", "random", "cut"]
)
def test_corrupt_sam_state_is_an_error_naming_the_file(tmp_path, content):
    # Finding 6.
    _, checkpoint = _train_and_checkpoint(tmp_path)
    path = checkpoint / SAM_STATE_NAME
    path.write_bytes(path.read_bytes()[:100] if content == "truncate" else content)
    resumed = get_trainer(tmp_path / "resumed", optim="sam", max_steps=6)
    with pytest.raises(ValueError, match="is not a usable SAM state") as err:
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert str(path) in str(err.value) and "weights_only" not in str(err.value)


def test_a_state_file_of_something_else_is_an_error(tmp_path):
    _, checkpoint = _train_and_checkpoint(tmp_path)
    torch.save({"step": 3}, checkpoint / SAM_STATE_NAME)
    with pytest.raises(ValueError, match="`t` is missing"):
        get_trainer(tmp_path / "resumed", optim="sam", max_steps=6).train(resume_from_checkpoint=str(checkpoint))


# ---- the model card names the optimizer that took the steps ----


@pytest.mark.parametrize("how", ["optimizers", "optimizer_cls_and_kwargs", "args"])
def test_model_card_names_the_optimizer_used(tmp_path, how):
    # Finding 7.
    model = tiny_bert()  # the model card reads the model's config
    extra = {}
    if how == "optimizers":
        extra["optimizers"] = (torch.optim.SGD(model.parameters(), lr=0.01), None)
    elif how == "optimizer_cls_and_kwargs":
        extra["optimizer_cls_and_kwargs"] = (torch.optim.RMSprop, {"lr": 0.01})
    args = get_config(tmp_path, optim="sam", max_steps=2)
    trainer = AESAMTrainer(model=model, args=args, train_dataset=TokenDataset(), **extra)
    trainer.train()
    trainer.create_model_card(model_name="m")
    card = (tmp_path / "README.md").read_text()
    expected = {
        "optimizers": "torch.optim.sgd.SGD",
        "optimizer_cls_and_kwargs": "torch.optim.rmsprop.RMSprop",
        "args": "adamw_torch",
    }
    assert f"on top of the `{expected[how]}` optimizer" in card


def test_a_rising_threshold_schedule_warns():
    # Finding 9: valid, but the opposite of the paper's schedule.
    with pytest.warns(UserWarning, match="`aesam_lambda1` \\(2.0\\) > `aesam_lambda2` \\(1.0\\)"):
        make_policy("aesam", total_steps=10, aesam_lambda1=2.0, aesam_lambda2=1.0)
    assert math.isfinite(make_policy("aesam", total_steps=10).settings.aesam_lambda1)


def test_a_first_pass_nan_under_a_policy_that_does_not_read_x_is_blamed_on_the_first_pass(tmp_path):
    # `sam` perturbs without reading ||g||², so a NaN of the first pass shows up only in the second; the message used
    # to blame the second pass and `sam_rho`. Steps are numbered as the Trainer's global_step and checkpoint names.
    model = NaNOnCalls({2})  # calls 0, 1: step 1; call 2: the first pass of step 2
    trainer = get_trainer(tmp_path, model=model, optim="sam", max_steps=4, save_strategy="steps", save_steps=1)
    with pytest.raises(FloatingPointError, match="optimizer step 2 is not finite already in the first pass") as err:
        trainer.train()
    assert "sam_rho" not in str(err.value)
    assert f"`{tmp_path / 'checkpoint-1'}`" in str(err.value)


def test_a_stock_optimizer_name_evaluates_exactly_as_the_stock_trainer(tmp_path):
    # No random-state fork around evaluation under a stock name: the run is the stock Trainer's, evaluations included.
    from transformers import Trainer

    data = TokenDataset(length=32)
    runs = []
    for trainer_cls, args_cls in ((AESAMTrainer, get_config), (Trainer, None)):
        extra = dict(max_steps=4, eval_strategy="steps", eval_steps=2, per_device_train_batch_size=8)
        if args_cls is None:
            from testing_utils import CPU_TEST_ARGS
            from transformers import TrainingArguments

            args = TrainingArguments(
                **{**CPU_TEST_ARGS, **extra, "optim": "adamw_torch", "output_dir": str(tmp_path / "stock")}
            )
        else:
            args = get_config(tmp_path / "ours", optim="adamw_torch", **extra)
        model = tiny_bert(hidden_dropout_prob=0.1)
        trainer_cls(model=model, args=args, train_dataset=data, eval_dataset=data).train()
        runs.append(model)
    for p, q in zip(runs[0].parameters(), runs[1].parameters()):
        assert torch.equal(p, q)


def test_each_run_names_its_own_checkpoint(tmp_path):
    # A second `train()` on the same trainer (as `hyperparameter_search` does) must not name the first run's checkpoint.
    model = NaNOnCalls({10**6})
    trainer = get_trainer(tmp_path, model=model, optim="sam", max_steps=2, save_strategy="steps", save_steps=1)
    trainer.train()
    model.calls, model.count = {0}, 0  # the next run's first pass is NaN
    with pytest.raises(FloatingPointError, match="No checkpoint was saved before this step"):
        trainer.train()


def test_resuming_with_smaller_steps_restarts_the_short_batch_rule(tmp_path, sam_warnings):
    first = get_trainer(tmp_path / "first", optim="aesam", max_steps=4, save_strategy="steps", save_steps=2)
    first.train()
    resumed = get_trainer(tmp_path / "resumed", optim="aesam", max_steps=10, per_device_train_batch_size=4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "first" / "checkpoint-2"))
    assert "fewer than the 8 of the checkpoint's steps" in sam_warnings.text
    assert resumed._sam_controller.partial_steps == 0  # the 4-example steps are this run's full steps


def test_the_weight_check_reads_fp16_norms_in_float32():
    from aesam_hf import SAMController

    big = nn.Parameter(torch.full((1000,), 100.0, dtype=torch.float16) * 30)  # finite, norm ~ 95,000 > fp16's max
    assert SAMController([big], make_policy("sam")).weights_are_finite()
