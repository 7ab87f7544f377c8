"""Tests of grpo_lab/algorithms/trpo.py against independent truths: the closed-form Fisher matrix of
a softmax, the Gauss-Newton form J^T (diag p - p p^T) J of the KL Hessian of an MLP, dense linear
solves, the exact KL and state visitation of a tabular MDP, TRPO's Theorem 1 (a theorem: it must
hold for every step), and C one-config runs as the reference for a batched run. Seeds are fixed,
so every run is the same run.

The tensors here are tiny (S <= 11 states), so every test runs torch on one intra-op thread: on a
shared 2-core machine the second OpenMP thread only adds synchronisation stalls (measured: a
(1, 11, 3) log_softmax takes ~7 us on one thread and ~2 ms on two under load).
"""

import math

import pytest
import torch
from pydantic import ValidationError

from grpo_lab.advantages import masked_gae
from grpo_lab.algorithms.trpo import (
    TRPOConfig,
    _fit_critic,
    conjugate_gradient,
    fisher_vector_product,
    flatten,
    mean_kl,
    sample_state_weights,
    train_trpo,
    unflatten,
)
from grpo_lab.envs.tabular import (
    bandit,
    garnet,
    kl_divergence,
    sample_groups,
    softmax_policy,
)
from grpo_lab.optim import make_optimizer
from grpo_lab.policies.tabular import MLPPolicy, TabularSoftmaxPolicy

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _weights(C, S, seed):
    """Random state weights (C, S) summing to 1, with state 0 unvisited (weight 0)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(C, S, generator=g, dtype=F64)
    w[:, 0] = 0.0
    return w / w.sum(-1, keepdim=True)


def _softmax_fisher(probs, w):
    """Closed form: the Hessian of sum_s w(s) KL(p_old(.|s) || softmax(theta_s)) in theta at
    theta = theta_old is block-diagonal with blocks w(s) (diag(p_s) - p_s p_s^T), because
    d^2/dtheta^2 [-sum_a p_old(a) log softmax(theta)_a] = diag(pi) - pi pi^T (log-sum-exp Hessian).
    Shapes: probs (C, S, A), w (C, S) -> (C, S*A, S*A)."""
    C, S, A = probs.shape
    blocks = w[..., None, None] * (
        torch.diag_embed(probs) - probs[..., :, None] * probs[..., None, :]
    )
    F = torch.zeros(C, S * A, S * A, dtype=F64)
    for s in range(S):
        F[:, s * A : (s + 1) * A, s * A : (s + 1) * A] = blocks[:, s]
    return F


# ----------------------------------------------------------------------------- FVP and CG


def test_fvp_and_cg_match_closed_form_softmax_fisher():
    """Truth: the closed-form softmax Fisher (``_softmax_fisher``) and a dense solve of
    (F + lambda I) x = g; double backprop and batched CG must reproduce both per configuration."""
    C, S, A, lam = 2, 4, 3, 0.01
    policy = TabularSoftmaxPolicy(S, A, C, init_std=1.0, seed=[3, 4])
    old = policy.log_probs().detach()
    w = _weights(C, S, seed=0)
    F = _softmax_fisher(old.exp(), w)  # (C, D, D)
    D = S * A
    g = torch.randn(C, D, generator=torch.Generator().manual_seed(1), dtype=F64)

    fvp0 = fisher_vector_product(policy, old, w, damping=0.0)
    assert torch.allclose(fvp0(g), (F @ g.unsqueeze(-1)).squeeze(-1), atol=1e-14, rtol=1e-12)

    fvp = fisher_vector_product(policy, old, w, damping=lam)
    x, res = conjugate_gradient(fvp, g, iters=3 * D, tol=1e-13)
    x_ref = torch.linalg.solve(F + lam * torch.eye(D, dtype=F64), g)
    assert torch.allclose(x, x_ref, rtol=1e-8, atol=1e-10)
    assert bool((res < 1e-10).all())


def test_fvp_and_cg_match_gauss_newton_fisher_of_mlp():
    """Truth: at theta_old the KL Hessian equals J^T (diag p - p p^T) J summed over weighted states
    (Gauss-Newton form: the first-order term vanishes because softmax(z_old) = p_old), with J the
    logits' Jacobian by ``torch.autograd.functional.jacobian``, not by double backprop. The
    cross-configuration blocks of that Jacobian must be zero (configurations are independent)."""
    C, S, A, H, lam = 2, 4, 3, 3, 0.01
    policy = MLPPolicy(S, A, C, hidden=H, out_scale=1.0, seed=[5, 6])
    params = list(policy.parameters())
    old = policy.log_probs().detach()
    p = old.exp()
    w = _weights(C, S, seed=2)
    theta0 = flatten([q.detach() for q in params], C)  # (C, D)
    D = theta0.shape[1]

    def logits(flat):  # (C*D,) -> (C, S, A), the MLP written out independently
        w1, b1, w2, b2 = unflatten(flat.reshape(C, D), params)
        h = torch.tanh(policy.features @ w1 + b1.unsqueeze(-2))
        return h @ w2 + b2.unsqueeze(-2)

    jac = torch.autograd.functional.jacobian(logits, theta0.reshape(-1)).reshape(C, S, A, C, D)
    off = [jac[c, ..., e, :] for c in range(C) for e in range(C) if c != e]
    assert all(bool((o == 0).all()) for o in off)
    J = torch.stack([jac[c, ..., c, :] for c in range(C)])  # (C, S, A, D)
    W = w[..., None, None] * (torch.diag_embed(p) - p[..., :, None] * p[..., None, :])
    F = torch.einsum("csad,csab,csbe->cde", J, W, J)  # (C, D, D)

    g = torch.randn(C, D, generator=torch.Generator().manual_seed(3), dtype=F64)
    fvp0 = fisher_vector_product(policy, old, w, damping=0.0)
    assert torch.allclose(fvp0(g), (F @ g.unsqueeze(-1)).squeeze(-1), atol=1e-13, rtol=1e-10)
    fvp = fisher_vector_product(policy, old, w, damping=lam)
    x, _ = conjugate_gradient(fvp, g, iters=4 * D, tol=1e-13)
    x_ref = torch.linalg.solve(F + lam * torch.eye(D, dtype=F64), g)
    assert torch.allclose(x, x_ref, rtol=1e-7, atol=1e-9)


def test_batched_cg_solves_spd_systems_row_by_row():
    """Truth: dense solves of C different SPD systems; CG with per-row alpha/beta reaches them
    within D iterations (Krylov property, exact arithmetic), and a zero right-hand side stays 0."""
    C, D = 3, 6
    gen = torch.Generator().manual_seed(7)
    Q = torch.randn(C, D, D, generator=gen, dtype=F64)
    M = Q @ Q.mT + 0.1 * torch.eye(D, dtype=F64)  # SPD, condition numbers differ per row
    b = torch.randn(C, D, generator=gen, dtype=F64)
    b[2] = 0.0
    x, res = conjugate_gradient(lambda v: (M @ v.unsqueeze(-1)).squeeze(-1), b, iters=2 * D)
    ref = torch.linalg.solve(M, b)
    assert torch.allclose(x, ref, rtol=1e-8, atol=1e-10)
    assert bool((x[2] == 0).all()) and float(res[2]) == 0.0


def test_mean_kl_and_sample_weights_against_direct_counts():
    """Truth: counting states in Python loops, and ``kl_divergence`` on probabilities."""
    C, S, A = 2, 5, 3
    gen = torch.Generator().manual_seed(11)
    states = torch.randint(0, S, (C, 4, 6), generator=gen)
    mask = torch.rand(C, 4, 6, generator=gen) < 0.7
    w = sample_state_weights(states, mask, S)
    for c in range(C):
        real = [int(s) for s, m in zip(states[c].flatten(), mask[c].flatten(), strict=True) if m]
        for s in range(S):
            assert float(w[c, s]) == pytest.approx(real.count(s) / len(real), abs=1e-15)
    old = torch.log_softmax(torch.randn(C, S, A, generator=gen, dtype=F64), -1)
    new = torch.log_softmax(torch.randn(C, S, A, generator=gen, dtype=F64), -1)
    per_state = kl_divergence(old.exp(), new.exp())  # (C, S)
    assert torch.allclose(mean_kl(new, old, w), (w * per_state).sum(-1), atol=1e-14)
    assert torch.allclose(mean_kl(old, old, w), torch.zeros(C, dtype=F64), atol=0.0)


def test_gae_with_lambda_one_and_zero_critic_is_the_sampled_return():
    """Truth: the sampler's own discounted returns. With V = 0 and lam = 1, GAE's A_0 is
    sum_t gamma^t r_t of the episode (arXiv 1506.02438 eq. 16 telescopes)."""
    mdp = garnet(6, 3, seed=4)
    gens = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    probs = softmax_policy(torch.zeros(2, mdp.num_states, mdp.num_actions, dtype=F64))
    ep, _ = sample_groups(mdp, probs, 4, 3, gens)
    V = torch.zeros(2, mdp.num_states, dtype=F64)
    values = V.gather(1, ep.states.reshape(V.shape[0], -1)).reshape(ep.states.shape)
    adv, ret = masked_gae(ep.rewards, values, ep.mask, mdp.gamma, 1.0)
    assert torch.allclose(adv[..., 0], ep.returns, atol=1e-12)
    assert torch.equal(adv, ret)


def test_critic_fit_reaches_the_least_squares_table():
    """Truth: the minimiser of sum m (V(s_t) - y_t)^2 is the per-state mean of the targets."""
    C, S = 2, 4
    gen = torch.Generator().manual_seed(5)
    states = torch.randint(0, S - 1, (C, 3, 5), generator=gen)  # state S-1 never visited
    mask = torch.ones(C, 3, 5, dtype=torch.bool)
    y = torch.randn(C, 3, 5, generator=gen, dtype=F64)
    V = torch.nn.Parameter(torch.zeros(C, S, dtype=F64))
    opt = make_optimizer("adam", [V], torch.tensor([0.05, 0.1], dtype=F64))
    _fit_critic(V, opt, states, mask, y, iters=600)
    for c in range(C):
        for s in range(S - 1):
            sel = states[c] == s
            assert float(V.detach()[c, s]) == pytest.approx(float(y[c][sel].mean()), abs=1e-9)
    assert float(V.detach()[:, S - 1].abs().max()) == 0.0  # no data, no gradient, no move


# ----------------------------------------------------------------------------- constraints


def _accepted(st):
    return st["step_accepted"] == 1.0


def test_exact_constraint_holds_on_every_accepted_step():
    """Truth: ``policy_change``'s exact d^{pi_old}-weighted KL (computed from probabilities by
    ``kl_divergence``, apart from the line search). With kl_constraint="exact" every accepted step
    must satisfy it; the recorded constraint value is that same quantity."""
    mdp = garnet(6, 3, seed=1)
    deltas = (0.005, 0.05)
    cfgs = [
        TRPOConfig(delta=d, kl_constraint="exact", iterations=12, num_groups=4, group_size=4)
        for d in deltas
    ]
    st = train_trpo(mdp, cfgs).stacked("step")
    acc = _accepted(st)
    assert bool(acc.any(-1).all())
    for c, d in enumerate(deltas):
        a = acc[c]
        assert bool((st["kl_mean"][c][a] <= d * (1 + 1e-9)).all())
        assert bool((st["kl_exact_mean"][c][a] <= d * (1 + 1e-9)).all())
    assert torch.allclose(st["kl_sample"], st["kl_exact_mean"], rtol=0, atol=1e-15)
    assert torch.allclose(st["kl_exact_mean"], st["kl_mean"], rtol=1e-9, atol=1e-15)


def test_sample_constraint_holds_and_rejected_steps_leave_the_policy_unchanged():
    """Truth: KL >= 0 with equality iff the policies agree, and J is a function of the policy.
    With one fraction per line search (backtrack_iters=1) the full step overshoots the quadratic
    KL model about as often as not, so both outcomes occur: accepted steps have kl_sample <= delta;
    rejected ones have exactly zero TV, KL and true gain."""
    mdp = garnet(6, 3, seed=2)
    delta = 0.02
    cfg = TRPOConfig(delta=delta, backtrack_iters=1, iterations=20, num_groups=4, group_size=4)
    st = train_trpo(mdp, cfg).stacked("step")
    acc = _accepted(st)[0]
    assert bool(acc.any()) and bool((~acc).any())
    assert bool((st["kl_sample"][0][acc] <= delta).all())
    assert bool((st["kl_sample"][0][acc] > 0).all())
    assert bool((st["surrogate_gain_sample"][0][acc] > 0).all())
    for k in ("tv_max", "kl_mean", "true_gain", "kl_sample", "surrogate_gain_sample"):
        assert bool((st[k][0][~acc] == 0).all()), k
    assert bool((st["backtracks"][0][~acc] == 1).all())


def test_no_signal_means_no_step():
    """Truth: with equal deterministic rewards every group advantage is 0, so g = 0 and the update
    must reject (no NaN from beta = sqrt(2 delta / 0)); the policy stays uniform exactly."""
    mdp = bandit(3, "gaussian", means=[1.0, 1.0, 1.0], reward_std=0.0)
    cfg = TRPOConfig(advantage="group", group_size=4, num_groups=2, iterations=3)
    rec = train_trpo(mdp, cfg)
    st = rec.stacked("step")
    assert rec.status == ["ok"]
    assert bool((st["step_accepted"] == 0).all()) and bool((st["beta"] == 0).all())
    assert torch.equal(rec.final_probs, torch.full((1, 2, 3), 1 / 3, dtype=F64))


# ----------------------------------------------------------------------------- theory and runs


@pytest.mark.parametrize(
    "env,advantage",
    [("garnet", "gae"), ("bandit", "group")],
    ids=["garnet-gae", "bandit-group"],
)
def test_theorem1_lower_bound_never_fails(env, advantage):
    """Truth: TRPO Theorem 1 (arXiv 1502.05477), J(pi_new) - J(pi_old) >= L_gain - C KL_max with
    C = 4 max|A| gamma / (1 - gamma)^2, holds for every pair of policies of an infinite-horizon
    MDP; the slack measured exactly after every update must be >= 0 (up to rounding), also for
    large trust regions (delta = 0.5) where the bound is tightest in relative terms."""
    mdp = garnet(8, 3, seed=3) if env == "garnet" else bandit(4, seed=3)
    g = 4 if advantage == "group" else 1
    cfgs = [
        TRPOConfig(delta=d, advantage=advantage, group_size=g, num_groups=4, iterations=10)
        for d in (0.01, 0.5)
    ]
    rec = train_trpo(mdp, cfgs)
    st = rec.stacked("step")
    assert rec.status == ["ok", "ok"]
    assert bool((st["bound_slack"] >= -1e-9).all())
    assert bool(_accepted(st).any())


def test_trpo_improves_return_on_garnet():
    """Truth: J and J* by exact evaluation. Budget: Garnet(10 states, 3 actions, seed 0),
    25 updates of 8 x 4 = 32 episodes, delta = 0.01, GAE critic. TRPO must close most of the
    initial optimality gap (measured: 78% for seed 0, 75-85% over seeds 0-7); we require more
    than half."""
    mdp = garnet(10, 3, seed=0)
    cfg = TRPOConfig(iterations=25, num_groups=8, group_size=4)
    rec = train_trpo(mdp, cfg)
    j0 = float(rec.stacked("iter")["J"][0, 0])
    gap0 = float(rec.j_star[0]) - j0
    gap = float(rec.j_star[0] - rec.j_final[0])
    assert rec.status == ["ok"]
    assert gap < 0.5 * gap0, (gap0, gap)


def _assert_same(batched, singles, atol):
    for where in ("step", "iter"):
        b = batched.stacked(where)
        for c, one in enumerate(singles):
            s = one.stacked(where)
            assert set(b) == set(s)
            for k in s:
                assert torch.allclose(b[k][c], s[k][0], rtol=0, atol=atol, equal_nan=True), (
                    where,
                    k,
                    c,
                )
    for c, one in enumerate(singles):
        assert torch.allclose(batched.final_probs[c], one.final_probs[0], rtol=0, atol=atol)
        assert batched.status[c] == one.status[0]
        assert batched.diverged_at[c] == one.diverged_at[0]


@pytest.mark.parametrize(
    "kw,atol",
    [
        ({"policy": "tabular", "advantage": "gae", "kl_constraint": "sample"}, 1e-10),
        ({"policy": "mlp", "advantage": "group", "kl_constraint": "exact"}, 1e-6),
    ],
    ids=["tabular-gae-sample", "mlp-group-exact"],
)
def test_batched_run_equals_one_config_runs(kw, atol):
    """Truth: C separate runs with the same seeds. The batchable fields (delta, seed, vf_lr)
    differ across the three configurations; every metric and the final policies must agree.

    Tolerance: 1e-10 for the tabular policy (measured: bitwise equal). The MLP's batched matmul
    (torch.bmm) is not batch-invariant at rounding level (measured ~1e-15 between a batch of 3
    and of 1 on these shapes); CG on the damped, rank-deficient Fisher of a 355-parameter network
    amplifies that to ~1e-11 after one update and ~1e-8 after six (measured), so the MLP case
    checks 1e-6: equal trajectories, not equal bits. A leak between configurations would show
    at O(1)."""
    mdp = garnet(6, 3, seed=5)
    base = {"iterations": 6, "num_groups": 4, "group_size": 4, **kw}
    cfgs = [
        TRPOConfig(delta=0.01, seed=0, vf_lr=0.1, **base),
        TRPOConfig(delta=0.05, seed=1, vf_lr=0.05, **base),
        TRPOConfig(delta=0.02, seed=2, vf_lr=0.3, **base),
    ]
    _assert_same(train_trpo(mdp, cfgs), [train_trpo(mdp, c) for c in cfgs], atol)


def test_divergence_stops_one_config_not_the_batch():
    """Truth: the batch-mate's one-config run. vf_lr = 1e308 makes config 0's critic overflow to
    inf on its second Adam step (Adam's first steps move by ~lr each); that configuration must end
    "diverged" at update 1 with NaN metrics from there on and a finite policy, while config 1 runs
    on exactly as it would alone."""
    mdp = garnet(6, 3, seed=6)
    base = {"iterations": 4, "num_groups": 4, "group_size": 2}
    cfgs = [TRPOConfig(vf_lr=1e308, seed=0, **base), TRPOConfig(vf_lr=0.1, seed=1, **base)]
    rec = train_trpo(mdp, cfgs)
    assert rec.status == ["diverged", "ok"]
    assert rec.diverged_at[0] == 1 and "critic" in rec.error[0]
    st = rec.stacked("step")
    assert bool(torch.isnan(st["kl_sample"][0, 1:]).all())
    assert bool(torch.isnan(rec.stacked("iter")["J"][0, 1:]).all())
    assert bool(torch.isfinite(st["kl_sample"][0, :1]).all())
    assert bool(torch.isfinite(rec.final_probs).all())
    one = train_trpo(mdp, cfgs[1])
    for k, v in one.stacked("step").items():
        assert torch.allclose(st[k][1], v[0], rtol=0, atol=1e-10, equal_nan=True), k
    assert torch.allclose(rec.final_probs[1], one.final_probs[0], rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"delta": 0.0}, "delta"),
        ({"delta": -0.1}, "delta"),
        ({"delta": math.nan}, "delta"),
        ({"cg_iters": 0}, "cg_iters"),
        ({"advantage": "group", "group_size": 1}, "group_size"),
        ({"kl_constraint": "max"}, "kl_constraint"),
        ({"backtrack_coef": 1.0}, "backtrack_coef"),
        ({"policy": "lstm"}, "policy"),
        ({"learning_rate": 0.1}, "learning_rate"),
    ],
)
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValidationError, match=field):
        TRPOConfig(**kw)


def test_gae_allows_group_size_one():
    assert TRPOConfig(advantage="gae", group_size=1).group_size == 1


def test_configs_differing_in_a_non_batchable_field_are_refused():
    mdp = bandit(3)
    with pytest.raises(ValueError, match=r"\['cg_iters'\]"):
        train_trpo(mdp, [TRPOConfig(iterations=1), TRPOConfig(iterations=1, cg_iters=5)])
    with pytest.raises(ValueError, match="mdp has C=2"):
        train_trpo(bandit(3, num=2), [TRPOConfig(iterations=1)] * 3)
    with pytest.raises(ValueError, match="empty"):
        train_trpo(mdp, [])
