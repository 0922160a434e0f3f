"""Policy contract tests, parametrized over the registry, and the exact rules of each policy."""

import copy
import math

import pytest
import torch

from aesam_hf.policies import (
    POLICIES,
    AdaptivePolicy,
    AELookSAMPolicy,
    PeriodicPolicy,
    SAMPolicyName,
    make_policy,
)
from aesam_hf.settings import SAMSettings


def _xs(n: int = 200, seed: int = 0) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=gen, dtype=torch.float64) * 10).tolist()


@pytest.mark.parametrize("name", list(POLICIES))
def test_registry_names_match_classes(name):
    assert POLICIES[name].name == name
    assert SAMPolicyName(name.value) is name


@pytest.mark.parametrize("name", list(POLICIES))
def test_state_dict_resumes_the_same_decisions(name):
    # Every policy from one record: the settings a policy requires are given, the others are its defaults.
    settings = SAMSettings(aesam_budget=0.5) if POLICIES[name].requires else None
    policy = make_policy(name, settings, total_steps=200, seed=3)
    xs = _xs()
    first = [policy.decide(t, x) for t, x in enumerate(xs[:100])]
    snapshot = copy.deepcopy(policy.state_dict())
    rest = [policy.decide(t, x) for t, x in enumerate(xs[100:], start=100)]

    resumed = make_policy(name, settings, total_steps=200, seed=3)
    resumed.load_state_dict(snapshot)
    assert [resumed.decide(t, x) for t, x in enumerate(xs[100:], start=100)] == rest
    if name == SAMPolicyName.ERM:
        assert not any(first + rest)
    if name == SAMPolicyName.SAM:
        assert all(first + rest)


def test_unknown_policy_lists_the_allowed_names():
    with pytest.raises(ValueError, match="aesam.*aelooksam"):
        make_policy("adam_sam")


def test_periodic_and_looksam_fire_exactly_at_multiples_of_k():
    for cls in (PeriodicPolicy, POLICIES[SAMPolicyName.LOOKSAM]):
        policy = cls(SAMSettings(sam_interval=4))
        assert [t for t in range(20) if policy.decide(t, None)] == [0, 4, 8, 12, 16]


def test_random_policy_is_the_seeded_bernoulli_sequence():
    policy = make_policy("random", seed=11, sam_probability=0.3)
    decisions = [policy.decide(t, None) for t in range(500)]
    gen = torch.Generator().manual_seed(11)
    assert decisions == [torch.rand((), generator=gen).item() < 0.3 for _ in range(500)]
    assert decisions != [make_policy("random", seed=12, sam_probability=0.3).decide(t, None) for t in range(500)]
    assert 0.22 < sum(decisions) / 500 < 0.38


@pytest.mark.parametrize("cls", [AdaptivePolicy, AELookSAMPolicy])
def test_adaptive_rule_matches_the_spec_formulas(cls):
    T = 300
    policy = cls(SAMSettings(aesam_delta=0.8, aesam_lambda1=-0.5, aesam_lambda2=1.5), total_steps=T)
    mu, var = 0.0, 1e-10
    for t, x in enumerate(_xs(T, seed=1)):
        mu = 0.8 * mu + 0.2 * x
        var = 0.8 * var + 0.2 * (x - mu) ** 2
        c = (t / T) * -0.5 + (1 - t / T) * 1.5
        expected = x >= mu + c * math.sqrt(var)
        assert policy.decide(t, x) == expected, f"step {t}"
        stats = policy.stats()
        assert stats["mu"] == pytest.approx(mu, rel=1e-12)
        assert stats["sigma"] == pytest.approx(math.sqrt(var), rel=1e-12)
        assert stats["threshold_c"] == pytest.approx(c, rel=1e-12)


def test_adaptive_defaults_fire_on_about_half_the_steps():
    # With lambda1 = -1, lambda2 = 1, the fraction is roughly the mean of Phi(-c_t) = 0.5 (docs/algorithm.md).
    T = 2000
    policy = AdaptivePolicy(total_steps=T)
    gen = torch.Generator().manual_seed(0)
    xs = (1.0 + 0.2 * torch.randn(T, generator=gen, dtype=torch.float64)).tolist()
    fraction = sum(policy.decide(t, x) for t, x in enumerate(xs)) / T
    assert 0.4 < fraction < 0.6


# ---- the budget (docs/algorithm.md, "The budget") and the time-matched random baseline ----


def _stream(kind: str, n: int, seed: int) -> list[float]:
    """Synthetic ||g||² streams of different shapes: the normal model is right only for the first."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=gen, dtype=torch.float64)
    t = torch.arange(n, dtype=torch.float64)
    return {
        "normal": 10 + z,
        "lognormal": z.exp(),
        "decaying": 100 * (-t / (n / 3)).exp() + 3 * z.abs(),
        "heavy_tailed": (z / torch.randn(n, generator=gen, dtype=torch.float64).abs().clamp_min(1e-3)).abs(),
    }[kind].tolist()


@pytest.mark.parametrize("kind", ["normal", "lognormal", "decaying", "heavy_tailed"])
@pytest.mark.parametrize("budget", [0.2, 0.35, 0.5])
@pytest.mark.parametrize("cls", [AdaptivePolicy, AELookSAMPolicy])
def test_budget_lands_the_run_fraction_within_003_of_the_target(cls, budget, kind):
    for steps in (60, 400, 2000):
        policy = cls(SAMSettings(aesam_budget=budget), total_steps=steps)
        decisions = [policy.decide(t, x) for t, x in enumerate(_stream(kind, steps, seed=steps))]
        assert abs(sum(decisions) / steps - budget) <= 0.03 + 1e-9, (steps, sum(decisions) / steps)


def test_without_a_budget_the_paper_schedule_is_unchanged():
    xs = _xs(300, seed=4)
    plain, off = AdaptivePolicy(total_steps=300), make_policy("aesam", total_steps=300, aesam_budget=None)
    assert [plain.decide(t, x) for t, x in enumerate(xs)] == [off.decide(t, x) for t, x in enumerate(xs)]
    assert off.shift == 0.0 and off.excess == 0.0


def test_budget_keeps_choosing_steps_by_x():
    # Same budget, same times: the steps AE-SAM picks have larger x than those it skips.
    xs = _stream("lognormal", 2000, seed=1)
    policy = make_policy("aesam", total_steps=2000, aesam_budget=0.3)
    picked = [(policy.decide(t, x), x) for t, x in enumerate(xs)]
    sam = [x for s, x in picked if s]
    erm = [x for s, x in picked if not s]
    assert sum(sam) / len(sam) > 2 * sum(erm) / len(erm)


@pytest.mark.parametrize("budget", [None, 0.2, 0.5])
def test_scheduled_random_draws_at_aesam_expected_rate(budget):
    from aesam_hf.policies import normal_tail, threshold_schedule

    steps = 4000
    policy = make_policy("scheduled", total_steps=steps, seed=5, aesam_budget=budget)
    gen = torch.Generator().manual_seed(5)
    expected = [torch.rand((), generator=gen).item() < policy.rate(t) for t in range(steps)]
    decisions = [policy.decide(t, None) for t in range(steps)]
    assert decisions == expected  # the seeded draws, one per step, against p_t
    if budget is None:
        assert policy.rate(0) == pytest.approx(normal_tail(1.0)) and policy.rate(steps) == pytest.approx(0.8413, 1e-3)
        assert policy.rate(steps // 2) == pytest.approx(normal_tail(threshold_schedule(steps // 2, steps, -1.0, 1.0)))
    else:
        assert abs(sum(decisions) / steps - budget) < 0.03
    late, early = sum(decisions[-steps // 4 :]), sum(decisions[: steps // 4])
    assert late > early  # SAM steps pile up late, as AE-SAM's do


@pytest.mark.parametrize("steps", [10, 20, 333])
@pytest.mark.parametrize("budget", [0.2, 0.3, 0.5])
def test_scheduled_expects_exactly_the_budget_on_a_run_of_any_length(steps, budget):
    # Its rate is solved on the steps the run decides at (t = 0 .. T - 1): at T = 10 and a budget of 0.3 the shift
    # solved on the continuous schedule made it draw 0.271 on average.
    policy = make_policy("scheduled", total_steps=steps, aesam_budget=budget)
    assert sum(policy.rate(t) for t in range(steps)) / steps == pytest.approx(budget, abs=1e-6)


@pytest.mark.parametrize("steps, budget", [(10, 0.3), (10, 0.25), (7, 0.5), (1000, 0.1), (3, 0.1)])
def test_late_takes_sam_steps_on_exactly_the_last_fraction_of_the_run(steps, budget):
    policy = make_policy("late", total_steps=steps, aesam_budget=budget)
    decisions = [policy.decide(t, None) for t in range(steps)]
    last = round(budget * steps)
    assert decisions == [False] * (steps - last) + [True] * last


def test_late_needs_a_budget():
    with pytest.raises(ValueError, match=r"`aesam_budget` \(None\) must be set for the 'late' policy"):
        make_policy("late", total_steps=10)


def test_a_budget_over_a_short_run_warns_that_it_cannot_be_held():
    with pytest.warns(UserWarning, match="needs about 60 steps"):
        make_policy("aesam", total_steps=20, aesam_budget=0.3)
