"""Tests of grpo_lab/envs/tabular.py against hand-solved MDPs, enumeration of deterministic
policies, closed forms, central finite differences, the policy gradient theorem and Monte Carlo
estimates with CLT tolerances.

Monte Carlo tolerance used throughout: for N i.i.d. draws of a variable with finite variance the
sample mean is approximately N(mu, sigma^2 / N) (CLT); we accept |mean - mu| <= 5 sigma_hat/sqrt(N),
a two-sided false-alarm probability of about 6e-7 per check. All seeds are fixed, so every run is
the same run.
"""

import itertools
import math

import pytest
import torch

from grpo_lab.advantages import group_advantages
from grpo_lab.envs.tabular import (
    ENVS,
    Episodes,
    TabularMDP,
    advantages,
    bandit,
    chain,
    contexts,
    exact_grad,
    exact_return,
    garnet,
    gridworld,
    kl_divergence,
    make_env,
    optimal_policy,
    optimal_return,
    optimal_values,
    policy_gradient_theorem_grad,
    q_values,
    sample_episodes,
    sample_groups,
    sample_start_states,
    softmax_policy,
    stack_mdps,
    state_occupancy,
    state_values,
    state_visitation,
    total_variation,
)

F64 = torch.float64


def t64(x):
    return torch.tensor(x, dtype=F64)


def random_logits(mdp, seed, batched=False):
    g = torch.Generator().manual_seed(seed)
    shape = (*mdp.batch_shape, mdp.num_states, mdp.num_actions)
    if batched and not mdp.is_batched:
        shape = (3, *shape)
    return torch.randn(shape, generator=g, dtype=F64)


def assert_within_clt(samples, mu, k=5.0):
    """|mean - mu| <= k * std / sqrt(N) along the last axis (see the module docstring)."""
    n = samples.shape[-1]
    mean = samples.mean(-1)
    se = samples.std(-1) / math.sqrt(n)
    assert bool((se > 0).all()), "degenerate Monte Carlo sample: zero variance"
    z = (mean - mu).abs() / se
    assert bool((z <= k).all()), f"Monte Carlo z-scores {z.tolist()} exceed {k}"


# ---------------------------------------------------------------------------------------------
# A 2-state MDP solved by hand


def two_state_mdp(horizon=None):
    # Action 0 stays, action 1 switches state. R = [[1, 0], [0, 2]], gamma = 1/2, rho = (1/3, 2/3).
    P = torch.zeros(2, 2, 2, dtype=F64)
    P[0, 0, 0] = P[1, 0, 1] = 1.0  # stay
    P[0, 1, 1] = P[1, 1, 0] = 1.0  # switch
    R = t64([[1.0, 0.0], [0.0, 2.0]])
    return TabularMDP(P=P, R=R, gamma=0.5, rho=t64([1 / 3, 2 / 3]), horizon=horizon)


TWO_STATE_PI = t64([[1 / 2, 1 / 2], [1 / 4, 3 / 4]])


def test_two_state_mdp_values_solved_by_hand():
    # pi(.|0) = (1/2, 1/2), pi(.|1) = (1/4, 3/4):
    #   P_pi = [[1/2, 1/2], [3/4, 1/4]],  r_pi = (1/2, 3/4 * 2) = (1/2, 3/2).
    # V = r_pi + gamma P_pi V:
    #   V0 = 1/2 + (V0 + V1)/4          ->  3 V0 - V1 = 2
    #   V1 = 3/2 + (3 V0 + V1)/8        ->  7 V1 - 3 V0 = 12
    #   V1 = 3 V0 - 2 -> 18 V0 = 26 -> V0 = 13/9, V1 = 7/3.
    # J = rho . V = 13/27 + 14/9 = 55/27.
    # Q(0, .) = (1 + V0/2, 0 + V1/2) = (31/18, 7/6);  Q(1, .) = (0 + V1/2, 2 + V0/2) = (7/6, 49/18).
    # Occupancy x solves (I - gamma P_pi)^T x = rho:
    #   3/4 x0 - 3/8 x1 = 1/3,  -1/4 x0 + 7/8 x1 = 2/3  ->  x = (26/27, 28/27), sum 2 = 1/(1-gamma);
    #   d = (13/27, 14/27); check x . r_pi = 13/27 + 42/27 = J.
    mdp = two_state_mdp()
    V = state_values(mdp, TWO_STATE_PI)
    torch.testing.assert_close(V, t64([13 / 9, 7 / 3]))
    torch.testing.assert_close(exact_return(mdp, TWO_STATE_PI), t64(55 / 27))
    Q = t64([[31 / 18, 7 / 6], [7 / 6, 49 / 18]])
    torch.testing.assert_close(q_values(mdp, TWO_STATE_PI), Q)
    torch.testing.assert_close(advantages(mdp, TWO_STATE_PI), Q - V[:, None])
    torch.testing.assert_close(state_occupancy(mdp, TWO_STATE_PI), t64([26 / 27, 28 / 27]))
    torch.testing.assert_close(state_visitation(mdp, TWO_STATE_PI), t64([13 / 27, 14 / 27]))


def test_two_state_mdp_finite_horizon_solved_by_hand():
    # H = 2: V_2 = 0, V_1 = r_pi = (1/2, 3/2),
    #   V_0 = r_pi + gamma P_pi V_1 = (1/2 + (1/4 + 3/4)/2, 3/2 + (3/8 + 3/8)/2) = (1, 15/8).
    # J = 1/3 + (2/3)(15/8) = 19/12. Q_0(0, .) = (1 + V_1(0)/2, V_1(1)/2) = (5/4, 3/4).
    # x = rho + gamma rho P_pi = (1/3, 2/3) + (1/2)(2/3, 1/3) = (2/3, 5/6); d = (4/9, 5/9).
    mdp = two_state_mdp(horizon=2)
    torch.testing.assert_close(state_values(mdp, TWO_STATE_PI), t64([1.0, 15 / 8]))
    torch.testing.assert_close(exact_return(mdp, TWO_STATE_PI), t64(19 / 12))
    torch.testing.assert_close(q_values(mdp, TWO_STATE_PI)[0], t64([5 / 4, 3 / 4]))
    torch.testing.assert_close(state_visitation(mdp, TWO_STATE_PI), t64([4 / 9, 5 / 9]))
    # H = 1: V_0 = r_pi exactly.
    torch.testing.assert_close(
        state_values(two_state_mdp(horizon=1), TWO_STATE_PI), t64([1 / 2, 3 / 2])
    )


def test_terminal_state_rows_and_rewards_are_ignored_by_hand():
    # State 1 is terminal; its self-loop and its reward 5 must not count (V(1) = 0).
    # From 0: action 0 stays with reward 1, action 1 moves to 1 with reward 3; pi(0|0) = p = 1/2,
    # gamma = 1/2: V0 = p (1 + gamma V0) + (1 - p) 3  ->  V0 = (p + 3(1 - p)) / (1 - gamma p) = 8/3.
    P = torch.zeros(2, 2, 2, dtype=F64)
    P[0, 0, 0] = P[0, 1, 1] = P[1, :, 1] = 1.0
    R = t64([[1.0, 3.0], [5.0, 5.0]])
    mdp = TabularMDP(P=P, R=R, gamma=0.5, rho=t64([1.0, 0.0]), terminal=torch.tensor([0, 1]))
    pi = t64([[0.5, 0.5], [0.5, 0.5]])
    torch.testing.assert_close(state_values(mdp, pi), t64([8 / 3, 0.0]))
    torch.testing.assert_close(q_values(mdp, pi)[1], t64([0.0, 0.0]))
    # the terminal state is never a step: its occupancy is 0
    assert float(state_occupancy(mdp, pi)[1]) == 0.0


# ---------------------------------------------------------------------------------------------
# Optimal values against enumeration and closed forms


def deterministic_policies(num_states, num_actions):
    """All A^S deterministic policies as one-hot probs (A^S, S, A)."""
    acts = torch.tensor(list(itertools.product(range(num_actions), repeat=num_states)))
    return torch.nn.functional.one_hot(acts, num_actions).to(F64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_optimal_return_equals_best_deterministic_policy_on_garnet(seed):
    # Truth: a discounted MDP has an optimal deterministic stationary policy that is optimal in
    # every state at once (Puterman 1994 Thm. 6.2.10), so J* and V* are the maxima over the
    # A^S = 2^4 enumerated deterministic policies (3 ordinary states + the terminal state).
    mdp = garnet(3, 2, 2, seed=seed, num_start_states=2)
    pis = deterministic_policies(mdp.num_states, mdp.num_actions)  # (16, S, A)
    J = exact_return(mdp, pis)  # (16,)
    V = state_values(mdp, pis)  # (16, S)
    torch.testing.assert_close(optimal_return(mdp), J.max(), rtol=0, atol=1e-10)
    torch.testing.assert_close(optimal_values(mdp), V.max(0).values, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        exact_return(mdp, optimal_policy(mdp)), optimal_return(mdp), rtol=0, atol=1e-10
    )


def test_optimal_return_of_bandit_is_best_arm_mean():
    # Truth: a one-step episode earns the chosen arm's mean, so J(pi) = pi . mu, J* = max mu.
    mdp = bandit(6, seed=3)
    mu = mdp.R[0]
    torch.testing.assert_close(optimal_return(mdp), mu.max())
    pi = torch.zeros(2, 6, dtype=F64)
    pi[:] = softmax_policy(torch.arange(6, dtype=F64))
    torch.testing.assert_close(exact_return(mdp, pi), (pi[0] * mu).sum())
    assert int(optimal_policy(mdp)[0].argmax()) == int(mu.argmax())
    # with explicit means and gaussian rewards
    g = bandit(3, "gaussian", means=[0.5, -1.0, 2.0])
    torch.testing.assert_close(optimal_return(g), t64(2.0))


def test_optimal_return_closed_forms_for_chain_and_gridworld():
    # Chain, slip 0: always-right earns gamma^(n-2) (reward on entering n-1 at step n-2);
    # always-left earns small / (1 - gamma); J* is the larger (defaults: 0.99^8 > 0.1).
    mdp = chain(10)
    torch.testing.assert_close(optimal_return(mdp), t64(0.99**8))
    assert bool((optimal_policy(mdp)[:-1, 1] == 1).all())
    small = chain(4, small_reward=0.5, gamma=0.9)  # left forever: 0.5 / 0.1 = 5 > 0.9^2
    torch.testing.assert_close(optimal_return(small), t64(5.0))
    # Grid world 5 x 5 with the default wall bar: the shortest path has L = 8 steps, the goal
    # reward arrives at step 7: J* = gamma^7.
    grid = gridworld()
    torch.testing.assert_close(optimal_return(grid), t64(0.95**7))
    open_grid = gridworld(3, 4, walls=(), gamma=0.5)  # Manhattan distance 5: J* = 0.5^4
    torch.testing.assert_close(optimal_return(open_grid), t64(0.5**4))


def test_finite_horizon_optimum_by_closed_form_and_bound():
    # H = 1: J* = sum_s rho(s) max_a R(s, a). Any H: J*_H >= J_H(pi) for every stationary pi.
    mdp = garnet(3, 2, 2, seed=4, horizon=1)
    torch.testing.assert_close(optimal_return(mdp), (mdp.rho * mdp.R.max(-1).values).sum())
    mdp5 = garnet(3, 2, 2, seed=4, horizon=5)
    J = exact_return(mdp5, deterministic_policies(mdp5.num_states, 2))
    assert float(optimal_return(mdp5)) >= float(J.max()) - 1e-12
    # chain(4) in 2 steps cannot reach the end (needs 3): J* = small + gamma small
    short = chain(4, horizon=2)
    torch.testing.assert_close(optimal_return(short), t64(0.001 * (1 + 0.99)))


# ---------------------------------------------------------------------------------------------
# Gradients


def central_differences(mdp, logits, h=1e-5):
    grad = torch.zeros_like(logits)
    for idx in itertools.product(*(range(n) for n in logits.shape)):
        e = torch.zeros_like(logits)
        e[idx] = h
        up = exact_return(mdp, softmax_policy(logits + e)).sum()
        down = exact_return(mdp, softmax_policy(logits - e)).sum()
        grad[idx] = (up - down) / (2 * h)
    return grad


@pytest.mark.parametrize("horizon", [None, 5])
def test_exact_grad_matches_central_finite_differences(horizon):
    # Truth: central differences, error O(h^2) ~ 1e-10 plus rounding ~ 1e-16 / h ~ 1e-11 (float64).
    mdp = garnet(4, 3, 2, seed=0, horizon=horizon)
    logits = random_logits(mdp, 1)
    torch.testing.assert_close(
        exact_grad(mdp, logits), central_differences(mdp, logits), rtol=0, atol=1e-8
    )


def test_exact_grad_equals_policy_gradient_theorem():
    # Truth: dJ/dtheta_{s,a} = x(s) pi(a|s) A(s,a) (Sutton et al. 2000), computed from V, Q and the
    # occupancy without autograd; on Garnets with terminals, a slippery chain and a batched Garnet.
    for mdp in (garnet(5, 3, 3, seed=7), chain(6, slip=0.2), garnet(4, 2, 2, seed=8, num=3)):
        logits = random_logits(mdp, 2)
        torch.testing.assert_close(
            exact_grad(mdp, logits), policy_gradient_theorem_grad(mdp, logits), rtol=0, atol=1e-10
        )


def test_policy_gradient_theorem_in_normalised_form_without_terminals():
    # Without terminal states sum x = 1/(1 - gamma), so grad = 1/(1 - gamma) d(s) pi(a|s) A(s, a).
    mdp = two_state_mdp()
    logits = t64([[0.3, -0.2], [1.0, 0.5]])
    pi = softmax_policy(logits)
    expected = state_visitation(mdp, pi)[:, None] * pi * advantages(mdp, pi) / (1 - mdp.gamma)
    torch.testing.assert_close(exact_grad(mdp, logits), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(policy_gradient_theorem_grad(mdp, logits), expected)


def test_policy_gradient_theorem_rejects_a_horizon():
    with pytest.raises(ValueError, match="horizon"):
        policy_gradient_theorem_grad(two_state_mdp(horizon=3), torch.zeros(2, 2, dtype=F64))


def test_autograd_flows_through_every_exact_quantity():
    mdp = garnet(3, 2, 2, seed=1)
    logits = random_logits(mdp, 0).requires_grad_(True)
    pi = softmax_policy(logits)
    for fn in (state_values, q_values, advantages, exact_return, state_visitation):
        (g,) = torch.autograd.grad(fn(mdp, pi).sum(), logits, retain_graph=True)
        assert torch.isfinite(g).all()


# ---------------------------------------------------------------------------------------------
# Monte Carlo checks of sampling against exact evaluation


def discounted_counts(mdp, episodes):
    """Y[n, s] = sum_t gamma^t 1[s_t = s] over the steps of episode n. (N, S)."""
    T = episodes.num_steps
    disc = mdp.gamma ** torch.arange(T, dtype=F64)  # (T,)
    onehot = torch.nn.functional.one_hot(episodes.states, mdp.num_states).to(F64)  # (N, T, S)
    return (onehot * (episodes.mask.to(F64) * disc)[..., None]).sum(1)


@pytest.mark.parametrize("horizon", [None, 4])
def test_state_visitation_matches_monte_carlo(horizon):
    # Per episode Y(s) = sum_t gamma^t 1[s_t = s] has E[Y(s)] = x(s) (the occupancy) and
    # W = sum_s Y(s) has E[W] = sum x = Z, so e(s) = Y(s) - d(s) W has E[e(s)] = x(s) - d(s) Z = 0
    # exactly when d = x / Z. e is i.i.d. across episodes with finite variance: CLT, 5 sigma.
    mdp = garnet(4, 3, 2, seed=2, p_end=0.2, horizon=horizon)
    pi = softmax_policy(random_logits(mdp, 3))
    d = state_visitation(mdp, pi)
    torch.testing.assert_close(d.sum(), t64(1.0))
    gen = torch.Generator().manual_seed(10)
    episodes = sample_episodes(mdp, pi, sample_start_states(mdp, 20_000, gen), gen)
    Y = discounted_counts(mdp, episodes)  # (N, S)
    W = Y.sum(-1, keepdim=True)
    live = ~mdp.terminal_mask
    assert_within_clt((Y - d * W)[:, live].T, torch.zeros(int(live.sum()), dtype=F64))
    assert_within_clt(Y[:, live].T, state_occupancy(mdp, pi)[live])


@pytest.mark.parametrize(
    "mdp",
    [
        garnet(5, 3, 2, seed=3),  # infinite horizon, terminal reached w.p. p_end = 0.1 per step
        garnet(5, 3, 2, seed=3, reward_noise="bernoulli"),
        garnet(4, 2, 2, seed=5, p_end=0.0, horizon=6, reward_noise="gaussian", reward_std=0.5),
        chain(5, slip=0.3, horizon=8, gamma=0.9),
    ],
    ids=["garnet", "garnet-bernoulli", "garnet-horizon-gaussian", "chain-horizon"],
)
def test_mean_sampled_return_matches_exact_return(mdp):
    # Truth: E[sum_t gamma^t r_t] = J(pi) exactly (the horizon case included: no truncation
    # bias), so the sample mean of 20 000 i.i.d. returns lies within 5 sigma (CLT).
    pi = softmax_policy(random_logits(mdp, 4))
    gen = torch.Generator().manual_seed(20)
    episodes = sample_episodes(mdp, pi, sample_start_states(mdp, 20_000, gen), gen)
    assert not bool(episodes.truncated.any())
    assert_within_clt(episodes.returns, exact_return(mdp, pi))
    if mdp.horizon is not None:
        # the check has power: the infinite-horizon J lies far outside the tolerance
        inf = TabularMDP(mdp.P, mdp.R, mdp.gamma, mdp.rho, mdp.terminal)
        se = float(episodes.returns.std()) / math.sqrt(20_000)
        assert abs(float(exact_return(inf, pi) - exact_return(mdp, pi))) > 20 * se
        assert int(episodes.lengths.max()) <= mdp.horizon


# ---------------------------------------------------------------------------------------------
# Batching and determinism


@pytest.mark.parametrize("horizon", [None, 3])
def test_batched_evaluation_equals_each_mdp_alone(horizon):
    mdp = garnet(4, 3, 2, seed=5, num=3, horizon=horizon)
    assert mdp.batch_shape == (3,)
    logits = random_logits(mdp, 6)  # (3, S, A)
    pi = softmax_policy(logits)
    alone = mdp.unstack()
    fns = [state_values, q_values, advantages, exact_return, state_visitation, state_occupancy]
    for fn in fns:
        batched = fn(mdp, pi)
        for c, m in enumerate(alone):
            torch.testing.assert_close(batched[c], fn(m, pi[c]), rtol=0, atol=1e-12)
    for c, m in enumerate(alone):
        torch.testing.assert_close(optimal_return(mdp)[c], optimal_return(m), rtol=0, atol=1e-12)
        torch.testing.assert_close(optimal_policy(mdp)[c], optimal_policy(m))
        torch.testing.assert_close(exact_grad(mdp, logits)[c], exact_grad(m, logits[c]))
    # an unbatched policy runs on all C MDPs; C policies run on one MDP
    torch.testing.assert_close(exact_return(mdp, pi[0]), exact_return(mdp, pi[0].expand(3, -1, -1)))
    one = alone[1]
    torch.testing.assert_close(
        exact_return(one, pi), torch.stack([exact_return(one, p) for p in pi])
    )
    # stacking the parts back gives the same batch
    torch.testing.assert_close(stack_mdps(alone).P, mdp.P)


def test_batched_configs_differ_and_are_seeded():
    a, b = garnet(4, 2, 2, seed=0, num=3), garnet(4, 2, 2, seed=0, num=3)
    torch.testing.assert_close(a.P, b.P)
    assert not torch.equal(a.P[0], a.P[1])
    assert not torch.equal(garnet(4, 2, 2, seed=1, num=3).P, a.P)


def test_batched_sampling_is_deterministic_for_a_fixed_seed():
    mdp = garnet(5, 3, 2, seed=1, num=3, reward_noise="bernoulli")
    pi = softmax_policy(random_logits(mdp, 0))

    def draw(seed):
        gen = torch.Generator().manual_seed(seed)
        return sample_groups(mdp, pi, num_groups=50, group_size=4, generator=gen)

    (e1, s1), (e2, s2), (e3, _) = draw(7), draw(7), draw(8)
    for f in ("states", "actions", "rewards", "mask", "lengths", "returns", "truncated"):
        assert torch.equal(getattr(e1, f), getattr(e2, f)), f
    assert torch.equal(s1, s2)
    assert not torch.equal(e1.returns, e3.returns)
    assert e1.states.shape[:2] == (3, 200) and s1.shape == (3, 50)


def test_sampling_c_policies_on_one_mdp_shares_the_group_starts():
    mdp = garnet(3, 2, 2, seed=0)
    pi = softmax_policy(random_logits(mdp, 0, batched=True))  # (3, S, A)
    gen = torch.Generator().manual_seed(0)
    episodes, starts = sample_groups(mdp, pi, num_groups=5, group_size=3, generator=gen)
    assert episodes.states.shape[:2] == (3, 15) and starts.shape == (3, 5)
    assert torch.equal(starts[0], starts[2])
    assert torch.equal(episodes.states[..., 0], starts.repeat_interleave(3, dim=-1))


def test_sample_groups_layout_feeds_group_advantages():
    # Groups are consecutive: episode i starts from starts[i // G]. rho of a Garnet avoids the
    # terminal state, so every episode has at least one step and states[..., 0] is its start.
    mdp = garnet(6, 3, 2, seed=2, num_start_states=3)
    pi = softmax_policy(random_logits(mdp, 1))
    gen = torch.Generator().manual_seed(0)
    episodes, starts = sample_groups(mdp, pi, num_groups=10, group_size=8, generator=gen)
    assert torch.equal(episodes.states[:, 0], starts.repeat_interleave(8))
    assert bool((mdp.rho[starts] > 0).all())
    adv = group_advantages(episodes.returns, 8)
    torch.testing.assert_close(adv.reshape(10, 8).sum(-1), torch.zeros(10, dtype=F64))


# ---------------------------------------------------------------------------------------------
# Episode structure


def test_episode_structure_invariants():
    mdp = garnet(5, 3, 2, seed=0, p_end=0.3)
    pi = softmax_policy(random_logits(mdp, 2))
    gen = torch.Generator().manual_seed(1)
    e = sample_episodes(mdp, pi, sample_start_states(mdp, 500, gen), gen)
    assert isinstance(e, Episodes)
    T = e.num_steps
    assert T == int(e.lengths.max())
    # mask is a prefix: step t happened iff t < length
    assert torch.equal(e.mask, torch.arange(T) < e.lengths[:, None])
    assert bool((e.rewards[~e.mask] == 0).all()) and bool((e.states[~e.mask] == 0).all())
    # the terminal state is never a step
    assert not bool(mdp.terminal_mask[e.states][e.mask].any())
    disc = mdp.gamma ** torch.arange(T, dtype=F64)
    torch.testing.assert_close(e.returns, (e.rewards * disc).sum(-1))
    assert not bool(e.truncated.any())


def test_bandit_episodes_last_one_step():
    mdp = bandit(4, seed=0)
    gen = torch.Generator().manual_seed(0)
    pi = torch.full((2, 4), 0.25, dtype=F64)
    e = sample_episodes(mdp, pi, torch.zeros(100, dtype=torch.long), gen)
    assert e.num_steps == 1 and bool((e.lengths == 1).all())
    assert set(e.rewards.unique().tolist()) <= {0.0, 1.0}  # Bernoulli rewards


def test_max_steps_truncates_and_horizon_does_not():
    always_left = t64([[1.0, 0.0]] * 4)  # chain: left forever never reaches the terminal end
    gen = torch.Generator().manual_seed(0)
    starts = torch.zeros(6, dtype=torch.long)
    e = sample_episodes(chain(4), always_left, starts, gen, max_steps=7)
    assert e.num_steps == 7 and bool(e.truncated.all())
    torch.testing.assert_close(e.returns, torch.full((6,), 0.001 * (1 - 0.99**7) / 0.01, dtype=F64))
    h = sample_episodes(chain(4, horizon=3), always_left, starts, gen)
    assert bool((h.lengths == 3).all()) and not bool(h.truncated.any())
    # a start in a terminal state is an episode of length 0
    z = sample_episodes(chain(4), always_left, torch.full((2,), 3), gen)
    assert z.num_steps == 0 and bool((z.returns == 0).all())


def test_reward_noise_means_are_exact():
    # Bernoulli(R) has mean R and variance R(1 - R): one-step bandit returns, 5 sigma (CLT).
    mdp = bandit(2, means=[0.2, 0.7])
    gen = torch.Generator().manual_seed(3)
    pi = t64([[0.0, 1.0], [0.5, 0.5]])
    e = sample_episodes(mdp, pi, torch.zeros(20_000, dtype=torch.long), gen)
    assert_within_clt(e.returns, t64(0.7))
    assert bool((e.actions[:, 0] == 1).all())  # an action of probability 0 is never drawn


# ---------------------------------------------------------------------------------------------
# Divergences


def test_kl_and_total_variation_closed_forms():
    # KL((1/2, 1/2) || (1/4, 3/4)) = 1/2 ln 2 + 1/2 ln(2/3); TV = 1/2 (1/4 + 1/4) = 1/4.
    p = t64([[[0.5, 0.5], [1.0, 0.0]]])  # (C=1, S=2, A=2)
    q = t64([[[0.25, 0.75], [0.5, 0.5]]])
    torch.testing.assert_close(
        kl_divergence(p, q), t64([[0.5 * math.log(2) + 0.5 * math.log(2 / 3), math.log(2)]])
    )
    torch.testing.assert_close(total_variation(p, q), t64([[0.25, 0.5]]))
    torch.testing.assert_close(kl_divergence(p, p), torch.zeros(1, 2, dtype=F64))
    assert math.isinf(float(kl_divergence(q, p)[0, 1]))  # p_new = 0 where p_old > 0


# ---------------------------------------------------------------------------------------------
# Generators and registry


@pytest.mark.parametrize("name", ["bandit", "chain", "garnet", "gridworld"])
def test_every_registered_env_builds_batched_and_unbatched(name):
    assert name in ENVS
    one = make_env(name, seed=0)
    many = make_env(name, seed=0, num=2, dtype=torch.float32)
    assert one.batch_shape == () and many.batch_shape == (2,)
    assert many.dtype == torch.float32 and one.dtype == F64
    assert many.num_states == one.num_states and many.num_actions == one.num_actions
    uniform = torch.full((one.num_states, one.num_actions), 1 / one.num_actions, dtype=F64)
    torch.testing.assert_close(state_visitation(one, uniform).sum(), t64(1.0))
    # float32 MDP with a float64 policy: evaluated in the promoted dtype, float64
    torch.testing.assert_close(state_visitation(many, uniform).sum(-1), torch.ones(2, dtype=F64))


def test_garnet_structure():
    mdp = garnet(6, 2, 3, p_end=0.25, seed=0)
    S0 = 6
    assert mdp.num_states == S0 + 1 and bool(mdp.terminal_mask[S0])
    torch.testing.assert_close(mdp.P[:S0, :, S0], torch.full((S0, 2), 0.25, dtype=F64))
    assert bool(((mdp.P[:S0, :, :S0] > 0).sum(-1) == 3).all())  # branching successors
    assert bool(((mdp.R[:S0] >= 0) & (mdp.R[:S0] <= 1)).all())
    torch.testing.assert_close(mdp.rho[:S0], torch.full((S0,), 1 / S0, dtype=F64))
    few = garnet(6, 2, 3, num_start_states=2, seed=0)
    assert int((few.rho > 0).sum()) == 2


# ---------------------------------------------------------------------------------------------
# Bad input


def valid_parts():
    P = torch.zeros(2, 2, 2, dtype=F64)
    P[:, :, 0] = 1.0
    return {"P": P, "R": torch.zeros(2, 2, dtype=F64), "gamma": 0.9, "rho": t64([0.5, 0.5])}


@pytest.mark.parametrize(
    "change, match",
    [
        ({"P": torch.full((2, 2, 2), 0.4, dtype=F64)}, r"P rows must sum to 1"),
        ({"P": t64([[[1.5, -0.5], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]])}, r"P must be non-neg"),
        ({"P": torch.zeros(2, 2, 3, dtype=F64)}, r"P must have shape"),
        ({"R": torch.zeros(2, 3, dtype=F64)}, r"R has shape"),
        ({"R": t64([[0.0, math.nan], [0.0, 0.0]])}, r"R holds"),
        ({"gamma": -0.1}, r"gamma must lie in \[0, 1\)"),
        ({"gamma": 1.0}, r"gamma must lie in \[0, 1\)"),
        ({"rho": t64([0.5, 0.6])}, r"rho must be a distribution"),
        ({"rho": t64([1.5, -0.5])}, r"rho must be a distribution"),
        ({"rho": t64([1.0])}, r"rho has shape"),
        ({"horizon": 0}, r"horizon must be an int >= 1"),
        ({"terminal": torch.tensor([True])}, r"terminal has shape"),
        ({"reward_noise": "poisson"}, r"reward_noise"),
    ],
)
def test_bad_mdp_fields_raise_naming_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        TabularMDP(**{**valid_parts(), **change})


def test_bad_probs_raise_naming_probs_and_shape():
    mdp = TabularMDP(**valid_parts())
    with pytest.raises(ValueError, match=r"probs must have shape \(S, A\) = \(2, 2\)"):
        exact_return(mdp, torch.full((2, 3), 1 / 3, dtype=F64))
    with pytest.raises(ValueError, match=r"probs rows must sum to 1"):
        state_values(mdp, torch.full((2, 2), 0.3, dtype=F64))
    batched = garnet(2, 2, 1, num=3)
    with pytest.raises(ValueError, match=r"probs must have shape .*\(3, 3, 2\)"):
        exact_return(batched, torch.full((2, 3, 2), 0.5, dtype=F64))
    with pytest.raises(ValueError, match=r"logits must be"):
        exact_grad(mdp, torch.zeros(3, dtype=F64))


def test_bad_sampling_arguments_raise():
    mdp = TabularMDP(**valid_parts())
    pi = torch.full((2, 2), 0.5, dtype=F64)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"start_states must lie in \[0, S\)"):
        sample_episodes(mdp, pi, torch.tensor([2]), gen)
    with pytest.raises(ValueError, match=r"start_states must be an integer tensor"):
        sample_episodes(mdp, pi, torch.tensor([0.0]), gen)
    with pytest.raises(ValueError, match=r"generator must be a torch.Generator"):
        sample_episodes(mdp, pi, torch.tensor([0]), 0)
    with pytest.raises(ValueError, match=r"max_steps"):
        sample_episodes(mdp, pi, torch.tensor([0]), gen, max_steps=0)
    with pytest.raises(ValueError, match=r"config axes C disagree"):
        sample_episodes(mdp, pi.expand(3, 2, 2), torch.zeros(2, 4, dtype=torch.long), gen)


def test_unknown_env_lists_allowed_names():
    with pytest.raises(ValueError, match=r"unknown env 'maze'.*bandit.*chain.*garnet.*gridworld"):
        make_env("maze")


def test_bad_generator_arguments_raise():
    with pytest.raises(ValueError, match=r"branching must be an int in \[1, num_states"):
        garnet(3, 2, 4)
    with pytest.raises(ValueError, match=r"num must be None"):
        garnet(3, 2, 2, num=0)
    with pytest.raises(ValueError, match=r"goal cell .* is a wall"):
        gridworld(3, 3, walls=[(2, 2)])
    with pytest.raises(ValueError, match=r"kind"):
        bandit(3, kind="poisson")


def test_per_config_generators_make_batched_sampling_equal_separate_runs():
    # Truth: with one generator per configuration, configuration c's episodes are those of a
    # one-configuration run with the same generator seed, whatever the other configurations do.
    mdp = garnet(6, 3, 2, seed=4, p_end=0.2)
    g = torch.Generator().manual_seed(0)
    S = mdp.num_states  # 6 + the absorbing terminal state
    probs = torch.softmax(torch.randn(3, S, 3, generator=g, dtype=torch.float64), -1)  # (C, S, A)
    gens = [torch.Generator().manual_seed(100 + c) for c in range(3)]
    batched, starts = sample_groups(mdp, probs, 4, 5, gens)
    assert starts.shape == (3, 4)
    for c in range(3):
        alone, starts_c = sample_groups(
            mdp, probs[c : c + 1], 4, 5, [torch.Generator().manual_seed(100 + c)]
        )
        assert torch.equal(starts_c[0], starts[c])
        t = alone.num_steps
        assert torch.equal(alone.states[0], batched.states[c, :, :t])
        assert torch.equal(alone.actions[0], batched.actions[c, :, :t])
        assert torch.equal(alone.mask[0], batched.mask[c, :, :t])
        assert not batched.mask[c, :, t:].any()
        torch.testing.assert_close(alone.returns[0], batched.returns[c])


def test_generator_list_must_match_config_axis():
    mdp = garnet(4, 2, 2, seed=0)
    probs = torch.full((3, mdp.num_states, 2), 0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match="generator lists 2 generators but the batch has C=3"):
        sample_groups(mdp, probs, 2, 2, [torch.Generator(), torch.Generator()])


def test_packed_layout_holds_the_same_steps_as_the_padded_one():
    # Truth: the padded layout (tested above against exact returns); the packed rows must list
    # the same (s, a, r) per episode, in time order, with nothing else unmasked.
    mdp = garnet(5, 3, 2, seed=2, p_end=0.25)
    probs = torch.softmax(
        torch.randn(2, mdp.num_states, 3, generator=torch.Generator().manual_seed(1)).double(), -1
    )
    gens = lambda: [torch.Generator().manual_seed(7 + c) for c in range(2)]  # noqa: E731
    padded, _ = sample_groups(mdp, probs, 3, 4, gens())
    packed, _ = sample_groups(mdp, probs, 3, 4, gens(), layout="packed")
    assert torch.equal(packed.lengths, padded.lengths)
    torch.testing.assert_close(packed.returns, padded.returns)
    for c in range(2):
        assert int(packed.mask[c].sum()) == int(padded.mask[c].sum())
        for n in range(12):
            sel = packed.mask[c] & (packed.episode[c] == n)
            m = padded.mask[c, n]
            assert torch.equal(packed.states[c][sel], padded.states[c, n][m])
            assert torch.equal(packed.actions[c][sel], padded.actions[c, n][m])
            torch.testing.assert_close(packed.rewards[c][sel], padded.rewards[c, n][m])


def test_unknown_layout():
    mdp = garnet(4, 2, 2, seed=0)
    with pytest.raises(ValueError, match=r"unknown layout 'dense'"):
        sample_episodes(mdp, torch.full((mdp.num_states, 2), 0.5).double(), torch.zeros(2).long(),
                        torch.Generator(), layout="dense")  # fmt: skip


# ----------------------------------------------------------------------------- contexts


def test_contexts_returns_and_lengths_hand_worked():
    success = [[0.9, 0.2], [0.5, 0.6]]
    lengths = [[1, 3], [2, 1]]
    mdp = contexts(2, 2, success=success, lengths=lengths, gamma=0.9)
    # S = 2 contexts + (0 + 2 + 1 + 0) corridor states + terminal
    assert mdp.num_states == 6 and bool(mdp.terminal_mask[-1]) and mdp.reward_noise == "bernoulli"
    # J of a deterministic policy: average over contexts of gamma^(L-1) p
    for a0, a1 in itertools.product(range(2), range(2)):
        probs = torch.full((6, 2), 0.5, dtype=torch.float64)
        probs[0] = torch.eye(2, dtype=torch.float64)[a0]
        probs[1] = torch.eye(2, dtype=torch.float64)[a1]
        want = 0.5 * (0.9 ** (lengths[0][a0] - 1) * success[0][a0])
        want += 0.5 * (0.9 ** (lengths[1][a1] - 1) * success[1][a1])
        assert float(exact_return(mdp, probs)) == pytest.approx(want, rel=1e-12)
    # sampled episodes last exactly the answer's length
    g = torch.Generator().manual_seed(0)
    probs = torch.full((6, 2), 0.5, dtype=torch.float64)
    ep = sample_episodes(mdp, probs, torch.tensor([0] * 200 + [1] * 200), g)
    first = ep.actions[:, 0]
    want_len = torch.tensor(lengths)[torch.tensor([0] * 200 + [1] * 200), first]
    assert torch.equal(ep.lengths, want_len)


def test_contexts_random_and_bad_input():
    a, b = contexts(3, 2, max_length=4, seed=1), contexts(3, 2, max_length=4, seed=1)
    assert torch.equal(a.P, b.P) and torch.equal(a.R, b.R)
    assert make_env("contexts", num_contexts=3).num_states == 4  # max_length 1: no corridors
    with pytest.raises(ValueError, match="success must be"):
        contexts(2, 2, success=[[0.5, 1.5], [0.1, 0.2]])
    with pytest.raises(ValueError, match="lengths must be"):
        contexts(2, 2, lengths=[[1, 0], [1, 1]])
    with pytest.raises(ValueError, match="num_contexts must be an int >= 1"):
        contexts(0)
    with pytest.raises(ValueError, match="need fixed lengths"):
        contexts(2, 2, max_length=3, num=2)
