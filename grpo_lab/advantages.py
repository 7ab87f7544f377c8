"""Advantage estimators: group-relative (GRPO, RLOO, Dr. GRPO) and GAE (PPO).

Group-relative advantages (GRPO, arXiv 2402.03300 §4.1.2; design.md §3). For the G samples of one
prompt (or start state) with scalar rewards R_1..R_G:

    A_i = (R_i - b_i) / (sigma + eps)

    b_i   = mean_j R_j                       baseline "mean"           (GRPO)
          = (sum_j R_j - R_i) / (G - 1)      baseline "leave-one-out"  (RLOO, arXiv 2402.14740;
                                                                        Kool et al. 2019)
          = 0                                baseline "none"           (REINFORCE without a
                                                                        baseline, Williams 1992)
    sigma = std_j R_j (Bessel-corrected)     scale "std"               (GRPO, DAPO)
          = 1, eps = 0                       scale "none"              (Dr. GRPO, arXiv 2503.20783)

With a baseline, a group whose rewards are all equal carries no learning signal and gets A = 0
exactly, whatever the scale (no 0/0, no NaN). Baseline "none" keeps A_i = R_i in every group (the
plain REINFORCE estimator: an all-equal group still pushes up its sampled actions, the variance a
baseline removes) and takes scale "none" only (sigma = 0 in such a group would divide R_i by eps).

GAE (Schulman et al., arXiv 1506.02438 eq. 16):

    delta_t = r_t + gamma (1 - d_t) V_{t+1} - V_t
    A_t     = delta_t + gamma lam (1 - d_t) A_{t+1},     returns_t = A_t + V_t
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from grpo_lab._checks import as_tensor, check_finite, check_ndim, compute_dtype
from grpo_lab.registry import Registry

Tensor = torch.Tensor

# baseline(groups (N/G, G)) -> b (N/G, G)
BASELINES: Registry[Callable[[Tensor], Tensor]] = Registry("baseline")
# scale(groups (N/G, G)) -> sigma (N/G, 1); the eps is added by group_advantages
SCALES: Registry[Callable[[Tensor], Tensor] | None] = Registry("scale")


@BASELINES.register("mean")
def _mean_baseline(x: Tensor) -> Tensor:
    return x.mean(dim=-1, keepdim=True).expand_as(x)


@BASELINES.register("leave-one-out")
def _leave_one_out_baseline(x: Tensor) -> Tensor:
    g = x.shape[-1]
    return (x.sum(dim=-1, keepdim=True) - x) / (g - 1)


@BASELINES.register("none")
def _no_baseline(x: Tensor) -> Tensor:
    return torch.zeros_like(x)


@SCALES.register("std")
def _std_scale(x: Tensor) -> Tensor:
    return x.std(dim=-1, keepdim=True, correction=1)


SCALES.add("none", None)

BaselineName = BASELINES.name_type()
ScaleName = SCALES.name_type()


def group_advantages(
    rewards: Tensor,
    group_size: int,
    *,
    baseline: str = "mean",
    scale: str = "std",
    eps: float = 1e-6,
) -> Tensor:
    """Group-relative advantages A_i = (R_i - b_i) / (sigma + eps) (module docstring; GRPO eq. in
    arXiv 2402.03300 §4.1.2, RLOO arXiv 2402.14740, Dr. GRPO arXiv 2503.20783).

    Shapes: rewards (N,) holding N / G consecutive groups of G = group_size samples -> (N,).
    Computed in float32 (float64 inputs stay float64). Groups with all-equal rewards get 0, except
    under baseline "none" (A = R; it rejects scale "std").
    """
    r = as_tensor("rewards", rewards)
    check_ndim("rewards", r, 1, "1-D (N,) with consecutive groups of group_size")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(
            f"group_size must be an int >= 2 (a group of one sample has no relative advantage), "
            f"got {group_size!r}"
        )
    if r.numel() == 0 or r.numel() % group_size != 0:
        raise ValueError(
            f"group_size={group_size} does not divide the number of rewards N={r.numel()}"
        )
    baseline_fn = BASELINES.get(baseline)
    scale_fn = SCALES.get(scale)
    if baseline == "none" and scale_fn is not None:
        raise ValueError(
            f"baseline 'none' takes scale 'none' only, got scale={scale!r}: a group of equal "
            "rewards has sigma = 0 and uncentred advantages R_i / eps"
        )
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    check_finite("rewards", r)

    x = r.to(compute_dtype(r)).reshape(-1, group_size)  # (N/G, G)
    adv = x - baseline_fn(x)
    if scale_fn is not None:
        adv = adv / (scale_fn(x) + eps)
    if baseline != "none":  # centred advantages: exactly 0 in a group with zero variance
        flat = (x == x[:, :1]).all(dim=-1, keepdim=True)  # (N/G, 1)
        adv = torch.where(flat, torch.zeros_like(adv), adv)
    return adv.reshape(-1)


def gae(
    rewards: Tensor,
    values: Tensor,
    dones: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (arXiv 1506.02438 eq. 16) and the returns A + V.

    Time is the last axis. Shapes: rewards (..., T); values (..., T + 1), where values[..., T] is the
    bootstrap value of the state reached after the last step (0 if that state is terminal);
    dones (..., T), dones[..., t] = 1 when step t ended its episode (no bootstrap through it).
    Returns (advantages (..., T), returns (..., T)).
    Special cases (tested): lam = 0 gives the one-step TD error; lam = 1 gives the discounted
    Monte Carlo return minus V.
    """
    r = as_tensor("rewards", rewards)
    v = as_tensor("values", values)
    d = as_tensor("dones", dones)
    if r.dim() < 1:
        raise ValueError(f"rewards must have a time axis (..., T), got shape {tuple(r.shape)}")
    t_len = r.shape[-1]
    if v.shape != (*r.shape[:-1], t_len + 1):
        raise ValueError(
            f"values has shape {tuple(v.shape)}; expected {(*r.shape[:-1], t_len + 1)} "
            "(one value per step plus the bootstrap value after the last step)"
        )
    if d.shape != r.shape:
        raise ValueError(f"dones has shape {tuple(d.shape)}; expected {tuple(r.shape)}")
    for name, x in (("gamma", gamma), ("lam", lam)):
        if not (isinstance(x, (int, float)) and 0.0 <= x <= 1.0):
            raise ValueError(f"{name} must be a number in [0, 1], got {x!r}")
    check_finite("rewards", r)
    check_finite("values", v)

    dt = compute_dtype(r)
    r, v = r.to(dt), v.to(dt)
    not_done = 1.0 - d.to(dt)
    adv = torch.zeros_like(r)  # (..., T)
    next_adv = torch.zeros_like(r[..., 0])
    for t in reversed(range(t_len)):
        delta = r[..., t] + gamma * not_done[..., t] * v[..., t + 1] - v[..., t]
        next_adv = delta + gamma * lam * not_done[..., t] * next_adv
        adv[..., t] = next_adv
    return adv, adv + v[..., :t_len]


def masked_gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """``gae`` on padded episodes: (advantages, returns A + V), 0 on padded steps.

    Step t ends its episode when step t + 1 is padding (arrival at a terminal state, the horizon
    or a length cap), so d_t = 1 there and nothing is bootstrapped across an episode's end (the
    bootstrap value after the last step is 0: exact for terminal states and horizons, an
    approximation for episodes cut by a cap). Shapes: rewards, values, mask (..., T) -> (..., T).
    """
    m = as_tensor("mask", mask).bool()
    v = torch.where(m, values, torch.zeros((), dtype=values.dtype, device=values.device))
    v_ext = torch.cat([v, torch.zeros_like(v[..., :1])], dim=-1)  # (..., T + 1)
    nxt = torch.cat([m[..., 1:], torch.zeros_like(m[..., :1])], dim=-1)  # next step is real
    adv, ret = gae(rewards.to(v.dtype), v_ext, (~nxt).to(v.dtype), gamma, lam)
    zero = torch.zeros((), dtype=adv.dtype, device=adv.device)
    return torch.where(m, adv, zero), torch.where(m, ret, zero)
