"""GRPO without a critic on classic-control tasks (gymnasium's CartPole-v1, Acrobot-v1), C
configurations at once: the tabular GRPO of ``grpo.py`` with the batched MLP policy, environments,
optimiser and logging of ``classic.py`` (every weight has a leading configuration axis, the
environments of all configurations step together; the PureJaxRL pattern, arXiv 2210.05639).

GRPO (DeepSeekMath, arXiv 2402.03300 §4.1-4.2), one iteration, top to bottom:
  1. pi_old <- pi_theta (frozen). Reset C x ``num_groups`` x G environments without autoreset
     (G = ``group_size``); the G environments of a group share one reset seed and so start from
     the same state: the G completions of one prompt. The seeds derive from (config seed,
     iteration, group) only (``group_seeds``).
  2. Run pi_old until every episode has ended (terminated, or truncated at the time limit); an
     ended environment is frozen (reward 0) and its later steps are masked. Outcome reward R_i =
     the undiscounted return of episode i.
  3. Group advantages A_i (``group_advantages`` with the loss preset's baseline and scale),
     broadcast over the episode's steps: a padded (C, N, T) layout with a step mask, N = groups x G.
  4. ``epochs`` x ``minibatches`` (slices of the groups): the clipped surrogate against pi_old's
     log-probs with per-configuration eps, reduced over (N, T) by the preset's ``agg`` (GRPO
     eq. 3: seq-mean-token-mean; Dr. GRPO, arXiv 2503.20783: token sums / (B max_len) with
     max_len = the env's time limit; DAPO, arXiv 2503.14476: token-mean and clip-higher), plus
     beta x k3 KL to the initial (reference) policy when beta > 0; per-configuration gradient-norm
     clipping; Adam with a per-configuration learning rate.
  5. Instrumentation: after every optimiser step the minibatch's ratio audit against pi_old
     (ratio max/min, clip fractions by side, approx KL), entropy and loss; per iteration the mean
     episode return and length, the fraction of groups with zero return variance (no signal),
     env steps per second, the update's wall time and, every ``count_flops_every`` iterations,
     its FLOPs (``ClassicGRPOTrainer.update``). Summary: the deterministic ``eval_return``, ``env_steps`` and
     ``iterations`` (the iterations this configuration ran, the cut one included).

Budget: ``iterations`` (I updates), or ``total_timesteps`` (B environment steps, the budget key of
``classic-ppo`` and ``classic-trpo``), never both; neither means ``DEFAULT_ITERATIONS``. GRPO's
episodes have random lengths, so B cannot be turned into a number of iterations in advance. The rule
for B, per configuration with S_k the env steps used by the end of iteration k (S_{-1} = 0):
  - iteration k runs while S_{k-1} < B; its rollout stops after the first step at which the
    configuration's steps reach B (``sample_groups``' ``budget``), so S_k <= B + N - 1
    (N = num_groups x G environments step at once; within one step every live one moves);
  - if every episode of iteration k ended by then, it updates as usual; otherwise it is *cut*: the
    steps of the unfinished episodes are spent (they count in S_k) but carry no outcome reward, so
    no update is made on the partial batch (updating on the groups that did end would favour the
    short episodes: a biased sample); the run ends at the first k with S_k >= B.
So GRPO spends B to B + N - 1 steps, PPO and TRPO (whole rollouts of E x T steps)
max(1, B // (E T)) E T <= B; the steps GRPO spends on a cut iteration are its price for needing
whole episodes. In a batch, a configuration whose budget is spent takes no more steps (its
environments start every later iteration ended), no update (its parameters are restored after
each optimiser step of the others) and logs NaN, so its numbers are those of it run alone.

Batched configurations: ``lr``, ``seed``, ``loss.eps_low`` and ``loss.eps_high`` may differ across
the C configurations of one run (``BATCHABLE``), everything else must agree. Each configuration
draws from its own generators, so a batch gives the numbers of its configurations run alone.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from grpo_lab import seeding
from grpo_lab.advantages import group_advantages
from grpo_lab.algorithms.classic import (
    _check_env,
    _env_seeds,
    counting,
    evaluate,
    flop_counter,
    update_cost,
    with_task,
)
from grpo_lab.algorithms.common import (
    RunRecord,
    check_batchable,
    derive_seed,
    group_permutations,
    iteration_generators,
)
from grpo_lab.algorithms.ppo import clip_grad_norm_per_config
from grpo_lab.envs.classic import CLASSIC_ENVS, ClassicVecEnv, make_classic
from grpo_lab.losses import (
    PRESETS,
    LossConfig,
    LossSpec,
    aggregate,
    clipped_surrogate,
    kl_penalty,
    ratio_metrics,
)
from grpo_lab.optim import BatchedAdam
from grpo_lab.policies.mlp import BatchedMLP, categorical

Tensor = torch.Tensor

# fields that may differ across the C configurations of one batched run
BATCHABLE = ("lr", "seed", "loss.eps_low", "loss.eps_high")
ADAM_EPS = 1e-5
DEFAULT_ITERATIONS = 30  # the budget when neither iterations nor total_timesteps is set


class ClassicGRPOConfig(BaseModel):
    """GRPO on a classic-control task; the defaults learn CartPole-v1 (tests/test_classic_grpo)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env_id: str = "CartPole-v1"
    backend: Literal["torch", "gymnasium"] = "torch"
    loss: LossSpec = Field(default_factory=lambda: PRESETS.get("grpo"))
    group_size: int = 8  # G episodes per start state (>= 2)
    num_groups: int = Field(8, ge=1)  # start states (reset seeds) per batch
    # the budget, one of the two (module docstring "Budget"); neither: DEFAULT_ITERATIONS
    iterations: int | None = Field(None, ge=1)
    total_timesteps: int | None = Field(None, ge=1)
    epochs: int = Field(4, ge=1)  # K passes over each batch
    minibatches: int = Field(2, ge=1)  # optimiser steps per pass, over groups
    lr: float = Field(1e-3, gt=0.0)  # Adam, eps 1e-5
    max_grad_norm: float = Field(0.5, gt=0.0)
    hidden: int = Field(64, ge=1)
    max_len: int | None = Field(None, ge=1)  # Dr. GRPO's constant; None: the env's time limit
    eval_episodes: int = Field(20, ge=1)
    seed: int = 0
    # count the update FLOPs of every k-th iteration (``classic.flop_counter``; 0: never); the
    # counted iterations log update_flops and update_time NaN, the others update_flops NaN
    count_flops_every: int = Field(0, ge=0)

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, v: int) -> int:
        if v < 2:
            raise ValueError(
                f"group_size must be >= 2 (a group of one episode has no relative advantage), "
                f"got {v}"
            )
        return v

    @model_validator(mode="after")
    def _check(self) -> ClassicGRPOConfig:
        _check_env(self.env_id)
        if self.iterations is not None and self.total_timesteps is not None:
            raise ValueError(
                f"set one budget, not both: iterations={self.iterations} (updates) or "
                f"total_timesteps={self.total_timesteps} (environment steps); neither means "
                f"iterations={DEFAULT_ITERATIONS}"
            )
        if self.loss.advantage != "group":
            raise ValueError(
                f"loss.advantage must be 'group' (GRPO has no critic), got "
                f"{self.loss.advantage!r}: choose a group preset such as 'grpo', 'dr_grpo', 'dapo'"
            )
        if self.loss.vf_coef > 0:
            raise ValueError(
                f"loss.vf_coef must be 0 (GRPO has no critic), got {self.loss.vf_coef}"
            )
        if self.num_groups % self.minibatches:
            raise ValueError(
                f"minibatches={self.minibatches} must divide num_groups={self.num_groups}"
            )
        if self.resolved_max_len() < self.episode_limit():
            raise ValueError(
                f"max_len={self.resolved_max_len()} is shorter than the time limit of "
                f"{self.env_id} ({self.episode_limit()} steps)"
            )
        return self

    def num_iterations(self) -> int | None:
        """The iterations to run: ``iterations``, else None when ``total_timesteps`` sets the
        budget (the run then stops on env steps), else ``DEFAULT_ITERATIONS``."""
        if self.iterations is not None:
            return self.iterations
        return None if self.total_timesteps is not None else DEFAULT_ITERATIONS

    def episode_limit(self) -> int:
        """The env's time limit (max_episode_steps; the same for both backends)."""
        return CLASSIC_ENVS.get(self.env_id).MAX_EPISODE_STEPS

    def resolved_max_len(self) -> int:
        """Dr. GRPO's normaliser: ``max_len``, else ``loss.max_len``, else the time limit."""
        return self.max_len or self.loss.max_len or self.episode_limit()


# ----------------------------------------------------------------------------- sampling


@dataclass
class GroupBatch:
    """One iteration's episodes, padded: C configurations x N = num_groups x G episodes x T steps
    (group k holds episodes k G .. k G + G - 1; T = the longest episode of the whole batch).

    obs (C, N, T, D); actions (C, N, T) long; logp (C, N, T) log pi_old(a_t|s_t); mask (C, N, T)
    bool, the steps taken before the episode ended (or the budget ran out); returns (C, N) float64
    undiscounted (meaningless for an episode cut by the budget); truncated (C, N) bool, ended by the
    time limit; cut (C,) bool, the configuration's budget ran out while some episode was running.
    """

    obs: Tensor
    actions: Tensor
    logp: Tensor
    mask: Tensor
    returns: Tensor
    truncated: Tensor
    cut: Tensor

    @property
    def lengths(self) -> Tensor:
        """(C, N) steps per episode."""
        return self.mask.sum(-1)


def group_seeds(seed: int, iteration: int, num_groups: int, group_size: int) -> list[int]:
    """Reset seeds of one configuration's N = num_groups x G environments at ``iteration``: one
    seed per group (from ``derive_seed(seed, iteration, 1)``), repeated G times."""
    per_group = _env_seeds(
        [derive_seed(seed, iteration, seeding.CLASSIC_GROUP_RESET)], num_groups, 0
    )  # (num_groups,)
    return [s for s in per_group for _ in range(group_size)]


@torch.no_grad()
def sample_groups(
    actor: BatchedMLP,
    venv: ClassicVecEnv,
    reset_seeds: Sequence[int],
    gens: list[torch.Generator],
    budget: Tensor | None = None,
) -> GroupBatch:
    """Reset ``venv`` (C x N envs, autoreset off) with ``reset_seeds`` and run the policy until
    every episode has ended; configuration c samples its actions from ``gens[c]``.

    ``budget`` (C,): the env steps configuration c may still take (None: no limit). With n_t(c)
    the episodes of c still running at step t, c stops after the first step t* with
    sum_{t <= t*} n_t(c) >= budget[c] (so it takes at most budget[c] + N - 1 steps); if some
    episode was still running then, ``cut[c]`` is True. A budget <= 0 takes no step at all.
    """
    C = len(gens)
    N, D = venv.num_envs // C, venv.obs_dim
    obs = venv.reset(seed=list(reset_seeds)).reshape(C, N, D)
    no_budget = budget is None
    left = torch.full((C,), float("inf")) if no_budget else budget.double().reshape(C).clone()
    done = (left <= 0).unsqueeze(-1).expand(C, N).clone()  # (C, N)
    cut = torch.zeros(C, dtype=torch.bool)
    trunc = torch.zeros(C * N, dtype=torch.bool)
    b_obs, b_act, b_logp, b_mask = [], [], [], []
    for _ in range(venv.max_episode_steps):
        logits = actor(obs)  # (C, N, A)
        a = categorical(logits, gens)  # (C, N)
        b_obs.append(obs)
        b_act.append(a)
        b_logp.append(torch.log_softmax(logits, -1).gather(-1, a.unsqueeze(-1)).squeeze(-1))
        b_mask.append(~done)
        left -= (~done).sum(-1)
        nxt, _, term, trunc = venv.step(a.reshape(-1))
        obs = nxt.reshape(C, N, D)
        done = done | (term | trunc).reshape(C, N)
        if not no_budget:
            spent = (left <= 0) & ~done.all(-1)  # (C,) the budget ran out mid-episode
            cut |= spent
            done |= spent.unsqueeze(-1)
        if bool(done.all()):
            break
    return GroupBatch(
        obs=torch.stack(b_obs, 2),  # (C, N, T, D)
        actions=torch.stack(b_act, 2),
        logp=torch.stack(b_logp, 2),
        mask=torch.stack(b_mask, 2),
        returns=venv.episode_returns.reshape(C, N).double(),
        truncated=trunc.reshape(C, N),
        cut=cut,
    )


def outcome_advantages(returns: Tensor, group_size: int, loss: LossConfig) -> Tensor:
    """Group-relative advantages of the episode returns with the preset's baseline and scale:
    (C, N) float64 -> (C, N) float32 (0 for groups whose returns are all equal)."""
    adv = group_advantages(
        returns.reshape(-1), group_size, baseline=loss.adv_baseline, scale=loss.adv_scale
    )
    return adv.reshape(returns.shape).float()


# ----------------------------------------------------------------------------- loss


def classic_grpo_loss(
    actor: BatchedMLP,
    obs: Tensor,
    actions: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    loss: LossConfig,
    eps_low: Tensor,
    eps_high: Tensor,
    ref_logp: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO loss of each configuration on its minibatch (GRPO arXiv 2402.03300 eq. 3): the
    clipped surrogate of every step, aggregated over (B, T) by ``loss.agg`` (with ``loss.max_len``
    as Dr. GRPO's constant), - ent_coef x entropy, + beta x k3 KL to pi_ref.

    Shapes: obs (C, B, T, D); actions, old_logp, mask (C, B, T); adv (C, B) outcome advantages;
    eps_low, eps_high (C, 1, 1); ref_logp (C, B, T), needed when beta > 0.
    Returns (loss (C,), metrics (C,) each: pg_loss, entropy, kl_ref when beta > 0, loss).
    """
    C, B, T, D = obs.shape
    logp_all = torch.log_softmax(actor(obs.reshape(C, B * T, D)), -1).reshape(C, B, T, -1)
    logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # (C, B, T)
    a = adv.unsqueeze(-1).expand(C, B, T)
    per_tok, _ = clipped_surrogate(
        logp, old_logp, a, mask, eps_low, eps_high, loss.dual_clip, loss.ratio_level
    )
    pg_loss = aggregate(per_tok, mask, loss.agg, loss.max_len)  # (C,)
    ent_tok = -(logp_all.exp() * logp_all).sum(-1)  # (C, B, T)
    total = pg_loss
    metrics = {"pg_loss": pg_loss.detach()}
    metrics["entropy"] = aggregate(ent_tok.detach(), mask, "token-mean")
    if loss.ent_coef > 0:
        total = total - loss.ent_coef * aggregate(ent_tok, mask, loss.agg, loss.max_len)
    if loss.beta > 0:
        if ref_logp is None:
            raise ValueError(f"ref_logp is required when loss.beta > 0 (beta={loss.beta})")
        kl = aggregate(kl_penalty(logp, ref_logp, loss.kl_kind), mask, loss.agg, loss.max_len)
        total = total + loss.beta * kl
        metrics["kl_ref"] = kl.detach()
    metrics["loss"] = total.detach()
    return total, metrics


@torch.no_grad()
def _logp(actor: BatchedMLP, obs: Tensor, actions: Tensor) -> Tensor:
    """log pi(a_t|s_t): obs (C, B, T, D), actions (C, B, T) -> (C, B, T)."""
    C, B, T, D = obs.shape
    logp_all = torch.log_softmax(actor(obs.reshape(C, B * T, D)), -1).reshape(C, B, T, -1)
    return logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def _rows(x: Tensor, idx: Tensor) -> Tensor:
    """The episodes ``idx`` (C, b) of x (C, N, ...) -> (C, b, ...)."""
    index = idx.reshape(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:])
    return x.gather(1, index)


# ----------------------------------------------------------------------------- trainer


class ClassicGRPOTrainer:
    """The state of a (batched) classic-control GRPO run: policy, reference policy, optimiser,
    environments and record. ``update(it)`` performs iteration ``it`` (module docstring, 1-5)."""

    def __init__(self, configs: ClassicGRPOConfig | Sequence[ClassicGRPOConfig]) -> None:
        configs = [configs] if isinstance(configs, ClassicGRPOConfig) else list(configs)
        check_batchable(configs, BATCHABLE)
        self.configs, self.cfg, self.C = configs, configs[0], len(configs)
        cfg, C, dt = self.cfg, self.C, torch.float32
        self.seeds = [c.seed for c in configs]
        self.N = cfg.num_groups * cfg.group_size
        self.venv = make_classic(
            cfg.env_id, C * self.N, backend=cfg.backend, autoreset=False, dtype=dt
        )
        D, A = self.venv.obs_dim, self.venv.num_actions
        self.actor = BatchedMLP([D, cfg.hidden, cfg.hidden, A], self.seeds, 0.01, dt)
        self.loss = cfg.loss.model_copy(update={"max_len": cfg.resolved_max_len()})
        self.ref = copy.deepcopy(self.actor).requires_grad_(False) if self.loss.beta > 0 else None
        self.params = list(self.actor.parameters())
        self.lr = torch.tensor([c.lr for c in configs], dtype=dt)
        self.opt = BatchedAdam(self.params, lr=self.lr, eps=ADAM_EPS)
        self.eps_low = torch.tensor([c.loss.eps_low for c in configs], dtype=dt).reshape(C, 1, 1)
        self.eps_high = torch.tensor([c.loss.eps_high for c in configs], dtype=dt).reshape(C, 1, 1)
        self.rec = RunRecord(status=["ok"] * C, diverged_at=[None] * C, error=[None] * C)
        self.alive = torch.ones(C, dtype=torch.bool)
        self.env_steps = torch.zeros(C, dtype=torch.float64)
        # the env-step budget B per configuration (inf: the budget is iterations)
        b = float(cfg.total_timesteps) if cfg.total_timesteps is not None else float("inf")
        self.budget = torch.full((C,), b, dtype=torch.float64)
        self.active = torch.ones(C, dtype=torch.bool)  # budget not yet spent
        self.iterations_done = torch.zeros(C, dtype=torch.float64)
        self.step = 0

    @property
    def finished(self) -> bool:
        """Every configuration has spent its env-step budget (never, with an iteration budget)."""
        return not bool(self.active.any())

    def rollout(self, it: int) -> GroupBatch:
        """Step 1-2: the groups of iteration ``it`` sampled with the current policy; with an
        env-step budget, each configuration stops where its budget runs out (``sample_groups``)."""
        cfg = self.cfg
        seeds = [s for c in self.seeds for s in group_seeds(c, it, cfg.num_groups, cfg.group_size)]
        gens = iteration_generators(self.seeds, it, stream=seeding.CLASSIC_ROLLOUT)
        left = None
        if cfg.total_timesteps is not None:
            left = torch.where(self.active, self.budget - self.env_steps, 0.0)  # (C,)
        return sample_groups(self.actor, self.venv, seeds, gens, left)

    def update(self, it: int) -> None:
        """One GRPO iteration: sample, advantages, epochs x minibatches of optimiser steps (for
        the configurations whose rollout was not cut by the budget, module docstring).

        The update, timed (update_time) and on a counted iteration counted (update_flops,
        ``classic.flop_counter``), is the reference policy's log-probabilities on the batch (when
        beta > 0) and every optimiser step with its ratio audit; the network runs on the padded
        (N, T) layout, so the masked steps after an episode's end are in the work."""
        cfg, C, G = self.cfg, self.C, self.cfg.group_size
        active = self.active.clone()
        t0 = time.perf_counter()
        batch = self.rollout(it)
        t_roll = time.perf_counter() - t0
        updating = active & ~batch.cut  # (C,)
        adv = outcome_advantages(batch.returns, G, self.loss)  # (C, N)
        counter = flop_counter(cfg.count_flops_every, it)
        t0 = time.perf_counter()
        with counting(counter):
            ref_logp = None
            if self.ref is not None:
                ref_logp = _logp(self.ref, batch.obs, batch.actions)
            n_mb = cfg.num_groups // cfg.minibatches
            perm_gens = iteration_generators(self.seeds, it, stream=seeding.CLASSIC_GRPO_MINIBATCH)
            for _epoch in range(cfg.epochs if bool(updating.any()) else 0):
                perm = group_permutations(perm_gens, cfg.num_groups)  # (C, num_groups)
                for m in range(cfg.minibatches):
                    grp = perm[:, m * n_mb : (m + 1) * n_mb]  # (C, n_mb)
                    idx = (grp.unsqueeze(-1) * G + torch.arange(G)).reshape(C, -1)  # (C, n_mb G)
                    self._step(it, batch, adv, ref_logp, idx, updating)
        t_upd, flops = update_cost(counter, time.perf_counter() - t0, C)
        self._log_iteration(it, batch, adv, t_roll, t_upd, active, flops)
        self.iterations_done += active.double()
        self.active &= self.env_steps < self.budget

    def _step(
        self,
        it: int,
        batch: GroupBatch,
        adv: Tensor,
        ref_logp: Tensor | None,
        idx: Tensor,
        updating: Tensor,
    ) -> None:
        """One optimiser step on the episodes ``idx`` (C, b), then its ratio audit. The
        configurations not ``updating`` (C,) keep their parameters and log NaN."""
        obs, act = _rows(batch.obs, idx), _rows(batch.actions, idx)  # (C, b, T, D), (C, b, T)
        old, mask, a = _rows(batch.logp, idx), _rows(batch.mask, idx), _rows(adv, idx)
        ref = None if ref_logp is None else _rows(ref_logp, idx)
        el, eh, lc = self.eps_low, self.eps_high, self.loss
        frozen = None if bool(updating.all()) else ~updating  # (C,)
        kept = None if frozen is None else [p.detach().clone() for p in self.params]
        if frozen is not None:  # a spent configuration took no step: give its (ignored) loss
            first = torch.zeros_like(mask)  # the first step of each episode, so it is defined
            first[..., 0] = True
            mask = mask | (frozen.reshape(-1, 1, 1) & first)
        loss, metrics = classic_grpo_loss(self.actor, obs, act, old, a, mask, lc, el, eh, ref)
        self.opt.zero_grad()
        loss.sum().backward()  # configurations are independent: the sum is each its own
        if frozen is not None:  # no gradient, no update for them (parameters restored below)
            for p in self.params:
                p.grad[frozen] = 0.0
        grad_norm = clip_grad_norm_per_config(self.params, self.cfg.max_grad_norm)
        ok = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
        newly = self.alive & updating & ~ok
        if bool(newly.any()):
            self.rec.mark_diverged(newly, self.step, "non-finite loss or gradient")
            self.alive &= ~newly
        self.opt.step()
        if kept is not None:
            with torch.no_grad():
                for p, k in zip(self.params, kept, strict=True):
                    p[frozen] = k[frozen]
        lp_new = _logp(self.actor, obs, act)  # the minibatch's ratios after the step
        a_tok = a.unsqueeze(-1).expand_as(lp_new)
        _, r_new = clipped_surrogate(lp_new, old, a_tok, mask, el, eh, lc.dual_clip, lc.ratio_level)
        metrics.update(ratio_metrics(lp_new, old, r_new, a_tok, mask, el, eh, lc.dual_clip))
        metrics.update(grad_norm=grad_norm, lr=self.lr, iteration=torch.full((self.C,), float(it)))
        self.rec.log("step", metrics, self.alive & updating)
        self.step += 1

    def _log_iteration(
        self,
        it: int,
        batch: GroupBatch,
        adv: Tensor,
        t_roll: float,
        t_upd: float,
        active: Tensor,
        update_flops: float = math.nan,
    ) -> None:
        """Per-iteration metrics of the configurations ``active`` (C,) at its start; on a cut
        iteration the per-episode ones are NaN (the episodes that ended before the budget ran out
        are the short ones: a biased sample) and update_time is 0 for lack of an update.

        ``update_flops``: NaN, or on a counted iteration the matmul-type FLOPs of one
        configuration's update (``classic.update_cost``; 0 for a configuration whose rollout was
        cut: it made no update), and then update_time is NaN for every configuration (the batch
        was timed under the counter)."""
        C, G = self.C, self.cfg.group_size
        upd_time = torch.full((C,), t_upd)
        upd_flops = torch.full((C,), update_flops, dtype=torch.float64)
        if math.isnan(update_flops):
            upd_time = torch.where(batch.cut, 0.0, upd_time)
        else:
            upd_flops = torch.where(batch.cut, 0.0, upd_flops)
        lengths = batch.lengths.double()  # (C, N)
        self.env_steps += lengths.sum(-1)
        grp = batch.returns.reshape(C, -1, G)  # (C, num_groups, G)
        live = self.alive & active
        self.rec.log(
            "iter",
            {
                "iteration": torch.full((C,), float(it)),
                "env_steps": self.env_steps.clone(),
                "env_steps_per_s": torch.full((C,), float(lengths.sum()) / max(t_roll, 1e-9)),
                "rollout_time": torch.full((C,), t_roll),
                "update_time": upd_time,
                "update_flops": upd_flops,
                "cut": batch.cut.double(),
            },
            live,
        )
        self.rec.log(
            "iter",
            {
                "episode_return": batch.returns.mean(-1),
                "episode_length": lengths.mean(-1),
                "zero_std_frac": (grp == grp[..., :1]).all(-1).double().mean(-1),
                "truncated_frac": batch.truncated.double().mean(-1),
                "adv_abs_mean": adv.abs().mean(-1),
            },
            live & ~batch.cut,
        )

    def finish(self) -> RunRecord:
        """Close the record: deterministic evaluation of the final policies."""
        self.venv.close()
        cfg = self.cfg
        evals = evaluate(self.actor, cfg.env_id, self.seeds, cfg.eval_episodes, cfg.backend)
        self.rec.summary = {
            "eval_return": evals,
            "env_steps": self.env_steps.clone(),
            "iterations": self.iterations_done.clone(),
        }
        return self.rec


def train_classic_grpo(
    env: None | object, configs: ClassicGRPOConfig | Sequence[ClassicGRPOConfig]
) -> RunRecord:
    """GRPO for each configuration, all C of them as one batched program (module docstring).
    ``env`` is unused (the configs name the task; the sweep passes its environment spec).
    The budget: ``iterations``, or ``total_timesteps`` env steps (module docstring "Budget").
    Returns a ``RunRecord``: per-step and per-iteration metrics (C, ...; NaN where a
    configuration's budget was spent before the batch's), a status per configuration and
    ``summary`` eval_return, env_steps, iterations (C,)."""
    configs = [configs] if isinstance(configs, ClassicGRPOConfig) else list(configs)
    trainer = ClassicGRPOTrainer(with_task(env, configs))
    n_iterations = trainer.cfg.num_iterations()
    it = 0
    while (it < n_iterations) if n_iterations is not None else not trainer.finished:
        trainer.update(it)
        it += 1
    return trainer.finish()
