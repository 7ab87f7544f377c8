"""Tests of grpo_lab/instrument.py against hand-worked values, the performance-difference lemma,
first-order expansions and synthetic estimators with a known mean."""

import math

import pytest
import torch

from grpo_lab.envs.tabular import (
    TabularMDP,
    advantages,
    exact_return,
    make_env,
    state_occupancy,
)
from grpo_lab.instrument import exact_ratio_audit, gradient_quality, improvement, policy_change


def _two_state() -> TabularMDP:
    # s0 -> s1 under both actions, s1 -> terminal s2; rewards R(s0) = (1, 0), R(s1) = (0, 1).
    P = torch.zeros(3, 2, 3, dtype=torch.float64)
    P[0, :, 1] = 1.0
    P[1, :, 2] = 1.0
    P[2, :, 2] = 1.0
    R = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    rho = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    return TabularMDP(P, R, 0.5, rho, terminal=torch.tensor([False, False, True]))


def test_ratio_audit_and_policy_change_hand_worked():
    # x = (1, 0.5) on s0, s1 (gamma = 0.5), d = (2/3, 1/3). pi_old uniform; pi_new: s0 (0.8, 0.2),
    # s1 (0.5, 0.5). Ratios at s0: 1.6 and 0.4, at s1: 1, 1.
    mdp = _two_state()
    old = torch.full((3, 2), 0.5, dtype=torch.float64)
    new = old.clone()
    new[0] = torch.tensor([0.8, 0.2], dtype=torch.float64)
    a = exact_ratio_audit(mdp, old, new, 0.2, 0.2)
    assert a["exact_ratio_max"].item() == pytest.approx(1.6)
    assert a["exact_ratio_min"].item() == pytest.approx(0.4)
    # visitation mass outside [0.8, 1.2]: both actions of s0, d(s0) = 2/3 in total
    assert a["exact_frac_high"].item() == pytest.approx(2 / 3 * 0.5)
    assert a["exact_frac_low"].item() == pytest.approx(2 / 3 * 0.5)
    assert a["exact_frac_outside"].item() == pytest.approx(2 / 3)
    c = policy_change(mdp, old, new)
    kl0 = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert c["kl_max"].item() == pytest.approx(kl0)
    assert c["kl_mean"].item() == pytest.approx(2 / 3 * kl0)
    assert c["tv_max"].item() == pytest.approx(0.3)


def test_improvement_hand_worked():
    # J(pi) = E[r0] + 0.5 E[r1]: J(old) = 0.5 + 0.25 = 0.75; J(new) = 0.8 + 0.25 = 1.05.
    # A_old(s0, .) = (1 - 0.5, 0 - 0.5) = (0.5, -0.5) (s1's value is the same for both actions).
    # surrogate_gain = x(s0) sum_a pi_new A = 0.8 * 0.5 - 0.2 * 0.5 = 0.3 (exact here: s0 is
    # visited once whatever the policy).
    mdp = _two_state()
    old = torch.full((3, 2), 0.5, dtype=torch.float64)
    new = old.clone()
    new[0] = torch.tensor([0.8, 0.2], dtype=torch.float64)
    m = improvement(mdp, old, new, 0.2)
    assert m["true_gain"].item() == pytest.approx(0.3)
    assert m["surrogate_gain"].item() == pytest.approx(0.3)
    # clipped: s0, a0: r = 1.6 > 1.2 with A > 0 -> 1.2 * 0.5; a1: r = 0.4 < 0.8 with A < 0 ->
    # 0.8 * (-0.5) (min picks the clipped, smaller value). Weighted by pi_old = 0.5 each.
    assert m["clipped_gain"].item() == pytest.approx(0.5 * (1.2 * 0.5) + 0.5 * (0.8 * -0.5))
    c = 4 * 0.5 * 0.5 / (1 - 0.5) ** 2  # 4 max|A| gamma / (1 - gamma)^2 = 4
    kl0 = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert m["trpo_bound"].item() == pytest.approx(0.3 - c * kl0)
    assert m["bound_slack"].item() == pytest.approx(c * kl0)


def _random_pair(seed: int, scale: float, S: int = 6, A: int = 3):
    mdp = make_env("garnet", num_states=S, num_actions=A, branching=2, seed=seed)
    g = torch.Generator().manual_seed(seed)
    lo = torch.randn(mdp.num_states, A, generator=g, dtype=torch.float64)
    ln = lo + scale * torch.randn(mdp.num_states, A, generator=g, dtype=torch.float64)
    return mdp, lo.softmax(-1), ln.softmax(-1)


@pytest.mark.parametrize("seed", range(5))
def test_true_gain_obeys_the_performance_difference_lemma(seed):
    # Kakade & Langford 2002: J(new) - J(old) = sum_s x_new(s) sum_a pi_new(a|s) A_old(s, a),
    # an identity independent of how true_gain is computed (two exact returns).
    mdp, old, new = _random_pair(seed, 1.0)
    m = improvement(mdp, old, new)
    pdl = (state_occupancy(mdp, new).unsqueeze(-1) * new * advantages(mdp, old)).sum()
    assert m["true_gain"].item() == pytest.approx(pdl.item(), abs=1e-10)


def test_surrogate_is_first_order_exact():
    # L_old(new) and J(new) agree to first order in the step: |true - surrogate| = O(step^2).
    errs = []
    for h in (1e-2, 1e-3):
        mdp, old, new = _random_pair(0, h)
        m = improvement(mdp, old, new)
        errs.append(abs(m["true_gain"].item() - m["surrogate_gain"].item()))
    assert errs[1] < errs[0] / 50  # second order: a 10x smaller step gives ~100x smaller error


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0])
def test_trpo_theorem_1_holds_on_random_pairs(seed, scale):
    # A theorem: true_gain >= surrogate_gain - C max_s KL for every policy pair.
    mdp, old, new = _random_pair(seed, scale)
    assert improvement(mdp, old, new)["bound_slack"].item() >= -1e-10


def test_batched_instruments_equal_unbatched():
    mdp, old, new = _random_pair(3, 0.5)
    olds = torch.stack([old, new])
    news = torch.stack([new, old])
    eps = torch.tensor([0.1, 0.3], dtype=torch.float64)
    for fn in (exact_ratio_audit, improvement):
        batched = fn(mdp, olds, news, eps, eps)
        for c in range(2):
            single = fn(mdp, olds[c], news[c], eps[c].item(), eps[c].item())
            for k in single:
                torch.testing.assert_close(batched[k][c], single[k], equal_nan=True)


def test_improvement_is_nan_where_the_stationary_identities_do_not_apply():
    mdp = make_env("garnet", num_states=4, num_actions=2, branching=2, seed=0, horizon=5)
    p = torch.full((mdp.num_states, 2), 0.5, dtype=torch.float64)
    q = p.clone()
    q[0] = torch.tensor([0.9, 0.1], dtype=torch.float64)
    m = improvement(mdp, p, q)
    assert m["true_gain"].item() == pytest.approx(
        (exact_return(mdp, q) - exact_return(mdp, p)).item()
    )
    assert math.isnan(m["trpo_bound"].item())


def test_gradient_quality_on_a_synthetic_estimator():
    # Samples with known mean mu and unit variance: unbiased for mu, biased for mu + 0.1.
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    samples = mu + torch.randn(20000, 3, generator=g, dtype=torch.float64)
    ok = gradient_quality(samples, mu)
    assert ok["bias_z_max"] < 5 and ok["cosine"] > 0.999 and ok["num_samples"] == 20000
    assert ok["trace_cov"] == pytest.approx(3.0, rel=0.05)
    bad = gradient_quality(samples, mu + 0.1)
    assert bad["bias_z_max"] > 10  # 0.1 / (1 / sqrt(20000)) = 14 sigma
    assert gradient_quality(samples, mu / 2, scale=2.0)["bias_z_max"] < 5  # scale applies
    with pytest.raises(ValueError, match="samples must be"):
        gradient_quality(samples[:1], mu)


def test_gradient_quality_in_direction_and_its_p_values():
    # The estimator's mean is 3 mu: biased in scale, unbiased in direction.
    g = torch.Generator().manual_seed(1)
    mu = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    samples = 3 * mu + torch.randn(20000, 4, generator=g, dtype=torch.float64)
    q = gradient_quality(samples, mu)
    assert q["p_bias"] < 1e-12 and q["fit_scale"] == pytest.approx(3.0, abs=0.02)
    assert q["p_direction"] > 1e-3 and q["dir_rel_error"] < 0.01
    # the hand-computed quantities: alpha = <m, g> / <g, g>, Bonferroni p = D * 2 * (1 - Phi(z))
    m = samples.mean(0)
    assert q["fit_scale"] == pytest.approx(float(m @ mu / (mu @ mu)), rel=1e-12)
    se = samples.std(0) / 20000**0.5
    assert q["noise_rel"] == pytest.approx(float(se.norm() / mu.norm()), rel=1e-12)
    z = float(((m - mu) / se).abs().max())
    assert q["p_bias"] == pytest.approx(min(1.0, 4 * math.erfc(z / 2**0.5)), rel=1e-6, abs=1e-300)
    # a tilt in direction is seen in direction too
    tilted = samples + torch.tensor([0.0, 0.0, 0.0, 0.2], dtype=torch.float64)
    t = gradient_quality(tilted, mu)
    assert t["p_direction"] < 1e-12 and t["dir_rel_error"] == pytest.approx(
        0.2 / (3 * 2.29), rel=0.05
    )


def test_gradient_quality_variance_measures_and_their_standard_errors():
    # Estimates 3 mu + N(0, diag(s^2)): tr Cov = sum s^2 = 1.75, ||mu||^2 = 5.25, so
    # grad_var_rel = 1/3, grad_mse_rel = (1.75 + ||2 mu||^2) / 5.25 = 1/3 + 4 and
    # grad_var_rel_dir = grad_var_rel / 3^2 = 1/27 (the variance of x / 3).
    mu = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    s = torch.tensor([1.0, 0.5, 0.5, 0.5], dtype=torch.float64)
    truth = {"grad_var_rel": 1 / 3, "grad_mse_rel": 1 / 3 + 4, "grad_var_rel_dir": 1 / 27}
    g = torch.Generator().manual_seed(2)
    reps, n = 400, 500
    rows = [gradient_quality(3 * mu + s * torch.randn(n, 4, generator=g, dtype=torch.float64), mu)
            for _ in range(reps)]  # fmt: skip
    for name, value in truth.items():
        est = torch.tensor([r[name] for r in rows], dtype=torch.float64)
        se = torch.tensor([r[f"{name}_se"] for r in rows], dtype=torch.float64)
        # unbiased (to O(1/N) for the ratio grad_var_rel_dir): the mean of 400 within 4 SE
        assert abs(float(est.mean()) - value) < 4 * float(se.mean()) / reps**0.5, name
        # the recorded standard error is the spread of the estimate over replications
        assert float(se.mean()) == pytest.approx(float(est.std()), rel=0.15), name
    # hand-computed definitions on one draw
    x = 3 * mu + s * torch.randn(n, 4, generator=g, dtype=torch.float64)
    q = gradient_quality(x, mu)
    d = (x - x.mean(0)).square().sum(-1)
    assert q["grad_var_rel"] == pytest.approx(float(d.sum() / (n - 1) / 5.25), rel=1e-12)
    assert q["grad_var_rel"] == pytest.approx(q["trace_cov"] / q["true_norm"] ** 2, rel=1e-12)
    assert q["grad_mse_rel"] == pytest.approx(float((x - mu).square().sum(-1).mean() / 5.25))
    assert q["grad_var_rel_dir"] == pytest.approx(q["grad_var_rel"] / q["fit_scale"] ** 2)
    # scale-free: c x has the same grad_var_rel_dir (and its se), c^2 the grad_var_rel
    c = gradient_quality(-0.1 * x, mu)
    assert c["grad_var_rel_dir"] == pytest.approx(q["grad_var_rel_dir"], rel=1e-9)
    assert c["grad_var_rel_dir_se"] == pytest.approx(q["grad_var_rel_dir_se"], rel=1e-9)
    assert c["grad_var_rel"] == pytest.approx(0.01 * q["grad_var_rel"], rel=1e-9)
    # a zero gradient leaves the relative measures undefined
    z = gradient_quality(x, torch.zeros(4, dtype=torch.float64))
    assert all(math.isnan(z[k]) for k in ("grad_var_rel", "grad_mse_rel_se", "grad_var_rel_dir"))
