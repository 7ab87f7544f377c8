"""PPO on classic control (grpo_lab/algorithms/classic.py): the batched networks against a direct
computation, batched == one configuration at a time, learning CartPole-v1, and bad input."""

import pytest
import torch
from pydantic import ValidationError

from grpo_lab.algorithms.classic import BatchedMLP, ClassicPPOConfig, train_classic_ppo

SHORT = {"total_timesteps": 2 * 8 * 32, "update_epochs": 2, "eval_episodes": 2}


def test_batched_mlp_is_c_independent_mlps():
    net = BatchedMLP([4, 8, 8, 2], seeds=[0, 1, 2], out_gain=0.01, dtype=torch.float64)
    x = torch.randn(3, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    net.requires_grad_(False)
    out = net(x)
    for c in range(3):
        h = x[c]
        for i, (w, b) in enumerate(zip(net.weights, net.biases, strict=True)):
            h = h @ w[c] + b[c]
            h = torch.tanh(h) if i < 2 else h
        torch.testing.assert_close(out[c], h)
    # orthogonal initialisation with the CleanRL gains: W^T W = gain^2 I (in <= out) per config
    w0 = net.weights[0][1]  # (4, 8): 4 orthonormal rows of norm sqrt(2)
    torch.testing.assert_close(w0 @ w0.T, 2.0 * torch.eye(4, dtype=torch.float64))
    assert float(net.weights[-1].abs().max()) < 0.05  # the output layer starts small (gain 0.01)
    # per-configuration seeds: the same seed, the same weights
    again = BatchedMLP([4, 8, 8, 2], seeds=[2], out_gain=0.01, dtype=torch.float64)
    torch.testing.assert_close(again.weights[0][0], net.weights[0][2])


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


@pytest.mark.slow
def test_ppo_learns_cartpole():
    """RL Zoo hyperparameters, 16k steps (64 updates): the deterministic policy balances far
    longer than the initial one (about 10 steps) in both seeds (measured: 194 and 183)."""
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
