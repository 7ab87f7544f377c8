"""Tests of grpo_lab/advantages.py against hand-worked values and closed forms."""

import math

import pytest
import torch

from grpo_lab.advantages import BASELINES, SCALES, gae, group_advantages, masked_gae


def test_group_advantages_hand_worked_mean_std():
    # Group [1, 0, 1, 1]: mean 0.75; Bessel std = sqrt((3 * 0.25^2 + 0.75^2) / 3) = sqrt(0.25) = 0.5.
    # A = (R - 0.75) / 0.5 = [0.5, -1.5, 0.5, 0.5]. Second group [2, 4]: mean 3, std sqrt(2).
    r = torch.tensor([1.0, 0.0, 1.0, 1.0])
    a = group_advantages(r, 4, eps=0.0)
    torch.testing.assert_close(a, torch.tensor([0.5, -1.5, 0.5, 0.5]))
    a2 = group_advantages(torch.tensor([2.0, 4.0]), 2, eps=0.0)
    s = math.sqrt(2.0)
    torch.testing.assert_close(a2, torch.tensor([-1 / s, 1 / s]))


def test_group_advantages_eps_enters_denominator():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0])
    a = group_advantages(r, 4, eps=0.5)  # sigma + eps = 1.0
    torch.testing.assert_close(a, torch.tensor([0.25, -0.75, 0.25, 0.25]))


def test_leave_one_out_hand_worked():
    # b_i = (sum - R_i) / (G - 1): for R = 1, b = 2/3 -> A = 1/3; for R = 0, b = 1 -> A = -1.
    r = torch.tensor([1.0, 0.0, 1.0, 1.0])
    a = group_advantages(r, 4, baseline="leave-one-out", scale="none")
    torch.testing.assert_close(a, torch.tensor([1 / 3, -1.0, 1 / 3, 1 / 3]))


def test_leave_one_out_closed_form_is_rescaled_mean_baseline():
    # R_i - (S - R_i)/(G-1) = (G R_i - S)/(G-1) = G/(G-1) (R_i - mean): a closed form.
    g = torch.Generator().manual_seed(0)
    r = torch.randn(6 * 5, generator=g, dtype=torch.float64)
    loo = group_advantages(r, 5, baseline="leave-one-out", scale="none")
    mean = group_advantages(r, 5, baseline="mean", scale="none")
    torch.testing.assert_close(loo, 5 / 4 * mean)


def test_no_baseline_is_the_raw_reward_in_every_group():
    # REINFORCE without a baseline (Williams 1992): A_i = R_i, all-equal groups included (an
    # all-1 group still reinforces its actions: the variance a baseline removes).
    r = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(group_advantages(r, 3, baseline="none", scale="none"), r)
    with pytest.raises(ValueError, match="baseline 'none' takes scale 'none' only"):
        group_advantages(r, 3, baseline="none", scale="std")


def test_scale_none_is_plain_centering():
    r = torch.tensor([3.0, 1.0, 2.0, 10.0, 0.0, 5.0])
    a = group_advantages(r, 3, scale="none")
    torch.testing.assert_close(a, torch.tensor([1.0, -1.0, 0.0, 5.0, -5.0, 0.0]))


@pytest.mark.parametrize("baseline", ["mean", "leave-one-out"])
@pytest.mark.parametrize("scale", ["std", "none"])
def test_equal_rewards_give_exact_zero_without_nan(baseline, scale):
    # 0.1 is not exactly representable: a naive mean would leave residues ~1e-17 and, divided by
    # a zero std plus eps = 0, a blow-up. The contract is an exact 0.
    r = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 1.0], dtype=torch.float64)
    a = group_advantages(r, 3, baseline=baseline, scale=scale, eps=0.0)
    assert torch.isfinite(a).all()
    assert (a[:3] == 0).all()
    assert (a[3:] != 0).all()


def test_dtype_float32_for_ints_and_float64_kept():
    assert group_advantages(torch.tensor([1, 0, 1, 0]), 2).dtype == torch.float32
    assert group_advantages(torch.tensor([1.0, 0.0], dtype=torch.float64), 2).dtype == torch.float64
    bf = group_advantages(torch.tensor([1.0, 0.0], dtype=torch.bfloat16), 2)
    assert bf.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rewards": torch.ones(6), "group_size": 4}, "group_size=4 does not divide"),
        ({"rewards": torch.ones(6), "group_size": 1}, "group_size must be an int >= 2"),
        ({"rewards": torch.ones(6), "group_size": 3, "baseline": "median"}, "unknown baseline"),
        ({"rewards": torch.ones(6), "group_size": 3, "scale": "mad"}, r"unknown scale.*'none'"),
        ({"rewards": torch.ones(2, 3), "group_size": 3}, "rewards must be 1-D"),
        ({"rewards": torch.tensor([1.0, float("nan")]), "group_size": 2}, "rewards holds 1 NaN"),
        ({"rewards": torch.ones(4), "group_size": 2, "eps": -1.0}, "eps must be"),
    ],
)
def test_group_advantages_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(**kwargs)


def test_registries_list_their_names():
    assert BASELINES.names() == ["leave-one-out", "mean", "none"]
    assert SCALES.names() == ["none", "std"]


def test_gae_hand_worked():
    # gamma = 0.5, lam = 0.5, r = [1, 2, 3], V = [1, 1, 1, bootstrap 2], no dones.
    # delta_2 = 3 + 0.5*2 - 1 = 3;  delta_1 = 2 + 0.5*1 - 1 = 1.5;  delta_0 = 1 + 0.5 - 1 = 0.5
    # A_2 = 3;  A_1 = 1.5 + 0.25*3 = 2.25;  A_0 = 0.5 + 0.25*2.25 = 1.0625
    r = torch.tensor([1.0, 2.0, 3.0])
    v = torch.tensor([1.0, 1.0, 1.0, 2.0])
    adv, ret = gae(r, v, torch.zeros(3), gamma=0.5, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([1.0625, 2.25, 3.0]))
    torch.testing.assert_close(ret, adv + v[:3])


def test_gae_lambda_zero_is_td_error_and_one_is_monte_carlo():
    g = torch.Generator().manual_seed(1)
    b, t, gamma = 4, 7, 0.9
    r = torch.randn(b, t, generator=g, dtype=torch.float64)
    v = torch.randn(b, t + 1, generator=g, dtype=torch.float64)
    dones = torch.zeros(b, t)
    dones[:, 3] = 1.0  # an episode boundary after step 3
    nd = 1.0 - dones
    adv0, _ = gae(r, v, dones, gamma, 0.0)
    torch.testing.assert_close(adv0, r + gamma * nd * v[:, 1:] - v[:, :-1])
    # lam = 1: A_t = sum_k gamma^k r_{t+k} (up to the episode end, plus a bootstrap) - V_t.
    _, ret1 = gae(r, v, dones, gamma, 1.0)
    mc = torch.zeros(b, t, dtype=torch.float64)
    running = v[:, t].clone()
    for k in reversed(range(t)):
        running = r[:, k] + gamma * nd[:, k] * running
        mc[:, k] = running
    torch.testing.assert_close(ret1, mc)


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.ones(3), torch.ones(3), torch.zeros(3), 0.9, 0.9), r"values has shape \(3,\)"),
        ((torch.ones(3), torch.ones(4), torch.zeros(2), 0.9, 0.9), "dones has shape"),
        ((torch.ones(3), torch.ones(4), torch.zeros(3), 1.5, 0.9), "gamma must be"),
        ((torch.ones(3), torch.ones(4), torch.zeros(3), 0.9, -0.1), "lam must be"),
        ((torch.ones(3), torch.full((4,), float("inf")), torch.zeros(3), 0.9, 0.9), "values holds"),
    ],
)
def test_gae_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        gae(*args)


def test_masked_gae_equals_gae_on_each_episode_alone():
    # Truth: gae() on each episode's own steps with a zero bootstrap after its last step.
    g = torch.Generator().manual_seed(4)
    n, t = 5, 6
    r = torch.randn(n, t, generator=g, dtype=torch.float64)
    v = torch.randn(n, t, generator=g, dtype=torch.float64)
    lengths = torch.tensor([6, 1, 3, 0, 4])
    mask = torch.arange(t) < lengths[:, None]
    adv, ret = masked_gae(r, v, mask, 0.9, 0.8)
    for i, n_i in enumerate(lengths.tolist()):
        if n_i == 0:
            assert (adv[i] == 0).all()
            continue
        v_ext = torch.cat([v[i, :n_i], torch.zeros(1, dtype=torch.float64)])
        a_i, r_i = gae(r[i, :n_i], v_ext, torch.zeros(n_i), 0.9, 0.8)
        torch.testing.assert_close(adv[i, :n_i], a_i)
        torch.testing.assert_close(ret[i, :n_i], r_i)
        assert (adv[i, n_i:] == 0).all() and (ret[i, n_i:] == 0).all()
