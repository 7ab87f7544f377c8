"""The seed document's experimental API, made real and checked against exact answers.

The seed (``shared/seed/grpo_theory.md``, "Experimental Validation for Researchers") sketches
``validate_grpo_convergence``, ``is_converged``, ``measure_policy_change`` and ``grpo_update``.
Here they run for real on a tabular MDP, where the quantity the seed cannot see, the true return
J(pi) and its optimum J*, is exact. That lets the seed's convergence rule be compared with the
truth:

    is_converged (seed, verbatim):  Var(last ``window`` policy losses) < threshold
    is_converged_exact:             J* - J(pi) <= tol * |J*|        (the gap to the optimum)

``validate_grpo_convergence`` records the epoch at which each rule first fires and, unless told
to stop at one of them, keeps training so the two can be set side by side.

"dataset" is what yields start states (prompts): ``TabularDataset(mdp)`` here, whose prompts are
the MDP's start distribution rho; a prompt set for language models fits the same slot later
(anything with an ``mdp``-like sampling interface the trainer understands).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from grpo_lab.algorithms.grpo import GRPOConfig, GRPOTrainer
from grpo_lab.envs.tabular import (
    TabularMDP,
    exact_return,
    kl_divergence,
    optimal_return,
    state_visitation,
    total_variation,
)
from grpo_lab.policies.tabular import frozen

Tensor = torch.Tensor


@dataclass(frozen=True)
class TabularDataset:
    """The "dataset" of the seed's API for a tabular MDP: prompts are start states s_0 ~ rho."""

    mdp: TabularMDP


def _table(policy: torch.nn.Module) -> Tensor:
    lp = policy.log_probs()
    if lp.dim() != 2:
        raise ValueError(
            f"policy.log_probs() must be one (S, A) table here, got shape {tuple(lp.shape)}"
        )
    return lp.detach()


def measure_policy_change(
    old_policy: torch.nn.Module,
    policy: torch.nn.Module,
    dataset: TabularDataset | None = None,
) -> dict[str, float]:
    """How far an update moved the policy, exactly (the seed's ``measure_policy_change``).

    kl_mean = sum_s w(s) KL(pi_old(.|s) || pi(.|s)), with w = d^{pi_old} (discounted state
    visitation) when ``dataset`` is given, else uniform over states; kl_max = max_s KL;
    tv_max = max_s (1/2) sum_a |pi(a|s) - pi_old(a|s)|.
    """
    p_old, p_new = _table(old_policy).exp(), _table(policy).exp()
    if p_old.shape != p_new.shape:
        raise ValueError(
            f"policies disagree in shape: {tuple(p_old.shape)} vs {tuple(p_new.shape)}"
        )
    kl = kl_divergence(p_old, p_new)  # (S,)
    tv = total_variation(p_old, p_new)  # (S,)
    if dataset is not None:
        w = state_visitation(dataset.mdp, p_old)
        live = ~dataset.mdp.terminal_mask
    else:
        w = torch.full_like(kl, 1.0 / kl.numel())
        live = torch.ones_like(kl, dtype=torch.bool)
    return {
        "kl_mean": float((w * kl).sum()),
        "kl_max": float(kl[live].max()),
        "tv_max": float(tv[live].max()),
    }


def is_converged(metrics: dict[str, list], window: int = 10, threshold: float = 1e-4) -> bool:
    """The seed's rule, verbatim: the variance of the last ``window`` policy losses is below
    ``threshold``. (np.var of fewer than ``window`` values is taken as the seed does.)"""
    recent_losses = metrics["policy_loss"][-window:]
    loss_variance = np.var(recent_losses)
    return bool(loss_variance < threshold)


def is_converged_exact(metrics: dict[str, list], tol: float = 0.01) -> bool:
    """The rule the truth allows on a tabular MDP: J* - J(pi) <= tol * |J*|."""
    if not metrics.get("gap"):
        return False
    return bool(metrics["gap"][-1] <= tol * abs(metrics["optimal_return"][-1]))


def grpo_update(
    policy: torch.nn.Module,
    dataset: TabularDataset,
    *,
    config: GRPOConfig | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    iteration: int = 0,
) -> dict[str, float]:
    """One GRPO iteration on ``policy`` (the seed's ``grpo_update``): sample groups from the
    dataset's start states, K epochs x minibatches of optimiser steps (``GRPOConfig``).

    Pass the same ``optimizer`` across calls to keep Adam's moments, and a different
    ``iteration`` to draw new episodes. Returns plain floats: ``policy_loss``, ``value_loss``
    (NaN: GRPO has no critic, whatever the seed's loss says), ``entropy_loss`` (exact mean
    entropy of pi under d^pi), ``kl_ref``, and the ratio audit of the last step.
    """
    config = config or GRPOConfig()
    trainer = GRPOTrainer(dataset.mdp, config, policy=policy, optimizer=optimizer)
    return _as_losses(trainer, trainer.update(iteration))


def _as_losses(trainer: GRPOTrainer, m: dict[str, Tensor]) -> dict[str, float]:
    table = trainer.table().detach()[0]  # (S, A)
    p = table.exp()
    h = -(p * table).sum(-1)  # (S,)
    d = state_visitation(trainer.mdp, p)
    out = {
        "policy_loss": float(m["pg_loss"][0]),
        "value_loss": math.nan,
        "entropy_loss": float((d * h).sum()),
        "kl_ref": float(m["kl_ref"][0]) if "kl_ref" in m else 0.0,
        "advantage_abs_mean": float(m["adv_abs_mean"][0]),
        "zero_std_frac": float(m["zero_std_frac"][0]),
    }
    for k in ("ratio_max", "ratio_min", "exact_ratio_max", "exact_ratio_min", "exact_frac_outside"):
        if k in m:
            out[k] = float(m[k][0])
    return out


def validate_grpo_convergence(
    policy: torch.nn.Module,
    dataset: TabularDataset,
    num_epochs: int = 100,
    *,
    config: GRPOConfig | None = None,
    window: int = 10,
    threshold: float = 1e-4,
    gap_tol: float = 0.01,
    stop_on: str = "none",
) -> dict[str, list]:
    """The seed's ``validate_grpo_convergence``, with the exact figures beside the seed's ones.

    Each epoch is one ``grpo_update``. Returns lists with one entry per epoch under the seed's
    keys ``policy_loss``, ``value_loss`` (NaN: no critic), ``entropy_loss``,
    ``advantage_estimates`` (mean |A| of the epoch's batch) and ``policy_updates``
    (``measure_policy_change`` dicts), and the exact ones ``return`` (J), ``optimal_return`` (J*),
    ``gap`` (J* - J after the update), ``ratio_max``, ``ratio_min``, ``exact_frac_outside``,
    ``kl_mean``, ``kl_max``; plus ``converged_at`` = {"seed": epoch or None, "exact": epoch or
    None}: the first epoch at which ``is_converged`` (checked only after epoch 10, as in the seed)
    and ``is_converged_exact`` fired. ``stop_on`` in {"none", "seed", "exact"} ends the loop when
    that rule fires ("none" runs all epochs so both can be compared).
    """
    if stop_on not in ("none", "seed", "exact"):
        raise ValueError(f"unknown stop_on {stop_on!r}; choose one of ['exact', 'none', 'seed']")
    if not isinstance(num_epochs, int) or num_epochs < 1:
        raise ValueError(f"num_epochs must be an int >= 1, got {num_epochs!r}")
    config = config or GRPOConfig()
    trainer = GRPOTrainer(dataset.mdp, config, policy=policy)
    j_star = float(optimal_return(dataset.mdp))
    keys = (
        "policy_loss value_loss entropy_loss advantage_estimates policy_updates return "
        "optimal_return gap ratio_max ratio_min exact_frac_outside kl_mean kl_max"
    ).split()
    metrics: dict = {k: [] for k in keys}
    metrics["converged_at"] = {"seed": None, "exact": None}
    for epoch in range(num_epochs):
        old_policy = frozen(policy)  # the seed's copy.deepcopy(policy)
        losses = _as_losses(trainer, trainer.update(epoch))
        change = measure_policy_change(old_policy, policy, dataset)
        j = float(exact_return(dataset.mdp, _table(policy).exp()))
        metrics["policy_updates"].append(change)
        metrics["policy_loss"].append(losses["policy_loss"])
        metrics["value_loss"].append(losses["value_loss"])
        metrics["entropy_loss"].append(losses["entropy_loss"])
        metrics["advantage_estimates"].append(losses["advantage_abs_mean"])
        metrics["return"].append(j)
        metrics["optimal_return"].append(j_star)
        metrics["gap"].append(j_star - j)
        # exact ratio audit of the update: over every visited (s, a), pi_new / pi_old
        metrics["ratio_max"].append(losses.get("exact_ratio_max", math.nan))
        metrics["ratio_min"].append(losses.get("exact_ratio_min", math.nan))
        metrics["exact_frac_outside"].append(losses.get("exact_frac_outside", math.nan))
        metrics["kl_mean"].append(change["kl_mean"])
        metrics["kl_max"].append(change["kl_max"])
        fired = metrics["converged_at"]
        if fired["seed"] is None and epoch > 10 and is_converged(metrics, window, threshold):
            fired["seed"] = epoch
        if fired["exact"] is None and is_converged_exact(metrics, gap_tol):
            fired["exact"] = epoch
        if stop_on != "none" and fired[stop_on] is not None:
            break
    return metrics
