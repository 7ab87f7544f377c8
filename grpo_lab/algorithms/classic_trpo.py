"""TRPO with a critic on classic-control tasks (gymnasium's CartPole-v1, Acrobot-v1), C
configurations at once: the trust-region step of ``trpo.py`` (Schulman et al., arXiv 1502.05477
§5-6, App. C) with the batched MLPs, environments and rollout of ``classic.py`` (every weight has
a leading configuration axis; the PureJaxRL pattern, arXiv 2210.05639).

One update, top to bottom (SB3-contrib's ``TRPO.train`` in the same order):
  1. Rollout: ``n_steps`` steps of E = ``n_envs`` autoreset environments per configuration with
     the current policy pi_old; a truncated episode's reward gets + gamma V(final obs) (SB3's
     bootstrap, as ``train_classic_ppo``).
  2. GAE(gamma, lambda) advantages and returns (arXiv 1506.02438 eq. 16), normalised per
     configuration over the whole batch when ``normalize_advantage``.
  3. The natural-gradient step of each configuration on its own flat parameter vector (row c of
     a (C, D) matrix): g = grad L(theta_old) of the surrogate
         L(theta) = mean_t [pi_theta(a_t|s_t) / pi_old(a_t|s_t)] A_t,
     x ~= (F + lambda I)^-1 g by conjugate gradient (App. C, ``trpo.conjugate_gradient``: alpha
     and beta are (C,) vectors, so CG is elementwise over the independent configurations), with
     F v = grad (grad KLbar . v) the Hessian of the sampled mean KL
         KLbar(theta) = mean_t KL(pi_old(.|s_t) || pi_theta(.|s_t))       (exact over actions)
     by double backprop (App. C.1), and the full step s = beta x, beta = sqrt(2 delta / x^T F x).
  4. Backtracking line search (§6, App. C): fractions b^k, k = 0 .. ``line_search_max_iter`` - 1
     (b = ``line_search_shrinking_factor``); accept the first (largest) one with KLbar <= delta
     and L(theta) > L(theta_old); if none passes, the old parameters are kept and the update is
     recorded as rejected (``step_accepted`` = 0).
  5. ``n_critic_updates`` passes of Adam on the MSE (SB3's ``F.mse_loss``, no 1/2) over
     minibatches of ``batch_size``, each configuration in its own random order.
  6. Instrumentation per update: ratio max/min of the applied step on the batch, its sampled KLbar,
     surrogate gain, step fraction, acceptance, CG residual, entropy; per iteration explained
     variance, episode return, env steps per second. Summary: ``eval_return``, ``env_steps``.

Design choices (documented here once):
  * pi_old is the network at theta_old re-evaluated on the whole batch (not the rollout's
    per-step log-probs): the ratio is exactly 1 at theta_old and the KL, the surrogate and the
    Fisher describe one function. The two agree up to float rounding.
  * beta uses the undamped x^T F x, as ``trpo.py`` (damping regularises the solve only, so delta
    is the KL the quadratic model predicts for the full step); SB3-contrib uses the damped
    product, a slightly shorter full step. Both are then checked by the line search.
  * The constraint is KLbar <= delta (the paper's); SB3-contrib tests KLbar < target_kl.

The trust-region machinery is ``grpo_lab.trust_region``, shared with tabular TRPO: Fisher-vector
products, conjugate gradient, the natural step and the line search, each on closures over this
module's sampled ``mean_kl`` and ``surrogate``. Also reused: ``policies.mlp.BatchedMLP``;
``classic.rollout`` (steps 1-2, shared with PPO), ``evaluate``; ``optim.BatchedAdam``;
``common.RunRecord``.

Batched configurations: ``delta``, ``seed`` and ``vf_lr`` may differ across the C configurations
of one run (``BATCHABLE``); each configuration draws from its own generators and every reduction
is per row, so a batch gives the numbers of its configurations run alone.

Shapes: C configurations, E envs per configuration, T steps, M = E T samples, Do observation
size, A actions, D flat actor parameters per configuration.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from grpo_lab import seeding
from grpo_lab import trust_region as tr
from grpo_lab.algorithms.classic import (
    ObsNorm,
    _check_env,
    _env_seeds,
    counting,
    evaluate,
    flop_counter,
    log_iteration,
    rollout,
    update_cost,
    with_task,
)
from grpo_lab.algorithms.common import RunRecord, check_batchable, iteration_generators
from grpo_lab.envs.classic import make_classic
from grpo_lab.optim import BatchedAdam, flat_parameters
from grpo_lab.policies.mlp import BatchedMLP

Tensor = torch.Tensor

__all__ = [
    "BATCHABLE",
    "ClassicTRPOConfig",
    "LineSearchResult",
    "fisher_vector_product",
    "line_search",
    "log_probs",
    "mean_kl",
    "natural_step",
    "surrogate",
    "train_classic_trpo",
]

# fields that may differ across the C configurations of one batched run
BATCHABLE = ("delta", "seed", "vf_lr")
ADAM_EPS = 1e-5  # SB3's ActorCriticPolicy default for Adam


class ClassicTRPOConfig(BaseModel):
    """TRPO with a critic on a classic-control task.

    Defaults: the RL Zoo's CartPole-v1 TRPO entry for n_envs = 2 and n_steps = 512 (as quoted in
    the task; the Zoo file was not available offline to check); everything else is SB3-contrib
    2.9's ``TRPO.__init__`` default (gamma 0.99, gae_lambda 0.95, target_kl = delta 0.01,
    cg_max_steps 15, cg_damping 0.1, line_search_shrinking_factor 0.8, line_search_max_iter 10,
    n_critic_updates 10, learning_rate = vf_lr 1e-3, batch_size 128, normalize_advantage True)
    and SB3's MlpPolicy (two tanh layers of 64 for actor and critic, Adam eps 1e-5).
    total_timesteps 100k: the Zoo's CartPole budget for on-policy methods.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    env_id: str = "CartPole-v1"
    backend: Literal["torch", "gymnasium"] = "torch"
    normalize_obs: bool = False  # observation normalisation per configuration (``classic.ObsNorm``)
    n_envs: int = Field(2, ge=1)  # E environments per configuration
    n_steps: int = Field(512, ge=1)  # T steps per environment per update
    total_timesteps: int = Field(100_000, ge=1)
    gamma: float = Field(0.99, ge=0.0, le=1.0)
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0)
    delta: float = Field(0.01, gt=0.0, allow_inf_nan=False)  # SB3 target_kl: max mean KL
    cg_max_steps: int = Field(15, ge=1)
    cg_damping: float = Field(0.1, ge=0.0, allow_inf_nan=False)  # lambda in (F + lambda I)
    cg_tol: float = Field(1e-10, ge=0.0)  # stop CG when |r| <= cg_tol |g| (per configuration)
    line_search_shrinking_factor: float = Field(0.8, gt=0.0, lt=1.0)
    line_search_max_iter: int = Field(10, ge=1)
    n_critic_updates: int = Field(10, ge=0)  # passes over the batch per update
    vf_lr: float = Field(1e-3, gt=0.0, allow_inf_nan=False)  # critic Adam learning rate
    batch_size: int = Field(128, ge=1)  # critic minibatch
    normalize_advantage: bool = True
    hidden: int = Field(64, ge=1)
    eval_episodes: int = Field(20, ge=1)
    seed: int = 0
    # count the update FLOPs of every k-th iteration (``classic.flop_counter``; 0: never); the
    # counted iterations log update_flops and update_time NaN, the others update_flops NaN
    count_flops_every: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> ClassicTRPOConfig:
        _check_env(self.env_id)
        if (self.n_envs * self.n_steps) % self.batch_size:
            raise ValueError(
                f"batch_size = {self.batch_size} must divide n_envs * n_steps = "
                f"{self.n_envs * self.n_steps} (equal critic minibatches)"
            )
        return self


# ----------------------------------------------------------------------------- objective


def log_probs(actor: BatchedMLP, obs: Tensor) -> Tensor:
    """log pi(.|s) of every sample: obs (C, M, Do) -> (C, M, A)."""
    return torch.log_softmax(actor(obs), -1)


def mean_kl(logp_all: Tensor, old_logp_all: Tensor) -> Tensor:
    """KLbar = mean_t KL(pi_old(.|s_t) || pi(.|s_t)), exact over the actions (TRPO arXiv
    1502.05477 §4-5, the sampled average KL). Shapes: (C, M, A), (C, M, A) -> (C,)."""
    p_old = old_logp_all.exp()
    return (p_old * (old_logp_all - logp_all)).sum(-1).mean(-1)


def surrogate(logp_all: Tensor, actions: Tensor, old_logp: Tensor, adv: Tensor) -> Tensor:
    """L = mean_t [pi(a_t|s_t) / pi_old(a_t|s_t)] A_t (TRPO arXiv 1502.05477 §5, single path).
    Shapes: logp_all (C, M, A); actions long, old_logp, adv (C, M) -> (C,)."""
    logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # (C, M)
    return (torch.exp(logp - old_logp) * adv).mean(-1)


def fisher_vector_product(
    actor: BatchedMLP, obs: Tensor, old_logp_all: Tensor, damping: float = 0.0
) -> Callable[[Tensor], Tensor]:
    """v -> (F + damping I) v per configuration, F = Hessian of KLbar at theta_old by double
    backprop (TRPO arXiv 1502.05477 App. C.1; ``trust_region.fisher_vector_product`` on this
    module's sampled ``mean_kl``). The actor must sit at theta_old (``old_logp_all`` = its
    log-probabilities on ``obs``, detached); configurations share no parameter.

    Shapes: obs (C, M, Do); old_logp_all (C, M, A); v (C, D) -> (C, D).
    """
    old = old_logp_all.detach()
    return tr.fisher_vector_product(
        lambda: mean_kl(log_probs(actor, obs), old), list(actor.parameters()), obs.shape[0], damping
    )


# ----------------------------------------------------------------------------- line search


LineSearchResult = tr.LineSearchResult


def line_search(
    actor: BatchedMLP,
    theta_old: Tensor,
    full_step: Tensor,
    batch: tuple[Tensor, Tensor, Tensor, Tensor],
    delta: Tensor,
    shrink: float,
    max_iter: int,
    active: Tensor,
) -> tr.LineSearchResult:
    """Backtracking line search of each configuration (TRPO arXiv 1502.05477 §6 and App. C;
    ``trust_region.line_search``) on this module's sampled KL and surrogate: accept the first
    b^k with KLbar <= delta and L(theta) - L(theta_old) > 0. Leaves the actor at the accepted
    parameters (theta_old where rejected or not ``active``).

    Shapes: theta_old, full_step (C, D); batch = (obs (C, M, Do), actions (C, M) long,
    old_logp_all (C, M, A), adv (C, M)); delta (C,); active (C,) bool.
    """
    obs, actions, old_all, adv = batch
    old_logp = old_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # (C, M)
    with torch.no_grad():
        L_old = surrogate(old_all, actions, old_logp, adv)  # (C,)

    def evaluate() -> tuple[Tensor, Tensor]:
        logp_all = log_probs(actor, obs)
        return mean_kl(logp_all, old_all), surrogate(logp_all, actions, old_logp, adv) - L_old

    params = list(actor.parameters())
    return tr.line_search(params, theta_old, full_step, evaluate, delta, shrink, max_iter, active)


def natural_step(
    actor: BatchedMLP,
    batch: tuple[Tensor, Tensor, Tensor, Tensor],
    delta: Tensor,
    cfg: ClassicTRPOConfig,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Steps 3 of the module docstring: g, x = (F + lambda I)^-1 g by CG, the full step beta x.
    Returns (full step (C, D), metrics (C,): grad_norm, cg_residual, beta, expected_improve at
    the full step = beta g.x). A non-finite row gets a zero step."""
    obs, actions, old_all, adv = batch
    params = list(actor.parameters())
    C = obs.shape[0]
    old_logp = old_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # (C, M)
    old = old_all.detach()
    ns = tr.natural_step(
        lambda: surrogate(log_probs(actor, obs), actions, old_logp, adv),
        lambda: mean_kl(log_probs(actor, obs), old),
        params, C, delta, cfg.cg_damping, cfg.cg_max_steps, cfg.cg_tol,
    )  # fmt: skip
    g, x, beta, g_norm, cg_res = ns.g, ns.x, ns.beta, ns.grad_norm, ns.cg_residual
    full = ns.full  # (C, D)
    ok = torch.isfinite(full).all(-1)
    full = torch.where(ok.unsqueeze(-1), full, 0.0)
    metrics = {
        "grad_norm": g_norm,
        "cg_residual": cg_res,
        "beta": beta,
        "expected_improve": beta * (g * x).sum(-1),
        "finite_step": ok,
    }
    return full, metrics


# ----------------------------------------------------------------------------- critic


def _fit_critic(
    critic: BatchedMLP,
    opt: BatchedAdam,
    obs: Tensor,
    returns: Tensor,
    gens: list[torch.Generator],
    cfg: ClassicTRPOConfig,
) -> Tensor:
    """Step 5: ``n_critic_updates`` passes over the batch in minibatches of ``batch_size``, each
    pass a fresh random order per configuration; loss mean (V - R)^2 (SB3's ``F.mse_loss``).
    Shapes: obs (C, M, Do); returns (C, M) -> mean loss of the last pass (C,)."""
    C, M, Do = obs.shape
    mb = cfg.batch_size
    losses = torch.zeros(C, dtype=obs.dtype)
    for _ in range(cfg.n_critic_updates):
        order = torch.stack([torch.randperm(M, generator=g) for g in gens])  # (C, M)
        losses = torch.zeros(C, dtype=obs.dtype)
        for m in range(M // mb):
            idx = order[:, m * mb : (m + 1) * mb]  # (C, mb)
            o = obs.gather(1, idx.unsqueeze(-1).expand(C, mb, Do))
            loss = ((critic(o).squeeze(-1) - returns.gather(1, idx)) ** 2).mean(-1)  # (C,)
            opt.zero_grad(set_to_none=False)
            loss.sum().backward()  # configurations are independent: the sum is each its own
            opt.step()
            losses += loss.detach() / (M // mb)
    return losses


# ----------------------------------------------------------------------------- trainer


def _normalise(adv: Tensor) -> Tensor:
    """Per-configuration advantage normalisation over the batch (SB3): (C, M) -> (C, M)."""
    return (adv - adv.mean(-1, keepdim=True)) / (adv.std(-1, keepdim=True) + 1e-8)


def _step_metrics(
    actor: BatchedMLP, batch: tuple[Tensor, Tensor, Tensor, Tensor], ls: LineSearchResult
) -> dict[str, Tensor]:
    """The audit of the applied step against pi_old on the batch (C,) each."""
    obs, actions, old_all, _ = batch
    with torch.no_grad():
        logp_all = log_probs(actor, obs)  # (C, M, A)
        logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        old = old_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        ratio = torch.exp(logp - old)  # (C, M)
        ent = -(old_all.exp() * old_all).sum(-1).mean(-1)  # entropy of pi_old
    return {
        "ratio_max": ratio.amax(-1),
        "ratio_min": ratio.amin(-1),
        "kl": ls.kl,
        "surrogate_gain": ls.gain,
        "step_frac": ls.frac,
        "step_accepted": ls.accepted.double(),
        "backtracks": ls.backtracks,
        "entropy": ent,
    }


def train_classic_trpo(
    env: None | object, configs: ClassicTRPOConfig | Sequence[ClassicTRPOConfig]
) -> RunRecord:
    """TRPO for each configuration, all C of them as one batched program (module docstring).
    ``env`` is unused (the configs name the task; the sweep passes its environment spec).

    Returns a ``RunRecord``. ``step`` metrics, one column per update (C, U): ratio_max,
    ratio_min (of the applied step on the batch), kl (sampled KLbar of the applied step, <= delta
    when accepted, 0 when rejected), surrogate_gain, step_frac (b^k, 0 when rejected),
    step_accepted, backtracks, entropy, grad_norm, cg_residual, beta, expected_improve (at the
    full step), v_loss, iteration. ``iter`` metrics per update: env_steps, episode_return,
    explained_variance (of the critic that produced the batch's values), env_steps_per_s,
    rollout_time, update_time, update_flops (``classic.log_iteration``; the update counted is
    steps 2-6: advantage normalisation, pi_old on the batch, gradient, CG with its Fisher-vector
    products, line search, audit, critic fit). ``summary``: eval_return (deterministic),
    env_steps (C,).
    A non-finite step or critic loss stops that configuration (status "diverged"), not the batch.
    """
    configs = [configs] if isinstance(configs, ClassicTRPOConfig) else list(configs)
    configs = with_task(env, configs)
    check_batchable(configs, BATCHABLE)
    cfg, C = configs[0], len(configs)
    E, T, dt = cfg.n_envs, cfg.n_steps, torch.float32
    seeds = [c.seed for c in configs]
    venv = make_classic(cfg.env_id, C * E, backend=cfg.backend, dtype=dt)
    Do, A = venv.obs_dim, venv.num_actions
    actor = BatchedMLP([Do, cfg.hidden, cfg.hidden, A], seeds, 0.01, dt)
    critic = BatchedMLP([Do, cfg.hidden, cfg.hidden, 1], [s + 1 for s in seeds], 1.0, dt)
    params = list(actor.parameters())
    delta = torch.tensor([c.delta for c in configs], dtype=dt)  # (C,)
    vf_lr = torch.tensor([c.vf_lr for c in configs], dtype=dt)  # (C,)
    opt = BatchedAdam([flat_parameters(critic.parameters())], lr=vf_lr, eps=ADAM_EPS)
    num_updates = max(1, cfg.total_timesteps // (E * T))
    rec = RunRecord(status=["ok"] * C, diverged_at=[None] * C, error=[None] * C)
    alive = torch.ones(C, dtype=torch.bool)
    obs = venv.reset(seed=_env_seeds(seeds, E, seeding.CLASSIC_ROLLOUT)).reshape(C, E, Do)
    obs_norm = ObsNorm(C, Do) if cfg.normalize_obs else None
    steps_done = 0
    for u in range(num_updates):
        t0 = time.perf_counter()
        roll, obs = rollout(
            actor, critic, venv, obs,
            iteration_generators(seeds, u, seeding.CLASSIC_ROLLOUT), T, cfg.gamma,
            cfg.gae_lambda, obs_norm,
        )  # fmt: skip
        t_roll = time.perf_counter() - t0
        steps_done += E * T
        counter = flop_counter(cfg.count_flops_every, u)
        t0 = time.perf_counter()
        with counting(counter):
            adv = _normalise(roll.adv) if cfg.normalize_advantage else roll.adv
            with torch.no_grad():
                old_all = log_probs(actor, roll.obs)  # (C, M, A) pi_old on the batch
            batch = (roll.obs, roll.actions, old_all, adv)
            theta_old = tr.flatten([p.detach() for p in params], C)  # (C, D)
            full, nat = natural_step(actor, batch, delta, cfg)
            newly = alive & ~nat.pop("finite_step")
            if bool(newly.any()):
                rec.mark_diverged(newly, u, "non-finite gradient, CG solution or step")
                alive &= ~newly
            ls = line_search(
                actor, theta_old, full, batch, delta,
                cfg.line_search_shrinking_factor, cfg.line_search_max_iter, alive,
            )  # fmt: skip
            metrics = _step_metrics(actor, batch, ls) | nat
            v_loss = _fit_critic(
                critic,
                opt,
                roll.obs,
                roll.returns,
                iteration_generators(seeds, u, seeding.CLASSIC_CRITIC_BATCHES),
                cfg,
            )
            newly = alive & ~torch.isfinite(v_loss)
            if bool(newly.any()):
                rec.mark_diverged(newly, u, "non-finite critic loss")
                alive &= ~newly
            metrics.update(v_loss=v_loss, iteration=torch.full((C,), float(u)))
            rec.log("step", metrics, alive)
        t_upd, flops = update_cost(counter, time.perf_counter() - t0, C)
        log_iteration(rec, roll, u, steps_done, t_roll, t_upd, alive, flops)
    venv.close()
    evals = evaluate(actor, cfg.env_id, seeds, cfg.eval_episodes, cfg.backend, dt, obs_norm)
    rec.summary = {"eval_return": evals, "env_steps": torch.full((C,), float(steps_done))}
    return rec
