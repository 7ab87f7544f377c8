"""Loss terms of GRPO, PPO and their variants: one function per equation (design.md §3).

Notation: per token, ratio r = pi_theta(a|s) / pi_old(a|s) = exp(logp - old_logp), computed in
float32 (float64 inputs stay float64) whatever the input dtype. Every loss here is to be
*minimised*. Shapes: B sequences, T tokens (time steps), V vocabulary (actions).

Per-token terms l_{i,t} are reduced to a scalar by one of four aggregation modes, shared by every
term (policy, KL, value, entropy), with mask m_{i,t} in {0, 1} and L_i = sum_t m_{i,t}:

    token-mean               sum_{i,t} m l / sum_{i,t} m              (DAPO, arXiv 2503.14476, J_DAPO)
    seq-mean-token-mean      mean_i [ sum_t m l / L_i ]               (GRPO, arXiv 2402.03300 eq. 3)
    seq-mean-token-sum       mean_i [ sum_t m l ]
    seq-mean-token-sum-norm  sum_{i,t} m l / (B * max_len)            (Dr. GRPO, arXiv 2503.20783)

The two seq-mean modes average over the sequences with at least one unmasked token.

Composition (PPO, arXiv 1707.06347 eq. 9, written as a loss to minimise):

    L_total = L_policy + beta * KL(pi_theta || pi_ref) - c2 * H[pi_theta] + c1 * L_value

The seed document writes ``L_policy + c1 L_value + c2 L_entropy`` with
L_entropy = -E[sum_a pi log pi] = +H: *adding* c2 * H to a minimised loss *lowers* the entropy,
the opposite of "encourages exploration". The correct sign is -c2 * H (PPO eq. 9 maximises +c2 H).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from grpo_lab._checks import (
    as_mask,
    as_tensor,
    check_finite,
    check_ndim,
    check_positive,
    check_same_shape,
    compute_dtype,
)
from grpo_lab.advantages import BaselineName, ScaleName
from grpo_lab.registry import Registry

Tensor = torch.Tensor
Metrics = dict[str, float]

# agg(values (B, T), mask (B, T) float, max_len) -> scalar
AGGREGATIONS: Registry[Callable[[Tensor, Tensor, int], Tensor]] = Registry("agg")
# kl(log_rho (..)) -> per-token estimate (..), log_rho = ref_logp - logp
KL_ESTIMATORS: Registry[Callable[[Tensor], Tensor]] = Registry("kind")
# level(log_ratio (B, T) zero where masked, mask (B, T) float) -> log ratio applied per token (B, T)
RATIO_LEVELS: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry("ratio_level")


# ----------------------------------------------------------------------------- aggregation


@AGGREGATIONS.register("token-mean")
def _token_mean(v: Tensor, m: Tensor, max_len: int) -> Tensor:
    return (v * m).sum(dim=(-2, -1)) / m.sum(dim=(-2, -1))


@AGGREGATIONS.register("seq-mean-token-mean")
def _seq_mean_token_mean(v: Tensor, m: Tensor, max_len: int) -> Tensor:
    lengths = m.sum(dim=-1)  # (..., B)
    per_seq = (v * m).sum(dim=-1) / lengths.clamp_min(1.0)  # (..., B), 0 for empty sequences
    return per_seq.sum(dim=-1) / (lengths > 0).sum(dim=-1)


@AGGREGATIONS.register("seq-mean-token-sum")
def _seq_mean_token_sum(v: Tensor, m: Tensor, max_len: int) -> Tensor:
    return (v * m).sum(dim=(-2, -1)) / (m.sum(dim=-1) > 0).sum(dim=-1)


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def _seq_mean_token_sum_norm(v: Tensor, m: Tensor, max_len: int) -> Tensor:
    return (v * m).sum(dim=(-2, -1)) / (v.shape[-2] * max_len)


def aggregate(
    values: Tensor,
    mask: Tensor,
    mode: str = "token-mean",
    max_len: int | None = None,
) -> Tensor:
    """Reduce per-token terms l_{i,t} to a scalar by aggregation ``mode`` (module docstring).

    Shapes: values (..., B, T), mask (..., B, T) of 0/1 or bool -> (...): leading axes (for
    example C configurations run as one batch) are kept, each slice aggregated on its own.
    Computed in float32 or wider. ``max_len`` is the constant of ``seq-mean-token-sum-norm``
    (Dr. GRPO, arXiv 2503.20783: the generation budget); it defaults to T and must be >= the
    longest unmasked length. Values at masked positions never reach the result (not even NaN).
    """
    v = as_tensor("values", values)
    if v.dim() < 2:
        raise ValueError(f"values must be (..., B, T), got shape {tuple(v.shape)}")
    valid = as_mask(mask, v.shape)
    fn = AGGREGATIONS.get(mode)
    t_len = v.shape[-1]
    if max_len is None:
        max_len = t_len
    elif isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    longest = int(valid.sum(dim=-1).max())
    if max_len < longest:
        raise ValueError(
            f"max_len={max_len} is shorter than the longest unmasked sequence ({longest} tokens)"
        )
    dt = compute_dtype(v)
    v = torch.where(valid, v.to(dt), torch.zeros((), dtype=dt, device=v.device))
    return fn(v, valid.to(dt), max_len)


def aggregation_weights(
    mode: str,
    mask: Tensor,
    seq_length: Tensor,
    num_seqs: Tensor,
    batch_size: int,
    max_len: int,
    dtype: torch.dtype = torch.float32,
    num_tokens: Tensor | None = None,
) -> Tensor:
    """Per-token weights w with agg(l) = sum_k w_k l_k: the aggregation modes in a form that needs
    no (B, T) grid, for steps packed in rows (``PackedEpisodes``).

        token-mean               w = m / sum m
        seq-mean-token-mean      w = m / (n_seq L_i)
        seq-mean-token-sum       w = m / n_seq
        seq-mean-token-sum-norm  w = m / (B max_len)

    Shapes: mask (..., K) bool; seq_length (..., K) the length L_i of each token's sequence;
    num_seqs (...,) n_seq, the sequences with at least one token; ``batch_size`` B -> (..., K).
    ``num_tokens`` (...,) replaces sum m in token-mean (a batch split over processes normalises by
    the global count; so do ``num_seqs`` and ``batch_size``). Equal to ``aggregate`` on the padded
    layout (tested).
    """
    AGGREGATIONS.get(mode)
    m = mask.to(dtype)
    n = num_seqs.to(m.dtype).unsqueeze(-1)
    if mode == "token-mean":
        total = m.sum(dim=-1, keepdim=True) if num_tokens is None else num_tokens.to(m.dtype)
        return m / total.reshape(*m.shape[:-1], 1)
    if mode == "seq-mean-token-mean":
        return m / (n * seq_length.to(m.dtype).clamp_min(1.0))
    if mode == "seq-mean-token-sum":
        return m / n
    return m / (batch_size * max_len)


# ----------------------------------------------------------------------------- KL estimators


@KL_ESTIMATORS.register("k1")
def _k1(log_rho: Tensor) -> Tensor:
    return -log_rho


@KL_ESTIMATORS.register("k2")
def _k2(log_rho: Tensor) -> Tensor:
    return 0.5 * log_rho**2


@KL_ESTIMATORS.register("k3")
def _k3(log_rho: Tensor) -> Tensor:
    return torch.expm1(log_rho) - log_rho


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from samples of pi_theta.

    With rho = pi_ref / pi_theta (Schulman 2020, "Approximating KL divergence"):
        k1 = -log rho            unbiased, high variance, can be negative
        k2 = (log rho)^2 / 2     biased, low variance, >= 0
        k3 = rho - 1 - log rho   unbiased, low variance, >= 0 (GRPO, arXiv 2402.03300 eq. 4)
    "Unbiased" is for the value of the KL; the gradient of k3 is not the gradient of the KL.

    Shapes: logp, ref_logp (B, T) (any equal shapes) -> same shape, float32 or wider.
    """
    logp = as_tensor("logp", logp)
    ref_logp = as_tensor("ref_logp", ref_logp)
    check_same_shape("ref_logp", ref_logp, "logp", logp)
    fn = KL_ESTIMATORS.get(kind)
    check_finite("logp", logp)
    check_finite("ref_logp", ref_logp)
    dt = torch.promote_types(compute_dtype(logp), compute_dtype(ref_logp))
    return fn(ref_logp.to(dt) - logp.to(dt))


# ----------------------------------------------------------------------------- importance weights

IS_LEVELS = ("token", "sequence")


def importance_weights(
    log_w: Tensor,
    mask: Tensor,
    level: str = "token",
    cap: float | None = None,
    episode: Tensor | None = None,
) -> Tensor:
    """Importance weights that correct data sampled from a behaviour policy mu towards pi
    (design.md §3, "Importance sampling"), with log_w = log pi(a_t|s_t) - log mu(a_t|s_t):

        token      w_{i,t} = pi(a_t|s_t) / mu(a_t|s_t)                  (per-token correction)
        sequence   W_i = prod_t w_{i,t} = exp(sum_t log_w_{i,t}), shared by every token of i
        cap = c    min(w, c): truncated IS (IMPALA's truncation, arXiv 1802.01561 eq. 1)

    E_mu[W_i f(tau_i)] = E_pi[f(tau)] for any f of the whole sequence: only the untruncated
    sequence weight is unbiased for a sequence-level estimator such as the policy gradient; the
    token weight corrects the action at t but not the distribution of the state it was taken in.
    Weights are constants for the gradient (``log_w`` is detached).

    Shapes: log_w, mask (..., T) with the last axis a sequence; or, with ``episode`` (..., K)
    long, packed rows where tokens with the same episode index form a sequence. Returns (..., T)
    (or (..., K)), 0 at masked positions.
    """
    if level not in IS_LEVELS:
        raise ValueError(f"unknown level {level!r}; choose one of {list(IS_LEVELS)}")
    if cap is not None and not cap > 0:
        raise ValueError(f"cap must be > 0 or None, got {cap!r}")
    log_w = log_w.detach()
    zero = torch.zeros((), dtype=log_w.dtype, device=log_w.device)
    lw = torch.where(mask, log_w, zero)  # (..., T)
    if level == "sequence":
        if episode is None:
            lw = lw.sum(-1, keepdim=True).expand_as(lw)
        else:  # packed: per-episode sums, read back at each token
            num = int(episode.max()) + 1 if episode.numel() else 0
            seq = torch.zeros(*lw.shape[:-1], num, dtype=lw.dtype, device=lw.device)
            lw = seq.scatter_add(-1, episode, lw).gather(-1, episode)
    w = torch.exp(lw)
    if cap is not None:
        w = w.clamp_max(cap)
    return torch.where(mask, w, zero)


# ----------------------------------------------------------------------------- policy loss


@RATIO_LEVELS.register("token")
def _token_log_ratio(log_ratio: Tensor, m: Tensor) -> Tensor:
    return log_ratio


@RATIO_LEVELS.register("sequence")
def _sequence_log_ratio(log_ratio: Tensor, m: Tensor) -> Tensor:
    # GSPO (arXiv 2507.18071, s_i of eq. 5): log s_i = (1/L_i) sum_t log r_{i,t}, shared by every token of i.
    lengths = m.sum(dim=-1, keepdim=True).clamp_min(1.0)  # (B, 1)
    return ((log_ratio * m).sum(dim=-1, keepdim=True) / lengths).expand_as(log_ratio)


def _broadcast_advantages(advantages: Tensor, shape: torch.Size) -> Tensor:
    a = as_tensor("advantages", advantages)
    if a.shape == shape[:1]:
        return a.unsqueeze(-1).expand(shape)
    if a.shape == shape:
        return a
    raise ValueError(
        f"advantages has shape {tuple(a.shape)}; expected (B,) = {tuple(shape[:1])} "
        f"or (B, T) = {tuple(shape)}"
    )


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    dual_clip: float | None = None,
    ratio_level: str = "token",
    agg: str = "token-mean",
    max_len: int | None = None,
) -> tuple[Tensor, Metrics]:
    """Clipped surrogate policy loss (PPO arXiv 1707.06347 eq. 7; GRPO arXiv 2402.03300 eq. 3).

    Per token, with r = exp(logp - old_logp):
        l = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)
    eps_high = None means eps_low (symmetric); DAPO's clip-higher uses 0.2 / 0.28
    (arXiv 2503.14476 §3.1). With ``dual_clip = c > 1`` (Ye et al., arXiv 1912.09729, dual-clip PPO),
    for A < 0 only:  l = min(l, -c A), i.e. -max(min(r A, clip(r) A), c A).
    With ``ratio_level="sequence"`` (GSPO, arXiv 2507.18071 eq. 5) every token of sequence i
    uses s_i = exp(mean_t(logp - old_logp)) in place of r. The per-token l is reduced by ``agg``.

    Gradient w.r.t. logp_{i,t} (tested against autograd): -w_{i,t} r A where the unclipped branch is
    active, 0 where clipping (either side, or the dual clip) binds; w_{i,t} is the aggregation
    weight (1/sum m, 1/(n_seq L_i), 1/n_seq or 1/(B max_len)).

    Shapes: logp, old_logp, mask (B, T); advantages (B,) (broadcast over tokens) or (B, T).
    Returns (loss: scalar, metrics) with metrics over unmasked tokens:
        ratio_mean, ratio_max, ratio_min   of the ratio the loss uses (s_i for "sequence")
        clip_frac_low, clip_frac_high      fraction with r < 1 - eps_low, r > 1 + eps_high
        clip_frac                          fraction whose gradient clipping sets to zero
                                           (A > 0, r > 1+eps_high; A < 0, r < 1-eps_low; dual clip)
        dual_clip_frac                     fraction with A < 0 and r > c (0 without dual clip)
        approx_kl                          mean k3 estimate of KL(pi_old || pi_theta) per token
        pg_loss                            the loss value
    """
    logp = as_tensor("logp", logp)
    old_logp = as_tensor("old_logp", old_logp)
    check_ndim("logp", logp, 2, "(B, T)")
    check_same_shape("old_logp", old_logp, "logp", logp)
    valid = as_mask(mask, logp.shape)
    adv = _broadcast_advantages(advantages, logp.shape)
    check_positive("eps_low", eps_low, upper=1.0)
    eps_high = eps_low if eps_high is None else eps_high
    check_positive("eps_high", eps_high)
    if dual_clip is not None:
        check_positive("dual_clip", dual_clip)
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1 (Ye et al. use c = 3), got {dual_clip!r}")
    RATIO_LEVELS.get(ratio_level)
    AGGREGATIONS.get(agg)
    check_finite("logp", logp, valid)
    check_finite("old_logp", old_logp, valid)
    check_finite("advantages", adv, valid)

    loss_per_token, ratio = clipped_surrogate(
        logp, old_logp, adv, valid, eps_low, eps_high, dual_clip, ratio_level
    )
    loss = aggregate(loss_per_token, valid, agg, max_len)
    metrics = {
        k: float(v)
        for k, v in ratio_metrics(
            logp, old_logp, ratio, adv, valid, eps_low, eps_high, dual_clip
        ).items()
    }
    metrics["pg_loss"] = float(loss.detach())
    return loss, metrics


Scalar = float | Tensor  # a number, or a tensor broadcastable to (..., B, T): one per config


def clipped_surrogate(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor | None,
    eps_low: Scalar,
    eps_high: Scalar,
    dual_clip: Scalar | None = None,
    ratio_level: str = "token",
) -> tuple[Tensor, Tensor]:
    """Per-token clipped surrogate loss l and the ratio it used (the equation of ``policy_loss``).

    The unchecked core of ``policy_loss`` for batched runs: leading axes are allowed and the clip
    parameters may be tensors, so C configurations with their own eps advance as one program.
    Shapes: logp, old_logp, advantages, mask (..., B, T) (mask bool); eps_low, eps_high, dual_clip
    floats or tensors broadcastable to (..., B, T), e.g. (C, 1, 1). Returns (l, r), both (..., B, T),
    zero loss at masked positions; the ratio is computed in float32 or wider. ``mask`` None: every
    position is valid (dense samples, e.g. classic control), any shape, token-level ratios only.
    """
    dt = torch.promote_types(compute_dtype(logp), compute_dtype(old_logp))
    if mask is None:
        if ratio_level != "token":
            raise ValueError(f"ratio_level {ratio_level!r} needs a mask (sequence lengths)")
        ratio = torch.exp(logp.to(dt) - old_logp.to(dt))
        a = advantages.to(dt)
    else:
        zero = torch.zeros((), dtype=dt, device=logp.device)
        token_log_ratio = torch.where(mask, logp.to(dt) - old_logp.to(dt), zero)  # (..., B, T)
        ratio = torch.exp(RATIO_LEVELS.get(ratio_level)(token_log_ratio, mask.to(dt)))
        a = torch.where(mask, advantages.to(dt), zero)  # (..., B, T)
    surr = ratio * a
    surr_clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * a
    loss = -torch.minimum(surr, surr_clipped)  # (..., B, T)
    if dual_clip is not None:
        loss = torch.where(a < 0, torch.minimum(loss, -dual_clip * a), loss)
    return loss, ratio


def ratio_metrics(
    logp: Tensor,
    old_logp: Tensor,
    ratio: Tensor,
    advantages: Tensor,
    mask: Tensor,
    eps_low: Scalar,
    eps_high: Scalar,
    dual_clip: Scalar | None = None,
) -> dict[str, Tensor]:
    """The ratio audit of one batch (design.md §5), reduced over the unmasked (B, T) tokens.

    Shapes: all inputs (..., B, T) (mask bool; eps as in ``clipped_surrogate``) -> each metric
    (...): ratio_mean / max / min, clip_frac_low (r < 1 - eps_low), clip_frac_high
    (r > 1 + eps_high), clip_frac (gradient zeroed by clipping), dual_clip_frac, approx_kl
    (k3 estimate of KL(pi_old || pi_theta) from the per-token log ratios).
    """
    with torch.no_grad():
        dt = ratio.dtype
        m = mask.to(dt)
        n = m.sum(dim=(-2, -1))
        low, high, zeroed, dual = _clip_masks(ratio, advantages, mask, eps_low, eps_high, dual_clip)
        log_r = torch.where(mask, logp.to(dt) - old_logp.to(dt), torch.zeros((), dtype=dt))
        inf = torch.tensor(float("inf"), dtype=dt, device=ratio.device)

        def frac(x: Tensor) -> Tensor:
            return x.to(dt).sum(dim=(-2, -1)) / n

        return {
            "ratio_mean": (ratio * m).sum(dim=(-2, -1)) / n,
            "ratio_max": torch.where(mask, ratio, -inf).amax(dim=(-2, -1)),
            "ratio_min": torch.where(mask, ratio, inf).amin(dim=(-2, -1)),
            "clip_frac_low": frac(low),
            "clip_frac_high": frac(high),
            "clip_frac": frac(zeroed),
            "dual_clip_frac": frac(dual),
            "approx_kl": ((torch.expm1(log_r) - log_r) * m).sum(dim=(-2, -1)) / n,
        }


def _clip_masks(
    ratio: Tensor,
    advantages: Tensor,
    mask: Tensor,
    eps_low: Scalar,
    eps_high: Scalar,
    dual_clip: Scalar | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Masks (..., B, T): r below / above the clip range, gradient zeroed by clipping, dual clip."""
    a = advantages.to(ratio.dtype)
    low = (ratio < 1.0 - eps_low) & mask
    high = (ratio > 1.0 + eps_high) & mask
    if dual_clip is not None:
        dual = (a < 0) & (ratio > dual_clip) & mask
    else:
        dual = torch.zeros_like(mask)
    zeroed = ((a > 0) & high) | ((a < 0) & low) | dual
    return low, high, zeroed, dual


def clip_fractions(
    ratio: Tensor,
    advantages: Tensor,
    mask: Tensor,
    eps_low: Scalar,
    eps_high: Scalar,
    dual_clip: Scalar | None = None,
) -> dict[str, Tensor]:
    """Of one optimiser step's gradient: the fraction of unmasked tokens whose gradient clipping
    zeroes (``grad_clip_frac``) and, of those, by the dual clip (``grad_dual_clip_frac``).
    Shapes: (..., B, T) -> (...) each; the cheap part of ``ratio_metrics``."""
    with torch.no_grad():
        _, _, zeroed, dual = _clip_masks(ratio, advantages, mask, eps_low, eps_high, dual_clip)
        n = mask.sum(dim=(-2, -1)).to(ratio.dtype)
        return {
            "grad_clip_frac": zeroed.sum(dim=(-2, -1)).to(ratio.dtype) / n,
            "grad_dual_clip_frac": dual.sum(dim=(-2, -1)).to(ratio.dtype) / n,
        }


# ----------------------------------------------------------------------------- value, entropy


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip: float | None = None,
    agg: str = "token-mean",
    max_len: int | None = None,
) -> tuple[Tensor, Metrics]:
    """PPO value loss (arXiv 1707.06347 eq. 9, L^VF), optionally clipped around the old values.

        l = (V - R)^2 / 2                                                  clip = None
        l = max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2) / 2     clip = c
    (the clipped form of OpenAI baselines' PPO2, used by CleanRL's ``clip_vloss``).

    Shapes: values, old_values, returns, mask (B, T) -> (loss: scalar, metrics) with
    ``value_loss`` and ``vf_clip_frac`` (fraction of tokens where the clipped term is the larger).
    """
    v = as_tensor("values", values)
    old = as_tensor("old_values", old_values)
    ret = as_tensor("returns", returns)
    check_ndim("values", v, 2, "(B, T)")
    check_same_shape("old_values", old, "values", v)
    check_same_shape("returns", ret, "values", v)
    valid = as_mask(mask, v.shape)
    if clip is not None:
        check_positive("clip", clip)
    for name, x in (("values", v), ("old_values", old), ("returns", ret)):
        check_finite(name, x, valid)

    dt = compute_dtype(v)
    zero = torch.zeros((), dtype=dt, device=v.device)
    v = torch.where(valid, v.to(dt), zero)
    ret = torch.where(valid, ret.to(dt), zero)
    err = (v - ret) ** 2
    clipped_frac = 0.0
    if clip is not None:
        old = torch.where(valid, old.to(dt), zero)
        v_clipped = old + (v - old).clamp(-clip, clip)
        err_clipped = (v_clipped - ret) ** 2
        with torch.no_grad():
            clipped_frac = float((err_clipped > err)[valid].to(dt).mean())
        err = torch.maximum(err, err_clipped)
    loss = aggregate(0.5 * err, valid, agg, max_len)
    return loss, {"value_loss": float(loss.detach()), "vf_clip_frac": clipped_frac}


def token_entropy(logits: Tensor) -> Tensor:
    """Per-token entropy H = -sum_v p_v log p_v of softmax(logits), in float32 or wider.

    Shapes: logits (B, T, V) -> (B, T).
    """
    z = as_tensor("logits", logits)
    if z.dim() < 1 or z.shape[-1] < 1:
        raise ValueError(f"logits must be (B, T, V) with V >= 1, got shape {tuple(z.shape)}")
    logp = torch.log_softmax(z.to(compute_dtype(z)), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def entropy(
    logits: Tensor,
    mask: Tensor,
    agg: str = "token-mean",
    max_len: int | None = None,
) -> Tensor:
    """Aggregated policy entropy H[pi_theta] (PPO arXiv 1707.06347 eq. 9, the S term).

    Shapes: logits (B, T, V), mask (B, T) -> scalar. Enter it with a minus sign in a minimised
    loss (``total_loss`` does): -c2 * H raises the entropy, the seed's +c2 * H lowers it.
    """
    z = as_tensor("logits", logits)
    check_ndim("logits", z, 3, "(B, T, V)")
    valid = as_mask(mask, z.shape[:2])
    check_finite("logits", z, valid.unsqueeze(-1).expand_as(z))
    return aggregate(token_entropy(z), valid, agg, max_len)


# ----------------------------------------------------------------------------- recipes


AggregationName = AGGREGATIONS.name_type()
KLName = KL_ESTIMATORS.name_type()
RatioLevelName = RATIO_LEVELS.name_type()


class LossConfig(BaseModel):
    """One loss recipe: every knob a protocol can sweep, validated on construction.

    A wrong value raises ``pydantic.ValidationError`` (a ``ValueError``) naming the field and,
    for registry-backed fields, every allowed value.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # policy term
    eps_low: float = Field(0.2, gt=0.0, lt=1.0)
    eps_high: float | None = Field(None, gt=0.0)
    dual_clip: float | None = Field(None, gt=1.0)
    ratio_level: RatioLevelName = "token"
    agg: AggregationName = "token-mean"
    max_len: int | None = Field(None, ge=1)
    # reference KL term: + beta * agg(kl_penalty(kind=kl_kind))
    beta: float = Field(0.0, ge=0.0)
    kl_kind: KLName = "k3"
    # entropy bonus (-ent_coef * H) and value term (+vf_coef * L_value)
    ent_coef: float = Field(0.0, ge=0.0)
    vf_coef: float = Field(0.0, ge=0.0)
    vf_clip: float | None = Field(None, gt=0.0)
    # advantages: "group" (group_advantages with adv_baseline / adv_scale) or "gae" (critic)
    advantage: str = "group"
    adv_baseline: BaselineName = "mean"
    adv_scale: ScaleName = "std"

    @field_validator("advantage")
    @classmethod
    def _advantage(cls, v: str) -> str:
        if v not in ("group", "gae"):
            raise ValueError(f"unknown advantage {v!r}; choose one of ['gae', 'group']")
        return v

    @model_validator(mode="after")
    def _eps_high(self) -> LossConfig:
        if self.eps_high is None:
            object.__setattr__(self, "eps_high", self.eps_low)
        return self


PRESETS: Registry[LossConfig] = Registry("preset")
PRESETS.add(
    "grpo",  # DeepSeekMath, arXiv 2402.03300 eq. 3-4: 1/|o_i| per sequence, std scale, k3, beta 0.04
    LossConfig(eps_low=0.2, agg="seq-mean-token-mean", beta=0.04, kl_kind="k3", adv_scale="std"),
)
PRESETS.add(
    "dr_grpo",  # arXiv 2503.20783: no std scale, constant normaliser B * max_len, no KL
    LossConfig(eps_low=0.2, agg="seq-mean-token-sum-norm", beta=0.0, adv_scale="none"),
)
PRESETS.add(
    "dapo",  # arXiv 2503.14476 (J_DAPO): clip-higher 0.2 / 0.28, token-mean, std scale, no KL
    LossConfig(eps_low=0.2, eps_high=0.28, agg="token-mean", beta=0.0, adv_scale="std"),
)
PRESETS.add(
    "gspo",  # arXiv 2507.18071 eq. 5: sequence ratio, clip 3e-4 / 4e-4, one term per sequence
    LossConfig(
        eps_low=3e-4,
        eps_high=4e-4,
        ratio_level="sequence",
        agg="seq-mean-token-mean",
        beta=0.0,
        adv_scale="std",
    ),
)
PRESETS.add(
    "ppo",  # arXiv 1707.06347 eq. 9 with CleanRL's defaults: clip 0.2, c1 0.5, c2 0.01, clipped V
    LossConfig(
        eps_low=0.2,
        agg="token-mean",
        ent_coef=0.01,
        vf_coef=0.5,
        vf_clip=0.2,
        advantage="gae",
    ),
)


# a LossConfig field that also accepts a preset name: loss = "dapo"
LossSpec = Annotated[
    LossConfig, BeforeValidator(lambda v: PRESETS.get(v) if isinstance(v, str) else v)
]


def preset(name: str) -> LossConfig:
    """The ``LossConfig`` of a published recipe: one of ``PRESETS.names()``."""
    return PRESETS.get(name)


def total_loss(
    config: LossConfig,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logp: Tensor | None = None,
    logits: Tensor | None = None,
    values: Tensor | None = None,
    old_values: Tensor | None = None,
    returns: Tensor | None = None,
) -> tuple[Tensor, Metrics]:
    """L_total = L_policy + beta * KL - c2 * H + c1 * L_value (PPO arXiv 1707.06347 eq. 9 as a
    loss to minimise; the KL term as in GRPO arXiv 2402.03300 eq. 3, aggregated like L_policy).

    Each optional input is required exactly when its coefficient is non-zero: ``ref_logp`` for
    beta > 0, ``logits`` (B, T, V) for ent_coef > 0, ``values`` and ``returns`` (B, T) for
    vf_coef > 0 (``old_values`` too when vf_clip is set). Returns (loss, metrics): the policy
    metrics plus ``kl_ref``, ``entropy``, ``value_loss``, ``vf_clip_frac`` and ``loss``.
    """
    if not isinstance(config, LossConfig):
        raise ValueError(f"config must be a LossConfig (see preset()), got {type(config).__name__}")
    c = config
    loss, metrics = policy_loss(
        logp,
        old_logp,
        advantages,
        mask,
        eps_low=c.eps_low,
        eps_high=c.eps_high,
        dual_clip=c.dual_clip,
        ratio_level=c.ratio_level,
        agg=c.agg,
        max_len=c.max_len,
    )
    if c.beta > 0:
        if ref_logp is None:
            raise ValueError(f"ref_logp is required when beta > 0 (beta={c.beta})")
        kl = aggregate(kl_penalty(logp, ref_logp, c.kl_kind), mask, c.agg, c.max_len)
        loss = loss + c.beta * kl
        metrics["kl_ref"] = float(kl.detach())
    if c.ent_coef > 0:
        if logits is None:
            raise ValueError(f"logits are required when ent_coef > 0 (ent_coef={c.ent_coef})")
        h = entropy(logits, mask, c.agg, c.max_len)
        loss = loss - c.ent_coef * h
        metrics["entropy"] = float(h.detach())
    if c.vf_coef > 0:
        if values is None or returns is None:
            raise ValueError(
                f"values and returns are required when vf_coef > 0 (vf_coef={c.vf_coef})"
            )
        if c.vf_clip is not None and old_values is None:
            raise ValueError(f"old_values is required when vf_clip is set (vf_clip={c.vf_clip})")
        old = old_values if old_values is not None else values.detach()
        vl, vm = value_loss(
            values, old, returns, mask, clip=c.vf_clip, agg=c.agg, max_len=c.max_len
        )
        loss = loss + c.vf_coef * vl
        metrics.update(vm)
    metrics["loss"] = float(loss.detach())
    return loss, metrics
