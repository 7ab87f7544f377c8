"""TRPO with a critic on classic control (grpo_lab/algorithms/classic_trpo.py): the batched
Fisher-vector product against an explicit Hessian of the mean KL, CG against a direct solve, the
line search's trust region, batched == one configuration at a time, learning CartPole-v1, and bad
input."""

import pytest
import torch
from pydantic import ValidationError

from grpo_lab.algorithms.classic_trpo import (
    ClassicTRPOConfig,
    fisher_vector_product,
    line_search,
    log_probs,
    natural_step,
    train_classic_trpo,
)
from grpo_lab.policies.mlp import BatchedMLP
from grpo_lab.trust_region import conjugate_gradient, flatten, unflatten

SIZES = [4, 5, 5, 3]  # obs 4, two tanh layers of 5, 3 actions: D = 73 parameters per config
SHORT = {"n_steps": 128, "batch_size": 64, "total_timesteps": 2 * 2 * 128, "eval_episodes": 2}


def _problem(C=2, M=6):
    """A tiny batched actor (float64) at theta_old and a batch of M observations per config."""
    actor = BatchedMLP(SIZES, seeds=list(range(C)), out_gain=1.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(C, M, SIZES[0], dtype=torch.float64, generator=g)
    actions = torch.randint(0, SIZES[-1], (C, M), generator=g)
    adv = torch.randn(C, M, dtype=torch.float64, generator=g)
    with torch.no_grad():
        old_all = log_probs(actor, obs)
    return actor, (obs, actions, old_all, adv), g


def _kl_of_flat(actor, obs_c, old_c, c):
    """theta (D,) -> mean KL(pi_old || pi_theta) of configuration c, written without the batched
    code: a plain 2-layer tanh MLP built from the unflattened vector."""
    params = list(actor.parameters())

    def f(theta):
        parts = unflatten(theta.unsqueeze(0), [p[c : c + 1] for p in params])
        w0, w1, w2, b0, b1, b2 = (x[0] for x in parts)  # ParameterList order: weights, biases
        h = torch.tanh(obs_c @ w0 + b0)
        h = torch.tanh(h @ w1 + b1)
        logp = torch.log_softmax(h @ w2 + b2, -1)
        return (old_c.exp() * (old_c - logp)).sum(-1).mean()

    return f


def _explicit_fisher(actor, obs, old_all):
    """(C, D, D): the Hessian of each configuration's mean KL at theta_old, by autograd."""
    params = list(actor.parameters())
    theta = flatten([p.detach() for p in params], len(obs))
    return torch.stack(
        [
            torch.autograd.functional.hessian(_kl_of_flat(actor, obs[c], old_all[c], c), theta[c])
            for c in range(len(obs))
        ]
    )


def test_batched_fvp_equals_the_hessian_of_the_mean_kl_times_v():
    actor, (obs, _, old_all, _), g = _problem()
    H = _explicit_fisher(actor, obs, old_all)  # (C, D, D)
    D = H.shape[-1]
    assert D == 73
    v = torch.randn(2, D, dtype=torch.float64, generator=g)
    fvp = fisher_vector_product(actor, obs, old_all, damping=0.0)
    expected = torch.einsum("cij,cj->ci", H, v)
    torch.testing.assert_close(fvp(v), expected, rtol=1e-9, atol=1e-12)
    # damping adds lambda v; configuration c's product does not see configuration c' (c' != c)
    damped = fisher_vector_product(actor, obs, old_all, damping=0.1)
    torch.testing.assert_close(damped(v), expected + 0.1 * v, rtol=1e-9, atol=1e-12)
    v0 = v.clone()
    v0[1] = 0.0
    torch.testing.assert_close(fvp(v0)[0], expected[0], rtol=1e-9, atol=1e-12)
    assert float(fvp(v0)[1].abs().max()) == 0.0
    # the Fisher is symmetric positive semi-definite with rank <= M (A - 1) = 12
    torch.testing.assert_close(H, H.transpose(-1, -2))
    eig = torch.linalg.eigvalsh(H)
    assert float(eig.min()) > -1e-10 and int((eig > 1e-8).sum(-1).max()) <= 12


def test_cg_solves_the_damped_fisher_system():
    actor, (obs, _, old_all, _), g = _problem()
    H = _explicit_fisher(actor, obs, old_all)
    D, lam = H.shape[-1], 0.1
    b = torch.randn(2, D, dtype=torch.float64, generator=g)
    fvp = fisher_vector_product(actor, obs, old_all, damping=lam)
    x, rel = conjugate_gradient(fvp, b, iters=40, tol=1e-12)
    direct = torch.linalg.solve(H + lam * torch.eye(D, dtype=torch.float64), b)
    torch.testing.assert_close(x, direct, rtol=1e-8, atol=1e-10)
    assert float(rel.max()) < 1e-10


def test_line_search_keeps_the_trust_region_or_the_old_parameters():
    actor, batch, _ = _problem()
    cfg = ClassicTRPOConfig()
    params = list(actor.parameters())
    theta_old = flatten([p.detach().clone() for p in params], 2)
    delta = torch.tensor([0.01, 0.001], dtype=torch.float64)
    full, nat = natural_step(actor, batch, delta, cfg)
    active = torch.ones(2, dtype=torch.bool)
    args = (batch, delta, cfg.line_search_shrinking_factor, cfg.line_search_max_iter, active)
    ls = line_search(actor, theta_old, full, *args)
    assert ls.accepted.all() and (ls.kl <= delta).all() and (ls.gain > 0).all()
    # the quadratic model: the accepted step's KL is about frac^2 delta
    torch.testing.assert_close(ls.kl, ls.frac**2 * delta, rtol=0.3, atol=0.0)
    theta_new = flatten([p.detach() for p in params], 2)
    torch.testing.assert_close(theta_new, theta_old + ls.frac.unsqueeze(-1) * full)
    # uphill the other way: no fraction improves the surrogate -> rejected, theta_old kept exactly
    ls = line_search(actor, theta_old, -full, *args)
    assert not ls.accepted.any() and (ls.frac == 0).all() and (ls.kl == 0).all()
    assert (ls.backtracks == cfg.line_search_max_iter).all()
    assert torch.equal(flatten([p.detach() for p in params], 2), theta_old)


def test_a_batch_equals_its_configurations_run_alone_and_steps_respect_delta():
    cfgs = [
        ClassicTRPOConfig(**SHORT, seed=3, delta=0.01, vf_lr=1e-3),
        ClassicTRPOConfig(**SHORT, seed=5, delta=0.002, vf_lr=3e-4),
    ]
    both = train_classic_trpo(None, cfgs)
    st, it = both.stacked("step"), both.stacked("iter")
    assert st["kl"].shape == (2, 2) and both.status == ["ok", "ok"]
    delta = torch.tensor([[0.01], [0.002]]).double()  # the float32 delta the run compares with
    acc = st["step_accepted"] == 1
    assert acc.any()
    assert (st["kl"][acc] <= delta.expand_as(acc)[acc]).all()
    assert (st["kl"][~acc] == 0).all() and (st["surrogate_gain"][acc] > 0).all()
    assert (st["ratio_max"] >= 1).all() and (st["ratio_min"] <= 1).all()
    assert (it["env_steps"][:, -1] == 512).all() and (it["env_steps_per_s"] > 0).all()
    for c, cfg in enumerate(cfgs):
        alone = train_classic_trpo(None, cfg)
        for k in ("kl", "ratio_max", "step_frac", "grad_norm", "v_loss"):
            torch.testing.assert_close(st[k][c], alone.stacked("step")[k][0], rtol=1e-5, atol=1e-6)
        assert float(both.summary["eval_return"][c]) == float(alone.summary["eval_return"][0])


@pytest.mark.slow
def test_trpo_learns_cartpole():
    """Defaults (SB3-contrib / Zoo: 2 envs x 512 steps, delta 0.01), 10,240 env steps per
    configuration (10 updates, about 10 s for both seeds on one thread): the deterministic policy
    balances far longer than the initial one (about 10 steps). Measured eval returns (10
    episodes): seeds 0, 1 -> 395.5, 486.0 (seeds 2-5: 470.1, 319.2, 402.4, 206.5; at 20,480
    steps seeds 0, 1 reach 500, 500)."""
    cfgs = [ClassicTRPOConfig(total_timesteps=10_240, seed=s, eval_episodes=10) for s in (0, 1)]
    rec = train_classic_trpo(None, cfgs)
    assert (rec.summary["eval_return"] > 150).all(), rec.summary["eval_return"]
    st, it = rec.stacked("step"), rec.stacked("iter")
    acc = st["step_accepted"] == 1
    assert (st["kl"][acc] <= 0.01).all() and acc.float().mean() > 0.5
    assert (it["explained_variance"][:, -5:].mean(-1) > 0.2).all()  # the critic learned
    assert rec.status == ["ok", "ok"]


def test_bad_input_is_rejected_before_training():
    with pytest.raises(ValidationError, match="unknown env_id 'CartPole-v0'"):
        ClassicTRPOConfig(env_id="CartPole-v0")
    for bad in (0.0, -0.01, float("nan")):
        with pytest.raises(ValidationError, match="delta"):
            ClassicTRPOConfig(delta=bad)
    with pytest.raises(ValidationError, match="batch_size"):
        ClassicTRPOConfig(batch_size=100)
    with pytest.raises(ValidationError, match="extra"):
        ClassicTRPOConfig(target_kl=0.01)
    with pytest.raises(ValueError, match="differ in"):
        train_classic_trpo(
            None, [ClassicTRPOConfig(**SHORT), ClassicTRPOConfig(**SHORT, gamma=0.9)]
        )


def _flops(fn) -> int:
    """Matmul-type FLOPs of fn(), torch's FlopCounterMode (what ``count_flops_every`` uses)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def _fvp_units(D: int, H: int, A: int) -> int:
    """Sum of (products x in x out) of one Fisher-vector product of a [D, H, H, A] actor; its
    FLOPs are 2 M x this. F v = grad_theta (k . v) with k = grad KLbar kept as a graph: reverse
    through k's graph, whose products per layer l are dW_l = h_{l-1}^T g_l and (l > 1) dh_{l-1} =
    g_l W_l^T: a gradient for each factor that depends on theta (the first layer's h_0 is data:
    1 product there, 2 + 2 elsewhere), then through the forward graph (the h_l depend on theta):
    dW_l, and dh_{l-1} for l > 1. So 2 units for the first layer, 6 for the others; no forward
    product (k's graph is kept and reused)."""
    return 2 * D * H + 6 * H * H + 6 * H * A


def test_one_fisher_vector_product_and_cg_count_as_the_fvp_code_implies():
    """Truth: the layer shapes (``_fvp_units``). natural_step with k CG iterations (cg_tol 0:
    all k run) = surrogate forward + its backward (g) + the Fisher's forward + backward with the
    graph + (k + 1) FVPs (k in CG, one for x^T F x): each extra CG iteration costs one FVP."""
    actor, batch, g = _problem()  # C = 2, M = 6, SIZES [4, 5, 5, 3]
    (C, M, D), H, A = batch[0].shape, SIZES[1], SIZES[-1]
    fvp = fisher_vector_product(actor, batch[0], batch[2])
    v = torch.randn(C, 73, dtype=torch.float64, generator=g)
    one = 2 * M * _fvp_units(D, H, A)
    assert _flops(lambda: fvp(v)) == C * one
    fwd, bwd = D * H + H * H + A * H, D * H + 2 * H * H + 2 * A * H
    delta = torch.tensor([0.01, 0.01], dtype=torch.float64)
    for k in (1, 2, 5):
        cfg = ClassicTRPOConfig(cg_max_steps=k, cg_tol=0.0)
        n = _flops(lambda cfg=cfg: natural_step(actor, batch, delta, cfg))
        assert n == C * (2 * M * 2 * (fwd + bwd) + (k + 1) * one)


@pytest.mark.parametrize("cg", [1, 2, 5])
def test_update_flops_match_a_hand_count_from_the_layer_shapes(cg):
    """The whole update of the trainer, per configuration, from the layer shapes: 4 actor
    forwards on the M samples (pi_old, the surrogate, the Fisher's KL, the audit), one per line
    search fraction tried (backtracks + 1, all of them when rejected), 2 actor backwards (g and
    the Fisher's graph), cg + 1 FVPs, and n_critic_updates passes of critic forward + backward
    (its value head's dh is a broadcast product, not counted). Grows by one FVP per CG iteration
    and one forward per backtrack. A batch tries fractions while any configuration is pending,
    so its count / C has the line-search forwards of its slowest configuration."""
    D, H, A, M, passes = 4, 4, 2, 16, 3
    fwd, bwd = D * H + H * H + A * H, D * H + 2 * H * H + 2 * A * H
    critic = (D * H + H * H + H) + (D * H + 2 * H * H + H)
    cfg = ClassicTRPOConfig(
        hidden=H, n_envs=2, n_steps=8, batch_size=8, total_timesteps=2 * M, eval_episodes=1,
        cg_max_steps=cg, cg_tol=0.0, n_critic_updates=passes, count_flops_every=1,
    )  # fmt: skip
    rec = train_classic_trpo(None, [cfg, cfg.model_copy(update={"seed": 1})])
    st, it = rec.stacked("step"), rec.stacked("iter")
    tried = torch.where(st["step_accepted"] == 1, st["backtracks"] + 1, 10.0)  # (C, U)
    # with cg 1 and 5 the two configurations' searches differ at some update: the max matters
    assert cg == 2 or (tried[0] != tried[1]).any()
    tried = tried.amax(0)  # (U,) the batch's
    units = (4 + tried) * fwd + 2 * bwd + (cg + 1) * _fvp_units(D, H, A) + passes * critic
    torch.testing.assert_close(it["update_flops"], (2 * M * units).expand(2, -1), rtol=0, atol=0)
    assert it["update_time"].isnan().all()


def test_counting_flops_changes_no_number():
    cfgs = [ClassicTRPOConfig(**SHORT, seed=s) for s in (0, 1)]
    plain = train_classic_trpo(None, cfgs)
    counted = train_classic_trpo(
        None, [c.model_copy(update={"count_flops_every": 2}) for c in cfgs]
    )
    for k, v in plain.stacked("step").items():
        torch.testing.assert_close(counted.stacked("step")[k], v, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(counted.summary["eval_return"], plain.summary["eval_return"])
    pi, ci = plain.stacked("iter"), counted.stacked("iter")
    assert pi["update_flops"].isnan().all() and (pi["update_time"] > 0).all()
    assert ci["update_time"][:, 0].isnan().all() and (ci["update_time"][:, 1] > 0).all()
    assert (ci["update_flops"][:, 0] > 0).all() and ci["update_flops"][:, 1].isnan().all()
