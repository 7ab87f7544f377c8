"""Tests of grpo_lab/envs/classic.py: the torch CartPole-v1 / Acrobot-v1 dynamics step for step
against gymnasium's own environments, same-step autoreset and frozen envs, counter-based seeding,
the gymnasium backend behind the same API, input errors, and RunningMeanStd against numpy.

Lock-step protocol: K gymnasium envs (``gymnasium.make``, so with the TimeLimit wrapper) get
``env.unwrapped.state`` set to K start states; one torch env with N = K rows (autoreset=False)
gets the same states through ``set_state``. Both are fed the same actions (random, or a feedback
rule computed from gymnasium's observation) until every episode ends, and every step compares
observations, physical state, reward, terminated and truncated.
"""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from grpo_lab.envs.classic import (
    BACKENDS,
    CLASSIC_ENVS,
    ClassicVecEnv,
    GymnasiumVecEnv,
    RunningMeanStd,
    TorchAcrobot,
    TorchCartPole,
    make_classic,
)

ENV_IDS = ["CartPole-v1", "Acrobot-v1"]
INIT_BOUND = {"CartPole-v1": 0.05, "Acrobot-v1": 0.1}


# --------------------------------------------------------------------------------------------
# Lock-step comparison with gymnasium


def random_policy(num_actions, rng):
    return lambda obs: rng.integers(num_actions, size=len(obs))


def cartpole_balance(obs):
    """Push in the direction the pole falls (theta + theta_dot / 2 > 0 -> push right)."""
    return (obs[:, 2] + 0.5 * obs[:, 3] > 0).astype(np.int64)


def acrobot_pump(rng, eps=0.2):
    """Torque along dtheta2 (swings up in ~100 steps) with probability eps of a random action."""

    def policy(obs):
        a = np.where(obs[:, 5] > 0, 2, 0)
        return np.where(rng.random(len(obs)) < eps, rng.integers(3, size=len(obs)), a)

    return policy


def lockstep(env_id, starts, policy, dtype=torch.float64, steps=None, atol=1e-6):
    """Run gymnasium and torch side by side from ``starts`` (K, 4) float64; compare every step of
    every live episode (the first ``steps`` steps only if given). Returns (lengths, terminated,
    truncated) of gymnasium's episodes as arrays (K,) and its states, a list of (K, 4) arrays
    (rows of ended episodes stay as they ended)."""
    k = len(starts)
    genvs = [gym.make(env_id) for _ in range(k)]
    for g, s in zip(genvs, starts, strict=True):
        g.reset(seed=0)
        g.unwrapped.state = np.array(s, dtype=np.float64)
    tenv = make_classic(env_id, k, autoreset=False, dtype=dtype)
    tobs = tenv.set_state(torch.as_tensor(starts, dtype=torch.float64))
    gobs = np.stack(
        [
            np.asarray(g.unwrapped._get_ob() if hasattr(g.unwrapped, "_get_ob") else s)
            for g, s in zip(genvs, starts, strict=True)
        ]
    ).astype(np.float32)
    np.testing.assert_allclose(tobs.double().numpy(), gobs, atol=atol, rtol=1e-6)
    live = np.ones(k, dtype=bool)
    lengths = np.zeros(k, dtype=np.int64)
    term_end = np.zeros(k, dtype=bool)
    trunc_end = np.zeros(k, dtype=bool)
    trace = []
    t = 0
    while live.any() and (steps is None or t < steps):
        actions = np.asarray(policy(gobs), dtype=np.int64)
        tobs, trew, tterm, ttrunc = tenv.step(torch.as_tensor(actions))
        tstate = tenv.get_state().double().numpy()
        t += 1
        idx = np.flatnonzero(live)
        out = [genvs[i].step(int(actions[i])) for i in idx]
        gstate = np.stack([genvs[i].unwrapped.state for i in idx])
        o, r, te, tr = (np.array([x[j] for x in out]) for j in range(4))
        gobs[idx] = o
        trace.append(trace[-1].copy() if trace else np.array(starts, dtype=np.float64))
        trace[-1][idx] = gstate
        where = f"{env_id} {dtype} envs {idx} step {t}"
        np.testing.assert_allclose(
            tobs[idx].double().numpy(), o, atol=atol, rtol=1e-6, err_msg=where
        )
        np.testing.assert_allclose(tstate[idx], gstate, atol=atol, rtol=0, err_msg=where)
        np.testing.assert_array_equal(trew[idx].double().numpy(), r, err_msg=where)
        np.testing.assert_array_equal(tterm[idx].numpy(), te, err_msg=where)
        np.testing.assert_array_equal(ttrunc[idx].numpy(), tr, err_msg=where)
        lengths[idx] = t
        term_end[idx], trunc_end[idx] = te, tr
        live[idx] = ~(te | tr)
    return lengths, term_end, trunc_end, trace


def test_cartpole_matches_gymnasium_float64():
    rng = np.random.default_rng(0)
    starts = rng.uniform(-0.05, 0.05, size=(6, 4))
    lengths, term, trunc, _ = lockstep("CartPole-v1", starts, random_policy(2, rng))
    assert term.all() and (lengths < 100).all()  # random pushes drop the pole quickly
    # near upright with a balancing rule: runs into the time limit
    starts = rng.uniform(-0.01, 0.01, size=(2, 4))
    lengths, term, trunc, _ = lockstep("CartPole-v1", starts, cartpole_balance)
    assert trunc.all() and not term.any() and (lengths == 500).all()


def test_cartpole_terminates_on_x_and_theta_thresholds():
    starts = np.array([[2.39, 1.0, 0.0, 0.0], [-2.39, -1.0, 0.0, 0.0], [0.0, 0.0, 0.2, 1.0]])
    lengths, term, _, _ = lockstep("CartPole-v1", starts, lambda obs: np.ones(len(obs), np.int64))
    assert term.all() and (lengths == 1).all()


def test_acrobot_matches_gymnasium_float64():
    rng = np.random.default_rng(1)
    starts = rng.uniform(-0.1, 0.1, size=(3, 4))
    lengths, term, trunc, _ = lockstep("Acrobot-v1", starts, random_policy(3, rng))
    assert trunc.any() and (lengths[trunc] == 500).all()  # random torques rarely swing up
    starts = rng.uniform(-0.1, 0.1, size=(4, 4))
    lengths, term, trunc, _ = lockstep("Acrobot-v1", starts, acrobot_pump(rng))
    assert term.all() and (lengths < 500).all()


def test_acrobot_wraps_angles_and_clips_velocities():
    # fast spins: the angles wrap past +-pi and the velocities hit their bounds
    starts = np.array([[3.0, -3.0, 12.0, -28.0], [-3.1, 3.1, -12.5, 28.0]])
    rng = np.random.default_rng(2)
    _, _, _, trace = lockstep("Acrobot-v1", starts, random_policy(3, rng), steps=30)
    states = np.stack(trace)  # (30, 2, 4)
    assert (np.abs(states[:, :, :2]) <= math.pi).all()
    jumps = np.abs(np.diff(states[:, :, :2], axis=0)) > math.pi  # an angle crossed +-pi
    assert jumps[:, 0, 0].any() and jumps[:, 0, 1].any()
    assert (np.abs(states[:, :, 2]) == 4 * math.pi).any()  # velocities at their bounds
    assert (np.abs(states[:, :, 3]) == 9 * math.pi).any()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_float32_close_to_gymnasium_for_50_steps(env_id):
    rng = np.random.default_rng(3)
    b = INIT_BOUND[env_id]
    starts = rng.uniform(-b, b, size=(4, 4))
    policy = cartpole_balance if env_id == "CartPole-v1" else acrobot_pump(rng)
    lockstep(env_id, starts, policy, dtype=torch.float32, steps=50, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Autoreset and frozen envs


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_autoreset_same_step(env_id, dtype):
    n = 16
    env = make_classic(env_id, n, dtype=dtype)
    env.max_episode_steps = 30  # Acrobot episodes end by truncation, CartPole's mostly terminate
    obs = env.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    returns = torch.zeros(n, dtype=torch.float64)
    lengths = torch.zeros(n, dtype=torch.long)
    ended = 0
    for _ in range(100):
        a = torch.randint(env.num_actions, (n,), generator=gen)
        expected_state, expected_term = env.dynamics(env.get_state(), a)
        expected_obs = env.observe(expected_state)
        obs, reward, term, trunc = env.step(a)
        assert obs.shape == (n, env.obs_dim) and obs.dtype == dtype
        assert reward.shape == (n,) and term.dtype == torch.bool and trunc.dtype == torch.bool
        done = term | trunc
        returns += reward.double()
        lengths += 1
        assert torch.equal(term, expected_term)
        assert torch.equal(trunc, lengths >= 30)
        assert torch.equal(env.final_obs, expected_obs)  # the ended episodes' last obs
        assert torch.equal(obs[~done], expected_obs[~done])  # running episodes: the same obs
        starts = env.get_state()[done]
        bound = INIT_BOUND[env_id]
        assert bool((starts.abs() <= bound).all())  # ended envs restarted in the start box
        assert torch.equal(obs[done], env.observe(starts))
        assert torch.allclose(env.ended_returns[done].double(), returns[done])
        assert torch.equal(env.ended_lengths[done], lengths[done])
        assert env.ended_returns[~done].isnan().all() and (env.ended_lengths[~done] == -1).all()
        assert (env.episode_lengths[done] == 0).all() and (env.episode_returns[done] == 0).all()
        returns[done], lengths[done] = 0.0, 0
        assert torch.equal(env.episode_lengths, lengths)
        ended += int(done.sum())
    assert ended >= n  # every env ended at least once on average


def test_cartpole_returns_count_steps():
    env = make_classic("CartPole-v1", 32)
    env.reset(seed=5)
    gen = torch.Generator().manual_seed(5)
    for _ in range(60):
        _, _, term, trunc = env.step(torch.randint(2, (32,), generator=gen))
        done = term | trunc
        assert torch.equal(env.ended_returns[done], env.ended_lengths[done].float())


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_autoreset_freezes_ended_envs(backend):
    n = 6
    env = make_classic("CartPole-v1", n, backend=backend, autoreset=False)
    env.reset(seed=1)
    gen = torch.Generator().manual_seed(1)
    frozen = torch.zeros(n, dtype=torch.bool)
    last_obs = torch.zeros(n, 4)
    ended_returns = torch.full((n,), math.nan)
    for _ in range(120):
        obs, reward, term, trunc = env.step(torch.randint(2, (n,), generator=gen))
        done = term | trunc
        assert bool(done[frozen].all())  # flags stay True
        assert torch.equal(obs[frozen], last_obs[frozen])  # the final obs, again
        assert (reward[frozen] == 0).all() and (reward[~frozen] == 1).all()
        assert torch.equal(env.final_obs[done], obs[done])
        assert torch.equal(env.ended_returns[frozen], ended_returns[frozen])
        new = done & ~frozen
        ended_returns[new] = env.ended_returns[new]
        last_obs[new] = obs[new]
        frozen |= done
    assert frozen.all()
    assert torch.equal(env.episode_returns, env.ended_returns)
    assert torch.equal(env.episode_lengths.float(), env.ended_returns)  # CartPole: 1 per step
    assert bool((term.float().abs().sum() + trunc.float().sum()) >= n)
    obs = env.reset(seed=1)
    _, _, term, trunc = env.step(torch.zeros(n, dtype=torch.long))
    assert not bool((term | trunc).any())  # reset() unfreezes
    assert (env.episode_lengths == 1).all()
    env.close()


# --------------------------------------------------------------------------------------------
# Seeding


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reset_seed_determinism_and_independence_of_n(env_id):
    a = make_classic(env_id, 4)
    b = make_classic(env_id, 16)
    obs_a, obs_b = a.reset(seed=7), b.reset(seed=7)
    assert torch.equal(obs_a, obs_b[:4])  # env i gets seed 7 + i whatever N is
    assert torch.equal(a.reset(seed=7), obs_a)  # same seed, same starts
    assert not torch.equal(a.reset(seed=8)[:3], obs_a[:3])
    same = a.reset(seed=[3, 3, 3, 3])
    assert torch.equal(same, same[:1].expand(4, -1))  # a GRPO group: G equal starts
    assert torch.equal(a.reset(seed=torch.full((4,), 3)), same)  # tensors / arrays of seeds
    assert torch.equal(a.reset(seed=np.full(4, 3)), same)
    assert torch.equal(same[0], b.reset(seed=[9] * 12 + [3, 4, 5, 6])[12])
    assert len(set(map(tuple, obs_b.tolist()))) == 16  # distinct seeds, distinct starts
    # reset() continues each env's stream deterministically; autoreset draws from it too
    a.reset(seed=[3, 4, 5, 6])
    b.reset(seed=list(range(3, 19)))
    nxt_a, nxt_b = a.reset(), b.reset()
    assert torch.equal(nxt_a, nxt_b[:4]) and not torch.equal(nxt_a, same)
    # float32 starts are the float64 starts rounded
    c = make_classic(env_id, 4, dtype=torch.float64)
    c.reset(seed=7)
    a.reset(seed=7)
    assert torch.equal(c.get_state().float(), a.get_state())


def test_autoreset_start_states_independent_of_n():
    small = make_classic("CartPole-v1", 2, autoreset=False)
    big = make_classic("CartPole-v1", 64)
    small.reset(seed=11)
    big.reset(seed=11)
    # env 0's second episode starts where an unseeded reset() of env 0 would start it
    while True:
        _, _, term, trunc = big.step(torch.zeros(64, dtype=torch.long))
        if bool(term[0] | trunc[0]):
            break
    assert torch.equal(big.get_state()[0], small.reset()[0])


def test_start_states_are_uniform():
    n = 20000
    env = make_classic("Acrobot-v1", n, dtype=torch.float64)
    env.reset(seed=123)
    s = env.get_state()  # (n, 4) ~ U(-0.1, 0.1)
    assert bool((s.abs() <= 0.1).all())
    sigma = 0.2 / math.sqrt(12)
    assert (s.mean(0).abs() < 5 * sigma / math.sqrt(n)).all()  # CLT, 5 sigma
    assert ((s.std(0) - sigma).abs() < 0.01 * sigma * 5).all()
    corr = torch.corrcoef(s.T) - torch.eye(4, dtype=s.dtype)
    assert corr.abs().max() < 5 / math.sqrt(n)
    hist = torch.histc(s[:, 0], bins=10, min=-0.1, max=0.1)  # chi-square-ish: each bin ~ n/10
    assert ((hist - n / 10).abs() < 5 * math.sqrt(n / 10)).all()


def test_reset_without_seed_draws_from_torch_global_rng():
    torch.manual_seed(0)
    a = make_classic("CartPole-v1", 3).reset()
    torch.manual_seed(0)
    b = make_classic("CartPole-v1", 3).reset()
    assert torch.equal(a, b)


def test_seed_near_int64_limit_and_state_roundtrip():
    env = make_classic("CartPole-v1", 2, dtype=torch.float64)
    env.reset(seed=[2**63 - 1, 2**32])
    s = torch.tensor([[0.1, 0.2, 0.03, 0.4], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    obs = env.set_state(s)
    assert torch.equal(env.get_state(), s) and torch.equal(obs, s)


# --------------------------------------------------------------------------------------------
# The gymnasium backend behind the same API


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_backends_share_the_api(env_id):
    n = 5
    envs = {b: make_classic(env_id, n, backend=b) for b in BACKENDS}
    assert isinstance(envs["torch"], TorchCartPole if env_id == "CartPole-v1" else TorchAcrobot)
    assert isinstance(envs["gymnasium"], GymnasiumVecEnv)
    attrs = ("env_id", "num_envs", "obs_dim", "num_actions", "max_episode_steps", "dtype")
    for attr in attrs:
        assert getattr(envs["torch"], attr) == getattr(envs["gymnasium"], attr), attr
    assert envs["torch"].max_episode_steps == 500
    gen = torch.Generator().manual_seed(0)
    for env in envs.values():
        assert isinstance(env, ClassicVecEnv)
        obs = env.reset(seed=0)
        assert obs.shape == (n, env.obs_dim) and obs.dtype == torch.float32
        if env is envs["torch"]:
            assert bool(env.get_state().abs().max() <= 0.1)
        env.max_episode_steps = 25  # torch only reads it; gymnasium's TimeLimit keeps 500
        for _ in range(30):
            a = torch.randint(env.num_actions, (n,), generator=gen)
            obs, reward, term, trunc = env.step(a)
            assert obs.shape == env.final_obs.shape == (n, env.obs_dim)
            assert obs.dtype == reward.dtype == env.final_obs.dtype == torch.float32
            assert term.shape == trunc.shape == (n,)
            assert term.dtype == trunc.dtype == torch.bool
            assert env.episode_returns.shape == env.ended_returns.shape == (n,)
            assert env.episode_lengths.dtype == env.ended_lengths.dtype == torch.long
            done = term | trunc
            assert (env.episode_lengths[done] == 0).all()
            assert (env.ended_lengths[done] > 0).all()
        env.close()


def test_gymnasium_backend_autoreset_and_seeding():
    env = make_classic("CartPole-v1", 8, backend="gymnasium", dtype=torch.float64)
    obs = env.reset(seed=3)
    assert obs.dtype == torch.float64
    g = gym.make("CartPole-v1")
    o, _ = g.reset(seed=5)
    assert np.array_equal(obs[2].numpy(), o.astype(np.float64))  # env i seeded with seed + i
    assert torch.equal(
        make_classic("CartPole-v1", 3, backend="gymnasium").reset(seed=3), obs[:3].float()
    )
    seen_done = False
    for _ in range(60):
        obs, _, term, trunc = env.step(torch.ones(8, dtype=torch.long))  # always push right
        done = term | trunc
        if done.any():
            seen_done = True
            assert (env.final_obs[done, 2].abs() > 0.2).any()  # the pole fell
            assert (obs[done].abs() <= 0.05).all()  # fresh starts
    assert seen_done
    env.close()


# --------------------------------------------------------------------------------------------
# Bad input


def test_bad_env_id_backend_and_dtype():
    for backend in BACKENDS:
        with pytest.raises(ValueError, match=r"unknown env_id 'Nope-v0'.*CartPole-v1"):
            make_classic("Nope-v0", 2, backend=backend)
    with pytest.raises(ValueError, match=r"unknown env_id 'Pendulum-v1'.*Acrobot-v1"):
        make_classic("Pendulum-v1", 2)  # torch backend: classic envs only
    with pytest.raises(ValueError, match=r"unknown backend 'jax'.*\['gymnasium', 'torch'\]"):
        make_classic("CartPole-v1", 2, backend="jax")
    with pytest.raises(ValueError, match="dtype must be one of"):
        make_classic("CartPole-v1", 2, dtype=torch.float16)
    with pytest.raises(ValueError, match="num_envs must be an int >= 1"):
        make_classic("CartPole-v1", 0)
    assert CLASSIC_ENVS.names() == ["Acrobot-v1", "CartPole-v1"]


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "MountainCarContinuous-v0"])
def test_non_discrete_action_space_is_rejected(env_id):
    with pytest.raises(ValueError, match=r"only Discrete action spaces are supported.*Box"):
        make_classic(env_id, 2, backend="gymnasium")


def test_non_box_observation_space_is_rejected():
    with pytest.raises(ValueError, match="only 1-D Box observation spaces"):
        make_classic("FrozenLake-v1", 2, backend="gymnasium")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_actions_and_seeds(backend):
    env = make_classic("Acrobot-v1", 3, backend=backend)
    with pytest.raises(RuntimeError, match=r"call reset\(\) before step\(\)"):
        env.step(torch.zeros(3, dtype=torch.long))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions must have shape \(num_envs,\) = \(3,\)"):
        env.step(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got \(3, 1\)"):
        env.step(torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="actions must be an integer tensor"):
        env.step(torch.zeros(3))
    with pytest.raises(ValueError, match=r"actions must lie in \[0, 3\)"):
        env.step(torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="seed has 2 entries; expected num_envs = 3"):
        env.reset(seed=[1, 2])
    with pytest.raises(ValueError, match="seeds must be ints"):
        env.reset(seed=-1)
    with pytest.raises(ValueError, match="seed must be None, an int or a sequence"):
        env.reset(seed=1.5)
    env.close()


def test_set_state_shape_is_checked():
    env = make_classic("CartPole-v1", 2)
    with pytest.raises(ValueError, match=r"state must have shape \(num_envs, state_dim\)"):
        env.set_state(torch.zeros(2, 6))


# --------------------------------------------------------------------------------------------
# RunningMeanStd


def test_running_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(b, 4)) * [1, 10, 0.1, 1] for b in (1, 7, 64, 3, 200)]
    exact = RunningMeanStd(4, epsilon=0.0)
    sb3 = RunningMeanStd(4)  # count starts at 1e-4, mean 0, var 1 (SB3 / CleanRL)
    for i, x in enumerate(batches):
        exact.update(torch.as_tensor(x))
        sb3.update(torch.as_tensor(x, dtype=torch.float32))
        seen = np.concatenate(batches[: i + 1])
        np.testing.assert_allclose(exact.mean.numpy(), seen.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(exact.var.numpy(), seen.var(0), rtol=1e-10, atol=1e-12)
        assert exact.count == len(seen)
    np.testing.assert_allclose(sb3.mean.numpy(), seen.mean(0), rtol=1e-5)
    np.testing.assert_allclose(sb3.var.numpy(), seen.var(0), rtol=1e-5)
    x = torch.as_tensor(seen[:10], dtype=torch.float32)
    z = exact.normalize(x)
    assert z.dtype == torch.float32
    expected = (seen[:10] - seen.mean(0)) / np.sqrt(seen.var(0) + 1e-8)
    np.testing.assert_allclose(z.numpy(), np.clip(expected, -10, 10), rtol=1e-5, atol=1e-5)
    far = exact.normalize(torch.full((2, 4), 1e6, dtype=torch.float64))
    assert (far == 10).all()  # clipped
    with pytest.raises(ValueError, match=r"x must have shape \(B, \*\(4,\)\)"):
        exact.update(torch.zeros(4))


def test_running_mean_std_on_env_observations():
    env = make_classic("Acrobot-v1", 64)
    rms = RunningMeanStd(env.obs_dim, epsilon=0.0)
    obs = env.reset(seed=0)
    seen = [obs]
    rms.update(obs)
    for _ in range(20):
        obs, *_ = env.step(torch.randint(3, (64,)))
        rms.update(obs)
        seen.append(obs)
    allobs = torch.cat(seen).double()
    # (torch.testing.assert_close costs ~1 s of imports on first use; allclose does not)
    assert torch.allclose(rms.mean, allobs.mean(0), rtol=1e-12, atol=1e-12)
    assert torch.allclose(rms.var, allobs.var(0, correction=0), rtol=1e-10, atol=1e-12)
