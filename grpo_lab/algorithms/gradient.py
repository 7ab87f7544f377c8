"""Gradient estimators under test: the Monte Carlo mean of a GRPO-style gradient estimate against
the exact policy gradient of a tabular MDP (design.md §4: the importance-sampling and
gradient-bias protocols).

One experiment, read top to bottom:
  1. The point: softmax logits theta ~ N(0, init_std^2) (seeded by ``point_seed``); pi_old = pi_theta
     = softmax(theta); the truth g = grad_theta J(pi_theta) (``exact_grad``, autograd through the
     exact return).
  2. The behaviour policy mu that samples the data: pi_theta itself (``behaviour_std = 0``,
     on-policy) or softmax(theta + xi), xi ~ N(0, behaviour_std^2) per (s, a): a sampler that
     differs from the trainer (a stale or lower-precision copy).
  3. ``num_batches`` = N independent batches from mu (``num_groups`` start states x ``group_size``
     = G episodes each). On each, the estimate g_hat = -grad_theta loss, with the GRPO loss of
     ``loss`` (``grpo_lab.algorithms.grpo.grpo_loss``) and the off-policy ``correction``:
        none      ignore mu: old log-probs recomputed under pi_old, no weight
        token     each step's term x w_t = pi_old(a_t|s_t) / mu(a_t|s_t)
        sequence  each step's term x W_i = prod_t w_t of its episode
        ratio     old log-probs taken from mu: the ratio pi_theta / mu of the clipped surrogate
                  both corrects and clips (PPO without recomputing pi_old's log-probs)
     ``is_cap`` = c truncates the token or sequence weight at c (truncated IS).
  4. ``grpo_lab.instrument.gradient_quality`` compares mean(g_hat) with g: bias z-scores and
     p-values in scale and in direction (after the least-squares multiple of g), cosine, the
     relative errors and the estimator's variance: ``grad_var_rel`` = E||g_hat - E g_hat||^2 /
     ||g||^2, ``grad_mse_rel`` = E||g_hat - g||^2 / ||g||^2 and the scale-free
     ``grad_var_rel_dir`` = grad_var_rel / fit_scale^2, each with its standard error ``_se``
     (the advantage-variance protocol compares them across ``loss.adv_baseline`` /
     ``loss.adv_scale``).

What theory predicts (tests/test_gradient.py checks each): on-policy with no baseline
(REINFORCE, Williams 1992) or a leave-one-out baseline (Kool et al. 2019), no std scaling and
"seq-mean-token-sum", E[g_hat] = g, the baseline changing only the variance; the group-mean
baseline gives (G - 1)/G g (the sample's own reward is in its baseline); std scaling (GRPO, arXiv
2402.03300) re-weights start states and per-episode length normalisation re-weights episodes,
both biasing the direction. Off-policy, only the untruncated sequence weight is unbiased
(E_mu[W f(tau)] = E_pi[f(tau)]); token weights, truncation and clipping are not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from grpo_lab import seeding
from grpo_lab.advantages import group_advantages
from grpo_lab.algorithms.common import RunRecord, derive_seed, gather_logp
from grpo_lab.algorithms.grpo import grpo_loss
from grpo_lab.envs.tabular import TabularMDP, exact_grad, sample_groups
from grpo_lab.instrument import gradient_quality
from grpo_lab.losses import PRESETS, LossConfig, LossSpec, importance_weights

Tensor = torch.Tensor

Correction = Literal["none", "token", "sequence", "ratio"]
BATCHABLE: tuple[str, ...] = ()  # each configuration is its own batched program over N batches
_SAMPLE_STREAM, _POINT_STREAM = seeding.GRADIENT_SAMPLES, seeding.GRADIENT_POINT


class GradientConfig(BaseModel):
    """One gradient estimator at one point, measured over ``num_batches`` batches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    loss: LossSpec = Field(default_factory=lambda: PRESETS.get("grpo"))
    group_size: int = Field(8, ge=2)  # G episodes per start state
    num_groups: int = Field(8, ge=1)  # start states per batch
    num_batches: int = Field(1000, ge=2)  # N independent estimates
    chunk: int = Field(512, ge=1)  # estimates computed as one batched program
    init_std: float = Field(1.0, ge=0.0)  # theta ~ N(0, init_std^2)
    behaviour_std: float = Field(0.0, ge=0.0)  # mu = softmax(theta + N(0, behaviour_std^2))
    correction: Correction = "none"
    is_cap: float | None = Field(None, gt=0.0)  # truncate token / sequence weights at this
    max_steps: int = Field(1000, ge=1)
    point_seed: int = 0  # the point theta and the behaviour policy
    seed: int = 0  # the Monte Carlo batches

    @model_validator(mode="after")
    def _check(self) -> GradientConfig:
        if self.is_cap is not None and self.correction not in ("token", "sequence"):
            raise ValueError(
                f"is_cap truncates importance weights: it needs correction 'token' or "
                f"'sequence', got correction={self.correction!r}"
            )
        return self


def gradient_point(mdp: TabularMDP, cfg: GradientConfig) -> tuple[Tensor, Tensor]:
    """The logits theta (S, A) at which the gradient is measured and the behaviour logits (S, A)."""
    S, A = mdp.num_states, mdp.num_actions
    g = torch.Generator().manual_seed(derive_seed(cfg.point_seed, 0, _POINT_STREAM))
    theta = cfg.init_std * torch.randn(S, A, generator=g, dtype=torch.float64)
    xi = cfg.behaviour_std * torch.randn(S, A, generator=g, dtype=torch.float64)
    return theta.to(mdp.dtype), (theta + xi).to(mdp.dtype)


def gradient_samples(
    mdp: TabularMDP,
    logits: Tensor,
    loss_cfg: LossConfig | str,
    *,
    num_groups: int,
    group_size: int,
    num_batches: int,
    seed: int = 0,
    max_steps: int = 1000,
    behaviour_logits: Tensor | None = None,
    correction: Correction = "none",
    is_cap: float | None = None,
    chunk: int = 512,
) -> Tensor:
    """``num_batches`` independent estimates of the ascent direction -grad_theta loss at theta
    (module docstring, steps 2-3). Batch b draws from its own generator (seed derived from
    ``seed`` and b), so estimates do not depend on ``chunk``.

    Shapes: logits, behaviour_logits (S, A) -> (num_batches, S, A).
    """
    lc = PRESETS.get(loss_cfg) if isinstance(loss_cfg, str) else loss_cfg
    lc = lc.model_copy(update={"max_len": lc.max_len or mdp.horizon or max_steps})
    if correction not in ("none", "token", "sequence", "ratio"):
        raise ValueError(
            f"unknown correction {correction!r}; choose one of "
            "['none', 'ratio', 'sequence', 'token']"
        )
    S, A = mdp.num_states, mdp.num_actions
    theta0 = logits.detach().to(mdp.dtype)
    mu_table = torch.log_softmax((theta0 if behaviour_logits is None else behaviour_logits), -1)
    mu_table = mu_table.detach().to(mdp.dtype)  # (S, A) log mu
    out = []
    for lo in range(0, num_batches, chunk):
        C = min(chunk, num_batches - lo)
        theta = theta0.expand(C, S, A).clone().requires_grad_(True)
        table = torch.log_softmax(theta, dim=-1)  # (C, S, A) log pi_theta
        gens = [
            torch.Generator().manual_seed(derive_seed(seed, lo + b, _SAMPLE_STREAM))
            for b in range(C)
        ]
        mu = mu_table.expand(C, S, A)
        ep, _ = sample_groups(mdp, mu.exp(), num_groups, group_size, gens, max_steps, "packed")
        adv = group_advantages(
            ep.returns.reshape(-1), group_size, baseline=lc.adv_baseline, scale=lc.adv_scale
        ).reshape(C, -1)  # (C, N)
        logp_old = gather_logp(table.detach(), ep.states, ep.actions)  # (C, K) log pi_old
        logp_mu = gather_logp(mu, ep.states, ep.actions)  # (C, K) log mu
        weight = None
        if correction in ("token", "sequence"):
            weight = importance_weights(
                logp_old - logp_mu, ep.mask, correction, is_cap, episode=ep.episode
            )
        old = logp_mu if correction == "ratio" else logp_old
        eps_low = torch.full((C,), lc.eps_low, dtype=table.dtype)
        eps_high = torch.full((C,), lc.eps_high, dtype=table.dtype)
        n = num_groups * group_size
        loss, _ = grpo_loss(
            table, ep, ep.mask, old, adv, lc, eps_low, eps_high, n, table.detach(), weight
        )
        (grad,) = torch.autograd.grad(loss.sum(), theta)
        out.append(-grad)
    return torch.cat(out)  # (num_batches, S, A)


def measure_gradient(mdp: TabularMDP, cfg: GradientConfig) -> dict[str, float]:
    """Run one experiment (module docstring) and return ``gradient_quality``'s figures, plus
    ``behaviour_tv_max`` (max_s TV(pi(.|s), mu(.|s))) and ``nonfinite_samples`` (estimates that
    overflowed, left out of the statistics)."""
    theta, behaviour = gradient_point(mdp, cfg)
    samples = gradient_samples(
        mdp,
        theta,
        cfg.loss,
        num_groups=cfg.num_groups,
        group_size=cfg.group_size,
        num_batches=cfg.num_batches,
        seed=cfg.seed,
        max_steps=cfg.max_steps,
        behaviour_logits=behaviour,
        correction=cfg.correction,
        is_cap=cfg.is_cap,
        chunk=cfg.chunk,
    )
    pi, mu = torch.softmax(theta, -1), torch.softmax(behaviour, -1)
    finite = torch.isfinite(samples).reshape(samples.shape[0], -1).all(-1)  # (N,)
    q = gradient_quality(
        samples[finite] if bool(finite.sum() >= 2) else samples, exact_grad(mdp, theta)
    )
    q["nonfinite_samples"] = int((~finite).sum())
    q["behaviour_tv_max"] = float(0.5 * (pi - mu).abs().sum(-1).max())
    return q


def train_gradient(
    mdp: TabularMDP, configs: GradientConfig | Sequence[GradientConfig]
) -> RunRecord:
    """The sweep entry point (``ALGORITHMS["gradient"]``): one experiment per configuration, its
    figures in ``record.summary``; a non-finite estimate marks the configuration "diverged"."""
    configs = [configs] if isinstance(configs, GradientConfig) else list(configs)
    if not configs:
        raise ValueError("configs is empty")
    C = len(configs)
    rec = RunRecord(status=["ok"] * C, diverged_at=[None] * C, error=[None] * C)
    rows = [measure_gradient(mdp, cfg) for cfg in configs]
    for c, row in enumerate(rows):
        if row["nonfinite_samples"] > 0:
            rec.status[c], rec.diverged_at[c] = "diverged", 0
            rec.error[c] = f"{row['nonfinite_samples']} non-finite estimates (weights overflowed)"
    rec.summary = {
        k: torch.tensor([float(r[k]) for r in rows], dtype=torch.float64) for k in rows[0]
    }
    return rec
