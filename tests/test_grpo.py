"""Tests of grpo_lab/algorithms/grpo.py: gradient (un)biasedness against the exact grad J,
convergence against the exact J*, the recorded exact gradient norms against the policy
gradient theorem and finite differences, batched == looped, divergence handling and bad
input, and the lr schedules (constant, linear, cosine, kl-adaptive)."""

import pytest
import torch

from grpo_lab.algorithms.gradient import gradient_samples
from grpo_lab.algorithms.grpo import GRPOConfig, GRPOTrainer, exact_policy_grad_norm, train_grpo
from grpo_lab.envs.tabular import (
    TabularMDP,
    exact_grad,
    exact_return,
    make_env,
    policy_gradient_theorem_grad,
    stack_mdps,
    state_visitation,
)
from grpo_lab.instrument import gradient_quality
from grpo_lab.losses import LossConfig

# ----------------------------------------------------------------------------- gradient bias
# One on-policy GRPO step (pi_old = pi_theta: every ratio is 1, no clipping) with outcome
# advantages A_i = R_i - b_i broadcast over the steps of episode i, and agg "seq-mean-token-sum"
# (weight 1/N per step), gives the ascent direction
#     g = (1/N) sum_i A_i sum_t grad log pi(a_it | s_it).
# Leave-one-out: b_i is independent of episode i, and E[R sum_t grad log pi] = grad J (REINFORCE
# with the full discounted return; the start state of each group is drawn from rho), so
#     E[g] = grad J                                                          (factor 1).
# Group mean: R_i - mean_j R_j = (G-1)/G (R_i - mean_{j != i} R_j), hence E[g] = (G-1)/G grad J.
# "seq-mean-token-sum-norm" weighs each step 1/(N max_len) instead of 1/N: E[g] = grad J / max_len.
# Std scaling (divide by the group std) and per-episode length normalisation ("seq-mean-token-
# mean") make the weights depend on the sampled group and episode: E[g] is then not a multiple of
# grad J where groups differ in spread or episodes in length (design.md §4).
#
# Tolerances: with n independent estimates, z_k = (mean_k - c grad_k) / (sd_k / sqrt(n)) is
# ~N(0, 1) per component under unbiasedness; over D <= 10 components max |z| > 5 has probability
# < 1e-5, and sum z^2 ~ chi2(D) exceeds D + 6 sqrt(2D) with probability < 1e-4. Seeds are fixed.

G = 4


@pytest.fixture(scope="module")
def garnet_setting():
    mdp = make_env("garnet", num_states=4, num_actions=2, branching=2, seed=3, p_end=0.3)
    logits = torch.randn(mdp.num_states, 2, generator=torch.Generator().manual_seed(0)).double()
    return mdp, logits, exact_grad(mdp, logits)


@pytest.mark.parametrize(
    "baseline, agg, factor",
    [
        ("leave-one-out", "seq-mean-token-sum", 1.0),
        ("mean", "seq-mean-token-sum", (G - 1) / G),
        ("leave-one-out", "seq-mean-token-sum-norm", 1.0 / 50),
    ],
)
def test_on_policy_grpo_gradient_is_unbiased_up_to_the_derived_factor(
    garnet_setting, baseline, agg, factor
):
    mdp, logits, true = garnet_setting
    lc = LossConfig(adv_baseline=baseline, adv_scale="none", agg=agg, max_len=50)
    samples = gradient_samples(
        mdp, logits, lc, num_groups=8, group_size=G, num_batches=3000, seed=1
    )
    q = gradient_quality(samples, true, scale=factor)
    d = q["num_components"]
    assert q["bias_z_max"] < 5.0, q
    assert q["bias_chi2"] < d + 6 * (2 * d) ** 0.5, q
    # and the test has power: the wrong factor is rejected by the same statistics
    wrong = gradient_quality(samples, true, scale=factor * 0.5)
    assert wrong["bias_chi2"] > d + 6 * (2 * d) ** 0.5, wrong


def _best_scale_chi2(samples: torch.Tensor, true: torch.Tensor) -> tuple[float, dict]:
    m, t = samples.mean(0).reshape(-1), true.reshape(-1)
    c = float(m @ t / (t @ t))  # the least-squares multiple of grad J
    return c, gradient_quality(samples, true, scale=c)


def _contexts_mdp() -> TabularMDP:
    # 4 one-step contexts (start states) of very different difficulty, Bernoulli rewards.
    # Std scaling divides a context's advantages by its group std ~ sqrt(p (1 - p)), so easy and
    # hard contexts are up-weighted relative to grad J.
    p = torch.tensor([[0.97, 0.9], [0.7, 0.3], [0.1, 0.03], [0.6, 0.4]], dtype=torch.float64)
    S = 5  # 4 contexts + terminal
    P = torch.zeros(S, 2, S, dtype=torch.float64)
    P[:, :, 4] = 1.0
    R = torch.zeros(S, 2, dtype=torch.float64)
    R[:4] = p
    rho = torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0], dtype=torch.float64)
    terminal = torch.tensor([False, False, False, False, True])
    return TabularMDP(P, R, 0.9, rho, terminal=terminal, reward_noise="bernoulli")


def test_std_scaling_biases_the_gradient_direction():
    mdp = _contexts_mdp()
    logits = torch.zeros(5, 2, dtype=torch.float64)
    true = exact_grad(mdp, logits)
    kw = {"num_groups": 4, "group_size": 8, "num_batches": 4000, "seed": 2}
    plain = LossConfig(adv_baseline="leave-one-out", adv_scale="none", agg="seq-mean-token-sum")
    scaled = plain.model_copy(update={"adv_scale": "std"})
    _, q_plain = _best_scale_chi2(gradient_samples(mdp, logits, plain, **kw), true)
    _, q_std = _best_scale_chi2(gradient_samples(mdp, logits, scaled, **kw), true)
    d = q_std["num_components"]
    assert q_plain["bias_chi2"] < d + 6 * (2 * d) ** 0.5, q_plain  # no std: proportional
    assert q_std["bias_chi2"] > 2 * (d + 6 * (2 * d) ** 0.5), q_std  # std: direction biased


def _length_mdp() -> TabularMDP:
    # Two start states. From s0, action 0 ends at once (reward Bernoulli 0.5) and action 1 walks a
    # corridor of 5 states (either action moves on) to a reward of discounted mean 0.55.
    # From s6, a one-step choice between Bernoulli 0.3 and 0.7. Per-episode length
    # normalisation divides the long episodes' gradient by 6, which re-weights s0's direction
    # against s6's: a length bias in the direction, not only the size, of the gradient.
    S = 8  # s0, corridor c1..c5, s6, terminal 7
    P = torch.zeros(S, 2, S, dtype=torch.float64)
    R = torch.zeros(S, 2, dtype=torch.float64)
    P[0, 0, 7] = 1.0
    R[0, 0] = 0.5
    P[0, 1, 1] = 1.0
    for s in range(1, 5):
        P[s, :, s + 1] = 1.0
    P[5, :, 7] = 1.0
    R[5, :] = 0.55 / 0.9**5  # = 0.931: discounted mean 0.55 after the corridor
    P[6, :, 7] = 1.0
    R[6] = torch.tensor([0.3, 0.7], dtype=torch.float64)
    P[7, :, 7] = 1.0
    rho = torch.zeros(S, dtype=torch.float64)
    rho[0] = rho[6] = 0.5
    terminal = torch.zeros(S, dtype=torch.bool)
    terminal[7] = True
    return TabularMDP(P, R, 0.9, rho, terminal=terminal, reward_noise="bernoulli")


def test_length_normalisation_biases_the_gradient_direction():
    mdp = _length_mdp()
    logits = torch.zeros(8, 2, dtype=torch.float64)
    true = exact_grad(mdp, logits)
    kw = {"num_groups": 4, "group_size": 8, "num_batches": 4000, "seed": 3}
    summed = LossConfig(adv_baseline="leave-one-out", adv_scale="none", agg="seq-mean-token-sum")
    normed = summed.model_copy(update={"agg": "seq-mean-token-mean"})
    _, q_sum = _best_scale_chi2(gradient_samples(mdp, logits, summed, **kw), true)
    _, q_len = _best_scale_chi2(gradient_samples(mdp, logits, normed, **kw), true)
    d = q_len["num_components"]
    assert q_sum["bias_chi2"] < d + 6 * (2 * d) ** 0.5, q_sum
    assert q_len["bias_chi2"] > 2 * (d + 6 * (2 * d) ** 0.5), q_len


# ----------------------------------------------------------------------------- training


def test_grpo_reaches_95_percent_of_optimum_on_a_bandit():
    # Budget: 40 iterations x 8 groups x 8 episodes (2,560 pulls), Adam lr 0.1, grpo preset.
    mdp = make_env("bandit", k=5, seed=0)
    rec = train_grpo(mdp, [GRPOConfig(iterations=40, lr=0.1, seed=s, audit=False) for s in (0, 1)])
    assert rec.status == ["ok", "ok"]
    assert (rec.j_final / rec.j_star >= 0.95).all(), rec.j_final / rec.j_star


@pytest.mark.slow
def test_grpo_reaches_95_percent_of_optimum_on_a_garnet():
    # Budget: 200 iterations x 8 groups x 8 episodes, Adam lr 0.1, dapo preset (no KL to the
    # uniform start, which would cap J below J*), 8-state 3-action Garnet.
    mdp = make_env("garnet", num_states=8, num_actions=3, branching=2, seed=0)
    cfgs = [GRPOConfig(iterations=200, lr=0.1, seed=s, loss="dapo", audit=False) for s in (0, 1)]
    rec = train_grpo(mdp, cfgs)
    assert (rec.j_final / rec.j_star >= 0.95).all(), rec.j_final / rec.j_star
    # J is exact: it improved from the uniform policy's value
    j = rec.stacked("iter")["J"]
    assert (j[:, -1] > j[:, 0]).all()


def test_batched_equals_looped_for_the_same_seeds():
    mdp = make_env("garnet", num_states=5, num_actions=3, branching=2, seed=1)
    base = GRPOConfig(iterations=4, epochs=2, minibatches=2, num_groups=4, group_size=4)
    cfgs = [
        base.model_copy(update={"lr": lr, "seed": seed, "loss": base.loss.model_copy(update=e)})
        for lr, seed, e in [
            (0.05, 0, {"eps_low": 0.1, "eps_high": 0.1}),
            (0.2, 1, {"eps_low": 0.2, "eps_high": 0.28}),
            (0.5, 2, {"eps_low": 0.3, "eps_high": 0.3}),
        ]
    ]
    batched = train_grpo(mdp, cfgs)
    for c, cfg in enumerate(cfgs):
        alone = train_grpo(mdp, cfg)
        torch.testing.assert_close(alone.final_probs[0], batched.final_probs[c], rtol=0, atol=1e-10)
        for where in ("step", "iter"):
            for k, v in alone.stacked(where).items():
                torch.testing.assert_close(
                    v[0], batched.stacked(where)[k][c], rtol=1e-9, atol=1e-10, equal_nan=True
                )
        for k in ("grad_norm_init", "grad_norm_final"):
            torch.testing.assert_close(
                alone.summary[k][0], batched.summary[k][c], rtol=1e-9, atol=0
            )


# ----------------------------------------------------------------------------- lr schedules
# lr_t for t = 0 .. T-1 (grpo.py module docstring): linear lr (1 - t / T), cosine
# lr (1 + cos(pi t / T)) / 2; kl-adaptive lr / 1.5 (>= lr_min) when the iteration's exact
# KL(pi_old || pi_new) > 2 kl_target, 1.5 lr (<= lr_max) when < kl_target / 2 (rl_games, rsl_rl).
# Hand-worked with lr = 0.8, T = 4: cos(pi / 4) = 0.70710678...
#   linear  0.8, 0.6, 0.4, 0.2
#   cosine  0.8, 0.8 (1 + 0.7071) / 2 = 0.68284271, 0.4, 0.8 (1 - 0.7071) / 2 = 0.11715729
HAND_LR = {
    "constant": [0.8, 0.8, 0.8, 0.8],
    "linear": [0.8, 0.6, 0.4, 0.2],
    "cosine": [0.8, 0.6828427124746190, 0.4, 0.1171572875253810],
}


def _assert_batch_equals_alone(mdp: TabularMDP, cfgs: list[GRPOConfig]) -> None:
    batched = train_grpo(mdp, cfgs)
    for c, cfg in enumerate(cfgs):
        alone = train_grpo(mdp, cfg)
        torch.testing.assert_close(alone.final_probs[0], batched.final_probs[c], rtol=0, atol=1e-10)
        for where in ("step", "iter"):
            b = batched.stacked(where)
            for k, v in alone.stacked(where).items():
                torch.testing.assert_close(v[0], b[k][c], rtol=1e-9, atol=1e-10, equal_nan=True)


def test_fixed_schedules_log_the_lr_of_their_formulas():
    mdp = make_env("garnet", num_states=5, num_actions=3, branching=2, seed=1)
    cfgs = [GRPOConfig(iterations=4, lr=0.8, lr_schedule=k, seed=0, audit=False) for k in HAND_LR]
    trainer = GRPOTrainer(mdp, cfgs)
    for it in range(4):
        trainer.update(it)
        # the optimiser holds lr_t while the steps of iteration t run
        held = trainer.opt.param_groups[0]["lr"]
        want = torch.tensor([HAND_LR[k][it] for k in HAND_LR], dtype=torch.float64)
        torch.testing.assert_close(held, want)
    logged = trainer.finish().stacked("iter")["lr"]
    torch.testing.assert_close(logged, torch.tensor(list(HAND_LR.values()), dtype=torch.float64))


def test_the_optimiser_steps_with_the_scheduled_lr():
    # SGD (theta <- theta - lr g), one step per iteration, T = 2, all configurations on seed 0:
    # iteration 0 runs at lr_0 = lr in each, so pi_old, the episodes and the gradient g of
    # iteration 1 are the same in each, and its step is -lr_1 g: the step of a schedule is
    # lr_1 / lr times the constant run's (linear and cosine at T = 2: lr_1 = lr / 2; kl-adaptive:
    # lr / 1.5, the first iteration's KL ~ 8e-4 being above 2 kl_target = 2e-4).
    mdp = make_env("garnet", num_states=5, num_actions=3, branching=2, seed=1)
    base = GRPOConfig(iterations=2, lr=3.0, optimizer="sgd", loss="dapo", seed=0, audit=False)
    scheds = [
        {"lr_schedule": "constant"},
        {"lr_schedule": "linear"},
        {"lr_schedule": "cosine"},
        {"lr_schedule": "kl-adaptive", "kl_target": 1e-4, "lr_max": 3.0},
    ]
    trainer = GRPOTrainer(mdp, [base.model_copy(update=u) for u in scheds])
    trainer.update(0)
    theta1 = trainer.policy.logits.detach().clone()  # (C, S, A)
    torch.testing.assert_close(theta1, theta1[:1].expand_as(theta1), rtol=0, atol=0)
    trainer.update(1)
    step = trainer.policy.logits.detach() - theta1
    assert step[0].abs().max() > 1e-3  # the test has power: the constant run moved
    lr1 = trainer.finish().stacked("iter")["lr"][:, 1]
    torch.testing.assert_close(lr1, torch.tensor([3.0, 1.5, 1.5, 2.0], dtype=torch.float64))
    for c in range(1, 4):
        torch.testing.assert_close(step[c], step[0] * (lr1[c] / 3.0), rtol=1e-9, atol=1e-12)


def _kl_adaptive_configs() -> list[GRPOConfig]:
    # chosen so that every branch of the rule happens within 12 iterations: lr = 1 gives a first
    # KL ~ 0.4 (divide, then the lr_min clamp at 0.3), later KLs below kl_target / 2 (multiply,
    # then the lr_max clamp), KLs inside the band (hold); lr = 0.02 climbs to its lr_max 0.1
    kw = {"iterations": 12, "loss": "dapo", "lr_schedule": "kl-adaptive", "kl_target": 0.01}
    return [
        GRPOConfig(lr=1.0, lr_min=0.3, lr_max=1.0, seed=0, **kw),
        GRPOConfig(lr=1.0, lr_min=0.3, lr_max=1.0, seed=1, **kw),
        GRPOConfig(lr=0.02, lr_min=0.01, lr_max=0.1, seed=2, **kw),
    ]


def test_kl_adaptive_lr_follows_its_rule_on_the_logged_kl():
    mdp = make_env("garnet", num_states=5, num_actions=3, branching=2, seed=1)
    cfgs = _kl_adaptive_configs()
    trainer = GRPOTrainer(mdp, cfgs)
    kl_hand = []
    for it in range(12):
        old = trainer.table().detach().exp()
        trainer.update(it)
        new = trainer.table().detach().exp()
        # KL(pi_old || pi_new) by hand: sum_s d^{pi_old}(s) sum_a pi_old log(pi_old / pi_new)
        d = state_visitation(mdp, old)  # (C, S)
        kl_hand.append((d * (old * (old.log() - new.log())).sum(-1)).sum(-1))
    rec = trainer.finish()
    it = rec.stacked("iter")
    torch.testing.assert_close(it["kl_iter"], torch.stack(kl_hand, -1), rtol=1e-10, atol=1e-15)
    # the logged KL is also the instrumentation's kl_mean after the iteration's (only) step
    torch.testing.assert_close(it["kl_iter"], rec.stacked("step")["kl_mean"], rtol=0, atol=0)
    events = set()
    for c, cfg in enumerate(cfgs):
        lr, want = cfg.lr, []
        for kl in it["kl_iter"][c].tolist():
            want.append(lr)
            if kl > 2 * cfg.kl_target:
                new_lr = max(lr / 1.5, cfg.lr_min)
                events.add("min clamp" if new_lr == cfg.lr_min else "divide")
            elif kl < cfg.kl_target / 2:
                new_lr = min(lr * 1.5, cfg.lr_max)
                events.add("max clamp" if new_lr == cfg.lr_max else "multiply")
            else:
                new_lr = lr
                events.add("hold")
            lr = new_lr
        torch.testing.assert_close(it["lr"][c], torch.tensor(want, dtype=torch.float64))
    # the test has power: every branch of the rule was taken
    assert events == {"divide", "min clamp", "multiply", "max clamp", "hold"}, events


def test_batch_equals_alone_across_schedules():
    # lr_schedule, kl_target, lr_min and lr_max are batchable: one batch mixes the four
    # schedules (and two kl-adaptive configurations), each run as it would alone
    mdp = make_env("garnet", num_states=5, num_actions=3, branching=2, seed=1)
    base = GRPOConfig(iterations=5, epochs=2, minibatches=2, num_groups=4, group_size=4)
    cfgs = [
        base.model_copy(update={"lr": 0.05, "seed": 0}),
        base.model_copy(update={"lr": 0.2, "seed": 1, "lr_schedule": "linear"}),
        base.model_copy(update={"lr": 0.5, "seed": 2, "lr_schedule": "cosine"}),
        base.model_copy(update={"lr": 0.5, "seed": 3, "lr_schedule": "kl-adaptive"}),
        base.model_copy(
            update={"lr": 0.3, "seed": 4, "lr_schedule": "kl-adaptive", "kl_target": 0.001}
        ),
    ]
    _assert_batch_equals_alone(mdp, cfgs)


def test_the_default_schedule_is_constant_and_leaves_the_optimiser_alone():
    cfg = GRPOConfig()
    assert cfg.lr_schedule == "constant"
    mdp = make_env("garnet", num_states=5, num_actions=3, branching=2, seed=1)
    cfgs = [GRPOConfig(iterations=3, lr=lr, seed=s, audit=False) for lr, s in ((0.1, 0), (0.5, 1))]
    trainer = GRPOTrainer(mdp, cfgs)
    lr_tensor = trainer.opt.param_groups[0]["lr"]
    for it in range(3):
        trainer.update(it)
    assert trainer.opt.param_groups[0]["lr"] is lr_tensor  # never written
    rec = trainer.finish()
    torch.testing.assert_close(
        rec.stacked("iter")["lr"], torch.tensor([[0.1] * 3, [0.5] * 3], dtype=torch.float64)
    )
    # the kl-adaptive fields are inert under a fixed schedule
    inert = [c.model_copy(update={"kl_target": 0.3, "lr_min": 1e-3, "lr_max": 2.0}) for c in cfgs]
    other = train_grpo(mdp, inert)
    torch.testing.assert_close(other.final_probs, rec.final_probs, rtol=0, atol=0)


# ----------------------------------------------------------------------------- exact grad norms
# The run records ||grad_phi J|| over the policy's own parameters phi (autograd through the exact
# return). Independent routes: the policy gradient theorem dJ/dtheta_{s,a} = x(s) pi(a|s) A(s, a)
# (Sutton et al. 1999; ``policy_gradient_theorem_grad``, no autograd) for the tabular softmax, and
# central finite differences of ``exact_return`` in every parameter for both policies. Central
# differences with h = 1e-6 in float64 err by O(h^2 J''') + O(eps_mach / h), ~1e-10 per component.


def _fd_grad_norm(
    mdp: TabularMDP, policy: torch.nn.Module, C: int, h: float = 1e-6
) -> torch.Tensor:
    """||grad J|| per configuration by central differences of exact_return in every parameter
    entry (entry i of all C configurations at once: the configurations are independent)."""
    sq = torch.zeros(C, dtype=torch.float64)
    with torch.no_grad():
        for p in policy.parameters():
            flat = p.view(C, -1)
            for i in range(flat.shape[1]):
                x = flat[:, i].clone()
                flat[:, i] = x + h
                up = exact_return(mdp, policy.probs())
                flat[:, i] = x - h
                down = exact_return(mdp, policy.probs())
                flat[:, i] = x
                sq += ((up - down) / (2 * h)) ** 2
    return sq.sqrt()


def _pgt_norm(mdp: TabularMDP, logits: torch.Tensor) -> torch.Tensor:
    return policy_gradient_theorem_grad(mdp, logits).flatten(1).norm(dim=-1)


def test_recorded_grad_norms_equal_the_policy_gradient_theorem_for_the_tabular_policy():
    mdp = make_env("garnet", num_states=4, num_actions=3, branching=2, seed=5, p_end=0.2)
    cfgs = [GRPOConfig(iterations=4, lr=0.3, seed=s, init_std=0.7, loss="dapo") for s in (0, 1)]
    trainer = GRPOTrainer(mdp, cfgs)
    theta0 = trainer.policy.logits.detach().clone()  # (C, S, A)
    for it in range(4):
        trainer.update(it)
    rec = trainer.finish()
    summ = rec.summary
    torch.testing.assert_close(summ["grad_norm_init"], _pgt_norm(mdp, theta0), rtol=1e-10, atol=0)
    # the softmax's grad J depends on pi only: log pi serves as well as the trained logits
    final = _pgt_norm(mdp, rec.final_probs.log())
    torch.testing.assert_close(summ["grad_norm_final"], final, rtol=1e-10, atol=0)
    torch.testing.assert_close(summ["grad_norm_final"], _fd_grad_norm(mdp, trainer.policy, 2))
    it = rec.stacked("iter")["grad_norm"]  # (C, I): at pi_old of each iteration
    assert it.shape == (2, 4)
    torch.testing.assert_close(it[:, 0], summ["grad_norm_init"], rtol=0, atol=0)
    assert not torch.allclose(it[:, -1], it[:, 0])  # it follows the policy


def test_recorded_grad_norms_equal_finite_differences_for_the_mlp_policy():
    # every weight and bias of the MLP is a coordinate of grad_phi J (hidden 32 on 5 one-hot
    # states: 258 parameters per configuration); batched == alone as for the tabular policy
    mdp = make_env("garnet", num_states=4, num_actions=2, branching=2, seed=1, p_end=0.3)
    cfgs = [GRPOConfig(iterations=3, lr=0.05, seed=s, policy="mlp", loss="dr_grpo") for s in (3, 4)]
    trainer = GRPOTrainer(mdp, cfgs)
    init = _fd_grad_norm(mdp, trainer.policy, 2)
    for it in range(3):
        trainer.update(it)
    rec = trainer.finish()
    assert (init > 1e-3).all()  # the test has power: the gradient is far from zero
    torch.testing.assert_close(rec.summary["grad_norm_init"], init, rtol=1e-7, atol=0)
    final = _fd_grad_norm(mdp, trainer.policy, 2)
    torch.testing.assert_close(rec.summary["grad_norm_final"], final, rtol=1e-7, atol=0)
    it = rec.stacked("iter")["grad_norm"]
    torch.testing.assert_close(it[:, 0], rec.summary["grad_norm_init"], rtol=0, atol=0)
    for c, cfg in enumerate(cfgs):
        alone = train_grpo(mdp, cfg)
        for k in ("grad_norm_init", "grad_norm_final"):
            torch.testing.assert_close(alone.summary[k][0], rec.summary[k][c], rtol=1e-9, atol=0)


class _SharedLogits(torch.nn.Module):
    """One (S, A) logit table serving C configurations: a parameter without a config axis."""

    def __init__(self, logits: torch.Tensor, C: int) -> None:
        super().__init__()
        self.logits, self.C = torch.nn.Parameter(logits.clone()), C

    def log_probs(self) -> torch.Tensor:
        return torch.log_softmax(self.logits, -1).expand(self.C, *self.logits.shape)


def test_exact_policy_grad_norm_with_parameters_shared_across_configurations():
    # two different MDPs (one batched MDP) and one shared table: each configuration's norm is
    # that of its own MDP's gradient, not of the summed one
    mdps = [make_env("garnet", num_states=4, num_actions=2, branching=2, seed=s) for s in (0, 1)]
    logits = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = exact_policy_grad_norm(stack_mdps(mdps), _SharedLogits(logits, 2), 2)
    want = torch.stack([exact_grad(m, logits).norm() for m in mdps])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    # an unbatched policy (C = 1: the validate.py path) against the policy gradient theorem
    one = exact_policy_grad_norm(mdps[0], _SharedLogits(logits, 1), 1)
    torch.testing.assert_close(one, policy_gradient_theorem_grad(mdps[0], logits).norm()[None])


def test_instrumentation_is_recorded_and_consistent():
    mdp = make_env("garnet", num_states=5, num_actions=3, branching=2, seed=2)
    rec = train_grpo(mdp, GRPOConfig(iterations=3, epochs=4, lr=0.5, loss="dapo"))
    st = rec.stacked("step")
    assert st["ratio_max"].shape == (1, 12)
    # the TRPO Theorem 1 bound is a theorem: it must hold at every step
    assert (st["bound_slack"] >= -1e-9).all()
    # the exact ratio range over visited (s, a) contains the batch's range after the step: every
    # sampled (s, a) has positive visitation under pi_old
    assert (st["exact_ratio_max"] >= st["ratio_max"] - 1e-12).all()
    assert (st["exact_ratio_min"] <= st["ratio_min"] + 1e-12).all()
    assert (st["ratio_max"] > 1.0).all()  # measured after the step: the policy has moved
    assert ((st["grad_clip_frac"] >= 0) & (st["grad_clip_frac"] <= 1)).all()
    for k in ("exact_frac_outside", "kl_mean", "kl_max", "tv_max"):
        assert (st[k] >= 0).all(), k
    assert (st["kl_max"] >= st["kl_mean"] - 1e-12).all()
    it = rec.stacked("iter")
    torch.testing.assert_close(it["gap"], rec.j_star[:, None] - it["J"])


def test_a_diverging_configuration_is_recorded_not_raised():
    # Adam moves each logit by about lr per step whatever the gradient: lr = 1e308 overflows the
    # logits to inf within two steps, in that configuration only.
    mdp = make_env("bandit", k=3, seed=0)
    good = GRPOConfig(iterations=4, lr=0.1, loss="dapo", seed=0)
    bad = good.model_copy(update={"lr": 1e308})
    rec = train_grpo(mdp, [good, bad])
    assert rec.status == ["ok", "diverged"]
    k = rec.diverged_at[1]
    assert k is not None and 0 <= k < 4
    assert "non-finite" in rec.error[1]
    assert torch.isfinite(rec.final_probs).all()  # the last finite parameters are kept
    assert torch.isnan(rec.stacked("step")["loss"][1, k:]).all()
    assert torch.isfinite(rec.stacked("step")["loss"][0]).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"group_size": 1}, "group_size"),
        ({"optimizer": "rmsprop"}, r"unknown optimizer 'rmsprop'"),
        ({"policy": "cnn"}, r"unknown policy 'cnn'"),
        ({"num_groups": 6, "minibatches": 4}, "minibatches=4 must divide num_groups=6"),
        ({"loss": "ppo"}, "GRPO needs loss.advantage='group'"),
        ({"loss": "grpo2"}, r"unknown preset 'grpo2'"),
        ({"lr": 0.0}, "lr"),
        ({"epsilon": 0.2}, "epsilon"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"lr_schedule": "kl-adaptive", "lr": 2.0}, r"lr_min <= lr <= lr_max"),
        ({"lr_schedule": "kl-adaptive", "lr": 1e-7}, r"lr_min <= lr <= lr_max"),
        ({"kl_target": 0.0}, "kl_target"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GRPOConfig(**kwargs)


def test_batch_may_differ_only_in_batchable_fields():
    mdp = make_env("bandit", k=3, seed=0)
    a = GRPOConfig(iterations=1)
    with pytest.raises(ValueError, match=r"differ in \['epochs'\]"):
        train_grpo(mdp, [a, a.model_copy(update={"epochs": 2})])
    with pytest.raises(ValueError, match=r"differ in \['loss.agg'\]"):
        loss = a.loss.model_copy(update={"agg": "token-mean"})
        train_grpo(mdp, [a, a.model_copy(update={"loss": loss})])


def test_derived_seeds_are_deterministic_and_distinct():
    from grpo_lab.algorithms.common import derive_seed

    seeds = {derive_seed(s, i, k) for s in range(20) for i in range(20) for k in range(2)}
    assert len(seeds) == 800  # no collision, e.g. (s, i+1) vs (s+1, i)
    assert derive_seed(3, 4, 1) == derive_seed(3, 4, 1)
    assert all(0 <= x < 2**63 for x in seeds)


@pytest.mark.parametrize("preset_name", ["grpo", "dr_grpo", "dapo", "gspo"])
def test_packed_grpo_loss_equals_policy_loss_on_the_padded_batch(preset_name):
    # Independent route: the same episodes in the padded layout through losses.policy_loss and
    # losses.kl_penalty/aggregate (tested against hand-worked values in tests/test_losses.py).
    from grpo_lab.algorithms.common import gather_logp
    from grpo_lab.algorithms.grpo import grpo_loss
    from grpo_lab.envs.tabular import sample_groups
    from grpo_lab.losses import aggregate, kl_penalty, policy_loss, preset

    mdp = make_env("garnet", num_states=5, num_actions=3, branching=2, seed=0, p_end=0.2)
    g = torch.Generator().manual_seed(0)
    old = torch.log_softmax(torch.randn(2, mdp.num_states, 3, generator=g).double(), -1)
    new = torch.log_softmax(old + 0.3 * torch.randn(2, mdp.num_states, 3, generator=g).double(), -1)
    ref = torch.log_softmax(torch.randn(2, mdp.num_states, 3, generator=g).double(), -1)
    gens = lambda: [torch.Generator().manual_seed(5 + c) for c in range(2)]  # noqa: E731
    packed, _ = sample_groups(mdp, old.exp(), 3, 4, gens(), layout="packed")
    padded, _ = sample_groups(mdp, old.exp(), 3, 4, gens())
    adv = torch.randn(2, 12, generator=g).double()
    lc = preset(preset_name).model_copy(update={"max_len": 40, "beta": 0.04})
    eps_l = torch.full((2,), lc.eps_low, dtype=torch.float64)
    eps_h = torch.full((2,), lc.eps_high, dtype=torch.float64)
    old_tok = gather_logp(old, packed.states, packed.actions)
    loss, m = grpo_loss(new, packed, packed.mask, old_tok, adv, lc, eps_l, eps_h, 12, ref)
    for c in range(2):
        lp = gather_logp(new[c : c + 1], padded.states[c : c + 1], padded.actions[c : c + 1])[0]
        olp = gather_logp(old[c : c + 1], padded.states[c : c + 1], padded.actions[c : c + 1])[0]
        rlp = gather_logp(ref[c : c + 1], padded.states[c : c + 1], padded.actions[c : c + 1])[0]
        mask = padded.mask[c]
        pg, pm = policy_loss(
            lp, olp, adv[c], mask, eps_low=lc.eps_low, eps_high=lc.eps_high,
            ratio_level=lc.ratio_level, agg=lc.agg, max_len=40,
        )  # fmt: skip
        kl = aggregate(kl_penalty(lp, rlp, lc.kl_kind), mask, lc.agg, 40)
        assert loss[c].item() == pytest.approx((pg + 0.04 * kl).item(), abs=1e-12)
        assert m["grad_clip_frac"][c].item() == pytest.approx(pm["clip_frac"], abs=1e-12)
        assert m["grad_dual_clip_frac"][c].item() == pytest.approx(pm["dual_clip_frac"], abs=1e-12)
