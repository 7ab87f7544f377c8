"""PPO on classic-control tasks (gymnasium's CartPole-v1, Acrobot-v1), C configurations at once: every
network weight has a leading configuration axis and the environments of all configurations step
together (``grpo_lab.envs.classic``, N = C x E rows), the PureJaxRL pattern (arXiv 2210.05639) in
PyTorch.

PPO (arXiv 1707.06347; the implementation details of CleanRL's ``ppo.py`` and Stable-Baselines3,
each an option with the RL Zoo's CartPole-v1 values as defaults), one update, top to bottom:
  1. ``num_steps`` steps of E = ``num_envs`` environments per configuration with the current
     policy; a truncated episode's reward gets + gamma V(final obs) (SB3's bootstrap).
  2. GAE(gamma, lambda) advantages and returns (arXiv 1506.02438 eq. 16).
  3. ``update_epochs`` x ``num_minibatches``: clipped surrogate (eq. 7) with per-minibatch
     advantage normalisation, value loss 0.5 (V - R)^2 (optionally clipped, ``clip_vf``),
     entropy bonus; per-configuration gradient-norm clipping; Adam. The learning rate and the
     clip range of update u (of U) are each, by their own switch, annealed linearly,
     x_u = x_0 (1 - u / U) (``anneal_lr``, ``anneal_clip``; the Zoo's CartPole-v1: ``lin_1e-3``,
     ``lin_0.2``), or held at x_0 (``linear_schedule``).
  4. Instrumentation: the minibatch ratio audit after each optimiser step (ratio max/min, clip
     fractions by side, approx KL), entropy, explained variance of the critic, episode returns,
     env steps per second.

GRPO without a critic on the same tasks: ``classic_grpo.py``; TRPO with a critic: ``classic_trpo.py``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.flop_counter import FlopCounterMode

from grpo_lab import seeding
from grpo_lab.advantages import gae
from grpo_lab.algorithms.common import (
    RunRecord,
    check_batchable,
    derive_seed,
    iteration_generators,
)
from grpo_lab.algorithms.ppo import clip_grad_norm_per_config
from grpo_lab.envs.classic import CLASSIC_ENVS, ClassicVecEnv, RunningMeanStd, make_classic
from grpo_lab.losses import clipped_surrogate, ratio_metrics
from grpo_lab.optim import BatchedAdam, flat_parameters
from grpo_lab.policies.mlp import BatchedMLP, categorical_from_uniform

Tensor = torch.Tensor

PPO_BATCHABLE = ("lr", "clip_coef", "seed")


def _check_env(env_id: str) -> str:
    return CLASSIC_ENVS.check(env_id)


def with_task(env: object, configs: Sequence[BaseModel]) -> list[BaseModel]:
    """Check the configurations against a protocol's task (``envs.ClassicTask``): each one's
    ``env_id`` must name that task, so that the stored config says what ran. ``env`` None: each
    configuration's own ``env_id`` counts."""
    env_id = getattr(env, "env_id", None)
    for i, c in enumerate(configs):
        if env_id is not None and c.env_id != env_id:  # type: ignore[attr-defined]
            raise ValueError(
                f"configs[{i}].env_id = {c.env_id!r} but the task is {env_id!r}; set env_id = "  # type: ignore[attr-defined]
                f"{env_id!r} in the algorithm's config"
            )
    return list(configs)


# ----------------------------------------------------------------------------- update FLOPs


def flop_counter(every: int, iteration: int) -> FlopCounterMode | None:
    """The FLOP counter of the update of ``iteration`` if it is a counted one (``every`` > 0 and
    iteration % every == 0; ``every`` = a config's ``count_flops_every``, 0: never), else None.

    What it counts (``torch.utils.flop_counter.FlopCounterMode``, a dispatch mode, so it sees
    every aten op, those inside custom autograd Functions such as ``policies.mlp``'s layers and
    in their backward included): the floating-point operations of the matmul-type ops, mm,
    bmm, addmm, baddbmm, convolutions, scaled-dot-product attention, 2 per multiply-add, in
    forward, backward and double backward (TRPO's Fisher-vector products). Not counted:
    elementwise and reduction ops (activations, softmax, losses, Adam, gradient norms, CG's
    vector updates, broadcast products such as a value head's input gradient). The counter
    slows the update (every op goes through Python), so a counted update's wall time is not a
    timing (``update_cost``)."""
    return FlopCounterMode(display=False) if every > 0 and iteration % every == 0 else None


def counting(counter: FlopCounterMode | None) -> AbstractContextManager[object]:
    """``with counting(counter):`` counts the block into ``counter``; None: a no-op."""
    return counter if counter is not None else nullcontext()


def update_cost(counter: FlopCounterMode | None, t_upd: float, C: int) -> tuple[float, float]:
    """(update_time, update_flops) to log for an update of a batch of C configurations that
    took ``t_upd`` s. Not counted (``counter`` None): (t_upd, NaN). Counted: (NaN, the counted
    FLOPs / C): the counter slowed the update, so its time is no timing (``verdicts.compute_costs``
    drops non-finite timings); ``flop_counter`` says what is counted.

    The count / C is the work of one configuration's update in the batched program: the C
    networks have equal shapes and every op carries the leading configuration axis, so each
    configuration gets an equal share, like the batch's wall time. Where the shapes do not depend
    on the data (PPO) it equals the configuration's count run alone; where the batch runs to its
    slowest configuration it is at least that: GRPO pads every episode to the longest of the
    whole batch, TRPO's CG and line search loop while any configuration is pending."""
    if counter is None:
        return t_upd, math.nan
    return math.nan, counter.get_total_flops() / C


# ----------------------------------------------------------------------------- PPO


class ClassicPPOConfig(BaseModel):
    """PPO on a classic-control task; defaults = the RL Zoo's CartPole-v1 hyperparameters.

    The two clip ranges:

    * ``clip_coef`` eps_0: the policy's clip range, the eps of arXiv 1707.06347 eq. 7,
      L^CLIP = E_t[min(r_t A_t, clip(r_t, 1 - eps_u, 1 + eps_u) A_t)], r_t = pi(a_t|s_t) /
      pi_old(a_t|s_t). Per configuration (batchable). ``anneal_clip`` True (the Zoo's CartPole
      ``lin_0.2``): eps_u = eps_0 (1 - u / U) at update u of U = max(1, total_timesteps //
      (num_envs num_steps)), so eps_0 is only the initial value and the last update uses
      eps_0 / U; False: eps_u = eps_0 at every update (CleanRL's and SB3's float default).
      ``linear_schedule`` computes eps_u; the step log's ``clip_coef`` column is the eps_u used.
    * ``clip_vf``: the value function's clip range, separate from ``clip_coef`` and never
      annealed. None (SB3's ``clip_range_vf=None``, the default): no value clipping, value loss
      0.5 (V - R)^2. A float c: 0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)
      (OpenAI baselines' PPO2; CleanRL's ``clip_vloss`` is this with c = its clip_coef). Shared by
      a batch, so sweeping ``clip_coef`` leaves it unchanged.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    env_id: str = "CartPole-v1"
    backend: Literal["torch", "gymnasium"] = "torch"
    normalize_obs: bool = False  # the Zoo's CartPole-v1: no; Acrobot-v1: yes (``ObsNorm``)
    num_envs: int = Field(8, ge=1)
    num_steps: int = Field(32, ge=1)
    total_timesteps: int = Field(100_000, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    anneal_lr: bool = True
    gamma: float = Field(0.98, ge=0.0, le=1.0)
    gae_lambda: float = Field(0.8, ge=0.0, le=1.0)
    num_minibatches: int = Field(1, ge=1)
    update_epochs: int = Field(20, ge=1)
    norm_adv: bool = True
    clip_coef: float = Field(0.2, gt=0.0)
    anneal_clip: bool = True  # eps_u = clip_coef (1 - u / U); False: clip_coef at every update
    clip_vf: float | None = Field(None, gt=0.0)  # None: no value clipping (SB3's default)
    ent_coef: float = Field(0.0, ge=0.0)
    vf_coef: float = Field(0.5, ge=0.0)
    max_grad_norm: float = Field(0.5, gt=0.0)
    hidden: int = Field(64, ge=1)
    adam_eps: float = Field(1e-5, gt=0.0)
    eval_episodes: int = Field(20, ge=1)
    seed: int = 0
    # count the update FLOPs of every k-th iteration (``flop_counter``; 0: never); the counted
    # iterations log update_flops and update_time NaN, the others update_flops NaN
    count_flops_every: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> ClassicPPOConfig:
        _check_env(self.env_id)
        if (self.num_envs * self.num_steps) % self.num_minibatches:
            raise ValueError(
                f"num_envs * num_steps = {self.num_envs * self.num_steps} must split into "
                f"num_minibatches = {self.num_minibatches} equal parts"
            )
        return self


def _env_seeds(seeds: Sequence[int], E: int, stream: int) -> list[int]:
    return [derive_seed(s, e, stream) % (2**31) for s in seeds for e in range(E)]


class ObsNorm:
    """Observation normalisation per configuration (SB3's ``VecNormalize(norm_obs=True,
    norm_reward=False)``, CleanRL's ``NormalizeObservation``): configuration c's running mean and
    variance come from its own environments' observations only (``envs.classic.RunningMeanStd``
    with shape (C, D)), and o -> clip((o - mean_c) / sqrt(var_c + 1e-8), -10, 10).

    The statistics are updated with every observation the policy acts on during training, when
    it acts on it, and applied frozen in evaluation. Shapes: obs (C, M, D) -> (C, M, D).
    """

    def __init__(self, num_configs: int, obs_dim: int, clip: float = 10.0) -> None:
        self.rms = RunningMeanStd((num_configs, obs_dim), clip=clip)

    def __call__(self, obs: Tensor, update: bool) -> Tensor:
        x = obs.transpose(0, 1)  # (M, C, D): M samples of the (C, D) statistics
        if update:
            self.rms.update(x)
        return self.rms.normalize(x).transpose(0, 1)


@torch.no_grad()
def evaluate(
    actor: BatchedMLP,
    env_id: str,
    seeds: Sequence[int],
    episodes: int,
    backend: str = "torch",
    dtype: torch.dtype = torch.float32,
    obs_norm: ObsNorm | None = None,
) -> Tensor:
    """Mean return of ``episodes`` deterministic (argmax) episodes per configuration: (C,).
    ``obs_norm``: the training run's observation statistics, applied frozen (not updated)."""
    C = len(seeds)
    env = make_classic(env_id, C * episodes, backend=backend, autoreset=False, dtype=dtype)
    obs = env.reset(seed=_env_seeds(seeds, episodes, seeding.CLASSIC_EVAL_RESET))
    ret = torch.zeros(C * episodes, dtype=torch.float64)
    done = torch.zeros(C * episodes, dtype=torch.bool)
    for _ in range(env.max_episode_steps):
        o = obs.reshape(C, episodes, -1)
        a = actor(obs_norm(o, update=False) if obs_norm else o).argmax(-1).reshape(-1)
        obs, r, term, trunc = env.step(a)
        ret += torch.where(done, 0.0, r.double())
        done |= term | trunc
        if bool(done.all()):
            break
    env.close()
    return ret.reshape(C, episodes).mean(-1)


# ----------------------------------------------------------------------------- rollout


@dataclass
class Rollout:
    """One update's samples, time last per environment then flattened (M = E T per
    configuration): obs (C, M, D); actions (C, M) long; logp (C, M) log pi_old(a_t|s_t); values
    (C, M) V(s_t) at sampling; adv and returns (C, M) from GAE; episode_return (C,) the mean return
    of the episodes that ended in the rollout (NaN if none)."""

    obs: Tensor
    actions: Tensor
    logp: Tensor
    values: Tensor
    adv: Tensor
    returns: Tensor
    episode_return: Tensor


@torch.no_grad()
def rollout(
    actor: BatchedMLP,
    critic: BatchedMLP,
    venv: ClassicVecEnv,
    obs: Tensor,
    gens: list[torch.Generator],
    num_steps: int,
    gamma: float,
    gae_lambda: float,
    obs_norm: ObsNorm | None = None,
) -> tuple[Rollout, Tensor]:
    """Steps 1-2 of PPO and TRPO: ``num_steps`` steps of the C x E autoreset environments from
    ``obs`` (C, E, D), configuration c's actions drawn from ``gens[c]``; a truncated (not
    terminated) episode's last reward gets + gamma V(final obs) (SB3's bootstrap of a time-limit
    cut); then GAE(gamma, lambda) (arXiv 1506.02438 eq. 16). With ``obs_norm`` the networks see
    (and the rollout stores) normalised observations, the statistics updated with each step's.
    Returns (the rollout, the next raw observations (C, E, D))."""
    C, E, D = obs.shape
    T, dt = num_steps, obs.dtype
    b_obs = torch.zeros(T, C, E, D, dtype=dt)
    b_act = torch.zeros(T, C, E, dtype=torch.long)
    b_logp, b_rew, b_val = (torch.zeros(T, C, E, dtype=dt) for _ in range(3))
    b_done = torch.zeros(T, C, E, dtype=torch.bool)
    ended: list[Tensor] = []
    # configuration c's uniforms for all T steps from its own generator, drawn at once
    u_all = torch.stack([torch.rand(T, E, generator=g, dtype=dt) for g in gens], 1)  # (T, C, E)

    def seen(o: Tensor, update: bool = False) -> Tensor:
        return obs_norm(o, update) if obs_norm is not None else o

    for t in range(T):
        o = seen(obs, update=True)
        logits = actor(o)  # (C, E, A)
        a = categorical_from_uniform(logits, u_all[t])  # (C, E)
        b_logp[t] = torch.log_softmax(logits, -1).gather(-1, a.unsqueeze(-1)).squeeze(-1)
        b_obs[t], b_act[t] = o, a
        b_val[t] = critic(o).squeeze(-1)
        nxt, r, term, trunc = venv.step(a.reshape(-1))
        r = r.to(dt).reshape(C, E)
        trunc_ce = trunc.reshape(C, E) & ~term.reshape(C, E)
        if bool(trunc_ce.any()):  # bootstrap a cut episode with V(final obs)
            v_fin = critic(seen(venv.final_obs.to(dt).reshape(C, E, D))).squeeze(-1)
            r = r + gamma * torch.where(trunc_ce, v_fin, 0.0)
        done = (term | trunc).reshape(C, E)
        b_rew[t], b_done[t] = r, done
        if bool(done.any()):
            ended.append(torch.where(done, venv.ended_returns.reshape(C, E).double(), math.nan))
        obs = nxt.reshape(C, E, D).to(dt)
    v_next = critic(seen(obs)).squeeze(-1).unsqueeze(0)  # (1, C, E)
    vals = torch.cat([b_val, v_next]).permute(1, 2, 0)  # (C, E, T + 1)
    adv, ret = gae(
        b_rew.permute(1, 2, 0), vals, b_done.permute(1, 2, 0).to(dt), gamma, gae_lambda
    )  # (C, E, T)
    ep = torch.stack(ended).permute(1, 0, 2).reshape(C, -1) if ended else None  # (C, K E)
    flat = [x.permute(1, 2, 0).reshape(C, E * T) for x in (b_act, b_logp, b_val)]
    roll = Rollout(
        obs=b_obs.permute(1, 2, 0, 3).reshape(C, E * T, D),
        actions=flat[0],
        logp=flat[1],
        values=flat[2],
        adv=adv.reshape(C, E * T),
        returns=ret.reshape(C, E * T),
        episode_return=(
            torch.nanmean(ep, -1) if ep is not None else torch.full((C,), math.nan).double()
        ),
    )
    return roll, obs


# ----------------------------------------------------------------------------- PPO update


def linear_schedule(x0: Tensor, u: int, num_updates: int, anneal: bool) -> Tensor:
    """The value of a per-configuration hyperparameter at update ``u`` of U = ``num_updates``:
    x_u = x_0 (1 - u / U) when ``anneal`` (linear to 0, reaching x_0 / U at the last update, the
    Zoo's ``lin_<x_0>``), else x_u = x_0. Used for the clip range eps (``anneal_clip``) and the
    learning rate (``anneal_lr``). Shapes: x0 (C,) -> (C,)."""
    return x0 * (1.0 - u / num_updates) if anneal else x0.clone()


def _audit(lp_new: Tensor, lp_old: Tensor, adv: Tensor, clip: Tensor) -> dict[str, Tensor]:
    """The ratio audits of K optimiser steps at once (``losses.ratio_metrics``, each step's
    minibatch one row): lp_new (the policy after step k), lp_old, adv (C, K, mb), clip (C, 1, 1)
    -> each metric (C, K)."""
    C, K, mb = lp_new.shape
    mask = torch.ones(C, K, 1, mb, dtype=torch.bool)
    r = torch.exp(lp_new - lp_old).unsqueeze(-2)  # (C, K, 1, mb)
    c4 = clip.reshape(C, 1, 1, 1)
    return ratio_metrics(
        lp_new.unsqueeze(-2), lp_old.unsqueeze(-2), r, adv.unsqueeze(-2), mask, c4, c4
    )


def ppo_update(
    actor: BatchedMLP,
    critic: BatchedMLP,
    opt: BatchedAdam,
    batch: Rollout,
    clip: Tensor,
    cfg: ClassicPPOConfig,
    order_gens: list[list[torch.Generator]] | None = None,
) -> dict[str, Tensor]:
    """Step 3-4: ``update_epochs`` x ``num_minibatches`` optimiser steps on one rollout.

    Each step: advantages normalised per minibatch (if ``norm_adv``), the clipped surrogate
    (arXiv 1707.06347 eq. 7) -min(r A, clip(r, 1 - eps, 1 + eps) A) averaged over the minibatch
    with eps = ``clip`` (this update's eps_u), value loss 0.5 (V - R)^2 (or its clipped form with
    the range ``cfg.clip_vf``, not eps), loss = pg_loss - ent_coef H + vf_coef v_loss per
    configuration, per-configuration gradient-norm clipping, one Adam step. Then the audit: the
    minibatch's ratios pi_new / pi_old after the step. With one minibatch the next step's forward
    is on the same batch with the same parameters, so its log-probabilities are this step's audit
    and no extra forward is run (only after the last step). The metrics (entropy, the audit,
    finiteness) are computed once for all K steps after the last one, from the tensors each step
    kept: a step's own work is its forward, backward and Adam step.

    ``opt``: one parameter group holding the actor's and critic's parameters (or their
    ``optim.flat_parameters`` buffer); the gradient norm is clipped over that group. ``clip``
    (C, 1, 1); ``order_gens[epoch]``: one generator per configuration for the minibatch
    order of that epoch (needed when ``num_minibatches`` > 1). Returns name -> (C, K) over the K
    optimiser steps: loss, pg_loss, v_loss, entropy (of the policy the step started from),
    grad_norm, finite (1 if the loss and gradient norm were finite), and the audit
    (``losses.ratio_metrics``).
    """
    C, M, D = batch.obs.shape
    mb = M // cfg.num_minibatches
    reuse = cfg.num_minibatches == 1
    params = opt.param_groups[0]["params"]
    c2 = clip.reshape(C, 1)
    adv_all = batch.adv
    if cfg.norm_adv and reuse:
        adv_all = (adv_all - adv_all.mean(-1, keepdim=True)) / (
            adv_all.std(-1, keepdim=True) + 1e-8
        )
    keep: dict[str, list[Tensor]] = {k: [] for k in ("loss", "pg_loss", "v_loss", "grad_norm")}
    seen: list[Tensor] = []  # per step: log pi(.|s) (C, mb, A) before the step, detached
    audit: dict[str, list[Tensor]] = {"new": [], "old": [], "adv": []}  # per step (C, mb)
    for epoch in range(cfg.update_epochs):
        order = None  # each configuration's own minibatch order, from its own generator
        if not reuse:
            if order_gens is None:
                raise ValueError("order_gens is needed when num_minibatches > 1")
            order = torch.stack([torch.randperm(M, generator=g) for g in order_gens[epoch]])
        for m in range(cfg.num_minibatches):
            if order is None:
                o, a, lp_old = batch.obs, batch.actions, batch.logp
                ad, rt, v_old = adv_all, batch.returns, batch.values
            else:
                idx = order[:, m * mb : (m + 1) * mb]  # (C, mb)
                o = batch.obs.gather(1, idx.unsqueeze(-1).expand(C, mb, D))
                a, lp_old, ad, rt, v_old = (
                    x.gather(1, idx)
                    for x in (batch.actions, batch.logp, batch.adv, batch.returns, batch.values)
                )
            if cfg.norm_adv and order is not None:  # one minibatch: normalised once above
                ad = (ad - ad.mean(-1, keepdim=True)) / (ad.std(-1, keepdim=True) + 1e-8)
            logp_all = torch.log_softmax(actor(o), -1)  # (C, mb, A)
            lp = logp_all.gather(-1, a.unsqueeze(-1)).squeeze(-1)  # (C, mb)
            seen.append(logp_all.detach())
            if reuse and len(seen) > 1:  # the previous step's audit: this policy, same batch
                audit["new"].append(lp.detach())
            per_tok, _ = clipped_surrogate(lp, lp_old, ad, None, c2, c2)  # (C, mb)
            pg_loss = per_tok.mean(-1)  # (C,)
            v = critic(o).squeeze(-1)  # (C, mb)
            if cfg.clip_vf is not None:
                v_clip = v_old + (v - v_old).clamp(-cfg.clip_vf, cfg.clip_vf)
                v_loss = 0.5 * torch.maximum((v - rt) ** 2, (v_clip - rt) ** 2).mean(-1)
            else:
                v_loss = 0.5 * ((v - rt) ** 2).mean(-1)
            loss = pg_loss + cfg.vf_coef * v_loss  # (C,)
            if cfg.ent_coef:  # the Zoo's CartPole: 0, no term
                loss = loss + cfg.ent_coef * (logp_all.exp() * logp_all).sum(-1).mean(-1)
            for p in params:  # zero the gradients in place (flat_parameters' views stay views)
                if p.grad is not None:
                    p.grad.zero_()
            loss.sum().backward()  # configurations are independent: the sum is each its own
            keep["grad_norm"].append(clip_grad_norm_per_config(params, cfg.max_grad_norm))
            opt.step()
            for k, x in (("loss", loss), ("pg_loss", pg_loss), ("v_loss", v_loss)):
                keep[k].append(x.detach())
            if not reuse:
                with torch.no_grad():
                    lp_new = torch.log_softmax(actor(o), -1).gather(-1, a.unsqueeze(-1))
                audit["new"].append(lp_new.squeeze(-1))
            if not reuse or not audit["old"]:
                audit["old"].append(lp_old)
                audit["adv"].append(ad)
    if reuse:  # the audit of the last step; every step saw the same batch
        with torch.no_grad():
            lp_new = torch.log_softmax(actor(o), -1).gather(-1, a.unsqueeze(-1)).squeeze(-1)
        audit["new"].append(lp_new)
    K = len(seen)
    out = {k: torch.stack(v, -1) for k, v in keep.items()}  # (C, K) each
    logp_seen = torch.stack(seen, 1)  # (C, K, mb, A)
    out["entropy"] = -(logp_seen.exp() * logp_seen).sum(-1).mean(-1)
    out["finite"] = (torch.isfinite(out["loss"]) & torch.isfinite(out["grad_norm"])).to(o.dtype)
    new, old, adv = (torch.stack(audit[k], 1) for k in ("new", "old", "adv"))  # (C, K or 1, mb)
    return out | _audit(new, old.expand(C, K, mb), adv.expand(C, K, mb), clip)


def log_update_steps(
    rec: RunRecord, metrics: dict[str, Tensor], alive: Tensor, extra: dict[str, Tensor]
) -> Tensor:
    """Log one update's K optimiser steps (``metrics`` name -> (C, K), with ``finite``) and
    ``extra`` (C,) values constant over the update; a configuration whose loss or gradient turns
    non-finite is marked diverged at that step and logged NaN from it on. Returns the new alive
    (C,)."""
    finite = metrics.pop("finite").bool()  # (C, K)
    C, K = finite.shape
    alive_k = alive.unsqueeze(-1) & finite.cumprod(-1).bool()  # (C, K)
    start = len(rec.step.get("loss", []))
    for c in torch.nonzero(alive & ~alive_k[:, -1]).flatten().tolist():
        first = int((~alive_k[c]).nonzero()[0])
        rec.mark_diverged(torch.arange(C) == c, start + first, "non-finite loss")
    cols = {k: v.reshape(C, 1).expand(C, K) for k, v in extra.items()}
    rec.log_steps("step", metrics | cols, alive_k)
    return alive_k[:, -1]


def log_iteration(
    rec: RunRecord,
    roll: Rollout,
    u: int,
    steps_done: int,
    t_roll: float,
    t_upd: float,
    alive: Tensor,
    update_flops: float = math.nan,
) -> None:
    """Log one PPO / TRPO iteration: iteration, env_steps (so far, per configuration),
    episode_return, explained_variance = 1 - Var(R - V) / Var(R) of the critic that produced the
    rollout's values, env_steps_per_s (of the rollout, all C configurations together),
    rollout_time, update_time (NaN on a counted iteration) and update_flops (the matmul-type
    FLOPs of one configuration's update on a counted iteration, else NaN; ``update_cost``)."""
    C, M = roll.returns.shape
    expl_var = 1 - (roll.returns - roll.values).var(-1) / roll.returns.var(-1)
    rec.log(
        "iter",
        {
            "iteration": torch.full((C,), float(u)),
            "env_steps": torch.full((C,), float(steps_done)),
            "episode_return": roll.episode_return,
            "explained_variance": expl_var,
            "env_steps_per_s": torch.full((C,), C * M / max(t_roll, 1e-9)),
            "rollout_time": torch.full((C,), t_roll),
            "update_time": torch.full((C,), t_upd),
            "update_flops": torch.full((C,), update_flops, dtype=torch.float64),
        },
        alive,
    )


def train_classic_ppo(
    env: None | object, configs: ClassicPPOConfig | Sequence[ClassicPPOConfig]
) -> RunRecord:
    """PPO for each configuration, all C of them as one batched program (module docstring).
    ``env``: None (each configuration's ``env_id``) or a protocol's ``ClassicTask``.

    ``RunRecord.step``: one column per optimiser step (``ppo_update``'s metrics with lr,
    clip_coef, iteration). ``iter``: iteration, env_steps, episode_return, explained_variance,
    env_steps_per_s (rollout), rollout_time, update_time, update_flops (``log_iteration``; the
    update counted is steps 3-4: ``ppo_update`` and its logging). ``summary``: eval_return,
    env_steps.
    """
    configs = [configs] if isinstance(configs, ClassicPPOConfig) else list(configs)
    configs = with_task(env, configs)
    check_batchable(configs, PPO_BATCHABLE)
    cfg, C = configs[0], len(configs)
    E, T, dt = cfg.num_envs, cfg.num_steps, torch.float32
    seeds = [c.seed for c in configs]
    venv: ClassicVecEnv = make_classic(cfg.env_id, C * E, backend=cfg.backend, dtype=dt)
    D, A = venv.obs_dim, venv.num_actions
    actor = BatchedMLP([D, cfg.hidden, cfg.hidden, A], seeds, 0.01, dt)
    critic = BatchedMLP([D, cfg.hidden, cfg.hidden, 1], [s + 1 for s in seeds], 1.0, dt)
    # one (C, P) buffer for both networks: Adam and clipping act on it in a few ops
    flat = flat_parameters(list(actor.parameters()) + list(critic.parameters()))
    lr0 = torch.tensor([c.lr for c in configs], dtype=dt)
    clip0 = torch.tensor([c.clip_coef for c in configs], dtype=dt)
    opt = BatchedAdam([flat], lr=lr0.clone(), eps=cfg.adam_eps)
    num_updates = max(1, cfg.total_timesteps // (E * T))
    rec = RunRecord(status=["ok"] * C, diverged_at=[None] * C, error=[None] * C)
    alive = torch.ones(C, dtype=torch.bool)
    obs = venv.reset(seed=_env_seeds(seeds, E, seeding.CLASSIC_ROLLOUT)).reshape(C, E, D)
    obs_norm = ObsNorm(C, D) if cfg.normalize_obs else None
    steps_done = 0
    for u in range(num_updates):
        lr_now = linear_schedule(lr0, u, num_updates, cfg.anneal_lr)
        clip = linear_schedule(clip0, u, num_updates, cfg.anneal_clip).reshape(C, 1, 1)
        for group in opt.param_groups:
            group["lr"] = lr_now
        # 1-2. rollout and GAE
        t0 = time.perf_counter()
        roll, obs = rollout(
            actor, critic, venv, obs,
            iteration_generators(seeds, u, seeding.CLASSIC_ROLLOUT), T, cfg.gamma,
            cfg.gae_lambda, obs_norm,
        )  # fmt: skip
        t_roll = time.perf_counter() - t0
        steps_done += E * T
        # 3-4. epochs x minibatches, the audit after each step
        counter = flop_counter(cfg.count_flops_every, u)
        t0 = time.perf_counter()
        with counting(counter):
            order_gens = None
            if cfg.num_minibatches > 1:
                order_gens = [
                    iteration_generators(seeds, u, seeding.CLASSIC_PPO_EPOCH + e)
                    for e in range(cfg.update_epochs)
                ]
            st = ppo_update(actor, critic, opt, roll, clip, cfg, order_gens)
            extra = {"lr": lr_now, "clip_coef": clip.reshape(C), "iteration": torch.full((C,), u)}
            alive = log_update_steps(rec, st, alive, extra)
        t_upd, flops = update_cost(counter, time.perf_counter() - t0, C)
        log_iteration(rec, roll, u, steps_done, t_roll, t_upd, alive, flops)
    venv.close()
    evals = evaluate(actor, cfg.env_id, seeds, cfg.eval_episodes, cfg.backend, dt, obs_norm)
    rec.summary = {"eval_return": evals, "env_steps": torch.full((C,), float(steps_done))}
    return rec
