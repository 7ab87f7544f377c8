"""PPO on classic control (grpo_lab/algorithms/classic.py): the batched networks against a direct
computation, batched == one configuration at a time, learning CartPole-v1, and bad input."""

import pytest
import torch
from pydantic import ValidationError

from grpo_lab.algorithms.classic import ClassicPPOConfig, train_classic_ppo

SHORT = {"total_timesteps": 2 * 8 * 32, "update_epochs": 2, "eval_episodes": 2}


def test_a_batch_equals_its_configurations_run_alone():
    cfgs = [
        ClassicPPOConfig(**SHORT, num_minibatches=2, seed=3, lr=3e-4),
        ClassicPPOConfig(**SHORT, num_minibatches=2, seed=5, lr=1e-3, clip_coef=0.1),
    ]
    both = train_classic_ppo(None, cfgs)
    for c, cfg in enumerate(cfgs):
        alone = train_classic_ppo(None, cfg)
        for k in ("loss", "ratio_max", "approx_kl", "grad_norm"):
            torch.testing.assert_close(
                both.stacked("step")[k][c], alone.stacked("step")[k][0], rtol=1e-5, atol=1e-6
            )
        assert float(both.summary["eval_return"][c]) == float(alone.summary["eval_return"][0])
    st = both.stacked("step")
    assert st["loss"].shape == (2, 2 * 2 * 2)  # updates x epochs x minibatches
    # the learning rate and the clip range are annealed linearly per configuration
    torch.testing.assert_close(st["lr"][:, 0], torch.tensor([3e-4, 1e-3], dtype=torch.float64))
    torch.testing.assert_close(st["lr"][:, -1], torch.tensor([1.5e-4, 5e-4], dtype=torch.float64))
    torch.testing.assert_close(
        st["clip_coef"][:, -1], torch.tensor([0.1, 0.05], dtype=torch.float64)
    )


def _record_clip_ranges(monkeypatch) -> list[torch.Tensor]:
    """Spy on the clipped surrogate of classic PPO: the (eps_low, eps_high) of every call."""
    import grpo_lab.algorithms.classic as classic

    seen: list[torch.Tensor] = []
    real = classic.clipped_surrogate

    def spy(lp, lp_old, adv, mask, eps_low, eps_high):
        torch.testing.assert_close(eps_low, eps_high)
        seen.append(eps_low.detach().reshape(-1).clone())
        return real(lp, lp_old, adv, mask, eps_low, eps_high)

    monkeypatch.setattr(classic, "clipped_surrogate", spy)
    return seen


@pytest.mark.parametrize("anneal", [False, True])
def test_the_clip_range_of_every_update_is_the_configured_one(monkeypatch, anneal):
    """anneal_clip False: eps_u = clip_coef at every optimiser step of every update (what a sweep
    of clip_coef needs); True: eps_u = clip_coef (1 - u / U), the Zoo's lin_<clip_coef>. Checked
    on the eps the surrogate received and on the logged clip_coef column; batched == alone."""
    U, K = 4, 2 * 2  # updates; optimiser steps per update (epochs x minibatches)
    kw = dict(SHORT, total_timesteps=U * 8 * 32, num_minibatches=2, anneal_clip=anneal)
    cfgs = [ClassicPPOConfig(**kw, clip_coef=e, seed=s) for e, s in ((0.1, 3), (0.3, 4))]
    seen = _record_clip_ranges(monkeypatch)
    both = train_classic_ppo(None, cfgs)
    used = torch.stack(seen)  # (U K, C): one row per optimiser step
    frac = 1.0 - torch.arange(U, dtype=torch.float64).repeat_interleave(K) / U
    want = torch.tensor([0.1, 0.3], dtype=torch.float64) * (frac.unsqueeze(-1) if anneal else 1)
    want = want.expand(U * K, 2)
    torch.testing.assert_close(used.double(), want)
    torch.testing.assert_close(both.stacked("step")["clip_coef"].T, want)
    if anneal:  # the last update's eps is eps_0 / U, not 0
        torch.testing.assert_close(used[-1].double(), torch.tensor([0.1, 0.3]).double() / U)
    for c, cfg in enumerate(cfgs):
        alone = train_classic_ppo(None, cfg)
        for k in ("loss", "ratio_max", "clip_frac", "clip_coef"):
            torch.testing.assert_close(
                both.stacked("step")[k][c], alone.stacked("step")[k][0], rtol=1e-5, atol=1e-6
            )
        assert float(both.summary["eval_return"][c]) == float(alone.summary["eval_return"][0])


def test_linear_schedule():
    from grpo_lab.algorithms.classic import linear_schedule

    x0 = torch.tensor([0.1, 0.2])
    torch.testing.assert_close(linear_schedule(x0, 0, 4, True), x0)
    torch.testing.assert_close(linear_schedule(x0, 3, 4, True), x0 / 4)
    for u in range(4):
        torch.testing.assert_close(linear_schedule(x0, u, 4, False), x0)


@pytest.mark.slow
def test_ppo_learns_cartpole():
    """RL Zoo hyperparameters, 16k steps (64 updates): the deterministic policy balances far
    longer than the initial one (about 10 steps) in both seeds (measured: 354 and 358)."""
    cfgs = [ClassicPPOConfig(total_timesteps=16_384, seed=s, eval_episodes=10) for s in (0, 1)]
    rec = train_classic_ppo(None, cfgs)
    assert (rec.summary["eval_return"] > 120).all(), rec.summary["eval_return"]
    it = rec.stacked("iter")
    assert (it["explained_variance"][:, -10:].mean(-1) > 0.2).all()  # the critic learned
    assert (it["env_steps_per_s"] > 0).all() and rec.status == ["ok", "ok"]


def test_bad_input_is_rejected_before_training():
    with pytest.raises(ValidationError, match="unknown env_id 'CartPole-v0'"):
        ClassicPPOConfig(env_id="CartPole-v0")
    with pytest.raises(ValidationError, match="num_minibatches = 3 equal parts"):
        ClassicPPOConfig(num_minibatches=3)
    with pytest.raises(ValueError, match="differ in"):
        train_classic_ppo(None, [ClassicPPOConfig(**SHORT), ClassicPPOConfig(**SHORT, gamma=0.9)])


def _update_setup(epochs: int):
    """Two configurations' networks, Adam, and a synthetic batch whose pi_old is the actor."""
    from grpo_lab.algorithms.classic import Rollout
    from grpo_lab.optim import BatchedAdam, flat_parameters
    from grpo_lab.policies.mlp import BatchedMLP

    g = torch.Generator().manual_seed(4)
    C, M, f64 = 2, 64, torch.float64
    actor = BatchedMLP([4, 16, 16, 2], [0, 1], 1.0, f64)
    critic = BatchedMLP([4, 16, 16, 1], [2, 3], 1.0, f64)
    obs = torch.randn(C, M, 4, generator=g, dtype=f64)
    actions = torch.randint(0, 2, (C, M), generator=g)
    with torch.no_grad():
        logp = torch.log_softmax(actor(obs), -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        values = critic(obs).squeeze(-1)
    adv = torch.randn(C, M, generator=g, dtype=f64)
    batch = Rollout(obs, actions, logp, values, adv, values + adv, torch.zeros(C, dtype=f64))
    flat = flat_parameters(list(actor.parameters()) + list(critic.parameters()))
    opt = BatchedAdam([flat], lr=torch.tensor([3e-2, 1e-2], dtype=f64))
    cfg = ClassicPPOConfig(update_epochs=epochs, max_grad_norm=0.5, ent_coef=0.01)
    clip = torch.tensor([0.2, 0.1], dtype=f64).reshape(C, 1, 1)
    return actor, critic, opt, batch, clip, cfg


def test_ppo_update_loss_and_ratio_audit_against_a_direct_computation():
    from grpo_lab.algorithms.classic import ppo_update

    actor, critic, opt, batch, clip, cfg = _update_setup(epochs=3)
    # the first step's loss, written out from arXiv 1707.06347 eq. 7 (+ value loss, entropy)
    with torch.no_grad():
        logp_all = torch.log_softmax(actor(batch.obs), -1)
        lp = logp_all.gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
        a = batch.adv
        a = (a - a.mean(-1, keepdim=True)) / (a.std(-1, keepdim=True) + 1e-8)
        r = torch.exp(lp - batch.logp)
        eps = clip.reshape(2, 1)
        pg = -torch.minimum(r * a, r.clamp(1 - eps, 1 + eps) * a).mean(-1)
        v = 0.5 * ((critic(batch.obs).squeeze(-1) - batch.returns) ** 2).mean(-1)
        ent = -(logp_all.exp() * logp_all).sum(-1).mean(-1)
        loss0 = pg - 0.01 * ent + 0.5 * v
    st = ppo_update(actor, critic, opt, batch, clip, cfg)
    assert st["loss"].shape == (2, 3)
    torch.testing.assert_close(st["loss"][:, 0], loss0)
    assert bool((st["grad_norm"] > 0).all()) and bool((st["finite"] == 1).all())
    # the audit of the last step: the ratios of the updated actor on the batch
    with torch.no_grad():
        lp_new = torch.log_softmax(actor(batch.obs), -1).gather(-1, batch.actions.unsqueeze(-1))
        r_new = torch.exp(lp_new.squeeze(-1) - batch.logp)
    torch.testing.assert_close(st["ratio_max"][:, -1], r_new.amax(-1))
    torch.testing.assert_close(st["ratio_min"][:, -1], r_new.amin(-1))
    torch.testing.assert_close(st["ratio_mean"][:, -1], r_new.mean(-1))
    # the audit of an earlier step (read off the next step's forward) equals a run that stops
    # after that step and audits it with its own forward
    for k in (1, 2):
        a2, c2, o2, b2, cl2, cfg2 = _update_setup(epochs=k)
        short = ppo_update(a2, c2, o2, b2, cl2, cfg2)
        for name in ("ratio_max", "ratio_min", "approx_kl", "clip_frac", "loss"):
            torch.testing.assert_close(st[name][:, k - 1], short[name][:, -1])


def test_value_clipping_uses_clip_vf_not_the_policy_clip():
    """clip_vf = c: value loss 0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2) with
    the same c for configurations whose policy clip differs (0.2 and 0.1); None: 0.5 (V - R)^2."""
    from grpo_lab.algorithms.classic import ppo_update

    for clip_vf in (None, 0.05, 0.5):
        actor, critic, opt, batch, clip, cfg = _update_setup(epochs=1)
        batch.values = batch.values - 0.3  # V_old away from V so that the clip can bind
        cfg = cfg.model_copy(update={"clip_vf": clip_vf})
        with torch.no_grad():
            v = critic(batch.obs).squeeze(-1)
            rt, v_old = batch.returns, batch.values
            want = 0.5 * (v - rt) ** 2
            if clip_vf is not None:
                v_clip = v_old + (v - v_old).clamp(-clip_vf, clip_vf)
                want = torch.maximum(want, 0.5 * (v_clip - rt) ** 2)
        st = ppo_update(actor, critic, opt, batch, clip, cfg)
        torch.testing.assert_close(st["v_loss"][:, 0], want.mean(-1))
    with pytest.raises(ValidationError, match="clip_vf"):
        ClassicPPOConfig(clip_vf=0.0)


def test_obs_norm_is_per_configuration_and_matches_the_data_seen():
    # The independent truth: the mean and population variance of all observations configuration
    # c has seen (RunningMeanStd's starting count 1e-4 moves them by < 1e-5 relative here).
    from grpo_lab.algorithms.classic import ObsNorm

    g = torch.Generator().manual_seed(0)
    norm = ObsNorm(num_configs=2, obs_dim=3)
    batches = [torch.randn(2, 8, 3, generator=g, dtype=torch.float64) * 3 + 1 for _ in range(5)]
    batches = [b * torch.tensor([1.0, 10.0]).reshape(2, 1, 1) for b in batches]  # c1 wider
    for b in batches:
        out = norm(b, update=True)
    seen = torch.cat(batches, dim=1)  # (C, 40, 3)
    mean, var = seen.mean(1, keepdim=True), seen.var(1, correction=0, keepdim=True)
    expected = ((batches[-1] - mean) / torch.sqrt(var + 1e-8)).clamp(-10, 10)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    # frozen: evaluation applies the statistics without changing them
    again = norm(batches[0], update=False)
    torch.testing.assert_close(norm(batches[0], update=False), again)
    # configuration 0's statistics do not see configuration 1's data
    alone = ObsNorm(num_configs=1, obs_dim=3)
    for b in batches:
        out0 = alone(b[:1], update=True)
    torch.testing.assert_close(out0, out[:1])


def test_normalised_observations_on_acrobot_batch_equals_alone():
    cfgs = [
        ClassicPPOConfig(**SHORT, env_id="Acrobot-v1", normalize_obs=True, seed=s) for s in (0, 1)
    ]
    both = train_classic_ppo(None, cfgs)
    alone = train_classic_ppo(None, cfgs[1])
    torch.testing.assert_close(
        both.stacked("step")["loss"][1], alone.stacked("step")["loss"][0], rtol=1e-5, atol=1e-6
    )
    assert float(both.summary["eval_return"][1]) == float(alone.summary["eval_return"][0])


def _layer_units(D: int, H: int, out: int) -> tuple[int, int]:
    """(forward, backward) sum of in x out over the layers of a [D, H, H, out] MLP; FLOPs =
    2 x rows x units. Backward: dW of every layer, dh of all but the first (observations need no
    gradient); a single output column's dh is a broadcast product, not a matmul: not counted."""
    fwd = D * H + H * H + H * out
    return fwd, D * H + 2 * H * H + (2 * H * out if out > 1 else H)


@pytest.mark.parametrize(("epochs", "minibatches"), [(1, 1), (3, 1), (2, 2)])
def test_update_flops_match_a_hand_count_from_the_layer_shapes(epochs, minibatches):
    """Truth: the layer shapes. M = 2 envs x 4 steps = 8 samples, D = 4, hidden 4, A = 2.
    Each optimiser step on m rows: actor forward and backward, critic forward and backward
    (2 m (units) FLOPs, ``_layer_units``). The audit: with one minibatch the next step's forward
    is the previous step's audit, so one extra actor forward on the batch after the last step;
    with several, one actor forward on the minibatch after each step. Per configuration: the
    batch's count / C, so two configurations log the number of one."""
    M, D, H, A = 8, 4, 4, 2
    (fa, ba), (fc, bc) = _layer_units(D, H, A), _layer_units(D, H, 1)
    step = fa + ba + fc + bc
    want = 2 * M * (epochs * step + fa) if minibatches == 1 else 2 * M * epochs * (step + fa)
    kw = dict(hidden=H, num_envs=2, num_steps=4, total_timesteps=2 * M, eval_episodes=1)
    cfg = ClassicPPOConfig(
        **kw, update_epochs=epochs, num_minibatches=minibatches, count_flops_every=1
    )
    rec = train_classic_ppo(None, [cfg, cfg.model_copy(update={"seed": 1, "lr": 3e-4})])
    it = rec.stacked("iter")
    assert it["update_flops"].tolist() == [[want, want], [want, want]]
    assert it["update_time"].isnan().all() and (it["rollout_time"] > 0).all()


def test_counting_flops_changes_no_number_and_only_the_counted_timings():
    """count_flops_every = 2 over 3 updates: iterations 0 and 2 counted (update_flops finite,
    update_time NaN), iteration 1 timed (update_flops NaN); every loss, audit and eval_return
    equal to the uncounted run's (= the numbers before counting existed: bit for bit, checked
    against the previous commit when the field was added); the batch logs each configuration's
    own work, as alone."""
    kw = dict(SHORT, total_timesteps=3 * 8 * 32, num_minibatches=2)
    cfgs = [ClassicPPOConfig(**kw, seed=s) for s in (0, 1)]
    plain = train_classic_ppo(None, cfgs)
    counted = train_classic_ppo(None, [c.model_copy(update={"count_flops_every": 2}) for c in cfgs])
    for k, v in plain.stacked("step").items():
        torch.testing.assert_close(counted.stacked("step")[k], v, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(counted.summary["eval_return"], plain.summary["eval_return"])
    pi, ci = plain.stacked("iter"), counted.stacked("iter")
    torch.testing.assert_close(ci["episode_return"], pi["episode_return"], rtol=0, atol=0)
    assert pi["update_flops"].isnan().all() and (pi["update_time"] > 0).all()
    assert ci["update_time"][:, [0, 2]].isnan().all() and (ci["update_time"][:, 1] > 0).all()
    assert ci["update_flops"][:, 1].isnan().all() and (ci["update_flops"][:, [0, 2]] > 0).all()
    alone = train_classic_ppo(None, cfgs[1].model_copy(update={"count_flops_every": 2}))
    torch.testing.assert_close(
        alone.stacked("iter")["update_flops"][0], ci["update_flops"][1], equal_nan=True
    )
    with pytest.raises(ValidationError, match="count_flops_every"):
        ClassicPPOConfig(count_flops_every=-1)
