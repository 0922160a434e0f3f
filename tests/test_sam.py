"""The pure-PyTorch layer: norms, perturbation, exact restore, LookSAM direction, frozen BN, the controller."""

import pytest
import torch
from torch import nn

from aesam_hf import SAMController, frozen_running_stats, make_policy
from aesam_hf.sam import apply_looksam_, grad_norm_sq, looksam_direction_, sam_perturbation_


def _tensors(seed: int, shapes=((3, 4), (5,), (2, 2, 2))) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen) for s in shapes]


def _flat(ts):
    return torch.cat([t.flatten() for t in ts])


def test_grad_norm_sq_is_one_global_norm_and_removes_the_loss_scale():
    grads = _tensors(0)
    expected = _flat(grads).square().sum()
    torch.testing.assert_close(grad_norm_sq(grads), expected)
    torch.testing.assert_close(grad_norm_sq([g * 1024 for g in grads], inv_scale=1 / 1024), expected)
    grads[1][2] = float("inf")
    assert not torch.isfinite(grad_norm_sq(grads))


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("scale", [1.0, 2.0**16])
def test_perturbation_matches_the_formula_in_any_loss_scale(adaptive, scale):
    params, grads = _tensors(1), _tensors(2)
    g, w = _flat(grads), _flat(params)
    rho = 0.05
    if adaptive:
        expected = rho * w.square() * g / ((w * g).norm() + 1e-12)
    else:
        expected = rho * g / (g.norm() + 1e-12)
    scaled = [x * scale for x in grads]
    sam_perturbation_(params, scaled, rho, adaptive, grad_norm_sq(scaled, 1 / scale), inv_scale=1 / scale)
    torch.testing.assert_close(_flat(scaled), expected, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(_flat(scaled).norm(), torch.tensor(rho) if not adaptive else expected.norm())


def test_looksam_direction_is_the_part_of_g_s_orthogonal_to_g():
    g, g_s = _tensors(3), _tensors(4)
    fg, fs = _flat(g), _flat(g_s)
    expected = fs - (fs @ fg) / (fg @ fg) * fg
    buffer = [x.clone() for x in g]
    scale = 8.0
    geometry = looksam_direction_(buffer, [x * scale for x in g_s], inv_scale=1 / scale)
    torch.testing.assert_close(_flat(buffer), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(geometry.g_v_norm, expected.norm())
    assert abs(float(_flat(buffer) @ fg)) < 1e-4
    # The logged ratios, derived from the split, equal the direct computation.
    ratios = geometry.ratios()
    torch.testing.assert_close(ratios["gv_over_g"], expected.norm() / fg.norm())
    torch.testing.assert_close(ratios["diff_over_g"], (fs - fg).norm() / fg.norm())
    torch.testing.assert_close(ratios["cos"], (fs @ fg) / (fs.norm() * fg.norm()))


def test_apply_looksam_adds_the_scaled_direction():
    g, g_v = _tensors(5), _tensors(6)
    fg, fv = _flat(g), _flat(g_v)
    expected = fg + 0.7 * fg.norm() / fv.norm() * fv
    apply_looksam_(g, g_v, fv.norm(), 0.7, fg.norm())
    torch.testing.assert_close(_flat(g), expected)


def test_frozen_running_stats_keeps_buffers_and_uses_batch_statistics():
    bn = nn.BatchNorm1d(4).train()
    x = torch.randn(16, 4) * 3 + 1
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with frozen_running_stats(bn):
        out = bn(x)
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert bn.track_running_stats
    torch.testing.assert_close(out.mean(0), torch.zeros(4), atol=1e-5, rtol=0)  # batch statistics were used
    bn(x)
    assert not torch.equal(bn.running_mean, before["running_mean"])  # outside the block it updates again


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _loss(model, x, y):
    return nn.functional.mse_loss(model(x).squeeze(-1), y)


def test_controller_restores_the_weights_bit_for_bit():
    model = _model()
    x, y = torch.randn(16, 4), torch.randn(16)
    before = [p.detach().clone() for p in model.parameters()]
    sam = SAMController(model.parameters(), make_policy("sam", sam_rho=0.5))
    _loss(model, x, y).backward()
    assert sam.maybe_perturb()
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    _loss(model, x, y).backward()
    sam.restore()
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
    assert sam.passes == 2 and sam.sam_steps == 1 and sam.t == 1


def test_controller_sam_step_equals_a_hand_written_one():
    model, ref = _model(), _model()
    x, y = torch.randn(16, 4), torch.randn(16)
    rho = 0.1
    sam = SAMController(model.parameters(), make_policy("sam", sam_rho=rho))
    _loss(model, x, y).backward()
    sam.maybe_perturb()
    _loss(model, x, y).backward()
    sam.restore()

    _loss(ref, x, y).backward()
    grads = [p.grad.clone() for p in ref.parameters()]
    norm = torch.sqrt(sum(g.square().sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(ref.parameters(), grads):
            p.add_(rho * g / (norm + 1e-12))
    ref.zero_grad()
    _loss(ref, x, y).backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_erm_policy_leaves_the_gradient_alone_without_a_host_sync():
    model = _model()
    _loss(model, torch.randn(8, 4), torch.randn(8)).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    sam = SAMController(model.parameters(), make_policy("erm"))
    assert not sam.maybe_perturb()
    assert sam.record.grad_norm_sq is None  # not even measured: ERM costs nothing beyond the stock step
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)


def test_aelooksam_before_any_sam_step_is_plain_erm():
    model = _model()
    # A threshold far above any x: no SAM step, hence no g_v, hence nothing added to g.
    sam = SAMController(
        model.parameters(), make_policy("aelooksam", total_steps=10, aesam_lambda1=50.0, aesam_lambda2=50.0)
    )
    for _ in range(3):
        model.zero_grad()
        _loss(model, torch.randn(8, 4), torch.randn(8)).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        assert not sam.maybe_perturb()
        assert sam.g_v is None
        for p, g in zip(model.parameters(), grads):
            assert torch.equal(p.grad, g)


def test_controller_state_dict_round_trip():
    model = _model()
    sam = SAMController(model.parameters(), make_policy("aelooksam", total_steps=20))
    for _ in range(4):
        model.zero_grad()
        x, y = torch.randn(8, 4), torch.randn(8)
        _loss(model, x, y).backward()
        if sam.maybe_perturb():
            _loss(model, x, y).backward()
            sam.restore()
    state = sam.state_dict()
    other = SAMController(_model().parameters(), make_policy("aelooksam", total_steps=20))
    other.load_state_dict(state)
    assert other.state_dict()["policy"] == state["policy"]
    assert (other.t, other.passes, other.sam_steps) == (sam.t, sam.passes, sam.sam_steps)
    for a, b in zip(other.g_v, sam.g_v):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="is for policy .aelooksam., this run uses .sam."):
        SAMController(_model().parameters(), make_policy("sam")).load_state_dict(state)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_grad_scaler_overflow_skips_the_step_and_leaves_the_policy_untouched(bad):
    """The real GradScaler (CPU) with fp16 autocast: a planted inf/NaN makes an overflow step."""
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    sam = SAMController(model.parameters(), make_policy("aesam", total_steps=10))
    x, y = torch.randn(8, 4), torch.randn(8)

    def step(plant: bool) -> bool:
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = _loss(model, x, y)
        scaler.scale(loss).backward()
        if plant:
            next(model.parameters()).grad[0, 0] = bad
        is_sam = sam.maybe_perturb(grad_scale=scaler.get_scale())
        if is_sam:
            with torch.autocast("cpu", dtype=torch.float16):
                loss = _loss(model, x, y)
            scaler.scale(loss).backward()
            sam.restore()
        scaler.step(optimizer)
        scaler.update()
        return is_sam

    assert step(plant=False)  # the first step of aesam is a SAM step
    policy_state = dict(sam.policy.state_dict())
    weights = [p.detach().clone() for p in model.parameters()]
    assert not step(plant=True)
    assert sam.overflow_steps == 1 and sam.record.overflow
    assert sam.policy.state_dict() == policy_state
    for p, w in zip(model.parameters(), weights):
        assert torch.equal(p, w)  # skipped by the scaler, and never perturbed
    assert scaler.get_scale() == 2.0**9
    step(plant=False)
    assert sam.policy.state_dict() != policy_state and sam.decided_steps == 2


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_gradient_without_a_scaler_raises_before_deciding(bad):
    """fp32/bf16: nothing would skip the step, so the adaptive policy stops instead of training on NaN weights."""
    model = _model()
    sam = SAMController(model.parameters(), make_policy("aesam", total_steps=10))
    x, y = torch.randn(8, 4), torch.randn(8)
    _loss(model, x, y).backward()
    assert sam.maybe_perturb()
    _loss(model, x, y).backward()
    sam.restore()
    policy_state = dict(sam.policy.state_dict())
    weights = [p.detach().clone() for p in model.parameters()]
    model.zero_grad()
    _loss(model, x, y).backward()
    next(model.parameters()).grad[0, 0] = bad
    with pytest.raises(FloatingPointError, match="step 2 is not finite"):
        sam.maybe_perturb()
    assert sam.policy.state_dict() == policy_state  # a checkpoint taken now is clean
    for p, w in zip(model.parameters(), weights):
        assert torch.equal(p, w)


def test_fp16_overflow_in_the_second_pass_is_an_overflow_step():
    """g finite, g_s not: the scaler skips the step, so the decision is undone and g_v survives."""
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    # c_t = -5: every step is a SAM step, while mu and var still move.
    policy = make_policy("aelooksam", total_steps=10, aesam_lambda1=-5.0, aesam_lambda2=-5.0, sam_rho=0.1)
    sam = SAMController(model.parameters(), policy)
    x, y = torch.randn(8, 4), torch.randn(8)

    def step(plant_second_pass: bool):
        optimizer.zero_grad()
        scaler.scale(_loss(model, x, y)).backward()
        if sam.maybe_perturb(grad_scale=scaler.get_scale()):
            scaler.scale(_loss(model, x, y)).backward()
            if plant_second_pass:
                next(model.parameters()).grad[0, 0] = float("inf")
            sam.restore()
        scaler.step(optimizer)
        scaler.update()

    step(plant_second_pass=False)  # a SAM step: g_v exists
    g_v = [g.clone() for g in sam.g_v]
    policy_state = dict(sam.policy.state_dict())
    weights = [p.detach().clone() for p in model.parameters()]
    step(plant_second_pass=True)
    assert sam.record.overflow and sam.overflow_steps == 1
    assert (sam.sam_steps, sam.decided_steps) == (1, 1)
    assert (
        sam.policy.state_dict()["mu"] == policy_state["mu"] and sam.policy.state_dict()["var"] == policy_state["var"]
    )
    for a, b in zip(sam.g_v, g_v):
        assert torch.equal(a, b)
    for p, w in zip(model.parameters(), weights):
        assert torch.equal(p, w)
    assert scaler.get_scale() == 2.0**9


def test_abort_restores_the_weights_after_a_failed_second_pass():
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    sam = SAMController(model.parameters(), make_policy("sam", sam_rho=1.0))
    _loss(model, torch.randn(8, 4), torch.randn(8)).backward()
    assert sam.maybe_perturb()
    sam.abort()
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
    sam.abort()  # a second call is harmless
