"""Tests of grpo_lab/losses.py: hand-worked values, autograd vs analytic gradients, finite
differences, statistical checks against exact KL, and property tests over shapes, dtypes, masks."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_lab.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    PRESETS,
    LossConfig,
    aggregate,
    aggregation_weights,
    clip_fractions,
    clipped_surrogate,
    entropy,
    importance_weights,
    kl_penalty,
    policy_loss,
    preset,
    ratio_metrics,
    token_entropy,
    total_loss,
    value_loss,
)

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]

# ----------------------------------------------------------------------------- hand-worked batch
# eps = 0.2 (clip range [0.8, 1.2]), dual clip c = 3.
# seq 0, A = +1:  r = 1.1 unclipped        l = -1.1
#                 r = 1.5 clipped high     l = -min(1.5, 1.2)          = -1.2   (gradient 0)
#                 r = 0.5 low, but A > 0   l = -min(0.5, 0.8)          = -0.5   (gradient flows)
# seq 1, A = -2:  r = 0.5 clipped low      l = -min(-1.0, -1.6)        =  1.6   (gradient 0)
#                 r = 4.0 dual-clipped     l = min(-min(-8, -2.4), 6)  =  6.0   (gradient 0)
#                                          (without dual clip: l = 8, gradient flows)
#                 masked (r = 10, ignored)
RATIOS = torch.tensor([[1.1, 1.5, 0.5], [0.5, 4.0, 10.0]], dtype=torch.float64)
ADV = torch.tensor([1.0, -2.0], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
OLD = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -1.7, -0.9]], dtype=torch.float64)
LOGP = OLD + RATIOS.log()
# per-token losses: seq 0 sums to -2.8 over 3 tokens; seq 1 to 7.6 (dual) or 9.6 over 2 tokens
HAND = {
    ("token-mean", 3.0): 4.8 / 5,
    ("seq-mean-token-mean", 3.0): (-2.8 / 3 + 7.6 / 2) / 2,
    ("seq-mean-token-sum", 3.0): (-2.8 + 7.6) / 2,
    ("seq-mean-token-sum-norm", 3.0): 4.8 / (2 * 3),
    ("token-mean", None): 6.8 / 5,
    ("seq-mean-token-mean", None): (-2.8 / 3 + 9.6 / 2) / 2,
    ("seq-mean-token-sum", None): (-2.8 + 9.6) / 2,
    ("seq-mean-token-sum-norm", None): 6.8 / (2 * 3),
}


@pytest.mark.parametrize("agg, dual", list(HAND))
def test_policy_loss_hand_worked_every_branch(agg, dual):
    loss, _ = policy_loss(LOGP, OLD, ADV, MASK, eps_low=0.2, dual_clip=dual, agg=agg)
    assert loss.item() == pytest.approx(HAND[(agg, dual)], abs=1e-12)


def test_policy_loss_hand_worked_max_len():
    loss, _ = policy_loss(
        LOGP, OLD, ADV, MASK, dual_clip=3.0, agg="seq-mean-token-sum-norm", max_len=4
    )
    assert loss.item() == pytest.approx(4.8 / (2 * 4), abs=1e-12)


def test_policy_loss_hand_worked_metrics():
    _, m = policy_loss(LOGP, OLD, ADV, MASK, eps_low=0.2, dual_clip=3.0)
    r = [1.1, 1.5, 0.5, 0.5, 4.0]  # unmasked ratios
    assert m["ratio_mean"] == pytest.approx(sum(r) / 5)
    assert m["ratio_max"] == pytest.approx(4.0)
    assert m["ratio_min"] == pytest.approx(0.5)
    assert m["clip_frac_low"] == pytest.approx(2 / 5)  # 0.5, 0.5
    assert m["clip_frac_high"] == pytest.approx(2 / 5)  # 1.5, 4.0
    assert m["clip_frac"] == pytest.approx(3 / 5)  # high with A>0, low with A<0, dual
    assert m["dual_clip_frac"] == pytest.approx(1 / 5)
    assert m["approx_kl"] == pytest.approx(sum(x - 1 - math.log(x) for x in r) / 5)
    _, m_nodual = policy_loss(LOGP, OLD, ADV, MASK, eps_low=0.2)
    assert m_nodual["clip_frac"] == pytest.approx(2 / 5)
    assert m_nodual["dual_clip_frac"] == 0.0


def test_clip_higher_moves_the_upper_bound_only():
    # eps_high = 0.6: r = 1.5 with A = +1 is no longer clipped: l = -1.5 instead of -1.2.
    loss, m = policy_loss(LOGP, OLD, ADV, MASK, eps_low=0.2, eps_high=0.6, dual_clip=3.0)
    assert loss.item() == pytest.approx((4.8 - 0.3) / 5, abs=1e-12)
    assert m["clip_frac_high"] == pytest.approx(1 / 5)  # only 4.0 > 1.6


# ----------------------------------------------------------------------------- gradients


def _agg_weights(mask: torch.Tensor, mode: str, max_len: int) -> torch.Tensor:
    """Per-token weight w with agg(l) = sum w * l, written out independently of losses.py."""
    m = mask.double()
    b = m.shape[0]
    lengths = m.sum(-1, keepdim=True)
    n_seq = (lengths > 0).sum()
    if mode == "token-mean":
        return m / m.sum()
    if mode == "seq-mean-token-mean":
        return m / (n_seq * lengths.clamp_min(1))
    if mode == "seq-mean-token-sum":
        return m / n_seq
    return m / (b * max_len)


def _random_batch(seed: int, b: int = 5, t: int = 7):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    # ratios spread over [0.3, 4] but kept away from the kinks 0.8, 1.2 and 3 by >= 0.02
    r = 0.3 + 3.7 * torch.rand(b, t, generator=g, dtype=torch.float64)
    for kink in (0.8, 1.2, 3.0):
        near = (r - kink).abs() < 0.02
        r = torch.where(near, r + 0.05, r)
    logp = old + r.log()
    adv = torch.randn(b, t, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return logp, old, adv, mask, r


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dual", [None, 3.0])
@pytest.mark.parametrize("adv_shape", ["B", "BT"])
def test_policy_loss_gradient_matches_analytic_formula(mode, dual, adv_shape):
    # Analytic: d loss / d logp_{i,t} = -w_{i,t} r A where the unclipped branch is active, else 0.
    # (d r / d logp = r.) Active: not (A > 0 and r > 1+eps), not (A < 0 and r < 1-eps),
    # and with dual clip not (A < 0 and r > c).
    logp, old, adv, mask, r = _random_batch(seed=7)
    if adv_shape == "B":
        adv = adv[:, 0]
    a = adv if adv.dim() == 2 else adv[:, None].expand_as(logp)
    eps = 0.2
    logp = logp.clone().requires_grad_(True)
    loss, _ = policy_loss(logp, old, adv, mask, eps_low=eps, dual_clip=dual, agg=mode)
    (grad,) = torch.autograd.grad(loss, logp)
    active = ~(((a > 0) & (r > 1 + eps)) | ((a < 0) & (r < 1 - eps)))
    if dual is not None:
        active &= ~((a < 0) & (r > dual))
    w = _agg_weights(mask, mode, max_len=logp.shape[1])
    expected = torch.where(active & mask, -w * r * a, torch.zeros_like(r))
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)
    assert (grad[~mask] == 0).all()


def test_sequence_ratio_gradient_matches_analytic_formula():
    # GSPO: s_i = exp(mean_t log r_{i,t}); d s_i / d logp_{i,k} = s_i / L_i for every k of seq i.
    # With A of shape (B,) and seq-mean-token-mean, loss = mean_i -min(s_i A_i, clip(s_i) A_i), so
    # d loss / d logp_{i,k} = -A_i s_i / (n L_i) where s_i is unclipped, else 0.
    g = torch.Generator().manual_seed(3)
    b, t = 6, 5
    old = -torch.rand(b, t, generator=g, dtype=torch.float64)
    logp = (old + 0.2 * torch.randn(b, t, generator=g, dtype=torch.float64)).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0], dtype=torch.float64)
    lengths = torch.tensor([5, 1, 3, 4, 2, 5])
    mask = torch.arange(t)[None, :] < lengths[:, None]
    eps = 0.05
    loss, m = policy_loss(
        logp, old, adv, mask, eps_low=eps, ratio_level="sequence", agg="seq-mean-token-mean"
    )
    (grad,) = torch.autograd.grad(loss, logp)
    with torch.no_grad():
        lr = torch.where(mask, logp - old, torch.zeros(()))
        s = (lr.sum(-1) / lengths).exp()  # (B,)
        clipped = ((adv > 0) & (s > 1 + eps)) | ((adv < 0) & (s < 1 - eps))
        per_seq = torch.where(clipped, torch.zeros(()), -adv * s / (b * lengths))
        expected = torch.where(mask, per_seq[:, None].expand(b, t), torch.zeros(()))
        expected_loss = torch.where(clipped, -s.clamp(1 - eps, 1 + eps) * adv, -s * adv).mean()
    torch.testing.assert_close(grad, expected)
    assert loss.item() == pytest.approx(expected_loss.item(), abs=1e-12)
    assert m["ratio_max"] == pytest.approx(s.max().item())
    assert 0 < clipped.sum() < b  # the batch exercises both branches


def test_seed_gradient_formula_is_wrong():
    # The seed writes grad = E[grad log pi * min(w A, clip(w) A)]. At a token with A > 0 and
    # r = 1.5 > 1 + eps, that formula gives 1.2 * A * grad log pi, but the true gradient of the
    # clipped objective there is 0; inside the range it is r A (not min(...) by accident equal).
    logp, old, adv, mask = LOGP.clone().requires_grad_(True), OLD, ADV, MASK
    loss, _ = policy_loss(logp, old, adv, mask, agg="token-mean")
    (grad,) = torch.autograd.grad(-loss * 5, logp)  # gradient of the objective sum
    assert grad[0, 1].item() == 0.0  # clipped-high token: zero, not 1.2
    assert grad[0, 0].item() == pytest.approx(1.1)  # unclipped: r A = 1.1


def test_kl_penalty_finite_differences():
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    ref = (-torch.rand(3, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    for kind in KL_ESTIMATORS:
        assert torch.autograd.gradcheck(lambda a, b, k=kind: kl_penalty(a, b, k), (logp, ref))


def test_value_loss_finite_differences_and_closed_form():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 4, generator=g, dtype=torch.float64)
    old = v + 0.5 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    ret = torch.randn(3, 4, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2, 2:] = False
    vv = v.clone().requires_grad_(True)
    for clip in (None, 0.3):
        assert torch.autograd.gradcheck(
            lambda x, c=clip: value_loss(x, old, ret, mask, clip=c)[0], (vv,)
        )
    loss, m = value_loss(v, old, ret, mask)
    assert loss.item() == pytest.approx((0.5 * (v - ret) ** 2)[mask].mean().item())
    assert m["vf_clip_frac"] == 0.0
    # clip: V_clip = old + clip(V - old, -c, c); l = max((V-R)^2, (V_clip-R)^2)/2
    c = 0.3
    v_clip = old + (v - old).clamp(-c, c)
    hand = 0.5 * torch.maximum((v - ret) ** 2, (v_clip - ret) ** 2)
    loss_c, m_c = value_loss(v, old, ret, mask, clip=c)
    assert loss_c.item() == pytest.approx(hand[mask].mean().item())
    assert 0 < m_c["vf_clip_frac"] < 1


def test_entropy_closed_form_and_sign_in_total_loss():
    # Uniform over V = 4 has entropy log 4; a one-hot-like distribution has entropy ~0.
    logits = torch.zeros(2, 3, 4)
    logits[1] = torch.tensor([50.0, 0.0, 0.0, 0.0])
    mask = torch.ones(2, 3, dtype=torch.bool)
    h_tok = token_entropy(logits)
    torch.testing.assert_close(h_tok[0], torch.full((3,), math.log(4)))
    assert h_tok[1].max() < 1e-12
    assert entropy(logits, mask).item() == pytest.approx(math.log(4) / 2, rel=1e-6)
    # total_loss subtracts c2 * H: raising the entropy lowers the loss (the seed adds it).
    cfg = LossConfig(ent_coef=0.1)
    lp = torch.zeros(2, 3)
    base, _ = total_loss(cfg, lp, lp, torch.zeros(2), mask, logits=torch.full((2, 3, 4), 0.0))
    peaked, _ = total_loss(cfg, lp, lp, torch.zeros(2), mask, logits=logits)
    assert base.item() == pytest.approx(-0.1 * math.log(4), rel=1e-6)
    assert base < peaked


def test_total_loss_composes_terms():
    logp, old, adv, mask, _ = _random_batch(seed=11, b=4, t=5)
    ref = old + 0.1
    values = torch.randn(4, 5, dtype=torch.float64)
    returns = values + 1.0
    logits = torch.randn(4, 5, 3, dtype=torch.float64)
    cfg = LossConfig(beta=0.04, ent_coef=0.01, vf_coef=0.5, agg="seq-mean-token-mean")
    loss, m = total_loss(
        cfg, logp, old, adv, mask, ref_logp=ref, logits=logits, values=values, returns=returns
    )
    pg, _ = policy_loss(logp, old, adv, mask, agg=cfg.agg)
    kl = aggregate(kl_penalty(logp, ref, "k3"), mask, cfg.agg)
    h = entropy(logits, mask, cfg.agg)
    vl, _ = value_loss(values, values, returns, mask, agg=cfg.agg)
    assert loss.item() == pytest.approx((pg + 0.04 * kl - 0.01 * h + 0.5 * vl).item())
    assert m["loss"] == pytest.approx(loss.item())
    assert {"kl_ref", "entropy", "value_loss", "pg_loss"} <= set(m)


@pytest.mark.parametrize(
    "cfg, kwargs, match",
    [
        (LossConfig(beta=0.1), {}, "ref_logp is required"),
        (LossConfig(ent_coef=0.1), {}, "logits are required"),
        (LossConfig(vf_coef=0.5), {}, "values and returns are required"),
        (
            LossConfig(vf_coef=0.5, vf_clip=0.2),
            {"values": 1, "returns": 1},
            "old_values is required",
        ),
    ],
)
def test_total_loss_missing_inputs(cfg, kwargs, match):
    z = torch.zeros(2, 3)
    kwargs = {k: torch.zeros(2, 3) for k in kwargs}
    with pytest.raises(ValueError, match=match):
        total_loss(cfg, z, z, torch.zeros(2), torch.ones(2, 3), **kwargs)


# ----------------------------------------------------------------------------- statistics


P = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04], dtype=torch.float64)  # pi_theta
Q = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.1, 0.1], dtype=torch.float64)  # pi_ref


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_unbiased_kl_estimators_match_exact_kl(kind):
    # x ~ P; the mean of n i.i.d. estimates has std sigma / sqrt(n), sigma computed exactly by
    # enumerating the 6 outcomes. 5 sigma: a false failure has probability < 1e-6, and the
    # seed is fixed, so the test is deterministic.
    exact = (P * (P / Q).log()).sum().item()
    per_value = kl_penalty(P.log(), Q.log(), kind)  # the estimate for each outcome
    assert (P * per_value).sum().item() == pytest.approx(exact, abs=1e-12)  # exact expectation
    sigma = ((P * (per_value - exact) ** 2).sum()).sqrt().item()
    n = 200_000
    g = torch.Generator().manual_seed(123)
    x = torch.multinomial(P, n, replacement=True, generator=g)
    est = kl_penalty(P.log()[x], Q.log()[x], kind).mean().item()
    assert abs(est - exact) < 5 * sigma / math.sqrt(n)


def test_k2_is_biased_on_this_pair():
    # E[k2] = sum_x P (log Q/P)^2 / 2 differs from the KL here by far more than Monte Carlo error.
    exact = (P * (P / Q).log()).sum().item()
    e_k2 = (P * kl_penalty(P.log(), Q.log(), "k2")).sum().item()
    assert abs(e_k2 - exact) > 0.05


@settings(max_examples=200, deadline=None)
@given(st.floats(-30, 30), st.floats(-30, 30))
def test_k3_and_k2_nonnegative(a, b):
    lp, rl = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    assert kl_penalty(lp, rl, "k3").item() >= 0
    assert kl_penalty(lp, rl, "k2").item() >= 0


def test_padding_with_masked_tokens_leaves_token_mean_unchanged():
    logp, old, adv, mask, _ = _random_batch(seed=5, b=3, t=4)
    base, base_m = policy_loss(logp, old, adv[:, 0], mask, agg="token-mean")
    pad = torch.full((3, 3), float("nan"), dtype=torch.float64)  # padding values never matter
    logp_p = torch.cat([logp, pad], dim=1)
    old_p = torch.cat([old, pad], dim=1)
    mask_p = torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], dim=1)
    # plus a fully masked extra sequence
    logp_p = torch.cat([logp_p, torch.zeros(1, 7, dtype=torch.float64)])
    old_p = torch.cat([old_p, torch.zeros(1, 7, dtype=torch.float64)])
    mask_p = torch.cat([mask_p, torch.zeros(1, 7, dtype=torch.bool)])
    adv_p = torch.cat([adv[:, 0], torch.tensor([5.0], dtype=torch.float64)])
    padded, padded_m = policy_loss(logp_p, old_p, adv_p, mask_p, agg="token-mean")
    assert padded.item() == pytest.approx(base.item(), abs=1e-14)
    assert padded_m == pytest.approx(base_m)


def test_seq_mean_token_mean_weights_sequences_equally():
    # Per-token values a = 1 on a 1-token sequence and b = 3 on a 4-token sequence:
    # seq-mean-token-mean = (1 + 3) / 2 = 2; token-mean = (1 + 4 * 3) / 5 = 2.6.
    v = torch.tensor([[1.0, 9.0, 9.0, 9.0], [3.0, 3.0, 3.0, 3.0]])
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]])
    assert aggregate(v, mask, "seq-mean-token-mean").item() == pytest.approx(2.0)
    assert aggregate(v, mask, "token-mean").item() == pytest.approx(2.6)
    assert aggregate(v, mask, "seq-mean-token-sum").item() == pytest.approx((1 + 12) / 2)
    assert aggregate(v, mask, "seq-mean-token-sum-norm", max_len=8).item() == pytest.approx(13 / 16)


# ----------------------------------------------------------------------------- properties


@st.composite
def batches(draw):
    b = draw(st.integers(1, 5))
    t = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float64]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    old = (-3 * torch.rand(b, t, generator=g)).to(dtype)
    logp = (old.float() + 0.5 * torch.randn(b, t, generator=g)).to(dtype)
    mask = torch.rand(b, t, generator=g) < 0.7
    mask[draw(st.integers(0, b - 1)), draw(st.integers(0, t - 1))] = True
    per_token = draw(st.booleans())
    adv = torch.randn((b, t) if per_token else (b,), generator=g)
    return logp, old, adv, mask


@settings(max_examples=60, deadline=None)
@given(batches(), st.sampled_from(MODES), st.sampled_from(["token", "sequence"]))
def test_policy_loss_properties(batch, mode, level):
    logp, old, adv, mask = batch
    logp = logp.clone().requires_grad_(True)
    loss, m = policy_loss(logp, old, adv, mask, agg=mode, ratio_level=level, dual_clip=3.0)
    wide = torch.float64 if logp.dtype == torch.float64 else torch.float32
    assert loss.shape == () and loss.dtype == wide and torch.isfinite(loss)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad.shape == logp.shape and grad.dtype == logp.dtype
    assert (grad[~mask] == 0).all()
    assert m["ratio_min"] <= m["ratio_mean"] * (1 + 1e-6) and m["ratio_mean"] <= m["ratio_max"] * (
        1 + 1e-6
    )
    for k in ("clip_frac_low", "clip_frac_high", "clip_frac", "dual_clip_frac"):
        assert 0.0 <= m[k] <= 1.0
    assert m["approx_kl"] >= 0.0
    assert all(isinstance(x, float) and math.isfinite(x) for x in m.values())


@settings(max_examples=30, deadline=None)
@given(batches())
def test_ratio_computed_in_float32_for_low_precision_inputs(batch):
    # The loss on bfloat16 inputs equals the float32 loss on the same (rounded) values exactly:
    # no arithmetic happens in bfloat16.
    logp, old, adv, mask = batch
    if logp.dtype != torch.bfloat16:
        return
    lo, _ = policy_loss(logp, old, adv, mask)
    hi, _ = policy_loss(logp.float(), old.float(), adv, mask)
    assert lo.dtype == torch.float32
    assert lo.item() == hi.item()


# ----------------------------------------------------------------------------- bad input

Z = torch.zeros(2, 3)
ONES = torch.ones(2, 3)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((Z, torch.zeros(2, 4), torch.zeros(2), ONES), {}, r"old_logp has shape \(2, 4\)"),
        ((Z, Z, torch.zeros(3), ONES), {}, r"advantages has shape \(3,\)"),
        ((Z, Z, torch.zeros(2), torch.ones(2, 2)), {}, r"mask has shape \(2, 2\)"),
        ((Z, Z, torch.zeros(2), torch.zeros(2, 3)), {}, "mask is all zero"),
        ((Z, Z, torch.zeros(2), torch.full((2, 3), 0.5)), {}, "mask must hold only 0 and 1"),
        (
            (torch.zeros(6), torch.zeros(6), torch.zeros(6), torch.ones(6)),
            {},
            r"logp must be \(B, T\)",
        ),
        ((torch.full((2, 3), float("nan")), Z, torch.zeros(2), ONES), {}, "logp holds 6 NaN/inf"),
        ((Z, Z, torch.tensor([0.0, float("inf")]), ONES), {}, "advantages holds 3 NaN/inf"),
        ((Z, Z, torch.zeros(2), ONES), {"eps_low": 0.0}, r"eps_low must lie in \(0, 1.0\)"),
        ((Z, Z, torch.zeros(2), ONES), {"eps_low": -0.1}, "eps_low must lie in"),
        ((Z, Z, torch.zeros(2), ONES), {"eps_low": 1.0}, "eps_low must lie in"),
        ((Z, Z, torch.zeros(2), ONES), {"eps_high": 0.0}, "eps_high must lie in"),
        ((Z, Z, torch.zeros(2), ONES), {"dual_clip": 1.0}, "dual_clip must be > 1"),
        ((Z, Z, torch.zeros(2), ONES), {"dual_clip": 0.5}, "dual_clip must be > 1"),
        ((Z, Z, torch.zeros(2), ONES), {"agg": "mean"}, r"unknown agg 'mean'; choose one of \["),
        ((Z, Z, torch.zeros(2), ONES), {"ratio_level": "seq"}, r"unknown ratio_level 'seq'"),
        ((Z, Z, torch.zeros(2), ONES), {"max_len": 2, "agg": "token-mean"}, "max_len=2 is shorter"),
        ((Z, Z, torch.zeros(2), ONES), {"max_len": 0}, "max_len must be a positive int"),
    ],
)
def test_policy_loss_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        policy_loss(*args, **kwargs)


def test_masked_nan_is_not_an_error_and_does_not_leak():
    logp = torch.tensor([[0.0, float("nan")]])
    loss, _ = policy_loss(logp, torch.zeros(1, 2), torch.ones(1), torch.tensor([[1, 0]]))
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "fn, match",
    [
        (
            lambda: kl_penalty(Z, Z, kind="k4"),
            r"unknown kind 'k4'; choose one of \['k1', 'k2', 'k3'\]",
        ),
        (lambda: kl_penalty(Z, torch.zeros(3, 2)), "ref_logp has shape"),
        (lambda: kl_penalty(Z, torch.full((2, 3), float("inf"))), "ref_logp holds"),
        (lambda: aggregate(Z, ONES, "sum"), "unknown agg 'sum'"),
        (lambda: value_loss(Z, Z, torch.zeros(2, 2), ONES), "returns has shape"),
        (lambda: value_loss(Z, Z, Z, ONES, clip=-1.0), "clip must lie in"),
        (lambda: entropy(Z, ONES), r"logits must be \(B, T, V\)"),
        (lambda: preset("ppo2"), r"unknown preset 'ppo2'; choose one of \['dapo'"),
    ],
)
def test_other_bad_input(fn, match):
    with pytest.raises(ValueError, match=match):
        fn()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"agg": "mean"}, "agg"),
        ({"kl_kind": "k5"}, "kl_kind"),
        ({"eps_low": 0.0}, "eps_low"),
        ({"dual_clip": 1.0}, "dual_clip"),
        ({"adv_scale": "mad"}, "adv_scale"),
        ({"advantage": "vtrace"}, "advantage"),
        ({"beta": -1.0}, "beta"),
        ({"epsilon": 0.2}, "epsilon"),
    ],
)
def test_loss_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LossConfig(**kwargs)


def test_loss_config_lists_allowed_values():
    with pytest.raises(ValueError, match="seq-mean-token-sum-norm"):
        LossConfig(agg="mean")


# ----------------------------------------------------------------------------- presets


def test_presets_reproduce_published_recipes():
    assert PRESETS.names() == ["dapo", "dr_grpo", "grpo", "gspo", "ppo"]
    g = preset("grpo")
    assert (g.agg, g.adv_scale, g.kl_kind, g.beta, g.eps_low, g.eps_high) == (
        "seq-mean-token-mean",
        "std",
        "k3",
        0.04,
        0.2,
        0.2,
    )
    d = preset("dr_grpo")
    assert (d.agg, d.adv_scale, d.beta) == ("seq-mean-token-sum-norm", "none", 0.0)
    dapo = preset("dapo")
    assert (dapo.eps_low, dapo.eps_high, dapo.agg, dapo.beta) == (0.2, 0.28, "token-mean", 0.0)
    gs = preset("gspo")
    assert (gs.ratio_level, gs.eps_low, gs.eps_high) == ("sequence", 3e-4, 4e-4)
    p = preset("ppo")
    assert (p.advantage, p.vf_coef, p.ent_coef) == ("gae", 0.5, 0.01)


def test_registries_are_complete():
    assert AGGREGATIONS.names() == sorted(MODES)
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3"]


# ----------------------------------------------------------------------------- batched core


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_batched_core_equals_policy_loss_per_config(mode, level):
    # C configurations with their own eps as one (C, B, T) program == C separate policy_loss calls.
    c, b, t = 4, 5, 6
    g = torch.Generator().manual_seed(9)
    old = -torch.rand(c, b, t, generator=g, dtype=torch.float64)
    logp = old + 0.4 * torch.randn(c, b, t, generator=g, dtype=torch.float64)
    adv = torch.randn(c, b, generator=g, dtype=torch.float64)
    mask = torch.rand(c, b, t, generator=g) < 0.8
    mask[:, :, 0] = True
    eps_low = torch.tensor([0.1, 0.2, 0.3, 0.05], dtype=torch.float64)
    eps_high = eps_low + 0.08
    ev = lambda x: x[:, None, None]  # noqa: E731  (C,) -> (C, 1, 1)
    a = adv[:, :, None].expand(c, b, t)
    per_tok, ratio = clipped_surrogate(
        logp, old, a, mask, ev(eps_low), ev(eps_high), dual_clip=3.0, ratio_level=level
    )
    batched = aggregate(per_tok, mask, mode)  # (C,)
    stats = ratio_metrics(logp, old, ratio, a, mask, ev(eps_low), ev(eps_high), 3.0)
    for i in range(c):
        loss, m = policy_loss(
            logp[i], old[i], adv[i], mask[i], eps_low=eps_low[i].item(),
            eps_high=eps_high[i].item(), dual_clip=3.0, ratio_level=level, agg=mode,
        )  # fmt: skip
        assert batched[i].item() == pytest.approx(loss.item(), abs=1e-12)
        for k, v in stats.items():
            assert v[i].item() == pytest.approx(m[k], abs=1e-12), k


def test_batched_core_without_a_mask_equals_the_all_true_mask():
    # Dense samples (classic control): mask None gives the loss and ratio of an all-True mask.
    g = torch.Generator().manual_seed(3)
    old = -torch.rand(3, 7, 5, generator=g, dtype=torch.float64)
    logp = old + 0.5 * torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    a = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    eps = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)[:, None, None]
    full = torch.ones(3, 7, 5, dtype=torch.bool)
    for dual in (None, 3.0):
        expected = clipped_surrogate(logp, old, a, full, eps, eps + 0.1, dual)
        for mine, theirs in zip(
            clipped_surrogate(logp, old, a, None, eps, eps + 0.1, dual), expected, strict=True
        ):
            torch.testing.assert_close(mine, theirs, rtol=0.0, atol=0.0)
    with pytest.raises(ValueError, match="needs a mask"):
        clipped_surrogate(logp, old, a, None, eps, eps, ratio_level="sequence")


def test_aggregate_rejects_an_empty_config_slice():
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ValueError, match="mask is all zero"):
        aggregate(torch.zeros(2, 3, 4), mask)


@pytest.mark.parametrize("mode", MODES)
def test_aggregation_weights_equal_aggregate_on_the_padded_layout(mode):
    # The weights form sum_k w_k l_k, on the steps listed flat, against aggregate() on (C, B, T).
    c, b, t = 3, 4, 5
    g = torch.Generator().manual_seed(2)
    v = torch.randn(c, b, t, generator=g, dtype=torch.float64)
    lengths = torch.randint(0, t + 1, (c, b), generator=g)
    lengths[:, 0] = t  # each config has a non-empty sequence
    mask = torch.arange(t) < lengths.unsqueeze(-1)  # (C, B, T)
    expected = aggregate(v, mask, mode, max_len=7)  # (C,)
    flat_mask = mask.reshape(c, b * t)
    seq_len = lengths.unsqueeze(-1).expand(c, b, t).reshape(c, b * t)
    n_seq = (lengths > 0).sum(-1)
    w = aggregation_weights(mode, flat_mask, seq_len, n_seq, b, 7, dtype=torch.float64)
    torch.testing.assert_close((w * v.reshape(c, b * t)).sum(-1), expected)


@pytest.mark.parametrize("mode", MODES)
def test_aggregation_weights_of_a_split_batch_with_global_counts_sum_to_the_whole(mode):
    # A batch split in two parts (two processes): weights from the global token / sequence counts
    # and batch size, summed over the parts, equal the weights of the whole batch.
    g = torch.Generator().manual_seed(3)
    v = torch.randn(6, 5, generator=g, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 0, 4, 1, 3])
    mask = torch.arange(5) < lengths.unsqueeze(-1)  # (B, T)
    seq_len = lengths.unsqueeze(-1).expand(6, 5)

    def total(rows: slice, n_tok: torch.Tensor | None, n_seq: torch.Tensor, b: int) -> torch.Tensor:
        m, sl = mask[rows].reshape(1, -1), seq_len[rows].reshape(1, -1)
        w = aggregation_weights(mode, m, sl, n_seq, b, 7, dtype=torch.float64, num_tokens=n_tok)
        return (w * v[rows].reshape(1, -1)).sum()

    whole = total(slice(0, 6), None, torch.tensor([5]), 6)
    n_tok, n_seq = mask.sum().reshape(1), torch.tensor([5])
    parts = total(slice(0, 3), n_tok, n_seq, 6) + total(slice(3, 6), n_tok, n_seq, 6)
    torch.testing.assert_close(parts, whole)
    torch.testing.assert_close(whole, aggregate(v, mask, mode, max_len=7))


def test_clip_fractions_hand_worked():
    # The hand-worked batch: gradient zeroed at 3 of 5 tokens (clipped high with A > 0, clipped
    # low with A < 0, dual-clipped), 1 of them by the dual clip.
    ratio = torch.where(MASK.bool(), RATIOS, torch.zeros(()))
    a = ADV[:, None].expand_as(RATIOS)
    f = clip_fractions(ratio, a, MASK.bool(), 0.2, 0.2, dual_clip=3.0)
    assert f["grad_clip_frac"].item() == pytest.approx(3 / 5)
    assert f["grad_dual_clip_frac"].item() == pytest.approx(1 / 5)


# ----------------------------------------------------------------------------- importance weights


def test_importance_weights_hand_worked():
    # two sequences; log w per token; the second has a masked last token
    log_w = torch.tensor([[0.5, -0.2, 0.1], [1.0, 0.3, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    e = math.exp
    tok = importance_weights(log_w, mask, "token")
    torch.testing.assert_close(
        tok, torch.tensor([[e(0.5), e(-0.2), e(0.1)], [e(1.0), e(0.3), 0.0]], dtype=torch.float64)
    )
    seq = importance_weights(log_w, mask, "sequence")
    w0, w1 = e(0.5 - 0.2 + 0.1), e(1.0 + 0.3)  # the masked 9.0 does not count
    torch.testing.assert_close(
        seq, torch.tensor([[w0, w0, w0], [w1, w1, 0.0]], dtype=torch.float64)
    )
    capped = importance_weights(log_w, mask, "sequence", cap=2.0)
    torch.testing.assert_close(
        capped, torch.tensor([[w0, w0, w0], [2.0, 2.0, 0.0]], dtype=torch.float64)
    )
    assert w0 < 2.0 < w1
    torch.testing.assert_close(
        importance_weights(log_w, mask, "token", cap=1.2),
        torch.tensor([[1.2, e(-0.2), e(0.1)], [1.2, 1.2, 0.0]], dtype=torch.float64),
    )


def test_importance_weights_packed_equal_padded():
    # the same two sequences packed in one row: episode ids 0, 0, 0, 1, 1
    log_w = torch.tensor([[0.5, -0.2, 0.1, 1.0, 0.3]], dtype=torch.float64)
    mask = torch.ones(1, 5, dtype=torch.bool)
    episode = torch.tensor([[0, 0, 0, 1, 1]])
    packed = importance_weights(log_w, mask, "sequence", episode=episode)
    w0, w1 = math.exp(0.4), math.exp(1.3)
    torch.testing.assert_close(packed, torch.tensor([[w0, w0, w0, w1, w1]], dtype=torch.float64))


def test_importance_weights_are_constants_and_unbiased_in_expectation():
    # E_mu[W f] = E_pi[f] for a two-step sequence of independent actions, computed exactly
    pi = torch.tensor([0.7, 0.3], dtype=torch.float64)
    mu = torch.tensor([0.4, 0.6], dtype=torch.float64)
    f = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)  # f(a1, a2)
    a = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    log_w = (pi.log() - mu.log())[a]  # (4, 2)
    mask = torch.ones(4, 2, dtype=torch.bool)
    w = importance_weights(log_w.requires_grad_(True), mask, "sequence")[:, 0]
    assert not w.requires_grad  # weights do not carry gradient
    prob_mu = mu[a].prod(-1)
    prob_pi = pi[a].prod(-1)
    fa = f[a[:, 0], a[:, 1]]
    assert float((prob_mu * w * fa).sum()) == pytest.approx(float((prob_pi * fa).sum()), rel=1e-12)
    # the token weight of the second step alone is not the likelihood ratio of the pair
    w_tok = importance_weights(log_w.detach(), mask, "token")[:, 1]
    assert float((prob_mu * w_tok * fa).sum()) != pytest.approx(float((prob_pi * fa).sum()))


def test_importance_weights_bad_input():
    x, m = torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(
        ValueError, match=r"unknown level 'episode'; choose one of \['token', 'sequence'\]"
    ):
        importance_weights(x, m, "episode")
    with pytest.raises(ValueError, match="cap must be > 0"):
        importance_weights(x, m, "token", cap=0.0)
