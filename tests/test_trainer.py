"""AESAMTrainer against the stock Trainer and against hand-written two-pass references, step by step."""

import math
import subprocess
import sys

import pytest
import torch
from testing_utils import (
    CPU_TEST_ARGS,
    MLPRegressionModel,
    RegressionDataset,
    TokenDataset,
    get_config,
    get_trainer,
    sam_logs,
    tiny_bert,
)
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from aesam_hf import AESAMTrainer, AESAMTrainerMixin


class ParamRecorder(TrainerCallback):
    """Copies every named parameter after each optimizer step."""

    def __init__(self):
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.steps.append({n: p.detach().clone() for n, p in model.named_parameters()})


def assert_steps_close(ours, reference, atol=1e-6, rtol=1e-6, exact=False):
    assert len(ours) == len(reference), (len(ours), len(reference))
    for step, (a, b) in enumerate(zip(ours, reference), start=1):
        for name in b:
            if exact:
                assert torch.equal(a[name], b[name]), f"step {step}, parameter {name}"
            else:
                torch.testing.assert_close(
                    a[name], b[name], atol=atol, rtol=rtol, msg=f"step {step}, parameter {name}"
                )


def run_recorded(trainer, resume_from_checkpoint: str | None = None) -> list[dict[str, torch.Tensor]]:
    recorder = ParamRecorder()
    trainer.add_callback(recorder)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return recorder.steps


# ---- a hand-written reference: the SAM / LookSAM step of docs/algorithm.md with AdamW, written without aesam_hf ----


def _batch(dataset, step, batch_size):
    idx = [(step * batch_size + i) % len(dataset) for i in range(batch_size)]
    items = [dataset[i] for i in idx]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def reference_run(model, dataset, steps, decide, rho=0.05, adaptive=False, alpha=0.7, lr=0.05, batch_size=8):
    """`decide(t) -> "sam" | "erm" | "looksam"`; clips to norm 1 like the Trainer's default `max_grad_norm`."""
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g_v = None
    out = []
    for t in range(steps):
        batch = _batch(dataset, t, batch_size)
        model.train()
        opt.zero_grad()
        model(**batch)["loss"].backward()
        g = [p.grad.detach().clone() for p in params]
        kind = decide(t)
        if kind == "sam":
            with torch.no_grad():
                if adaptive:
                    norm = torch.sqrt(sum(((p * gi) ** 2).sum() for p, gi in zip(params, g)))
                    e = [rho * p * p * gi / (norm + 1e-12) for p, gi in zip(params, g)]
                else:
                    norm = torch.sqrt(sum((gi**2).sum() for gi in g))
                    e = [rho * gi / (norm + 1e-12) for gi in g]
                saved = [p.detach().clone() for p in params]
                for p, ei in zip(params, e):
                    p.add_(ei)
            buffers = {n: b.clone() for n, b in model.named_buffers()}
            opt.zero_grad()
            model(**batch)["loss"].backward()
            with torch.no_grad():
                for p, w in zip(params, saved):
                    p.copy_(w)
                for n, b in model.named_buffers():  # BN statistics: as before the second pass
                    b.copy_(buffers[n])
            g_s = [p.grad.detach().clone() for p in params]
            dot = sum((a * b).sum() for a, b in zip(g_s, g))
            g_sq = sum((b * b).sum() for b in g)
            g_v = [a - dot / g_sq * b for a, b in zip(g_s, g)]
        elif kind == "looksam" and g_v is not None:
            g_norm = torch.sqrt(sum((gi**2).sum() for gi in g))
            v_norm = torch.sqrt(sum((v**2).sum() for v in g_v))
            for p, gi, v in zip(params, g, g_v):
                p.grad = gi + alpha * g_norm / v_norm * v
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        out.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return out


SEQUENTIAL = dict(train_sampling_strategy="sequential")


def test_erm_equals_the_stock_trainer_step_for_step(tmp_path):
    data = RegressionDataset(length=64, dim=4)
    ours = run_recorded(get_trainer(tmp_path / "a", model=MLPRegressionModel(), train_dataset=data, optim="erm"))
    stock_args = TrainingArguments(**CPU_TEST_ARGS, output_dir=str(tmp_path / "b"), optim="adamw_torch")
    stock = run_recorded(Trainer(model=MLPRegressionModel(), args=stock_args, train_dataset=data))
    assert_steps_close(ours, stock, exact=True)


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_sam_equals_a_hand_written_two_pass_reference(tmp_path, adaptive, batch_norm):
    data = RegressionDataset(length=24, dim=4)
    trainer = get_trainer(
        tmp_path,
        model=MLPRegressionModel(batch_norm=batch_norm),
        train_dataset=data,
        optim="sam",
        sam_adaptive=adaptive,
        sam_rho=0.5,
        max_steps=3,
        **SEQUENTIAL,
    )
    ours = run_recorded(trainer)
    ref_model = MLPRegressionModel(batch_norm=batch_norm)
    reference = reference_run(ref_model, data, 3, lambda t: "sam", rho=0.5, adaptive=adaptive)
    assert_steps_close(ours, reference)
    if batch_norm:  # the second pass did not touch the running statistics
        for (name, ours_buf), ref_buf in zip(trainer.model.named_buffers(), ref_model.buffers()):
            torch.testing.assert_close(ours_buf, ref_buf, msg=name)
    assert trainer._sam_controller.passes == 6


def test_looksam_equals_a_hand_written_reference(tmp_path):
    data = RegressionDataset(length=56, dim=4)
    trainer = get_trainer(
        tmp_path,
        train_dataset=data,
        optim="looksam",
        sam_interval=3,
        looksam_alpha=0.7,
        sam_rho=0.5,
        max_steps=7,
        **SEQUENTIAL,
    )
    ours = run_recorded(trainer)
    reference = reference_run(MLPRegressionModel(), data, 7, lambda t: "sam" if t % 3 == 0 else "looksam", rho=0.5)
    assert_steps_close(ours, reference)
    assert [h["sam/fraction"] for h in sam_logs(trainer)] == [1, 0, 0, 1, 0, 0, 1]


@pytest.mark.parametrize("optim", ["sam", "aesam", "aelooksam"])
def test_gradient_accumulation_2x4_equals_1x8(tmp_path, optim):
    data = RegressionDataset(length=64, dim=4)
    common = dict(train_dataset=data, optim=optim, max_steps=8, sam_rho=0.5, **SEQUENTIAL)
    ga = get_trainer(tmp_path / "ga", per_device_train_batch_size=4, gradient_accumulation_steps=2, **common)
    full = get_trainer(tmp_path / "full", per_device_train_batch_size=8, gradient_accumulation_steps=1, **common)
    ours, reference = run_recorded(ga), run_recorded(full)
    assert [h["sam/fraction"] for h in sam_logs(ga)] == [h["sam/fraction"] for h in sam_logs(full)]
    assert_steps_close(ours, reference, atol=1e-5, rtol=1e-5)
    for a, b in zip(sam_logs(ga), sam_logs(full)):
        assert a["sam/grad_norm_sq"] == pytest.approx(b["sam/grad_norm_sq"], rel=1e-5)


def test_gradient_accumulation_reruns_every_micro_batch(tmp_path):
    calls = []
    model = MLPRegressionModel()
    model.register_forward_hook(lambda m, args, kwargs_out: calls.append(1))
    trainer = get_trainer(
        tmp_path, model=model, optim="sam", per_device_train_batch_size=2, gradient_accumulation_steps=4, max_steps=3
    )
    trainer.train()
    assert len(calls) == 3 * 4 * 2  # steps x micro-batches x passes
    assert sam_logs(trainer)[-1]["sam/passes"] == 6


@pytest.mark.parametrize("optim", ["aesam", "aelooksam"])
def test_adaptive_decisions_follow_the_spec_from_the_logs(tmp_path, optim):
    T, delta = 60, 0.9
    trainer = get_trainer(tmp_path, optim=optim, max_steps=T, learning_rate=0.01, sam_rho=0.05)
    trainer.train()
    logs = sam_logs(trainer)
    assert len(logs) == T
    mu, var, sam_steps = 0.0, 1e-10, 0
    for entry in logs:
        t = entry["step"] - 1
        x = entry["sam/grad_norm_sq"]
        mu = delta * mu + (1 - delta) * x
        var = delta * var + (1 - delta) * (x - mu) ** 2
        c = (t / T) * -1.0 + (1 - t / T) * 1.0
        assert entry["sam/mu"] == pytest.approx(mu, rel=1e-9), t
        assert entry["sam/sigma"] == pytest.approx(math.sqrt(var), rel=1e-9), t
        assert entry["sam/threshold_c"] == pytest.approx(c, abs=1e-12), t
        assert entry["sam/fraction"] == float(x >= mu + c * math.sqrt(var)), t
        sam_steps += entry["sam/fraction"]
        assert entry["sam/fraction_total"] == pytest.approx(sam_steps / (t + 1))
        assert entry["sam/passes"] == t + 1 + sam_steps
    # With the default lambdas about half the steps are SAM steps (docs/algorithm.md: roughly the mean of Phi(-c_t)).
    assert 0.3 <= sam_steps / T <= 0.8


def test_periodic_fires_exactly_at_multiples_of_k(tmp_path):
    trainer = get_trainer(tmp_path, optim="periodic", sam_interval=4, max_steps=13)
    trainer.train()
    assert [h["sam/fraction"] for h in sam_logs(trainer)] == [float(t % 4 == 0) for t in range(13)]


def test_random_policy_is_reproducible_from_the_seed(tmp_path):
    def decisions(name, seed):
        trainer = get_trainer(tmp_path / name, optim="random", sam_probability=0.5, max_steps=20, seed=seed)
        trainer.train()
        return [h["sam/fraction"] for h in sam_logs(trainer)]

    first = decisions("a", 7)
    assert first == decisions("b", 7)
    assert first != decisions("c", 8)
    gen = torch.Generator().manual_seed(7)
    assert first == [float(torch.rand((), generator=gen).item() < 0.5) for _ in range(20)]


def test_logging_steps_average_the_per_step_values(tmp_path):
    trainer = get_trainer(tmp_path, optim="periodic", sam_interval=2, max_steps=8, logging_steps=4)
    trainer.train()
    logs = sam_logs(trainer)
    assert [h["sam/fraction"] for h in logs] == [0.5, 0.5]
    assert [h["sam/passes"] for h in logs] == [6.0, 12.0]
    final = trainer.state.log_history[-1]
    assert final["sam/fraction_total"] == 0.5 and final["sam/passes"] == 12.0


def test_bf16_autocast_run(tmp_path):
    dtypes = []
    model = tiny_bert()
    model.bert.encoder.layer[0].intermediate.dense.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    trainer = get_trainer(
        tmp_path, model=model, train_dataset=TokenDataset(), optim="sam", bf16=True, max_steps=3, learning_rate=1e-3
    )
    before = [p.detach().clone() for p in model.parameters()]
    out = trainer.train()
    assert set(dtypes) == {torch.bfloat16} and len(dtypes) == 6  # two passes per step, under autocast
    assert math.isfinite(out.training_loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert sam_logs(trainer)[-1]["sam/fraction_total"] == 1.0


class _PlantNonFinite(TrainerCallback):
    """Makes the gradient of one parameter inf/NaN during the first backward pass of step `at`."""

    def __init__(self, param: nn.Parameter, at: int, value: float):
        self.at, self.value, self.active = at, value, False
        param.register_hook(lambda g: g.clone().fill_(self.value) if self.active else g)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.active = state.global_step == self.at

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.active = False


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
@pytest.mark.parametrize("optim", ["aesam", "aelooksam", "sam"])
def test_fp16_overflow_skips_the_step_and_leaves_the_policy_untouched(tmp_path, value, optim):
    """The real GradScaler logic (CPU scaler injected where Accelerate only builds one on GPUs)."""
    model = MLPRegressionModel()
    trainer = get_trainer(tmp_path, model=model, optim=optim, fp16=True, max_steps=6)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    trainer.accelerator.scaler = scaler
    planted = _PlantNonFinite(model.net[0].weight, at=3, value=value)
    trainer.add_callback(planted)
    states = []

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            c = trainer._sam_controller
            states.append((dict(c.policy.state_dict()), c.g_v_norm, scaler.get_scale()))

    trainer.add_callback(Snapshot())
    steps = run_recorded(trainer)
    controller = trainer._sam_controller
    assert controller.overflow_steps == 1 and controller.decided_steps == 5
    policy_before, gv_before, scale_before = states[2]
    policy_at, gv_at, scale_at = states[3]
    assert policy_at == policy_before  # mu, var untouched
    assert gv_at is gv_before  # the cached LookSAM direction untouched (same tensor object)
    assert scale_at == scale_before / 2  # the scaler saw the overflow
    for name in steps[3]:
        assert torch.equal(steps[3][name], steps[2][name]), f"step 4 moved {name}"
    logs = sam_logs(trainer)
    assert logs[3].get("sam/overflow_steps") == 1.0 and "sam/fraction" not in logs[3]
    assert all(math.isfinite(v) for v in steps[-1]["net.0.weight"].flatten().tolist())


def test_checkpoint_and_resume_continue_the_same_decisions(tmp_path):
    common = dict(optim="aelooksam", max_steps=10, save_strategy="steps", save_steps=5, learning_rate=0.01)
    full = get_trainer(tmp_path / "full", model=MLPRegressionModel(), **common)
    full_steps = run_recorded(full)
    checkpoint = tmp_path / "full" / "checkpoint-5"
    assert (checkpoint / "sam_state.pt").is_file()

    resumed = get_trainer(tmp_path / "resumed", model=MLPRegressionModel(seed=123), **common)
    resumed_steps = run_recorded(resumed, str(checkpoint))
    tail = lambda tr: [(h["step"], h["sam/fraction"], h["sam/passes"]) for h in sam_logs(tr) if h["step"] > 5]  # noqa: E731
    assert tail(resumed) == tail(full)
    assert_steps_close(resumed_steps, full_steps[5:], atol=1e-6, rtol=1e-6)
    c_full, c_res = full._sam_controller, resumed._sam_controller
    assert (c_res.t, c_res.sam_steps, c_res.passes) == (c_full.t, c_full.sam_steps, c_full.passes)
    assert c_res.policy.state_dict()["mu"] == pytest.approx(c_full.policy.state_dict()["mu"], rel=1e-6)


def test_mixin_works_with_another_trainer_subclass(tmp_path):
    class CountingTrainer(Trainer):
        losses = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            type(self).losses += 1
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    class SAMCountingTrainer(AESAMTrainerMixin, CountingTrainer):
        pass

    trainer = get_trainer(tmp_path, trainer_cls=SAMCountingTrainer, optim="sam", max_steps=3)
    trainer.train()
    assert SAMCountingTrainer.losses == 6


def test_model_card_carries_the_tags(tmp_path):
    trainer = get_trainer(tmp_path, model=tiny_bert(), train_dataset=TokenDataset(), optim="aelooksam", max_steps=2)
    trainer.train()
    trainer.create_model_card(model_name="tiny")
    card = (tmp_path / "README.md").read_text()
    assert "- aesam" in card and "- sam-policy-aelooksam" in card


def test_trainer_rejects_wrong_args_and_unknown_length(tmp_path):
    with pytest.raises(ValueError, match="AESAMConfig"):
        AESAMTrainer(model=MLPRegressionModel(), args=TrainingArguments(str(tmp_path), use_cpu=True, report_to="none"))

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from RegressionDataset(length=16, dim=4)

    args = get_config(tmp_path, optim="aesam", max_steps=-1, num_train_epochs=1)
    with pytest.raises(ValueError, match="max_steps"):
        AESAMTrainer(model=MLPRegressionModel(), args=args, train_dataset=Stream())


def test_default_args_are_aesam(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = AESAMTrainer(model=MLPRegressionModel(), train_dataset=RegressionDataset(length=8, dim=4))
    assert trainer.args.sam_policy == "aesam" and trainer.args.optim == "adamw_torch"


def test_sam_metrics_reach_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = get_trainer(tmp_path, optim="aesam", max_steps=4, report_to="tensorboard")
    trainer.train()
    events = list(tmp_path.rglob("events.out.tfevents.*"))  # under output_dir/runs/
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for key in (
        "sam/fraction",
        "sam/fraction_total",
        "sam/grad_norm_sq",
        "sam/mu",
        "sam/sigma",
        "sam/threshold_c",
        "sam/passes",
    ):
        assert f"train/{key}" in tags, (key, tags)
    assert [e.value for e in acc.Scalars("train/sam/passes")][-1] == sam_logs(trainer)[-1]["sam/passes"]


@pytest.mark.parametrize("optim", ["erm", "adamw_torch"])
def test_erm_measures_nothing_and_the_gradient_reaches_the_optimizer_untouched(tmp_path, optim, monkeypatch):
    # ERM must cost nothing beyond the stock step: no norm, no host sync, no cached micro-batches. A stock optimizer
    # name is exactly the stock Trainer: no controller, and nothing of ours in the logs.
    import aesam_hf.controller

    def forbidden(*args, **kwargs):
        raise AssertionError("ERM computed ||g||²")

    monkeypatch.setattr(aesam_hf.controller, "grad_norm_sq", forbidden)
    trainer = get_trainer(tmp_path, optim=optim, max_steps=3)
    trainer.train()
    assert trainer._sam_micro_batches == []
    if optim == "adamw_torch":
        assert trainer._sam_controller is None
        assert not any(k.startswith("sam/") for h in trainer.state.log_history for k in h)
        return
    logs = sam_logs(trainer)
    assert [h["sam/fraction"] for h in logs] == [0.0, 0.0, 0.0]
    assert all("sam/grad_norm_sq" not in h for h in logs)
    assert logs[-1]["sam/passes"] == 3.0


def test_policies_without_x_measure_it_only_on_the_steps_that_use_it(tmp_path):
    trainer = get_trainer(tmp_path, optim="periodic", sam_interval=3, max_steps=6)
    trainer.train()
    logs = sam_logs(trainer)
    assert ["sam/grad_norm_sq" in h for h in logs] == [h["sam/fraction"] == 1.0 for h in logs]
    assert [h["sam/fraction"] for h in logs] == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]


def test_looksam_geometry_is_logged_on_sam_steps(tmp_path):
    trainer = get_trainer(tmp_path, optim="looksam", sam_interval=2, max_steps=4, sam_rho=0.5)
    trainer.train()
    logs = sam_logs(trainer)
    keys = ("sam/looksam_gv_over_g", "sam/looksam_diff_over_g", "sam/looksam_cos")
    assert [all(k in h for k in keys) for h in logs] == [True, False, True, False]
    # The values themselves are pinned against a direct computation in test_sam.py; here, that they are sane.
    for h in logs[::2]:
        assert h["sam/looksam_gv_over_g"] > 0 and h["sam/looksam_diff_over_g"] > 0
        assert -1.0 <= h["sam/looksam_cos"] <= 1.0


class _ConstantStatsPolicyMixin:
    """Adds a statistic to AE-SAM's: the trainer must log whatever `stats()` returns, under `sam/`."""

    def stats(self):
        return {**super().stats(), "custom_stat": 2.5}


def test_policy_stats_are_logged_generically(tmp_path, monkeypatch):
    import aesam_hf.policies
    from aesam_hf import AdaptivePolicy, SAMPolicyName

    custom = type("CustomAdaptive", (_ConstantStatsPolicyMixin, AdaptivePolicy), {})
    monkeypatch.setitem(aesam_hf.policies.POLICIES, SAMPolicyName.AESAM, custom)
    trainer = get_trainer(tmp_path, optim="aesam", max_steps=2)
    trainer.train()
    assert [h["sam/custom_stat"] for h in sam_logs(trainer)] == [2.5, 2.5]
    assert all("sam/threshold" in h for h in sam_logs(trainer))


def test_import_fails_loudly_if_the_checkpoint_hooks_are_gone():
    # The SAM state rides on two private Trainer hooks (docs/architecture.md, "Checkpoints"): a transformers release
    # without them must stop the import, not silently drop sam_state.pt from every checkpoint.
    code = "import transformers; del transformers.Trainer._load_optimizer_and_scheduler; import aesam_hf.trainer"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "ImportError" in out.stderr and "_load_optimizer_and_scheduler" in out.stderr


@pytest.mark.parametrize("optim", ["aesam", "scheduled"])
def test_budget_holds_in_a_short_trainer_run(tmp_path, optim):
    data = RegressionDataset(length=400, dim=4)
    trainer = get_trainer(
        tmp_path,
        train_dataset=data,
        optim=optim,
        aesam_budget=0.35,
        max_steps=100,
        logging_steps=100,
        learning_rate=0.01,
    )
    trainer.train()
    controller = trainer._sam_controller
    tolerance = 0.03 if optim == "aesam" else 0.1  # `scheduled` draws: 100 Bernoulli draws have a std of 0.048
    assert abs(controller.sam_fraction - 0.35) <= tolerance, controller.sam_fraction
    assert controller.passes == 100 + controller.sam_steps


def test_a_short_last_batch_takes_no_adaptive_decision(tmp_path):
    # 20 examples, batch 8: steps of 8, 8, 4 examples per epoch. The short one's ||g||² is not comparable.
    data = RegressionDataset(length=20, dim=4)
    trainer = get_trainer(tmp_path, train_dataset=data, optim="aesam", max_steps=6, **SEQUENTIAL)
    trainer.train()
    logs = sam_logs(trainer)
    assert [h.get("sam/partial_steps") for h in logs] == [None, None, 1.0, None, None, 1.0]
    assert ["sam/mu" in h for h in logs] == [True, True, False, True, True, False]
    controller = trainer._sam_controller
    assert (controller.partial_steps, controller.decided_steps, controller.t) == (2, 4, 6)
    # The statistics skip the short steps: mu after step 3 is the EMA of the x of steps 0, 1 and 3 only.
    xs = [h["sam/grad_norm_sq"] for h in logs if "sam/grad_norm_sq" in h]
    mu = 0.0
    for x in xs[:3]:
        mu = 0.9 * mu + 0.1 * x
    assert logs[3]["sam/mu"] == pytest.approx(mu, rel=1e-9)


def test_non_adaptive_policies_ignore_short_batches(tmp_path):
    data = RegressionDataset(length=20, dim=4)
    trainer = get_trainer(tmp_path, train_dataset=data, optim="periodic", sam_interval=1, max_steps=3, **SEQUENTIAL)
    trainer.train()
    assert trainer._sam_controller.partial_steps == 0 and trainer._sam_controller.sam_steps == 3


@pytest.mark.parametrize("optim", ["looksam", "aelooksam"])
def test_looksam_defaults_do_not_diverge(tmp_path, optim):
    # At the LookSAM paper's alpha = 0.7 both policies end 40-80% above ERM's training loss on this task.
    def final_loss(**kwargs):
        data = RegressionDataset(length=512, dim=4)
        trainer = get_trainer(
            tmp_path / str(kwargs), train_dataset=data, max_steps=150, learning_rate=0.02, logging_steps=150, **kwargs
        )
        return trainer.train().training_loss

    erm = final_loss(optim="erm")
    assert final_loss(optim=optim) <= 1.15 * erm


class _PackedRows(torch.utils.data.Dataset):
    """Every item is already a whole packed batch: the collator stacks them into one row per micro-batch."""

    def __init__(self, n=64, dim=4):
        self.data = RegressionDataset(length=n * 8, dim=dim)

    def __len__(self):
        return len(self.data) // 8

    def __getitem__(self, i):
        rows = [self.data[8 * i + j] for j in range(8)]
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def _one_row(features):
    # As TRL's padding-free packing: a micro-batch of several examples arrives as a single (1, N, ...) row.
    return {k: torch.cat([f[k] for f in features])[None] for k in features[0]}


class _FlatMLP(MLPRegressionModel):
    def forward(self, input_x, labels=None):
        return super().forward(input_x[0], labels[0])


def test_packed_one_row_batches_are_not_short(tmp_path):
    # The short-batch rule compares with the largest step seen, not the configured batch size.
    trainer = get_trainer(
        tmp_path,
        model=_FlatMLP(),
        train_dataset=_PackedRows(),
        optim="aesam",
        max_steps=4,
        per_device_train_batch_size=2,
    )
    trainer.data_collator = _one_row
    trainer.train()
    assert trainer._sam_controller.partial_steps == 0 and trainer._sam_controller.decided_steps == 4


@pytest.mark.parametrize("optim", ["erm", "aesam"])  # a stock name is the stock Trainer itself
def test_evaluation_during_training_does_not_change_the_run(tmp_path, optim):
    """Same seed, same trajectory, whatever `eval_strategy`: evaluations leave the dropout stream alone.

    The stock Trainer, run the same way, is checked to differ: creating the eval DataLoader draws from the global
    generator, so without the guard this test would fail.
    """
    data = TokenDataset(length=32)
    dropout = dict(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)

    def final_weights(trainer_cls, evaluate: bool, name: str) -> dict[str, torch.Tensor]:
        eval_args = dict(eval_strategy="steps", eval_steps=2) if evaluate else dict(eval_strategy="no")
        if trainer_cls is Trainer:
            args = TrainingArguments(
                **CPU_TEST_ARGS, output_dir=str(tmp_path / name), optim="adamw_torch", **eval_args
            )
        else:
            args = get_config(tmp_path / name, optim=optim, sam_rho=0.1, **eval_args)
        trainer = trainer_cls(model=tiny_bert(**dropout), args=args, train_dataset=data, eval_dataset=data)
        trainer.train()
        return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    with_eval, without = final_weights(AESAMTrainer, True, "a"), final_weights(AESAMTrainer, False, "b")
    for name, value in without.items():
        assert torch.equal(with_eval[name], value), name
    stock_eval, stock = final_weights(Trainer, True, "c"), final_weights(Trainer, False, "d")
    assert any(not torch.equal(stock_eval[n], v) for n, v in stock.items()), "the stock Trainer no longer drifts"
