"""Gradient experiments (grpo_lab/algorithms/gradient.py): off-policy corrections against theory,
exact identities between corrections, the sweep path, and bad input."""

import pytest
import torch
from pydantic import ValidationError

from grpo_lab import store
from grpo_lab.algorithms import ALGORITHMS
from grpo_lab.algorithms.gradient import (
    GradientConfig,
    gradient_point,
    gradient_samples,
    measure_gradient,
    train_gradient,
)
from grpo_lab.envs.tabular import exact_grad, make_env
from grpo_lab.instrument import gradient_quality
from grpo_lab.losses import LossConfig

PLAIN = LossConfig(adv_baseline="leave-one-out", adv_scale="none", agg="seq-mean-token-sum")


@pytest.fixture(scope="module")
def garnet():
    """Short multi-step episodes: the visited states depend on earlier actions."""
    return make_env("garnet", num_states=6, num_actions=3, branching=2, p_end=0.3, seed=1)


def _samples(mdp, correction, cap=None, behaviour_std=0.3, n=200, loss=PLAIN, seed=0):
    cfg = GradientConfig(behaviour_std=behaviour_std, init_std=1.0)
    theta, mu = gradient_point(mdp, cfg)
    return gradient_samples(
        mdp, theta, loss, num_groups=4, group_size=4, num_batches=n, seed=seed,
        behaviour_logits=mu, correction=correction, is_cap=cap, chunk=64,
    )  # fmt: skip


def test_on_policy_corrections_are_the_identity(garnet):
    # mu = pi_old: every weight is 1, and the ratio pi_theta / mu is the ordinary ratio
    base = _samples(garnet, "none", behaviour_std=0.0)
    for corr in ("token", "sequence", "ratio"):
        torch.testing.assert_close(_samples(garnet, corr, behaviour_std=0.0), base)


def test_the_unclipped_ratio_is_the_token_weight(garnet):
    # d/dtheta [ (pi_theta / mu) A ] = (pi_old / mu) A grad log pi at theta = theta_old
    wide = PLAIN.model_copy(update={"eps_low": 0.999, "eps_high": 1e9})
    torch.testing.assert_close(
        _samples(garnet, "ratio", loss=wide), _samples(garnet, "token", loss=wide)
    )
    # with a clip range the two differ: clipping zeroes some terms
    assert not torch.allclose(_samples(garnet, "ratio"), _samples(garnet, "token"))


def test_a_cap_above_every_weight_changes_nothing(garnet):
    torch.testing.assert_close(_samples(garnet, "sequence", cap=1e12), _samples(garnet, "sequence"))
    assert not torch.allclose(_samples(garnet, "sequence", cap=1.0), _samples(garnet, "sequence"))


def test_estimates_do_not_depend_on_the_chunking(garnet):
    cfg = GradientConfig(behaviour_std=0.3)
    theta, mu = gradient_point(garnet, cfg)
    kw = {"num_groups": 2, "group_size": 4, "num_batches": 10, "seed": 3, "behaviour_logits": mu}
    a = gradient_samples(garnet, theta, PLAIN, correction="token", chunk=3, **kw)
    b = gradient_samples(garnet, theta, PLAIN, correction="token", chunk=10, **kw)
    torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_only_the_untruncated_sequence_weight_is_unbiased_off_policy(garnet):
    """E_mu[W f(tau)] = E_pi[f(tau)] (design.md §3): the sequence-weighted estimator's mean is
    grad J; the token weight, truncation, the clipped ratio and no correction are biased. The
    same statistics at the same sample size tell the two apart (the test has power)."""
    cfg = GradientConfig(behaviour_std=0.3, init_std=1.0)
    theta, _ = gradient_point(garnet, cfg)
    true = exact_grad(garnet, theta)
    n = 6000
    seq = gradient_quality(_samples(garnet, "sequence", n=n), true)
    assert seq["p_bias"] > 1e-3, seq
    assert seq["rel_norm_error"] < 4 * seq["noise_rel"], seq
    for corr, cap in (("none", None), ("token", None), ("token", 1.2), ("sequence", 1.2),
                      ("ratio", None)):  # fmt: skip
        q = gradient_quality(_samples(garnet, corr, cap, n=n), true)
        assert q["p_bias"] < 1e-6, (corr, cap, q)
        assert q["rel_norm_error"] > 3 * q["noise_rel"], (corr, cap, q)


def test_config_rejects_a_cap_without_weights_and_unknown_corrections():
    with pytest.raises(ValidationError, match="is_cap truncates importance weights"):
        GradientConfig(correction="ratio", is_cap=2.0)
    with pytest.raises(ValidationError, match="correction"):
        GradientConfig(correction="tokens")
    with pytest.raises(ValidationError, match="num_batches"):
        GradientConfig(num_batches=1)
    with pytest.raises(ValueError, match="unknown correction 'x'"):
        gradient_samples(
            make_env("bandit", k=2), torch.zeros(2, 2), PLAIN, num_groups=1, group_size=2,
            num_batches=2, correction="x",
        )  # fmt: skip


def test_point_is_seeded_and_behaviour_is_a_perturbation(garnet):
    a = GradientConfig(point_seed=4, behaviour_std=0.5)
    t1, m1 = gradient_point(garnet, a)
    t2, m2 = gradient_point(garnet, a)
    assert torch.equal(t1, t2) and torch.equal(m1, m2)
    t0, m0 = gradient_point(garnet, a.model_copy(update={"behaviour_std": 0.0}))
    assert torch.equal(t0, t1) and torch.equal(m0, t0) and not torch.equal(m1, t1)
    t3, _ = gradient_point(garnet, a.model_copy(update={"point_seed": 5}))
    assert not torch.equal(t3, t1)


def test_train_gradient_record_reaches_the_summary(garnet, tmp_path):
    cfgs = [GradientConfig(loss=PLAIN, num_batches=40, num_groups=2, group_size=4, seed=s)
            for s in (0, 1)]  # fmt: skip
    rec = train_gradient(garnet, cfgs)
    assert rec.status == ["ok", "ok"] and rec.step == {} and rec.iter == {}
    assert set(rec.summary) >= {"p_bias", "p_direction", "dir_rel_error", "noise_rel", "cosine"}
    alone = measure_gradient(garnet, cfgs[1])
    assert float(rec.summary["cosine"][1]) == pytest.approx(alone["cosine"], abs=0, rel=0)
    store.write_run(tmp_path, "sw", "r1", cfgs[1].model_dump(mode="json"), rec, 1)
    summ = store.read_summary(tmp_path, "sw", "r1")
    assert summ["cosine"] == alone["cosine"] and summ["num_samples"] == 40
    assert ALGORITHMS.get("gradient").train is train_gradient


def test_non_finite_estimates_mark_the_run_diverged(garnet, monkeypatch):
    from grpo_lab.algorithms import gradient

    real = gradient.gradient_samples

    def overflowing(*args, **kwargs):
        x = real(*args, **kwargs)
        x[1] = float("inf")  # one estimate overflowed (e.g. a huge sequence weight)
        return x

    monkeypatch.setattr(gradient, "gradient_samples", overflowing)
    cfg = GradientConfig(loss=PLAIN, num_batches=20, num_groups=2, group_size=4)
    rec = train_gradient(garnet, [cfg, cfg.model_copy(update={"seed": 1})])
    assert rec.status == ["diverged", "diverged"] and rec.diverged_at == [0, 0]
    assert "1 non-finite estimates" in rec.error[0]
    # the statistics use the finite estimates only
    assert float(rec.summary["num_samples"][0]) == 19
    assert torch.isfinite(rec.summary["cosine"]).all()
