"""GRPO without a critic on classic control (grpo_lab/algorithms/classic_grpo.py): groups share
their start state (replayed in a fresh env), batched == one configuration at a time, the on-policy
loss and its gradient against a hand computation, learning CartPole-v1, and bad input."""

import math
import statistics

import pytest
import torch
from pydantic import ValidationError

from grpo_lab.algorithms.classic import evaluate
from grpo_lab.algorithms.classic_grpo import (
    ClassicGRPOConfig,
    ClassicGRPOTrainer,
    classic_grpo_loss,
    group_seeds,
    outcome_advantages,
    train_classic_grpo,
)
from grpo_lab.envs.classic import make_classic
from grpo_lab.losses import PRESETS
from grpo_lab.policies.mlp import BatchedMLP

SMALL = {"num_groups": 4, "group_size": 4, "eval_episodes": 2}


def test_groups_share_their_start_and_replay_in_a_fresh_env():
    cfgs = [ClassicGRPOConfig(**SMALL, seed=s) for s in (0, 1)]
    trainer = ClassicGRPOTrainer(cfgs)
    batch = trainer.rollout(3)
    C, N, T, D = batch.obs.shape
    starts = batch.obs[:, :, 0].reshape(C, 4, 4, D)  # (C, groups, G, D)
    assert (starts == starts[:, :, :1]).all()  # the G episodes of a group start together ...
    firsts = starts[:, :, 0].reshape(C * 4, D)
    assert torch.unique(firsts, dim=0).shape[0] == C * 4  # ... and groups (and configs) differ
    assert (batch.actions[:, :4] != batch.actions[:, :1]).any()  # yet the episodes differ
    # replay the stored actions in a fresh env reset with the group seeds: same observations,
    # every episode ends exactly at its last unmasked step, return = length (CartPole: r = 1)
    seeds = group_seeds(0, 3, 4, 4) + group_seeds(1, 3, 4, 4)
    env = make_classic("CartPole-v1", C * N, autoreset=False)
    obs = env.reset(seed=seeds)
    mask, lengths = batch.mask.reshape(C * N, T), batch.lengths.reshape(-1)
    for t in range(T):
        live = mask[:, t]
        torch.testing.assert_close(obs[live], batch.obs.reshape(C * N, T, D)[live, t])
        obs, _, term, trunc = env.step(batch.actions.reshape(C * N, T)[:, t])
        ends = live & (term | trunc)
        assert torch.equal(ends, live & (lengths == t + 1))
    torch.testing.assert_close(batch.returns.reshape(-1), lengths.double())
    torch.testing.assert_close(env.episode_returns.double(), lengths.double())
    assert (mask[:, :-1] >= mask[:, 1:]).all()  # the mask is a prefix of each row


def test_a_batch_equals_its_configurations_run_alone():
    grpo = PRESETS.get("grpo")  # beta > 0: the reference-KL path too
    cfgs = [
        ClassicGRPOConfig(**SMALL, iterations=2, epochs=2, minibatches=2, seed=3, lr=1e-3),
        ClassicGRPOConfig(
            **SMALL,
            iterations=2,
            epochs=2,
            minibatches=2,
            seed=5,
            lr=3e-3,
            loss=grpo.model_copy(update={"eps_low": 0.1, "eps_high": 0.3}),
        ),
    ]
    both = train_classic_grpo(None, cfgs)
    st, it = both.stacked("step"), both.stacked("iter")
    assert st["loss"].shape == (2, 2 * 2 * 2)  # iterations x epochs x minibatches
    for c, cfg in enumerate(cfgs):
        alone = train_classic_grpo(None, cfg)
        for k in ("loss", "kl_ref", "entropy", "ratio_max", "clip_frac_high", "approx_kl"):
            torch.testing.assert_close(st[k][c], alone.stacked("step")[k][0], rtol=1e-5, atol=1e-6)
        for k in ("episode_return", "episode_length", "zero_std_frac", "env_steps"):
            torch.testing.assert_close(it[k][c], alone.stacked("iter")[k][0])
        assert float(both.summary["eval_return"][c]) == float(alone.summary["eval_return"][0])
    torch.testing.assert_close(st["lr"][:, 0], torch.tensor([1e-3, 3e-3], dtype=torch.float64))
    assert both.status == ["ok", "ok"] and (it["env_steps_per_s"] > 0).all()


def _hand_advantages(returns: list[float], G: int, std_scale: bool) -> list[float]:
    """GRPO's A_i = (R_i - mean) / (std + 1e-6), Dr. GRPO's R_i - mean, 0 for a flat group."""
    out = []
    for k in range(0, len(returns), G):
        grp = returns[k : k + G]
        mean, std = statistics.fmean(grp), statistics.stdev(grp)
        for r in grp:
            a = (r - mean) / (std + 1e-6) if std_scale else r - mean
            out.append(0.0 if std == 0 else a)
    return out


@pytest.mark.parametrize("preset", ["grpo", "dr_grpo", "dapo"])
def test_on_policy_loss_and_gradient_match_a_hand_computation(preset):
    """At pi_theta = pi_old the ratio is 1 and loss = sum_i sum_t w_it (-A_i), gradient
    -sum_i sum_t w_it A_i grad log pi(a_t|s_t), with w_it = 1 / sum_j L_j (token-mean, DAPO),
    1 / (N L_i) (seq-mean-token-mean, GRPO) or 1 / (N max_len) (Dr. GRPO, max_len = 500)."""
    cfg = ClassicGRPOConfig(num_groups=4, group_size=4, loss=preset, seed=2)
    tr = ClassicGRPOTrainer(cfg)
    b = tr.rollout(0)
    N, G = 16, 4
    lc = tr.loss
    adv = outcome_advantages(b.returns, G, lc)
    hand_a = _hand_advantages(b.returns[0].tolist(), G, std_scale=preset != "dr_grpo")
    torch.testing.assert_close(adv[0], torch.tensor(hand_a, dtype=torch.float32))
    assert adv.abs().sum() > 0
    lengths = b.lengths[0].double()
    if preset == "dapo":
        w = torch.ones(N, dtype=torch.float64) / lengths.sum()
    elif preset == "grpo":
        w = 1.0 / (N * lengths)
    else:
        assert lc.max_len == 500
        w = torch.full((N,), 1.0 / (N * 500), dtype=torch.float64)
    a64 = torch.tensor(hand_a, dtype=torch.float64)
    expected = -(w * lengths * a64).sum()
    loss, metrics = classic_grpo_loss(
        tr.actor, b.obs, b.actions, b.logp, adv, b.mask, lc, tr.eps_low, tr.eps_high, b.logp
    )
    torch.testing.assert_close(loss.double()[0], expected, rtol=1e-4, atol=1e-6)
    grads = torch.autograd.grad(loss.sum(), tr.params)
    # the gradient of the hand surrogate sum_{i,t} w_i (-A_i) log pi(a_t|s_t)
    T, D = b.obs.shape[2:]
    logits = tr.actor(b.obs.reshape(1, N * T, D)).reshape(N, T, -1)
    logp = torch.log_softmax(logits.double(), -1).gather(-1, b.actions[0].unsqueeze(-1))[..., 0]
    surrogate = (w.unsqueeze(-1) * -a64.unsqueeze(-1) * logp * b.mask[0]).sum()
    hand = torch.autograd.grad(surrogate, tr.params)
    for g, h in zip(grads, hand, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-3, atol=1e-7)
    assert float(grads[-1].abs().sum()) > 0
    if lc.beta > 0:  # k3 KL to pi_ref = pi_theta: 0, with zero gradient (checked above)
        assert abs(float(metrics["kl_ref"][0])) < 1e-6


@pytest.mark.slow
def test_grpo_learns_cartpole_without_a_critic():
    """Defaults (8 groups x G = 8, 4 epochs x 2 minibatches, lr 1e-3, preset "grpo"), 10
    iterations (~35k env steps): the deterministic policy balances far longer than the initial
    one (9.2 and 9.3 steps). Measured: 483 and 292 for seeds 0 and 1; 221-483 over seeds 0-7."""
    seeds = [0, 1]
    init = evaluate(
        BatchedMLP([4, 64, 64, 2], seeds, 0.01, torch.float32), "CartPole-v1", seeds, 10
    )
    assert (init < 20).all(), init
    cfgs = [ClassicGRPOConfig(iterations=10, seed=s, eval_episodes=10) for s in seeds]
    rec = train_classic_grpo(None, cfgs)
    assert (rec.summary["eval_return"] > 150).all(), rec.summary["eval_return"]
    it = rec.stacked("iter")
    assert (it["episode_return"][:, -1] > 2 * it["episode_return"][:, 0]).all()
    assert rec.status == ["ok", "ok"]


def test_bad_input_is_rejected_with_the_field_named():
    with pytest.raises(ValidationError, match="group_size must be >= 2"):
        ClassicGRPOConfig(group_size=1)
    with pytest.raises(ValidationError, match="unknown env_id 'CartPole-v0'"):
        ClassicGRPOConfig(env_id="CartPole-v0")
    with pytest.raises(ValidationError, match="loss.advantage must be 'group'"):
        ClassicGRPOConfig(loss="ppo")
    with pytest.raises(ValidationError, match="max_len=100 is shorter"):
        ClassicGRPOConfig(max_len=100)
    with pytest.raises(ValidationError, match="minibatches=3 must divide num_groups=8"):
        ClassicGRPOConfig(minibatches=3)
    with pytest.raises(ValueError, match="differ in"):
        train_classic_grpo(None, [ClassicGRPOConfig(), ClassicGRPOConfig(group_size=4)])


TINY = {"num_groups": 2, "group_size": 2, "eval_episodes": 1}


def test_env_step_budget_stops_where_a_hand_count_of_env_steps_says():
    """Truth: a hand count. Run iterations 0-2 with an iteration budget and record the env steps
    S_k; the rollout of iteration 3 (from the same policy and seeds: the same episodes) has n_t
    episodes running at step t. With B inside iteration 3, the budget run must do iterations 0-2
    as before, then stop iteration 3 after the first step t* with S_2 + sum_{t <= t*} n_t >= B:
    env steps = that sum, the iteration cut (no update) and the final policy the one after 3
    updates. With B = S_3 exactly, iteration 3 ends as the budget does: it updates, no cut."""
    tr = ClassicGRPOTrainer(ClassicGRPOConfig(**TINY, seed=4))  # the default: an iteration budget
    S = []
    for k in range(3):
        tr.update(k)
        S.append(float(tr.env_steps[0]))
    live = tr.rollout(3).mask[0].sum(0).double()  # (T,) n_t of iteration 3
    cum = S[-1] + torch.cumsum(live, 0)  # env steps by the end of each step of iteration 3
    B = int(S[-1] + live.sum() // 2)
    t_star = int((cum >= B).nonzero()[0])
    assert live[t_star + 1] > 0  # some episode still runs after t*: a real cut
    expected = float(cum[t_star])
    assert B <= expected <= B + 2 * 2 - 1  # at most N - 1 steps past the budget

    rec = train_classic_grpo(None, ClassicGRPOConfig(**TINY, seed=4, total_timesteps=B))
    it = rec.stacked("iter")
    torch.testing.assert_close(
        it["env_steps"][0], torch.tensor([*S, expected], dtype=torch.float64)
    )
    assert it["cut"][0].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert it["update_time"][0, -1] == 0 and math.isnan(it["episode_return"][0, -1])
    assert float(rec.summary["env_steps"][0]) == expected
    assert float(rec.summary["iterations"][0]) == 4
    assert rec.stacked("step")["loss"].shape == (1, 3 * 4 * 2)  # 3 updates x epochs x minibatches
    after3 = train_classic_grpo(None, ClassicGRPOConfig(**TINY, seed=4, iterations=3))
    assert float(rec.summary["eval_return"][0]) == float(after3.summary["eval_return"][0])

    exact = train_classic_grpo(
        None, ClassicGRPOConfig(**TINY, seed=4, total_timesteps=int(cum[-1]))
    )
    assert exact.stacked("iter")["cut"][0].tolist() == [0.0] * 4
    assert float(exact.summary["env_steps"][0]) == float(cum[-1])
    assert exact.stacked("step")["loss"].shape == (1, 4 * 4 * 2)


def test_a_batch_with_an_env_step_budget_equals_its_configurations_run_alone():
    """Configurations whose budgets run out at different iterations: the one done first takes
    no more steps and keeps its parameters while the other goes on updating (NaN rows after its
    end), so each equals its run alone. The seeds and budget are picked so that seed 0 is spent
    after 4 iterations while seed 1 updates until its 7th."""
    cfgs = [ClassicGRPOConfig(**TINY, total_timesteps=520, seed=s, lr=3e-3) for s in (0, 1)]
    both = train_classic_grpo(None, cfgs)
    n = both.summary["iterations"].long().tolist()
    it, st = both.stacked("iter"), both.stacked("step")
    # optimiser steps made by seed 1 while seed 0 was spent: the frozen path was exercised
    assert n[0] < n[1] and bool((st["loss"][0].isnan() & st["loss"][1].isfinite()).any())
    for c, cfg in enumerate(cfgs):
        alone = train_classic_grpo(None, cfg)
        a_it = alone.stacked("iter")
        assert a_it["env_steps"].shape[1] == n[c]
        for k in ("env_steps", "episode_return", "cut", "zero_std_frac"):
            torch.testing.assert_close(it[k][c, : n[c]], a_it[k][0], equal_nan=True)
            assert it[k][c, n[c] :].isnan().all()
        k_steps = alone.stacked("step")["loss"].shape[1]
        torch.testing.assert_close(st["loss"][c, :k_steps], alone.stacked("step")["loss"][0])
        assert st["loss"][c, k_steps:].isnan().all()
        for key in ("eval_return", "env_steps", "iterations"):
            assert float(both.summary[key][c]) == float(alone.summary[key][0])
        assert 520 <= float(alone.summary["env_steps"][0]) <= 520 + 3
    assert both.status == ["ok", "ok"]


def test_budget_is_iterations_or_total_timesteps_never_both():
    assert ClassicGRPOConfig().num_iterations() == 30  # neither: DEFAULT_ITERATIONS
    assert ClassicGRPOConfig(iterations=7).num_iterations() == 7
    assert ClassicGRPOConfig(total_timesteps=5000).num_iterations() is None  # stops on steps
    with pytest.raises(ValidationError, match="set one budget, not both: iterations=3"):
        ClassicGRPOConfig(iterations=3, total_timesteps=1000)
    with pytest.raises(ValidationError, match="total_timesteps\n.*greater than or equal to 1"):
        ClassicGRPOConfig(total_timesteps=0)
    with pytest.raises(ValidationError, match="iterations\n.*greater than or equal to 1"):
        ClassicGRPOConfig(iterations=0)
    with pytest.raises(ValueError, match="differ in \\['total_timesteps'\\]"):
        train_classic_grpo(None, [ClassicGRPOConfig(), ClassicGRPOConfig(total_timesteps=9)])


@pytest.mark.parametrize("preset", ["dr_grpo", "grpo"])
def test_update_flops_match_a_hand_count_and_double_with_the_epochs(preset):
    """Truth: the layer shapes. The actor [4, H, H, 2] runs on the padded layout, N episodes x T
    steps (T = the longest episode of the whole batch, every configuration's; the masked steps
    after an episode's end are computed too, so a configuration's count / C in a batch is at
    least its count alone). Per optimiser step on m rows: forward 2 m (DH + H^2 + AH), backward
    2 m (DH + 2 H^2 + 2 AH) (dW of every layer, dh of all but the first), the audit's forward
    again; the epochs cover the N T rows once each. With beta > 0 (preset "grpo") one reference forward on the
    batch per iteration, so 2 epochs cost twice 1 epoch less that forward; with beta = 0
    ("dr_grpo") exactly twice. Iteration 0's rollout is the same for any number of epochs."""
    D, H, A = 4, 4, 2
    fwd, bwd = D * H + H * H + A * H, D * H + 2 * H * H + 2 * A * H
    counts = {}
    for epochs in (1, 2):
        cfg = ClassicGRPOConfig(
            **TINY, hidden=H, epochs=epochs, iterations=1, loss=preset, count_flops_every=1
        )
        cfgs = [cfg, cfg.model_copy(update={"seed": 1})]
        tr = ClassicGRPOTrainer(cfgs)
        rows = tr.rollout(0).mask[0].numel()  # N T of iteration 0, T the batch's
        beta = tr.loss.beta > 0
        assert beta == (preset == "grpo")
        counts[epochs] = train_classic_grpo(None, cfgs).stacked("iter")["update_flops"][:, 0]
        want = 2 * rows * (epochs * (2 * fwd + bwd) + beta * fwd)
        assert counts[epochs].tolist() == [want, want]
    if preset == "dr_grpo":
        assert torch.equal(counts[2], 2 * counts[1])
    else:
        torch.testing.assert_close(counts[2], 2 * counts[1] - 2 * rows * fwd, rtol=0, atol=0)


def test_counting_flops_changes_no_number_and_a_cut_iteration_did_no_work():
    """A batch whose configurations' budgets run out at different iterations (as in the batch ==
    alone test), counted every iteration: each number equals the uncounted run's; every counted
    iteration logs update_time NaN; the cut iterations (no update) log 0 FLOPs, the others the
    work of one configuration's update."""
    cfgs = [ClassicGRPOConfig(**TINY, total_timesteps=520, seed=s, lr=3e-3) for s in (0, 1)]
    plain = train_classic_grpo(None, cfgs)
    counted = train_classic_grpo(
        None, [c.model_copy(update={"count_flops_every": 1}) for c in cfgs]
    )
    for where in ("step", "iter"):
        p, c = plain.stacked(where), counted.stacked(where)
        for k, v in p.items():
            if k not in ("update_time", "update_flops", "rollout_time", "env_steps_per_s"):
                torch.testing.assert_close(c[k], v, rtol=0, atol=0, equal_nan=True)
    for key in ("eval_return", "env_steps", "iterations"):
        assert torch.equal(counted.summary[key], plain.summary[key])
    pi, ci = plain.stacked("iter"), counted.stacked("iter")
    ran = ~pi["env_steps"].isnan()  # the iterations each configuration ran
    cut = (pi["cut"] == 1) & ran
    assert pi["update_flops"].isnan().all() and not pi["update_time"][ran].isnan().any()
    assert (pi["update_time"][cut] == 0).all() and cut.any() and (ran & ~cut).any()
    assert ci["update_time"].isnan().all()
    assert (ci["update_flops"][cut] == 0).all() and (ci["update_flops"][ran & ~cut] > 0).all()
