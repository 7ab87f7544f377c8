"""Instrumentation: what an update did to the policy, measured exactly on a tabular MDP.

All functions take the policy before (``probs_old``, pi_old) and after (``probs_new``, pi_new) an
optimiser step as (S, A) or (C, S, A) tables and return a flat dict of tensors (shape () or (C,))
whose names are the ones the reports use (design.md §5). Notation: x(s) = sum_t gamma^t
Pr(s_t = s) under pi_old (``state_occupancy``), d = x / sum x (``state_visitation``),
A = A^{pi_old}, r(s, a) = pi_new(a|s) / pi_old(a|s).

Ratio audit over every (s, a), weighted by the state-action visitation d(s) pi_old(a|s):
    exact_ratio_max / min        max / min of r over (s, a) with d(s) pi_old(a|s) > 0
    exact_frac_low / high        sum_{s,a} d(s) pi_old(a|s) 1[r < 1 - eps_low]  (1[r > 1 + eps_high])
    exact_frac_outside           the two together: the visitation mass the seed's lemma excludes

Policy change:
    kl_mean = sum_s d(s) KL(pi_old(.|s) || pi_new(.|s)),  kl_max = max over non-terminal s,
    tv_max  = max_s (1/2) sum_a |pi_new(a|s) - pi_old(a|s)|

Improvement (stationary MDPs, horizon None; NaN otherwise):
    true_gain       J(pi_new) - J(pi_old)
    surrogate_gain  L_{pi_old}(pi_new) - J(pi_old) = sum_s x(s) sum_a pi_new(a|s) A(s, a)
                    (Kakade & Langford 2002; TRPO arXiv 1502.05477 eq. 3)
    clipped_gain    sum_s x(s) sum_a pi_old(a|s) min(r A, clip(r, 1-eps_low, 1+eps_high) A)
                    (the PPO clipped objective, arXiv 1707.06347 eq. 7, in exact expectation)
    trpo_bound      surrogate_gain - C kl_max,  C = 4 max_{s,a} |A(s,a)| gamma / (1 - gamma)^2
                    (TRPO arXiv 1502.05477 Theorem 1): true_gain >= trpo_bound must always hold
    bound_slack     true_gain - trpo_bound (>= 0 when the bound holds; its size is the slack)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpo_lab.envs.tabular import (
    TabularMDP,
    advantages,
    exact_return,
    kl_divergence,
    state_occupancy,
    state_visitation,
    total_variation,
)

Tensor = torch.Tensor
Scalar = float | Tensor  # a number, or one value per configuration (C,)


def _per_config(x: Scalar, like: Tensor) -> Tensor:
    """A number or (C,) tensor as (C, 1, 1) (or ()) to broadcast over (C, S, A)."""
    t = torch.as_tensor(x, dtype=like.dtype, device=like.device)
    return t.reshape(-1, 1, 1) if t.dim() == 1 else t


def _live(mdp: TabularMDP, like: Tensor) -> Tensor:
    live = ~mdp.terminal_mask  # (S,) | (C, S)
    return live.expand(like.shape[:-1]) if live.dim() < like.dim() - 1 else live


@dataclass(frozen=True)
class OldPolicy:
    """pi_old's exact quantities, computed once per batch and shared by the audits of every
    optimiser step against it (pi_old is fixed for K epochs x minibatches). Shapes as probs:
    probs (C, S, A), d and x (C, S), adv (C, S, A) (None with a horizon), j (C,)."""

    probs: Tensor
    d: Tensor
    x: Tensor | None
    adv: Tensor | None
    j: Tensor

    @classmethod
    def of(cls, mdp: TabularMDP, probs_old: Tensor) -> OldPolicy:
        with torch.no_grad():
            stationary = mdp.horizon is None
            return cls(
                probs=probs_old,
                d=state_visitation(mdp, probs_old),
                x=state_occupancy(mdp, probs_old) if stationary else None,
                adv=advantages(mdp, probs_old) if stationary else None,
                j=exact_return(mdp, probs_old),
            )


def _old(mdp: TabularMDP, probs_old: Tensor | OldPolicy) -> OldPolicy:
    return probs_old if isinstance(probs_old, OldPolicy) else OldPolicy.of(mdp, probs_old)


def exact_ratio_audit(
    mdp: TabularMDP,
    probs_old: Tensor | OldPolicy,
    probs_new: Tensor,
    eps_low: Scalar,
    eps_high: Scalar,
) -> dict[str, Tensor]:
    """The ratio audit over every (s, a), weighted by d^{pi_old}(s) pi_old(a|s) (module docstring).

    Shapes: probs (S, A) | (C, S, A); eps numbers or (C,) -> each entry () | (C,).
    """
    with torch.no_grad():
        old = _old(mdp, probs_old)
        w = old.d.unsqueeze(-1) * old.probs  # (C, S, A) state-action visitation
        r = probs_new / old.probs
        lo, hi = 1.0 - _per_config(eps_low, r), 1.0 + _per_config(eps_high, r)
        support = w > 0
        inf = torch.tensor(float("inf"), dtype=r.dtype, device=r.device)
        low = (w * (r < lo)).sum(dim=(-2, -1))
        high = (w * (r > hi)).sum(dim=(-2, -1))
        return {
            "exact_ratio_max": torch.where(support, r, -inf).amax(dim=(-2, -1)),
            "exact_ratio_min": torch.where(support, r, inf).amin(dim=(-2, -1)),
            "exact_frac_low": low,
            "exact_frac_high": high,
            "exact_frac_outside": low + high,
        }


def policy_change(
    mdp: TabularMDP, probs_old: Tensor | OldPolicy, probs_new: Tensor
) -> dict[str, Tensor]:
    """Exact KL(pi_old || pi_new) (mean under d^{pi_old}, max over non-terminal states) and the
    largest total variation distance (module docstring). Shapes: (S, A) | (C, S, A) -> () | (C,).
    """
    with torch.no_grad():
        old = _old(mdp, probs_old)
        d = old.d  # (C, S)
        kl = kl_divergence(old.probs, probs_new)  # (C, S)
        tv = total_variation(old.probs, probs_new)  # (C, S)
        live = _live(mdp, old.probs)
        zero = torch.zeros((), dtype=kl.dtype, device=kl.device)
        return {
            "kl_mean": (d * kl).sum(-1),
            "kl_max": torch.where(live, kl, zero).amax(-1),
            "tv_max": torch.where(live, tv, zero).amax(-1),
        }


def improvement(
    mdp: TabularMDP,
    probs_old: Tensor | OldPolicy,
    probs_new: Tensor,
    eps_low: Scalar = 0.2,
    eps_high: Scalar | None = None,
) -> dict[str, Tensor]:
    """True improvement beside the surrogate's prediction, the clipped objective and the TRPO
    Theorem 1 lower bound (module docstring). ``eps_high=None`` means ``eps_low``.
    Shapes: (S, A) | (C, S, A) -> () | (C,).
    """
    eps_high = eps_low if eps_high is None else eps_high
    with torch.no_grad():
        old = _old(mdp, probs_old)
        true_gain = exact_return(mdp, probs_new) - old.j
        out = {"true_gain": true_gain}
        if mdp.horizon is not None:  # the stationary identities below do not hold
            nan = torch.full_like(true_gain, float("nan"))
            for k in ("surrogate_gain", "clipped_gain", "trpo_bound", "bound_slack"):
                out[k] = nan
            return out
        x, adv = old.x, old.adv  # (C, S), (C, S, A)
        r = probs_new / old.probs
        lo, hi = 1.0 - _per_config(eps_low, r), 1.0 + _per_config(eps_high, r)
        surrogate = (x.unsqueeze(-1) * probs_new * adv).sum(dim=(-2, -1))
        clipped = torch.minimum(r * adv, torch.minimum(torch.maximum(r, lo), hi) * adv)
        clipped_gain = (x.unsqueeze(-1) * old.probs * clipped).sum(dim=(-2, -1))
        kl_max = policy_change(mdp, old, probs_new)["kl_max"]
        live = _live(mdp, old.probs).unsqueeze(-1)
        eps_a = torch.where(live, adv.abs(), torch.zeros_like(adv)).amax(dim=(-2, -1))
        c = 4.0 * eps_a * mdp.gamma / (1.0 - mdp.gamma) ** 2
        bound = surrogate - c * kl_max
        out.update(
            surrogate_gain=surrogate,
            clipped_gain=clipped_gain,
            trpo_bound=bound,
            bound_slack=true_gain - bound,
        )
        return out


def _bonferroni_p(z_max: float, num: int) -> float:
    """Two-sided p-value of the largest of ``num`` |z| scores under N(0, 1), Bonferroni-corrected:
    min(1, num * 2 (1 - Phi(z_max))). Valid (conservative) for correlated components."""
    from scipy.stats import norm

    if num == 0:
        return 1.0
    return float(min(1.0, num * 2.0 * norm.sf(z_max)))


def gradient_quality(samples: Tensor, true_grad: Tensor, scale: float = 1.0) -> dict[str, float]:
    """Compare N independent gradient estimates with the exact gradient times ``scale``.

    Shapes: samples (N, ...) , true_grad (...). With g_bar the sample mean, sd_k the per-component
    sample standard deviation, se_k = sd_k / sqrt(N) and g = scale * true_grad:
        bias_z_max   max_k |g_bar_k - g_k| / se_k   (over components with sd_k > 0)
        bias_chi2    sum_k ((g_bar_k - g_k) / se_k)^2 and its dof ``num_components``
        p_bias       Bonferroni p-value of bias_z_max: small means E[estimate] != g
        cosine       cos(g_bar, g);  rel_norm_error  ||g_bar - g|| / ||g||
        mean_norm, true_norm, trace_cov (sum of per-component variances of one estimate)
        noise_rel    ||se|| / ||g||: the Monte Carlo error of g_bar relative to the truth
    and "in direction", after the least-squares multiple alpha = <g_bar, g> / <g, g> (a constant
    factor only rescales the step size, a learning rate absorbs it):
        fit_scale    alpha;  dir_z_max, p_direction  as above for g_bar - alpha g
        dir_rel_error  ||g_bar - alpha g|| / ||alpha g||: the size of the bias in direction
    An unbiased estimator has each z ~ N(0, 1) for large N, so ``bias_z_max`` beyond ~5 means bias.
    A component with zero variance must match exactly (it adds +inf to the statistics if not).

    Variance of one estimate (the seed's "advantage estimation reduces variance": a baseline b
    leaves E[(R - b) grad log pi] unchanged and shrinks its variance, REINFORCE with baseline,
    Williams 1992; leave-one-out, Kool et al. 2019; GRPO's group baseline and std scaling, arXiv
    2402.03300 §4.1.2). With x_n the N estimates, y_n = x_n - g_bar, a_n = <x_n, g> / ||g||^2
    (so alpha = mean_n a_n), d_n = ||y_n||^2 and e_n = ||x_n - g||^2:
        grad_var_rel      tr Cov(x) / ||g||^2 = E||x - E x||^2 / ||g||^2, estimated with the
                          unbiased sample covariance: sum_n d_n / (N - 1) / ||g||^2
                          (= trace_cov / true_norm^2)
        grad_mse_rel      E||x - g||^2 / ||g||^2 (against the exact gradient: variance plus
                          squared bias), estimated by mean_n e_n / ||g||^2 (unbiased)
        grad_var_rel_dir  tr Cov(x) / ||alpha g||^2 = grad_var_rel / alpha^2: the variance of
                          x / alpha, the estimate rescaled so that its mean's component along g is
                          g itself. Scale-free (c x gives the same value for any c != 0): std
                          scaling and the (G - 1)/G of the mean baseline change the gradient's
                          scale, which a learning rate absorbs; at equal expected first-order
                          progress along g this is the noise each estimator brings.
    and their standard errors ``<name>_se`` by the delta method on i.i.d. estimates (the
    infinitesimal jackknife): se = sd_n(IF_n) / sqrt(N) with the influence values
        IF_n = d_n / ||g||^2                                   for grad_var_rel
             = e_n / ||g||^2                                   for grad_mse_rel (exact: a mean)
             = grad_var_rel_dir (d_n / V - 2 a_n / alpha)      for grad_var_rel_dir, V = tr Cov
    (first order in 1/sqrt(N)). se / value is the standard error of log(value), so two runs with
    independent estimates give log(v1 / v2) +- z sqrt((se1 / v1)^2 + (se2 / v2)^2); runs that
    share their samples (same ``seed``) are positively correlated and that interval is
    conservative. NaN where g = 0 (or alpha = 0 for the scale-free measure).
    """
    if samples.dim() < 1 or samples.shape[0] < 2 or samples.shape[1:] != true_grad.shape:
        raise ValueError(
            f"samples must be (N >= 2, ...) matching true_grad {tuple(true_grad.shape)}, "
            f"got {tuple(samples.shape)}"
        )
    x = samples.reshape(samples.shape[0], -1).double()  # (N, D)
    g = scale * true_grad.reshape(-1).double()  # (D,)
    n = x.shape[0]
    mean = x.mean(0)
    sd = x.std(0, correction=1)
    se = sd / n**0.5
    exact = se == 0

    def zs(diff: Tensor, ref: Tensor) -> Tensor:
        z = torch.where(exact, torch.zeros_like(diff), diff / torch.where(exact, 1.0, se))
        return torch.where(exact & (diff.abs() > 1e-12 * (1 + ref.abs())), float("inf"), z)

    diff = mean - g
    z = zs(diff, g)
    gn = g.norm()
    alpha = float(torch.dot(mean, g) / gn**2) if gn > 0 else float("nan")
    g_fit = alpha * g
    z_dir = zs(mean - g_fit, g_fit) if gn > 0 else torch.full_like(z, float("nan"))
    d = int((~exact).sum())
    z_max, z_dir_max = float(z.abs().max()), float(z_dir.abs().max())
    return {
        "bias_z_max": z_max,
        "bias_chi2": float((z**2).sum()),
        "num_components": d,
        "p_bias": _bonferroni_p(z_max, d),
        "cosine": float(torch.dot(mean, g) / (mean.norm() * gn)) if gn > 0 else float("nan"),
        "rel_norm_error": float(diff.norm() / gn) if gn > 0 else float("nan"),
        "mean_norm": float(mean.norm()),
        "true_norm": float(gn),
        "trace_cov": float((sd**2).sum()),
        "noise_rel": float(se.norm() / gn) if gn > 0 else float("nan"),
        "fit_scale": alpha,
        "dir_z_max": z_dir_max,
        "p_direction": _bonferroni_p(z_dir_max, d) if gn > 0 else float("nan"),
        "dir_rel_error": float((mean - g_fit).norm() / g_fit.norm())
        if gn > 0 and alpha != 0
        else float("nan"),
        "num_samples": n,
        **_variance_measures(x, mean, g, alpha),
    }


def _variance_measures(x: Tensor, mean: Tensor, g: Tensor, alpha: float) -> dict[str, float]:
    """``gradient_quality``'s grad_var_rel, grad_mse_rel, grad_var_rel_dir and their ``_se``
    (its docstring). Shapes: x (N, D), mean (D,), g (D,)."""
    n = x.shape[0]
    g2 = float(g.square().sum())
    nan = float("nan")
    if g2 == 0:
        names = ("grad_var_rel", "grad_mse_rel", "grad_var_rel_dir")
        return {k: nan for name in names for k in (name, f"{name}_se")}
    d = (x - mean).square().sum(-1)  # (N,) ||x_n - g_bar||^2
    e = (x - g).square().sum(-1)  # (N,) ||x_n - g||^2
    v = float(d.sum()) / (n - 1)  # tr of the unbiased sample covariance
    root_n = n**0.5
    out = {
        "grad_var_rel": v / g2,
        "grad_var_rel_se": float(d.std(correction=1)) / root_n / g2,
        "grad_mse_rel": float(e.mean()) / g2,
        "grad_mse_rel_se": float(e.std(correction=1)) / root_n / g2,
    }
    if alpha == 0 or v == 0:
        out["grad_var_rel_dir"] = v / g2 / alpha**2 if alpha != 0 else nan
        out["grad_var_rel_dir_se"] = 0.0 if alpha != 0 else nan
        return out
    vd = v / g2 / alpha**2
    a = (x @ g) / g2  # (N,) a_n = <x_n, g> / ||g||^2
    influence = vd * (d / v - 2.0 * a / alpha)
    out["grad_var_rel_dir"] = vd
    out["grad_var_rel_dir_se"] = float(influence.std(correction=1)) / root_n
    return out
