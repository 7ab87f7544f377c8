"""Tests of grpo_lab/algorithms/ppo.py against independent truths: torch's own gradient clipping,
the exact V^pi of a tabular MDP (linear solve), the exact optimum J*, C one-config runs, a
first-order Taylor expansion of the entropy, a direct computation of eq. 9's loss, central finite
differences of the shared trunk's gradient, and Adam's invariance to a constant gradient scale.

Every run has fixed seeds, so every test is the same run each time (on the one torch thread that
tests/conftest.py sets for the session).
"""

import math

import pytest
import torch

from grpo_lab.advantages import masked_gae
from grpo_lab.algorithms.common import gather_logp, iteration_generators
from grpo_lab.algorithms.ppo import (
    MLPCritic,
    PPOConfig,
    TabularCritic,
    clip_grad_norm_per_config,
    explained_variance,
    ppo_loss,
    train_ppo,
    values_at,
)
from grpo_lab.envs.tabular import bandit, exact_return, garnet, sample_groups, state_values
from grpo_lab.losses import PRESETS, LossConfig
from grpo_lab.optim import make_optimizer
from grpo_lab.policies.tabular import SharedActorCritic, TabularSoftmaxPolicy

F64 = torch.float64


def entropy_rows(probs):
    return -(probs * probs.log()).sum(-1)


# ----------------------------------------------------------------------------- gradient clipping


def test_per_config_grad_clipping_equals_torch_clip_on_each_config_alone():
    """Truth: torch.nn.utils.clip_grad_norm_ applied to configuration c's slices on their own."""
    g = torch.Generator().manual_seed(0)
    C = 4
    shapes = [(C, 3, 2), (C, 3), (C, 5, 1)]
    scales = torch.tensor([1e-3, 0.1, 1.0, 30.0], dtype=F64)  # some below max_norm, some above
    params = []
    for shape in shapes:
        p = torch.zeros(shape, dtype=F64, requires_grad=True)
        p.grad = torch.randn(shape, generator=g, dtype=F64) * scales.reshape(
            -1, *[1] * (len(shape) - 1)
        )
        params.append(p)
    max_norm = 0.5
    alone = []  # C separate parameter lists, clipped by torch
    norms_torch = []
    for c in range(C):
        ps = []
        for p in params:
            q = torch.zeros_like(p[c])
            q.grad = p.grad[c].clone()
            ps.append(q)
        norms_torch.append(torch.nn.utils.clip_grad_norm_(ps, max_norm))
        alone.append(ps)
    norms = clip_grad_norm_per_config(params, max_norm)
    torch.testing.assert_close(norms, torch.stack(norms_torch), rtol=1e-12, atol=0)
    for c in range(C):
        for p, q in zip(params, alone[c], strict=True):
            torch.testing.assert_close(p.grad[c], q.grad, rtol=1e-12, atol=1e-15)
    assert norms[0] < max_norm < norms[-1]  # both branches were exercised
    # a single global norm would have shrunk the small configuration too: the coupling avoided
    assert torch.equal(params[0].grad[0], alone[0][0].grad)


# ----------------------------------------------------------------------------- critic


def test_tabular_critic_on_a_fixed_policy_converges_to_exact_v_pi():
    """Truth: V^pi = (I - gamma P_pi)^-1 r_pi (``state_values``, a linear solve).

    The critic is trained with this module's own pieces (``masked_gae`` targets with lam = 0.95,
    the clipped value term of ``ppo_loss``, Adam lr 0.05, one step per batch of 256 episodes) on
    one fixed policy; the policy table is a constant, so only the critic moves. Tabular TD(lam) has
    V^pi as its unique fixed point, so the iterates hover around it with Monte Carlo noise; the
    Polyak-Ruppert average of the last 60 of 120 iterates removes most of it. Tolerance 0.06 on
    max_s |V - V^pi| (V^pi in [1.2, 1.6]; sampling seeds 0..7 give 0.008 to 0.032, so the bound
    is about 2x the worst of eight). The last check shows it is tight enough to catch a wrong
    discount: the same estimate fails it against V^pi for gamma 0.95 instead of 0.9 (which moves
    every V^pi(s) by more than 0.14).
    """
    mdp = garnet(num_states=5, num_actions=2, gamma=0.9, p_end=0.3, seed=1)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, mdp.num_states, mdp.num_actions, generator=g, dtype=F64)
    logp_table = torch.log_softmax(logits, -1)  # (1, S, A), no gradient: the fixed policy
    probs = logp_table.exp()
    v_true = state_values(mdp, probs)[0]  # (S,)
    live = ~mdp.terminal_mask
    critic = TabularCritic(mdp.num_states, 1)
    opt = make_optimizer("adam", critic.parameters(), 0.05)
    lc = PRESETS.get("ppo")
    eps = torch.tensor([0.2], dtype=F64)
    K = 120
    avg = torch.zeros_like(v_true)
    for it in range(K):
        ep, _ = sample_groups(mdp, probs, 256, 1, iteration_generators([0], it))
        with torch.no_grad():
            old_v = values_at(critic.values(), ep.states, ep.mask)
            adv, ret = masked_gae(ep.rewards, old_v, ep.mask, mdp.gamma, 0.95)
        old_logp = gather_logp(logp_table, ep.states, ep.actions)
        loss, _ = ppo_loss(
            logp_table, critic.values(), ep.states, ep.actions, ep.mask, old_logp, adv, old_v,
            ret, lc, eps, eps,
        )  # fmt: skip
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        if it >= K // 2:
            avg += critic.values().detach()[0] / (K - K // 2)
    tol = 0.06
    err = (avg - v_true)[live].abs().max()
    assert err < tol, f"max |V - V^pi| = {float(err):.4f}"
    wrong_gamma = garnet(num_states=5, num_actions=2, gamma=0.95, p_end=0.3, seed=1)
    assert (avg - state_values(wrong_gamma, probs)[0])[live].abs().max() > tol


def test_explained_variance_hand_worked():
    """Truth: hand-worked 1 - Var[R - V] / Var[R] (population variances) on three steps."""
    ret = torch.tensor([[[1.0, 2.0, 3.0, 9.0]]], dtype=F64)
    val = torch.tensor([[[1.0, 1.0, 1.0, 9.0]]], dtype=F64)
    mask = torch.tensor([[[True, True, True, False]]])
    # R - V = (0, 1, 2): Var = 2/3; Var[R] = 2/3 -> 0;  V = R -> 1
    torch.testing.assert_close(explained_variance(ret, val, mask), torch.zeros(1, dtype=F64))
    torch.testing.assert_close(explained_variance(ret, ret, mask), torch.ones(1, dtype=F64))


# ----------------------------------------------------------------------------- learning


def test_ppo_reaches_90_percent_of_j_star_on_a_bandit():
    """Truth: J* = max_a mu_a (``optimal_return``). Budget: 15 iterations x 32 one-step episodes,
    4 epochs x 2 minibatches (120 Adam steps, lr 0.05), two seeds as one batch."""
    mdp = bandit(k=5, seed=0)  # Bernoulli arms, J* = 0.97, uniform J = 0.58
    cfgs = [PPOConfig(iterations=15, minibatches=2, seed=s, audit=False) for s in (0, 1)]
    rec = train_ppo(mdp, cfgs)
    assert rec.status == ["ok", "ok"]
    assert bool((rec.j_final >= 0.9 * rec.j_star).all()), (rec.j_final, rec.j_star)


def test_ppo_improves_j_on_a_garnet_and_its_critic_tracks_v_pi():
    """Truth: exact J(pi) and J* (linear solves) and exact V^{pi_old} for the critic error.
    Budget: 15 iterations x 32 episodes, 4 epochs x 4 minibatches (240 Adam steps).
    PPO must close at least half of the initial gap J* - J(uniform), and the critic's error at the
    visited states must fall below a third of its initial value (the critic starts at 0)."""
    mdp = garnet(num_states=6, num_actions=3, seed=0)
    rec = train_ppo(mdp, PPOConfig(iterations=15, seed=0, audit=False))
    it = rec.stacked("iter")
    j0, j_star = float(it["J"][0, 0]), float(rec.j_star[0])
    assert rec.status == ["ok"]
    assert float(rec.j_final[0]) - j0 > 0.5 * (j_star - j0)
    crit = it["critic_error"][0]
    assert float(crit[-3:].mean()) < float(crit[0]) / 3


# ----------------------------------------------------------------------------- batching


def _run_alone(mdp, cfgs):
    return [train_ppo(mdp, c) for c in cfgs]


def _assert_batch_equals_alone(batched, alone, tol=1e-10):
    for where in ("step", "iter"):
        b = batched.stacked(where)
        for c, rec in enumerate(alone):
            one = rec.stacked(where)
            assert set(one) == set(b)
            for k in b:
                torch.testing.assert_close(b[k][c], one[k][0], rtol=tol, atol=tol, equal_nan=True)
    for c, rec in enumerate(alone):
        torch.testing.assert_close(batched.final_probs[c], rec.final_probs[0], rtol=tol, atol=tol)
        torch.testing.assert_close(batched.j_final[c], rec.j_final[0], rtol=tol, atol=tol)
        assert batched.status[c] == rec.status[0]
        assert batched.diverged_at[c] == rec.diverged_at[0]


@pytest.mark.parametrize("model", ["tabular", "mlp"])
def test_batched_run_equals_one_config_runs(model):
    """Truth: C one-config runs with the same seeds. The configurations differ in every batchable
    field (lr, seed, eps_low, eps_high); per-config generators and per-config gradient clipping
    (max_grad_norm 0.05 so that it binds) make the batch reproduce each run to 1e-10."""
    mdp = garnet(num_states=5, num_actions=3, seed=2)
    base = {"iterations": 2, "epochs": 2, "minibatches": 2, "num_episodes": 8, "policy": model,
            "critic": model, "max_grad_norm": 0.05}  # fmt: skip
    if model == "tabular":
        base["init_std"] = 0.5  # a non-uniform start
    cfgs = [
        PPOConfig(**base, lr=0.05, seed=0),
        PPOConfig(
            **base, lr=0.2, seed=7, loss=PRESETS.get("ppo").model_copy(update={"eps_low": 0.1})
        ),
        PPOConfig(
            **base,
            lr=0.01,
            seed=3,
            loss=LossConfig(**{**PRESETS.get("ppo").model_dump(), "eps_high": 0.28}),
        ),
    ]
    batched = train_ppo(mdp, cfgs)
    _assert_batch_equals_alone(batched, _run_alone(mdp, cfgs))
    assert batched.stacked("step")["grad_norm"].max() > 0.05  # clipping was active


# ----------------------------------------------------------------------------- entropy sign


def test_entropy_term_raises_the_entropy_by_the_first_order_amount():
    """Truth: first-order Taylor expansion. With zero rewards (so A = 0: critic 0, GAE 0) and
    c1 = 0, the loss is -c2 H(pi(.|s0)) and one SGD step of size eta changes the entropy by
    eta c2 ||grad_theta H||^2 + O(eta^2) > 0 (the seed's +c2 H would lower it by as much)."""
    mdp = bandit(k=4, kind="gaussian", means=[0.0, 0.0, 0.0, 0.0], reward_std=0.0)
    c2, eta = 0.5, 0.05
    loss = PRESETS.get("ppo").model_copy(update={"vf_coef": 0.0, "ent_coef": c2})
    cfg = PPOConfig(
        loss=loss, iterations=1, epochs=1, minibatches=1, num_episodes=8, optimizer="sgd",
        lr=eta, max_grad_norm=None, init_std=1.0, seed=4,
    )  # fmt: skip
    rec = train_ppo(mdp, cfg)
    pol = TabularSoftmaxPolicy(
        mdp.num_states, mdp.num_actions, 1, init_std=1.0, seed=[4], dtype=F64
    )
    h0 = entropy_rows(pol.probs()[0, 0])
    (grad,) = torch.autograd.grad(h0, pol.logits)
    h1 = entropy_rows(rec.final_probs[0, 0])
    predicted = eta * c2 * grad.pow(2).sum()
    assert float(rec.step["pg_loss"][0]) == 0.0  # the policy term contributed nothing
    assert h1 > h0
    torch.testing.assert_close(h1 - h0, predicted, rtol=0.05, atol=0)


# ----------------------------------------------------------------------------- bad input


def test_configs_differing_in_a_non_batchable_field_are_refused_by_name():
    mdp = bandit(k=3)
    with pytest.raises(ValueError, match=r"lam"):
        train_ppo(mdp, [PPOConfig(lam=0.9), PPOConfig(lam=0.95)])
    loss = PRESETS.get("ppo").model_copy(update={"ent_coef": 0.0})
    with pytest.raises(ValueError, match=r"loss\.ent_coef"):
        train_ppo(mdp, [PPOConfig(), PPOConfig(loss=loss)])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"critic": "table"}, "critic"),
        ({"policy": "linear"}, "policy"),
        ({"loss": "grpo"}, "advantage"),
        ({"num_episodes": 10, "minibatches": 4}, "minibatches"),
        ({"lam": 1.5}, "lam"),
        ({"shared": True}, "shared"),
        ({"shared": True, "policy": "mlp"}, "critic='mlp'"),
        ({"hidden": 0}, "hidden"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_config_raises_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PPOConfig(**kwargs)


def test_a_diverging_configuration_is_stopped_while_the_others_finish():
    """Truth: the survivors equal their one-config runs (the diverging one cannot disturb them),
    and an SGD lr of 1e200 overflows the squared value error within a few steps."""
    mdp = bandit(k=3, seed=1)
    base = {"iterations": 3, "epochs": 2, "minibatches": 2, "num_episodes": 8, "optimizer": "sgd"}
    cfgs = [PPOConfig(**base, lr=0.5, seed=0), PPOConfig(**base, lr=1e200, seed=1),
            PPOConfig(**base, lr=0.5, seed=2)]  # fmt: skip
    rec = train_ppo(mdp, cfgs)
    assert rec.status == ["ok", "diverged", "ok"]
    assert isinstance(rec.diverged_at[1], int) and 0 <= rec.diverged_at[1] < 12
    assert "non-finite" in rec.error[1]
    losses = rec.stacked("step")["loss"]
    assert bool(torch.isnan(losses[1, rec.diverged_at[1] :]).all())
    assert bool(torch.isfinite(rec.j_final).all())
    for c in (0, 2):
        alone = train_ppo(mdp, cfgs[c])
        torch.testing.assert_close(rec.final_probs[c], alone.final_probs[0], rtol=1e-10, atol=1e-10)
    assert math.isfinite(float(exact_return(mdp, rec.final_probs[1])))


def test_mlp_critic_values_shape_and_seeded_init():
    """Truth: the construction itself: a (C, S) value table, the same weights for the same seed,
    other weights for another seed."""
    a = MLPCritic(4, 2, seed=[0, 1], hidden=8).values()
    b = MLPCritic(4, 1, seed=[1], hidden=8).values()
    assert a.shape == (2, 4)
    torch.testing.assert_close(a[1], b[0])
    assert not torch.allclose(a[0], a[1])


# ----------------------------------------------------------------------------- value coefficient c1


def _loss_inputs(C=3, S=5, A=3, N=4, T=6, seed=0):
    """Random ppo_loss inputs with padded steps: logits (C, S, A), values (C, S), (C, N, T) rest."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(C, S, A, generator=g, dtype=F64)
    v_table = torch.randn(C, S, generator=g, dtype=F64)
    states = torch.randint(0, S, (C, N, T), generator=g)
    actions = torch.randint(0, A, (C, N, T), generator=g)
    lengths = torch.randint(2, T + 1, (C, N), generator=g)
    mask = torch.arange(T).reshape(1, 1, T) < lengths.unsqueeze(-1)
    old_logp = torch.log_softmax(logits + 0.3 * torch.randn(C, S, A, generator=g, dtype=F64), -1)
    old_logp = gather_logp(old_logp, states, actions)
    adv = torch.randn(C, N, T, generator=g, dtype=F64)
    old_values = values_at(v_table + 0.3 * torch.randn(C, S, generator=g, dtype=F64), states, mask)
    returns = torch.randn(C, N, T, generator=g, dtype=F64)
    return logits, v_table, states, actions, mask, old_logp, adv, old_values, returns


def test_ppo_loss_is_policy_loss_plus_c1_value_loss_minus_c2_entropy():
    """Truth: eq. 9 of arXiv 1707.06347 as a loss, L = -L^CLIP + c1 L^VF - c2 S, written out per
    configuration from its definitions (A normalised with Bessel's std + 1e-8, token means over the
    unpadded steps, CleanRL's clipped value error max((V - R)^2, (V_old + clip(V - V_old) - R)^2)
    / 2), with a different c1 per configuration and c2 = 0.05."""
    logits, v_table, states, actions, mask, old_logp, adv, old_values, returns = _loss_inputs()
    cfg = PRESETS.get("ppo").model_copy(update={"ent_coef": 0.05})  # vf_clip 0.2
    eps = torch.full((3,), 0.2, dtype=F64)
    c1 = torch.tensor([0.1, 0.5, 2.0], dtype=F64)
    logp_table = torch.log_softmax(logits, -1)
    args = (logp_table, v_table, states, actions, mask, old_logp, adv, old_values, returns, cfg)
    loss, met = ppo_loss(*args, eps, eps, True, c1)
    for c in range(3):
        m = mask[c]
        r = (logp_table[c][states[c], actions[c]] - old_logp[c]).exp()[m]
        a = adv[c][m]
        a = (a - a.mean()) / (a.std() + 1e-8)
        pg = -torch.minimum(r * a, r.clamp(0.8, 1.2) * a).mean()
        v, v_old, ret = v_table[c][states[c]][m], old_values[c][m], returns[c][m]
        v_clip = v_old + (v - v_old).clamp(-0.2, 0.2)
        vl = (0.5 * torch.maximum((v - ret) ** 2, (v_clip - ret) ** 2)).mean()
        p = logp_table[c][states[c]][m].exp()  # (n, A)
        h = -(p * p.log()).sum(-1).mean()
        expected = pg + c1[c] * vl - 0.05 * h
        torch.testing.assert_close(loss[c], expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(met["pg_loss"][c], pg, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(met["value_loss"][c], vl, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(met["entropy"][c], h, rtol=1e-12, atol=1e-12)
    # without a per-configuration c1, loss.vf_coef (0.5) applies to every configuration
    loss_default, _ = ppo_loss(*args, eps, eps, True)
    torch.testing.assert_close(loss_default[1], loss[1], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(loss_default[[0, 2]], loss[[0, 2]])


def test_shared_trunk_gradient_matches_finite_differences_and_is_linear_in_c1():
    """Truth: central finite differences (h = 1e-6, float64) of the whole loss in every entry of
    the shared trunk W1, and the decomposition grad L(c1) = grad L(0) + c1 grad L^VF that eq. 9
    implies: the trunk's gradient moves with c1 (both terms reach it), the policy head's does not,
    the value head's is exactly c1 times the value loss's."""
    _, _, states, actions, mask, old_logp, adv, old_values, returns = _loss_inputs(
        C=2, S=4, A=3, seed=3
    )
    net = SharedActorCritic(4, 3, 2, hidden=5, out_scale=1.0, seed=[0, 1])
    cfg = PRESETS.get("ppo").model_copy(update={"ent_coef": 0.05, "vf_clip": None})
    eps = torch.full((2,), 0.2, dtype=F64)
    rest = (states, actions, mask, old_logp, adv, old_values, returns, cfg, eps, eps, True)

    def total(c1):
        loss, met = ppo_loss(net.log_probs(), net.values(), *rest, torch.full((2,), c1, dtype=F64))
        return loss.sum(), met

    def grads(c1):
        net.zero_grad()
        total(c1)[0].backward()
        return {k: p.grad.clone() for k, p in net.named_parameters()}

    c1 = 0.7
    g = grads(c1)
    fd = torch.zeros_like(net.w1)
    h = 1e-6
    with torch.no_grad():
        for idx in torch.cartesian_prod(*[torch.arange(n) for n in net.w1.shape]).tolist():
            w = net.w1[tuple(idx)].item()
            net.w1[tuple(idx)] = w + h
            up = total(c1)[0]
            net.w1[tuple(idx)] = w - h
            down = total(c1)[0]
            net.w1[tuple(idx)] = w
            fd[tuple(idx)] = (up - down) / (2 * h)
    torch.testing.assert_close(g["w1"], fd, rtol=1e-6, atol=1e-8)
    assert g["w1"].abs().max() > 1e-3
    # the value loss's own gradient: L(c1) - L(0) = c1 L^VF
    g0, g2 = grads(0.0), grads(2.0)
    net.zero_grad()
    (total(1.0)[0] - total(0.0)[0]).backward()  # L(1) - L(0) = L^VF
    gv = {k: p.grad.clone() for k, p in net.named_parameters()}
    for k in g:
        torch.testing.assert_close(g2[k], g0[k] + 2.0 * gv[k], rtol=1e-10, atol=1e-12)
    assert gv["w1"].abs().max() > 1e-3 and g0["w1"].abs().max() > 1e-3  # both reach the trunk
    assert not torch.allclose(g2["w1"], g0["w1"])
    torch.testing.assert_close(g2["w2"], g0["w2"], rtol=0, atol=0)  # policy head: no value term
    assert float(g0["wv"].abs().max()) == 0.0  # value head: only the value term
    torch.testing.assert_close(g2["wv"], 2.0 * gv["wv"], rtol=1e-12, atol=0)


def _shared_cfg(**kw):
    base = {"policy": "mlp", "critic": "mlp", "shared": True, "hidden": 8, "num_episodes": 8,
            "epochs": 2, "minibatches": 2, "iterations": 2}  # fmt: skip
    return PPOConfig(**{**base, **kw})


def _with_c1(c1, **kw):
    return PRESETS.get("ppo").model_copy(update={"vf_coef": c1, **kw})


def test_shared_batched_run_with_different_c1_equals_one_config_runs():
    """Truth: C one-config runs with the same seeds, the configurations differing in c1 (now a
    batchable field), lr, seed and eps; max_grad_norm 0.05 so that per-config clipping binds."""
    mdp = garnet(num_states=5, num_actions=3, seed=2)
    cfgs = [
        _shared_cfg(loss=_with_c1(0.1), lr=0.05, seed=0, max_grad_norm=0.05),
        _shared_cfg(loss=_with_c1(2.0, eps_low=0.1), lr=0.2, seed=7, max_grad_norm=0.05),
        _shared_cfg(loss=_with_c1(0.5), lr=0.01, seed=3, max_grad_norm=0.05),
        _shared_cfg(loss=_with_c1(2.0), lr=0.05, seed=0, max_grad_norm=0.05),
    ]
    batched = train_ppo(mdp, cfgs)
    _assert_batch_equals_alone(batched, _run_alone(mdp, cfgs))
    assert batched.stacked("step")["grad_norm"].max() > 0.05  # clipping was active
    # c1 is not inert here: configurations 0 and 3 differ only in c1 (0.1 vs 2.0)
    assert not torch.allclose(batched.final_probs[0], batched.final_probs[3], atol=1e-6)


def test_shared_network_initialises_its_policy_like_the_mlp_policy():
    """Truth: a run's first iteration samples with pi_theta at initialisation; the shared
    network's policy head starts as MLPPolicy with the same seed and width, so the separate and
    shared runs see the same first J."""
    mdp = garnet(num_states=5, num_actions=3, seed=2)
    sep = train_ppo(mdp, _shared_cfg(shared=False, iterations=1, seed=5, audit=False))
    sha = train_ppo(mdp, _shared_cfg(iterations=1, seed=5, audit=False))
    torch.testing.assert_close(sep.stacked("iter")["J"], sha.stacked("iter")["J"], rtol=0, atol=0)


@pytest.mark.parametrize(("model", "tol"), [("tabular", 1e-7), ("mlp", 1e-3)])
def test_c1_is_inert_with_separate_parameters_and_adam(model, tol):
    """Truth: Adam's step m / (sqrt(v) + eps) is invariant to a constant scale of a parameter's
    gradient, up to eps = 1e-8 against sqrt(v). With separate policy and critic and no gradient
    clipping, c1 only scales the critic's gradient, so c1 = 0.25 and c1 = 4 give the same run up
    to that eps: the same J every iteration and final policy within ``tol`` (measured: 8e-9 for
    the value table; 7e-5 for the MLP critic, whose small gradient components meet eps, and
    whose Adam-normalised policy steps amplify what reaches them). The same pair of c1 differs by
    more than 100 tol through the shared trunk, with the joint gradient clipping of max_grad_norm
    (measured 0.09 to 0.16), and with plain SGD (c1 scales the critic's step; 0.02 to 0.3): why
    the c1-sweep protocol needs shared parameters."""
    mdp = garnet(num_states=5, num_actions=3, seed=2)
    base = {"policy": model, "critic": model, "iterations": 4, "num_episodes": 16,
            "max_grad_norm": None, "seed": 1, "audit": False}  # fmt: skip

    def gap(**other):
        cfgs = [PPOConfig(**{**base, **other}, loss=_with_c1(c1)) for c1 in (0.25, 4.0)]
        rec = train_ppo(mdp, cfgs)
        j = rec.stacked("iter")["J"]
        return rec, float((rec.final_probs[0] - rec.final_probs[1]).abs().max()), j

    rec, d, j = gap()
    assert d < tol
    torch.testing.assert_close(j[0], j[1], rtol=0, atol=tol)
    assert float((rec.final_probs[0] - rec.final_probs[0, :, :1]).abs().max()) > 0.05  # it learnt
    others = [{"max_grad_norm": 0.05}, {"optimizer": "sgd", "lr": 0.5}]
    if model == "mlp":
        others.append({"shared": True})
    for other in others:
        assert gap(**other)[1] > 100 * tol, other
